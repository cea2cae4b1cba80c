"""kvpress's press contracts for every suite press (WildCat, uniform, BalanceKV, the method press and
a per-layer mix), as kvpress's own tests assert them for its presses (``tests/presses/test_presses.py``,
``tests/test_press_call.py``, ``tests/test_pipeline.py``, ``tests/test_generate.py``), on a tiny random
Llama with a byte tokenizer (no downloads)."""
from __future__ import annotations

import logging

import pytest
import torch
from transformers import DynamicCache

from attnbench import methods
from kvpress import ComposedPress, KnormPress, KVPressTextGenerationPipeline
from attnbench.tasks.adapters.presses import MethodPress, kept_count, make_press, value_range
from attnbench.tasks.kv_cache import byte_tokenizer, tiny_llama

RATIOS = (0.2, 0.5, 0.8)


def wildcat():
    m = methods.build("wildcat")
    m.reseed(0)
    return m


def gen():
    return torch.Generator().manual_seed(0)


# every suite press, built fresh (same seed) for a ratio; sink and window small enough for short inputs
# and the defaults (32 / 32) in the tests that name them
SUITE = {
    "wildcat": lambda r, **kw: make_press("method", wildcat(), r, **kw),
    "uniform": lambda r, **kw: make_press("uniform", wildcat(), r, generator=gen(), **kw),
    "balance_kv": lambda r, **kw: make_press("balance_kv", wildcat(), r, generator=gen(), **kw),
    "method_press": lambda r, **kw: MethodPress(method=wildcat(), compression_ratio=r, **kw),
    "per_layer": lambda r, **kw: make_press("per_layer", wildcat(), r, generator=gen(), **kw,
                                            kwargs={"default": "uniform", "method": [1]}),
}
SMALL = dict(sink_size=4, window_size=4)


@pytest.fixture(scope="module")
def model():
    return tiny_llama(seed=0)


def tokens(n, batch=1, seed=0):
    return torch.randint(0, 256, (batch, n), generator=torch.Generator().manual_seed(seed))


def cache_lengths(cache):
    return [layer.keys.shape[2] for layer in cache.layers]


@pytest.mark.parametrize("name", SUITE)
@pytest.mark.parametrize("grad", [False, True])
def test_press_runs_with_and_without_no_grad(model, name, grad):
    """``with press(model): model(ids, past_key_values=DynamicCache())`` with autograd on or off
    (batch 2): the cache is compressed, holds no graph, and a backward through the forward works."""
    model.zero_grad(set_to_none=True)
    press = SUITE[name](0.5, **SMALL)
    with torch.set_grad_enabled(grad), press(model):
        cache = DynamicCache()
        out = model(tokens(64, batch=2), past_key_values=cache)
    assert cache_lengths(cache) == [32, 32]
    assert not any(t.requires_grad for layer in cache.layers for t in (layer.keys, layer.values))
    assert out.logits.requires_grad == grad and torch.isfinite(out.logits).all()
    if grad:
        out.logits.float().square().mean().backward()
        assert all(p.grad is not None for p in model.model.layers[0].self_attn.parameters())
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", SUITE)
@pytest.mark.parametrize("ratio", RATIOS)
def test_cache_keeps_int_n_times_one_minus_ratio(model, name, ratio):
    """Every layer keeps int(n·(1-ratio)) tokens, at least 1, sink and window included (the defaults 32 / 32:
    a 5-token input at 0.2 keeps 4, a 54-token one at 0.4 keeps 32); the same model without the
    press keeps all tokens."""
    for n, batch in ((5, 1), (54, 2), (130, 2)):
        press = SUITE[name](ratio)
        with torch.no_grad(), press(model):
            cache = model(tokens(n, batch), past_key_values=DynamicCache()).past_key_values
        want = max(1, int(n * (1 - ratio)))  # kvpress's compute_n_kept (5 at 0.8: 0.999… -> 1)
        assert cache_lengths(cache) == [want] * 2 == [kept_count(n, ratio)] * 2, (n, cache_lengths(cache))
        assert cache.get_seq_length() == want
        assert all(layer.values.shape[2] == layer.keys.shape[2] for layer in cache.layers)
    with torch.no_grad(), SUITE[name](0.4)(model):
        assert cache_lengths(model(tokens(54), past_key_values=DynamicCache()).past_key_values) == [32, 32]
    with torch.no_grad():
        assert cache_lengths(model(tokens(130), past_key_values=DynamicCache()).past_key_values) == [130, 130]


@pytest.mark.parametrize("name", ["wildcat", "uniform", "balance_kv"])
def test_official_middle_convention_stays_available(model, name):
    """``ratio_of="middle"``: the ratio applies to the tokens between sink and window, and a
    context shorter than sink + window + 2 is not compressed (the official WildCat presses)."""
    # sink + window = 64 > 54 - 2 with the defaults: left alone
    with torch.no_grad(), SUITE[name](0.5, ratio_of="middle")(model):
        assert cache_lengths(model(tokens(54), past_key_values=DynamicCache()).past_key_values) == [54, 54]
    # 130 tokens, sink 4, window 4: half of the 122 middle tokens dropped; WildCat: 5 bins of 24 keys
    # keep 12 points each and the 2 leftover keys join the window
    want = 8 + 5 * 12 + 2 if name == "wildcat" else 8 + 61
    with torch.no_grad(), SUITE[name](0.5, ratio_of="middle", **SMALL)(model):
        assert cache_lengths(model(tokens(130), past_key_values=DynamicCache()).past_key_values) == [want, want]


@pytest.mark.parametrize("name", SUITE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes_and_decoding(name, dtype):
    """fp32, bf16 and fp16 (batch 2): contracted length, the cache in the model's dtype, and
    finite logits when decoding over it."""
    m = tiny_llama(seed=0).to(dtype)
    press = SUITE[name](0.5, **SMALL)
    with torch.no_grad(), press(m):
        cache = m(tokens(96, batch=2), past_key_values=DynamicCache()).past_key_values
    assert cache_lengths(cache) == [48, 48]
    assert all(layer.keys.dtype == dtype and layer.values.dtype == dtype for layer in cache.layers)
    with torch.no_grad():
        out = m(tokens(3, batch=2, seed=1), past_key_values=cache, position_ids=torch.arange(96, 99).expand(2, -1))
    assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("name", SUITE)
def test_context_manager_adds_and_removes_hooks(model, name):
    press = SUITE[name](0.2)
    with press(model):
        assert all(len(layer.self_attn._forward_hooks) == 1 for layer in model.model.layers)
    assert all(len(layer.self_attn._forward_hooks) == 0 for layer in model.model.layers)
    with pytest.raises(RuntimeError, match="inside"), press(model):
        raise RuntimeError("inside")
    assert all(len(layer.self_attn._forward_hooks) == 0 for layer in model.model.layers)


@pytest.mark.parametrize("name", SUITE)
def test_composed_press(model, name):
    """``ComposedPress([press])`` keeps the press's count; after Knorm at 0.5 the press compresses
    what Knorm kept (a weighted press goes last: kvpress's presses would cut its weight channel)."""
    n = 120
    for presses, want in (([SUITE[name](0.5, **SMALL)], 60), ([KnormPress(0.5), SUITE[name](0.5, **SMALL)], 30)):
        composed = ComposedPress(presses)
        with torch.no_grad(), composed(model):
            cache = model(tokens(n), past_key_values=DynamicCache()).past_key_values
        assert cache_lengths(cache) == [want, want]
        assert composed.compression_ratio == pytest.approx(1 - want / n)


@pytest.mark.parametrize("name", ["wildcat", "balance_kv", "method_press"])
def test_a_kvpress_press_after_a_weighted_press_is_refused(model, name):
    """A weighted press followed by a kvpress press: the latter keeps head_dim value channels and drops
    the weight channel, so decoding would read v·w as v. The next forward over that cache is refused
    with one line naming the order that works; the order that works decodes."""
    press = SUITE[name](0.5, **SMALL)
    composed = ComposedPress([press, KnormPress(0.5)])
    with torch.no_grad():
        with composed(model):
            cache = model(tokens(120), past_key_values=DynamicCache()).past_key_values
        with pytest.raises(ValueError, match=rf"in a ComposedPress put {type(press).__name__} last") as err:
            model(tokens(1, seed=1), past_key_values=cache)
        assert "\n" not in str(err.value)
        with ComposedPress([KnormPress(0.5), SUITE[name](0.5, **SMALL)])(model):
            cache = model(tokens(120), past_key_values=DynamicCache()).past_key_values
        out = model(tokens(1, seed=1), past_key_values=cache).logits
    assert torch.isfinite(out).all() and cache_lengths(cache) == [31, 31]


@pytest.fixture(scope="module")
def pipe():
    m = tiny_llama(seed=0)
    return KVPressTextGenerationPipeline(model=m, tokenizer=byte_tokenizer(), device=torch.device("cpu"))


CONTEXT = "This is a test article. It was written on 2022-01-01. " * 3


@pytest.mark.parametrize("name", SUITE)
def test_pipeline_answers_questions_with_a_cached_context(pipe, name, caplog):
    """kvpress's pipeline with a cache: each question is answered from the compressed context, the
    cache is the compressed context afterwards, and an answer does not depend on the questions asked
    before it (the pipeline crops each answer off the cache; WildCat's clamp range follows)."""
    n = 1 + len(CONTEXT)  # BOS and one token per byte
    questions = ["When was this article written?", "What is this?"]
    cache = DynamicCache()
    with caplog.at_level(logging.DEBUG, logger="kvpress.pipeline"):
        answers = pipe(CONTEXT, questions=questions, press=SUITE[name](0.4, **SMALL), cache=cache,
                       max_new_tokens=5)["answers"]
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    messages = [r.getMessage() for r in caplog.records]
    assert f"Context Length: {n}" in messages and f"Compressed Context Length: {int(n * 0.6)}" in messages
    assert cache_lengths(cache) == [int(n * 0.6)] * 2
    alone = pipe(CONTEXT, question=questions[1], press=SUITE[name](0.4, **SMALL), max_new_tokens=5)["answer"]
    assert alone == answers[1]


@pytest.mark.parametrize("name", ["wildcat", "uniform"])
def test_pipeline_leaves_the_compressed_cache_as_it_was(pipe, name):
    """``generate_answer`` then ``_remove_answer_from_cache`` (what the pipeline does per question)
    leaves keys, values and WildCat's clamp range as they were after prefill."""
    m = pipe.model
    cache = DynamicCache()
    with torch.no_grad(), SUITE[name](0.5, **SMALL)(m):
        m.model(input_ids=tokens(80), past_key_values=cache)
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    ranges = [tuple(t.clone() for t in value_range(layer, layer.values)) for layer in cache.layers
              if getattr(layer, "vmin", None) is not None]
    assert bool(ranges) == (name == "wildcat")
    lengths = [cache.get_seq_length(i) for i in range(len(cache))]
    pipe.generate_answer(tokens(6, seed=3), cache, context_length=80, max_new_tokens=8)
    pipe._remove_answer_from_cache(cache, lengths)
    for layer, (k, v) in zip(cache.layers, before):
        assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)
    for layer, (lo, hi) in zip([la for la in cache.layers if getattr(la, "vmin", None) is not None], ranges):
        got = value_range(layer, layer.values)
        assert torch.equal(got[0], lo) and torch.equal(got[1], hi)


@pytest.mark.parametrize("name", SUITE)
def test_generate(model, name):
    """``with press(model): model.generate(...)`` compresses the prompt and decodes greedily over
    the compressed cache: the same tokens as a hand-written greedy loop over the same press's cache."""
    ids = tokens(70)
    steps = 6
    with torch.no_grad(), SUITE[name](0.5, **SMALL)(model):
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, do_sample=False,
                             min_new_tokens=steps, return_dict_in_generate=True)
    got = out.sequences[0, 70:].tolist()
    assert len(got) == steps
    assert cache_lengths(out.past_key_values) == [35 + steps - 1] * 2  # the last token is not cached
    cache = DynamicCache()
    with torch.no_grad():
        with SUITE[name](0.5, **SMALL)(model):
            logits = model(ids, past_key_values=cache).logits[:, -1]
        want = [int(logits.argmax())]
        for i in range(steps - 1):
            x = torch.tensor([[want[-1]]])
            want.append(int(model(x, past_key_values=cache, position_ids=torch.tensor([[70 + i]])).logits[0, -1].argmax()))
    assert got == want


def test_task_press_works_with_autograd_in_a_users_loop():
    """The press that ``python run.py method=wildcat task=kv_cache task.dataset=recall`` builds
    (from the task's own config) runs in a loop that never disables autograd: prefill under the
    press, then teacher-forced scoring over the compressed cache, with gradients to the model."""
    from attnbench import tasks

    model, tok = tiny_llama(seed=0), byte_tokenizer()
    cfg = tasks.resolve({"name": "kv_cache", "dataset": "recall"})
    assert cfg["dataset"] == "recall" and cfg["press"] == "method" and cfg["ratio_of"] == "all"
    task = tasks.get("kv_cache")(cfg, torch.device("cpu"), 0, model=model, tokenizer=tok)
    press = task.make_press(wildcat())
    assert type(press).__name__ == "WildCatPress"
    ids = tokens(200)
    for step in range(2):  # a user's loop: no torch.no_grad anywhere
        cache = DynamicCache()
        with press(model):
            model.model(input_ids=ids[:, :150], past_key_values=cache)
        assert cache_lengths(cache) == [int(150 * (1 - cfg["compression_ratio"]))] * 2
        out = model(ids[:, 150:], past_key_values=cache, position_ids=torch.arange(150, 200)[None])
        loss = torch.nn.functional.cross_entropy(out.logits[0, :-1].float(), ids[0, 151:])
        loss.backward()
        assert torch.isfinite(loss) and model.lm_head.weight.grad is not None
        model.zero_grad(set_to_none=True)
