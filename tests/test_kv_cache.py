"""KV-cache task (kvpress presses, weighted caches, needle data) on a tiny random Llama, offline."""
from __future__ import annotations

import math

import pytest
import torch

from attnbench import methods
from attnbench.core.measure import Meter
from attnbench.tasks.kv_cache import KVCacheTask, byte_tokenizer, longbench_score, needle_sample, recall_sample, tiny_llama
from attnbench.tasks.adapters.presses import (BalanceKVPress, make_press, pack_weights, register_weighted_attention,
                                              weighted_attention, weighted_reference)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(seed=0), byte_tokenizer()


def make_task(tiny, seed=0, **cfg):
    model, tok = tiny
    base = dict(name="kv_cache", dataset="needle", press="none", compression_ratio=0.5, context_length=300,
                depths=[0.5], max_new_tokens=6, num_samples=1, ppl_tokens=16)
    base.update(cfg)
    return KVCacheTask(base, CPU, seed, model=model, tokenizer=tok)


def wildcat():
    m = methods.build("wildcat")
    m.reseed(0)
    return m


def gen_tokens(task, press, ids, q_ids, steps=6):
    """Greedy tokens from a (compressed) cache: the kvpress decoding path, token ids."""
    cache, _, _, _ = task.prefill(press, ids)
    n = ids.shape[1]
    out, pos, toks = None, n, []
    x = q_ids
    with torch.no_grad():
        for _ in range(steps):
            p = torch.arange(pos, pos + x.shape[1]).unsqueeze(0)
            out = task.model(input_ids=x, past_key_values=cache, position_ids=p)
            pos += x.shape[1]
            x = out.logits[:, -1:].argmax(-1)
            toks.append(int(x))
    return toks, out.logits[:, -1]


def test_weight_channel_trick_equals_weighted_attention():
    """SDPA over [v·w, w] then dividing equals softmax(qkᵀ·s + log w)·v (incl. GQA and a mask)."""
    register_weighted_attention()
    g = torch.Generator().manual_seed(0)
    B, H, Hkv, Nq, N, D = 2, 4, 2, 3, 17, 8
    q = torch.randn(B, H, Nq, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, Hkv, N, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, Hkv, N, D, generator=g, dtype=torch.float64)
    log_w = torch.randn(B, Hkv, N, generator=g, dtype=torch.float64)
    module = torch.nn.Module()
    module.num_key_value_groups = H // Hkv
    module.is_causal = True
    scale = 0.3
    mask = torch.zeros(1, 1, Nq, N, dtype=torch.float64)
    mask[..., -2:] = float("-inf")  # last two keys masked for every query
    out, _ = weighted_attention(module, q, k, pack_weights(v, log_w), mask, dropout=0.0, scaling=scale)
    kk, vv, ww = (t.repeat_interleave(H // Hkv, 1) for t in (k, v, log_w))
    ref = weighted_reference(q, kk, vv, ww + mask[:, :, 0], scale)  # (B, H, Nq, D)
    torch.testing.assert_close(out.transpose(1, 2), ref, rtol=1e-10, atol=1e-10)
    # plain values: the function is plain SDPA
    out2, _ = weighted_attention(module, q, k, v, None, dropout=0.0, scaling=scale)
    ref2 = weighted_reference(q, kk, vv, torch.zeros_like(ww), scale)
    assert out2.shape == (B, Nq, H, D) and not torch.allclose(out2.transpose(1, 2), ref2)  # is_causal (top-left)
    out3, _ = weighted_attention(module, q[:, :, :1], k, v, None, dropout=0.0, scaling=scale)
    torch.testing.assert_close(out3.transpose(1, 2), ref2[:, :, :1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("press", ["method", "uniform", "balance_kv", "snapkv", "streaming_llm"])
def test_ratio_zero_equals_no_press(tiny, press):
    task = make_task(tiny)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 256, (1, 200), generator=g)
    q_ids = torch.randint(0, 256, (1, 5), generator=g)
    ref, ref_logits = gen_tokens(task, None, ids, q_ids)
    p = make_press(press, wildcat(), 0.0, generator=torch.Generator().manual_seed(0))
    toks, logits = gen_tokens(task, p, ids, q_ids)
    assert toks == ref
    torch.testing.assert_close(logits, ref_logits)


def test_weighted_press_with_full_budget_equals_no_press(tiny):
    """Official convention, sink + window cover the cache (budget >= length): the weighted cache
    (weight channel of ones) decodes exactly like the plain cache."""
    task = make_task(tiny)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 256, (1, 60), generator=g)
    q_ids = torch.randint(0, 256, (1, 4), generator=g)
    ref, ref_logits = gen_tokens(task, None, ids, q_ids)
    p = make_press("method", wildcat(), 0.5, sink_size=32, window_size=32, ratio_of="middle")
    cache, _, _, _ = task.prefill(p, ids)
    assert cache.layers[0].values.shape[-1] == cache.layers[0].keys.shape[-1] + 1  # weighted path taken
    toks, logits = gen_tokens(task, p, ids, q_ids)
    assert toks == ref
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)


def test_compression_changes_output_and_keeps_budget(tiny):
    task = make_task(tiny)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 256, (1, 400), generator=g)
    q_ids = torch.randint(0, 256, (1, 4), generator=g)
    _, ref = gen_tokens(task, None, ids, q_ids, steps=1)
    for name in ("method", "uniform", "balance_kv", "snapkv"):
        p = make_press(name, wildcat(), 0.75, generator=torch.Generator().manual_seed(0))
        cache, _, _, _ = task.prefill(p, ids)
        assert [layer.keys.shape[2] for layer in cache.layers] == [100, 100], name  # int(400·0.25), sink/window in it
        _, logits = gen_tokens(task, p, ids, q_ids, steps=1)
        assert not torch.allclose(logits, ref), name  # the compressed cache is what decoding reads
    # the official convention: the ratio applies to the 336 tokens between sink and window
    for name, mid in (("method", 7 * 12 + 336 - 7 * (336 // 7)), ("uniform", 84), ("balance_kv", 84)):
        p = make_press(name, wildcat(), 0.75, ratio_of="middle", generator=torch.Generator().manual_seed(0))
        cache, _, _, _ = task.prefill(p, ids)
        assert cache.layers[0].keys.shape[2] == 64 + mid, name  # WildCat: 7 bins of 12, leftover in the window


def test_balance_kv_halving_weights():
    """Each halving keeps n - n//2 tokens; weights are 2 (split part) or 1 (tail) per round, and
    a single BalanceKV round keeps about half of every sign class."""
    g = torch.Generator().manual_seed(0)
    p = BalanceKVPress(compression_ratio=0.75, generator=g, block_size=32)
    k = torch.randn(1, 2, 100, 8, generator=torch.Generator().manual_seed(1))
    v = torch.randn(1, 2, 100, 8, generator=torch.Generator().manual_seed(2))
    assert p.middle_budget(100) == 25  # official: two halvings
    kc, vc, log_w = p.compress_middle(None, k, v, 25)
    assert kc.shape[2] == 25 and vc.shape[2] == 25
    w = log_w.exp()
    assert set(w.unique().tolist()) <= {1.0, 2.0, 4.0}
    assert 60 <= float(w.sum(-1).mean()) <= 100  # total mass ≈ n (unbiased counts)
    # an exact budget between two halvings: 100 -> 50, then the oldest 40 halved to 20 (+ 10 kept)
    kc, vc, log_w = BalanceKVPress(compression_ratio=0.7, generator=g, block_size=32).compress_middle(None, k, v, 30)
    assert kc.shape[2] == 30 and set(log_w.exp().unique().tolist()) <= {1.0, 2.0, 4.0}
    assert 60 <= float(log_w.exp().sum(-1).mean()) <= 100


def test_needle_placed_where_stated():
    tok = byte_tokenizer()
    filler = tok.encode("All work and no play makes a dull program. " * 200, add_special_tokens=False)
    rng = torch.Generator().manual_seed(0)
    for depth in (0.0, 0.25, 0.5, 1.0):
        s = needle_sample(tok, filler, 1000, depth, rng)
        ids = tok.encode(s["context"], add_special_tokens=False)
        needle_ids = tok.encode(s["needle"], add_special_tokens=False)
        at = next(i for i in range(len(ids)) if ids[i:i + len(needle_ids)] == needle_ids)
        n_fill = 1000 - len(needle_ids)
        assert at == round(depth * n_fill) == s["position"]
        assert len(ids) == 1000
        assert s["answer"] in s["needle"] and s["answer"].isdigit() and len(s["answer"]) == 7
    with pytest.raises(ValueError, match="task.depths"):
        needle_sample(tok, filler, 1000, 1.5, rng)


def _filler(tok):
    return tok.encode("All work and no play makes a dull program. " * 200, add_special_tokens=False)


def test_recall_sample_needles_and_choices():
    """One needle per depth (distinct cities) where stated; the true number is among distinct
    candidates of the same length, at ``label``; the same generator seed gives the same window."""
    tok = byte_tokenizer()
    filler = _filler(tok)
    depths = [0.9, 0.1, 0.5, 0.5]
    s = recall_sample(tok, filler, 1000, depths, torch.Generator().manual_seed(0), digits=4, num_choices=5)
    ids = tok.encode(s["context"], add_special_tokens=False)
    assert len(ids) == 1000
    items = s["items"]
    assert [it["depth"] for it in items] == depths and len({it["city"] for it in items}) == len(depths)
    n_fill = 1000 - sum(len(tok.encode(it["needle"], add_special_tokens=False)) for it in items)
    before = 0  # needle tokens placed before this one (needles sit in depth order)
    for it in sorted(items, key=lambda it: it["depth"]):
        needle_ids = tok.encode(it["needle"], add_special_tokens=False)
        at = next(i for i in range(before + it["position"], len(ids)) if ids[i:i + len(needle_ids)] == needle_ids)
        assert at - before == it["position"] == round(it["depth"] * n_fill)
        before += len(needle_ids)
        c = it["choices"]
        assert len(c) == 5 == len(set(c)) and c[it["label"]] == it["answer"] and it["answer"] in it["needle"]
        assert all(x.isdigit() and len(x) == 4 and x[0] != "0" for x in c)
        assert it["city"] in it["question"] and it["city"] in it["answer_prefix"]
    labels = [recall_sample(tok, filler, 1000, [0.5], torch.Generator().manual_seed(k), 3, 4)["items"][0]["label"]
              for k in range(40)]
    assert set(labels) == {0, 1, 2, 3}  # the true answer is not always in the same slot
    again = recall_sample(tok, filler, 1000, depths, torch.Generator().manual_seed(0), digits=4, num_choices=5)
    assert again == s


def test_recall_logprobs_match_an_independent_forward(tiny):
    """Uncompressed: each candidate's log-likelihood equals the sum of log-softmaxes of its tokens in
    one plain forward over context + question + answer (no cache, no task code); the prediction
    is the candidate with the largest one, and per-token hits / NLL follow from the same forward."""
    model, tok = tiny
    task = make_task(tiny, dataset="recall", context_length=240, depths=[0.2, 0.8], num_digits=3, num_choices=4)
    s = recall_sample(tok, _filler(tok), 240, [0.2, 0.8], torch.Generator().manual_seed(5), 3, 4)
    rec, qs = task.recall_window(None, s)
    assert rec["kept"] == [rec["n"]] * 2 and len(qs) == 2
    for it, q in zip(s["items"], qs):
        ctx = [tok.bos_token_id] + tok.encode(s["context"], add_special_tokens=False)
        qid = tok.encode(it["question"] + "\n" + it["answer_prefix"], add_special_tokens=False)
        ref = []
        for c in it["choices"]:
            a = tok.encode(" " + c, add_special_tokens=False)
            full = torch.tensor([ctx + qid + a])
            with torch.no_grad():
                logp = model(full).logits[0].double().log_softmax(-1)
            start = len(ctx) + len(qid)
            tok_lp = [float(logp[start - 1 + i, t]) for i, t in enumerate(a)]
            ref.append(sum(tok_lp))
            if c == it["answer"]:
                hits = [int(logp[start - 1 + i].argmax()) == t for i, t in enumerate(a)]
                digits = [i for i, t in enumerate(a) if chr(t).isdigit()]
                assert q["digit_accuracy"] == pytest.approx(sum(hits[i] for i in digits) / len(digits))
                assert q["answer_nll"] == pytest.approx(-sum(tok_lp) / len(a), abs=1e-4)
        assert q["logprobs"] == pytest.approx(ref, abs=1e-4)
        assert q["pred"] == max(range(4), key=lambda i: ref[i]) and q["label"] == it["label"]
        assert q["correct"] == float(q["pred"] == q["label"])


@pytest.mark.parametrize("press", ["method", "snapkv"])
def test_recall_candidates_leave_the_compressed_cache_unchanged(tiny, press):
    """Every candidate is scored on a copy of the compressed cache: the cache (keys, values,
    WildCat's value range) is unchanged afterwards and the scores do not depend on the order."""
    task = make_task(tiny, dataset="recall")
    p = make_press(press, wildcat(), 0.5, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(0, 256, (1, 300), generator=g)
    q_ids = torch.randint(0, 256, (1, 7), generator=g)
    cache, _, _, _ = task.prefill(p, ids)
    assert cache.layers[0].keys.shape[2] < 300
    before = [(layer.keys.clone(), layer.values.clone(), getattr(layer, "vmin", None)) for layer in cache.layers]
    before = [(k, v, None if m is None else m.clone()) for k, v, m in before]
    choices = ["123", "456", "789", "120"]
    a = task.choice_logprobs(cache, 300, q_ids, choices)
    b = task.choice_logprobs(cache, 300, q_ids, choices[::-1])
    assert [x["logprob"] for x in a] == pytest.approx([x["logprob"] for x in b[::-1]], abs=1e-4)
    for layer, (k, v, m) in zip(cache.layers, before):
        assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)
        if m is not None:
            assert torch.equal(layer.vmin, m)
    assert (before[0][2] is not None) == (press == "method")  # WildCat's weighted cache, value range clamp on
    # scoring on the copy equals scoring on the cache itself (the clamp follows the copy)
    a_ids = torch.tensor([task.tok.encode(" " + choices[0], add_special_tokens=False)])
    ids = torch.cat((q_ids, a_ids[:, :-1]), 1)
    with torch.no_grad():
        logits = task.model(input_ids=ids, past_key_values=cache, position_ids=torch.arange(300, 300 + ids.shape[1])[None],
                            logits_to_keep=a_ids.shape[1]).logits[0]
    direct = float(logits.log_softmax(-1).gather(-1, a_ids[0, :, None]).sum())
    assert direct == pytest.approx(a[0]["logprob"], abs=1e-4)
    c = task.choice_logprobs(cache, 300, q_ids, ["1234", "55", "7"])  # unequal lengths, one branch each
    assert [x["logprob"] for x in c] == pytest.approx([x["logprob"] for x in task.choice_logprobs(
        cache, 300, q_ids, ["7", "55", "1234"])][::-1], abs=1e-4)
    assert c[2]["logprob"] == pytest.approx(task.choice_logprobs(cache, 300, q_ids, ["7"])[0]["logprob"], abs=1e-5)
    # the tree-masked pass equals decoding each candidate alone on its own copy of the cache
    alone = task._choice_logprobs(cache, 300, q_ids, ["1234", "55", "7"], tree=False)
    for x, y in zip(c, alone):
        assert x["token_logprobs"] == pytest.approx(y["token_logprobs"], abs=1e-4) and x["argmax_hit"] == y["argmax_hit"]


def test_recall_rows_deterministic_per_seed(tiny):
    cfg = dict(dataset="recall", press="method", compression_ratio=0.5, context_length=240, depths=[0.25, 0.75],
               num_samples=2, num_digits=3, num_choices=4)
    run = lambda seed: list(make_task(tiny, seed, **cfg).run(wildcat(), Meter.quick()))  # noqa: E731
    (r0,), (r0b,), (r1,) = run(0), run(0), run(1)
    keys = ("score", "digit_accuracy", "answer_nll", "kept_fraction", "score_d25", "score_d75")
    assert {k: r0[k] for k in keys} == {k: r0b[k] for k in keys}
    assert r0["num_questions"] == 4 and r0["chance"] == 25 and r0["num_samples"] == 2 and r0["n"] == 240
    assert 0 <= r0["score"] <= 100 and 0 <= r0["digit_accuracy"] <= 100 and r0["answer_nll"] > 0
    assert r0["press"] == "WildCatPress" and 0 < r0["kept_fraction"] < 1
    n = r0["context_tokens"]  # 240 and the BOS token
    assert r0["kept_tokens_per_layer"] == [int(n * 0.5)] * 2 and r0["kept_fraction"] == int(n * 0.5) / n
    assert r0["answer_nll"] != r1["answer_nll"]  # another seed, other windows and numbers


def test_rows_carry_the_uncompressed_baseline_of_the_same_windows(tiny):
    """Every needle / recall / ppl row carries baseline_* = the press-none row's metrics on the same
    windows; it is measured once per model and config (the press knobs left out), then reused."""
    import attnbench.tasks.kv_cache as kv

    cfg = dict(dataset="recall", context_length=[200, 240], depths=[0.25, 0.75], num_samples=1, num_digits=3)
    none = {r["n"]: r for r in make_task(tiny, press="none", **cfg).run(wildcat(), Meter.quick())}
    for r in none.values():
        assert r["baseline_score"] == r["score"] and r["baseline_answer_nll"] == r["answer_nll"]
    calls = []
    task = make_task(tiny, press="uniform", compression_ratio=0.75, **cfg)
    orig = task.recall_row
    task.recall_row = lambda press, n, data: calls.append(press is None) or orig(press, n, data)
    rows = list(task.run(wildcat(), Meter.quick()))
    assert calls == [False, False]  # the baseline rows came from the press-none run above
    for r in rows:
        b = none[r["n"]]
        assert (r["baseline_score"], r["baseline_digit_accuracy"], r["baseline_answer_nll"]) == (
            b["score"], b["digit_accuracy"], b["answer_nll"])
        assert r["answer_nll"] != b["answer_nll"] and r["kept_fraction"] < 0.26
    kv._baselines.clear()
    (p,) = make_task(tiny, press="snapkv", dataset="ppl", context_length=200).run(wildcat(), Meter.quick())
    (p0,) = make_task(tiny, press="none", dataset="ppl", context_length=200).run(wildcat(), Meter.quick())
    assert p["baseline_ppl"] == p0["ppl"] and p["baseline_nll"] == p0["nll"] and p["ppl"] != p0["ppl"]


def test_recall_knob_errors(tiny):
    for bad, match in ((dict(num_choices=1), "task.num_choices"), (dict(num_digits=0), "task.num_digits"),
                       (dict(num_digits=19), "task.num_digits"), (dict(num_digits=1, num_choices=10), "task.num_choices"),
                       (dict(depths=[0.5] * 21), "task.depths"), (dict(depths=[1.5]), "task.depths")):
        with pytest.raises(ValueError, match=match):
            make_task(tiny, dataset="recall", **bad)
    make_task(tiny, dataset="recall", num_digits=1, num_choices=9)  # all nine 1-digit numbers


def test_pipeline_end_to_end_tiny_llama(tiny):
    task = make_task(tiny, press="method", compression_ratio=0.5, dataset="needle")
    rows = list(task.run(wildcat(), Meter.quick()))
    assert len(rows) == 1
    r = rows[0]
    assert r["press"] == "WildCatPress" and r["n"] >= 300 and 0 <= r["score"] <= 100 and "score_d50" in r
    assert r["cache_kept_mb"] < r["cache_full_mb"] and 0 < r["kept_fraction"] < 1
    assert r["prefill_latency_ms"] > 0 and r["decode_latency_ms"] > 0
    rows = list(make_task(tiny, press="snapkv", dataset="ppl").run(wildcat(), Meter.quick()))
    assert math.isfinite(rows[0]["ppl"]) and rows[0]["ppl"] > 1


def test_clear_errors(tiny):
    with pytest.raises(ValueError, match="task.press"):
        make_press("nonsense", wildcat(), 0.5)
    with pytest.raises(ValueError, match="compress"):
        make_press("method", methods.build("performer"), 0.5)
    with pytest.raises(ValueError, match="task.compression_ratio"):
        make_task(tiny, compression_ratio=1.0)
    with pytest.raises(ValueError, match="task.dataset"):
        make_task(tiny, dataset="imagenet")
    with pytest.raises(RuntimeError, match="task.model=nobody/no-such-model"):
        KVCacheTask({"name": "kv_cache", "model": "nobody/no-such-model"}, CPU, 0)
    assert make_press("method", methods.build("exact"), 0.5) is None


def test_byte_tokenizer_ids_are_the_bytes():
    """Token id = byte value in every process (the vocabulary used to follow ByteLevel.alphabet(),
    whose order changes from process to process)."""
    tok = byte_tokenizer()
    s = "héllo\n\t wörld \x00\x7f"
    ids = tok.encode(s, add_special_tokens=False)
    assert ids == list(s.encode()) and tok.decode(ids) == s
    assert tok.convert_tokens_to_ids(["<s>", "</s>"]) == [256, 257]


def test_local_text_prefixes_split_and_determinism():
    from attnbench.runners import train_thresholds
    from attnbench.tasks.datasets import sources
    from attnbench.tasks.datasets.local_text import MODULES, local_docs, local_text

    assert sources.local_text is local_text and train_thresholds.local_text is local_text  # one corpus
    assert len(MODULES) == len(set(MODULES))
    short, default = local_text(50_000), local_text()
    assert len(short) >= 50_000 and len(default) >= 200_000 and default.startswith(short)  # whole modules, prefixes
    full = local_text(None)
    assert full.startswith(default) and local_text(None) == full  # same text on every call of a process
    train, held = local_docs(None, "train"), local_docs(None, "heldout")
    assert len(train) > 100 and len(held) > 100 and not set(train) & set(held)  # disjoint parts
    assert set(train) | set(held) <= set(local_docs(None))
    assert local_text(10_000, part="train").startswith(train[0])
    from pydoc_data.topics import topics  # the language reference: training text only, after the docstrings

    assert topics["assert"].strip() in train and topics["assert"].strip() not in held
    assert train.index(topics["assert"].strip()) > len(train) // 3
    with pytest.raises(ValueError, match="part"):
        local_text(part="test")


def test_longbench_rows_with_a_local_dataset(tiny, monkeypatch):
    """The LongBench path end to end on two fake subsets: one row per subset, then the mean."""
    import attnbench.tasks.kv_cache as kv

    def fake(path, subset, e, limit):
        ex = {"context": "Alice met Bob in Paris. " * 8, "question": "Where?", "answer_prefix": "Answer:",
              "max_new_tokens": 4, "answers": ["Paris"], "all_classes": ["Paris", "Rome"] if subset == "trec" else None}
        return [ex, dict(ex, answers=["Rome"])][: limit or 2]

    monkeypatch.setattr(kv, "load_longbench", fake)
    task = make_task(tiny, dataset="longbench", subsets=["trec", "samsum"], limit=2)
    rows = list(task.run(wildcat(), Meter.quick()))
    assert [r["subset"] for r in rows] == ["trec", "samsum", "all"]
    assert all(0 <= r["score"] <= 100 and r["num_samples"] == (4 if r["subset"] == "all" else 2) for r in rows)
    assert rows[-1]["score"] == (rows[0]["score"] + rows[1]["score"]) / 2
    with pytest.raises(ValueError, match="task.subsets"):
        list(make_task(tiny, dataset="longbench", subsets=["lsht"]).run(wildcat(), Meter.quick()))


def test_longbench_scorers():
    assert longbench_score("qasper", "The Eiffel tower", ["eiffel tower"]) == 1.0
    assert longbench_score("passage_count", "There are 7 passages", ["7"]) == 1.0
    assert longbench_score("passage_retrieval_en", "Paragraph 3", ["Paragraph 3"]) == 1.0
    assert longbench_score("trec", "LOC\nmore", ["LOC"], ["LOC", "HUM"]) == 1.0
    assert longbench_score("lcc", "x = 1\n", ["x = 1"]) == 1.0
    assert 0 < longbench_score("samsum", "a b c d", ["a b x d"]) < 1


@pytest.mark.slow
def test_smollm2_tokenizer_round_trip_no_byte_markers():
    """The SmolLM2 tokenizer (from the packaged GGUF) encodes spaces as byte-level BPE (no
    ``<|endoftext|>`` in place of spaces), decodes to the exact text without 'Ġ'/'Ċ' markers, and
    stops on ``<|im_end|>``. (transformers' CodeLlamaTokenizer wrapper, saved and reloaded, broke all three.)"""
    from attnbench.tasks.kv_cache import filler_ids
    from attnbench.tasks.datasets.sources import smollm2_tokenizer

    tok = smollm2_tokenizer()
    assert tok.eos_token == "<|im_end|>" and tok.bos_token == "<|im_start|>"
    text = "The special magic number for Lisbon is 1234567.\n\n  Return the  value; see os.path.join()."
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.unk_token_id not in ids and len(ids) < len(text) / 2  # merged words, not bytes or unknowns
    assert tok.decode(ids) == text
    for word_ids in ([ids[i]] for i in range(len(ids))):  # token by token (as generation decodes)
        assert "Ġ" not in tok.decode(word_ids) and "Ċ" not in tok.decode(word_ids)
    answer = tok.encode(" 8252241. The special", add_special_tokens=False) + [tok.eos_token_id]
    assert tok.decode(answer, skip_special_tokens=True) == " 8252241. The special"
    s = needle_sample(tok, filler_ids(tok, 600), 512, 0.5, torch.Generator().manual_seed(0))
    assert s["needle"] in s["context"] and "Ġ" not in s["context"]
    chat = tok.apply_chat_template([{"role": "user", "content": "hi there"}], add_generation_prompt=True,
                                   tokenize=False)
    assert chat.endswith("<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.slow
def test_smollm2_needle_uncompressed_retrieves():
    """No compression: SmolLM2-135M-Instruct finds the needle (the baseline the needle sweep compares to)."""
    task = KVCacheTask(dict(name="kv_cache", model="smollm2", dataset="needle", press="none", context_length=512,
                            depths=[0.2, 0.8], max_new_tokens=10), CPU, 0)
    (row,) = task.run(methods.build("exact"), Meter.quick())
    assert "Ġ" not in row["answers"] and row["kept_fraction"] == 1.0
    assert row["score"] == 100.0, row["answers"]


def test_report_kv_table_and_figure(tmp_path):
    """The report of a KV-cache experiment: one line per press and ratio with the ppl and recall
    rows side by side, and the score-vs-kept-fraction figure."""
    import pandas as pd

    from attnbench.runners.report import report

    rows, i = [], 0
    for press, cls, ratio, kept, of in (("none", "none", 0.0, 1.0, "all"), ("method", "WildCatPress", 0.5, 0.5, "all"),
                                        ("method", "WildCatPress", 0.5, 0.53, "middle"),
                                        ("snapkv", "SnapKVPress", 0.5, 0.5, "all"),
                                        ("snapkv", "SnapKVPress", 0.75, 0.25, "middle")):  # no effect on kvpress's presses
        for ds in ("ppl", "recall"):
            i += 1
            r = {"status": "ok", "experiment": "kvx", "run_id": f"r{i}", "method": "wildcat", "seed": 0, "n": 2048,
                 "press": cls, "task.press": press, "task.compression_ratio": ratio, "task.dataset": ds,
                 "task.ratio_of": of, "kept_fraction": kept + (0.01 if ds == "recall" else 0.0)}
            r.update({"ppl": 10 / kept} if ds == "ppl" else {"score": 100 * kept, "digit_accuracy": 90 * kept,
                                                               "answer_nll": 1 / kept, "chance": 25.0})
            rows.append(r)
    res = report(tmp_path, "kvx", rows=pd.DataFrame(rows), use_grid=False)
    t = res["kv_table"]
    assert list(t["press"]) == ["none", "WildCat", "WildCat (middle)", "SnapKV", "SnapKV"]
    assert list(t["compression_ratio"]) == [0.0, 0.5, 0.5, 0.5, 0.75]
    assert t["ppl"].tolist() == pytest.approx([10, 20, 10 / 0.53, 20, 40])
    assert t["score"].tolist() == pytest.approx([100, 50, 53, 50, 25])
    assert t["kept_fraction"].tolist() == pytest.approx([1.005, 0.505, 0.535, 0.505, 0.255])
    names = {p.name for p in res["files"]}
    assert {"kvx_kv_table.csv", "kvx_kv_vs_kept.png", "kvx_kv_vs_kept.pdf"} <= names
    assert "## Press × compression ratio" in (tmp_path / "reports" / "kvx" / "kvx_table.md").read_text()


@pytest.mark.slow
def test_smollm2_recall_uncompressed_answers():
    """No compression: SmolLM2-135M-Instruct picks the true number of every needle and predicts most
    of its digits (the baseline the kv_compare sweep compares to)."""
    task = KVCacheTask(dict(name="kv_cache", model="smollm2", dataset="recall", press="none", context_length=1024,
                            depths=[0.2, 0.8], num_samples=1), CPU, 0)
    (row,) = task.run(methods.build("exact"), Meter.quick())
    assert row["kept_fraction"] == 1.0 and row["num_questions"] == 2
    assert row["score"] == 100.0 and row["digit_accuracy"] >= 70, row


def test_kv_layers_errors_zero_without_compression(tiny):
    """runners.kv_layers: over an uncompressed cache, each layer's attention output for the
    continuation (alone and decoded in situ) equals the untouched model's (relative error at fp32
    rounding); a compressed cache gives errors > 0, and layer 0 (nothing below it) has the same
    error alone and in situ."""
    from attnbench.runners.kv_layers import capture, insitu_errors, layer_errors

    model, _ = tiny
    task = make_task(tiny)
    register_weighted_attention()
    model.set_attn_implementation("attnbench_weighted")
    g = torch.Generator().manual_seed(7)
    ctx, cont = torch.randint(0, 256, (1, 90), generator=g), torch.randint(0, 256, (1, 12), generator=g)
    got = capture(model, ctx, cont)
    eps = 64 * torch.finfo(torch.float32).eps
    for press, zero in ((None, True), (make_press("method", wildcat(), 0.5, sink_size=4, window_size=4), False),
                        (make_press("uniform", wildcat(), 0.5, generator=torch.Generator().manual_seed(0)), False)):
        cache, _, _, _ = task.prefill(press, ctx)
        ins = insitu_errors(model, task, cache, 90, cont, got)
        alone = layer_errors(model, cache, got)
        rel = [math.sqrt(d / r) for d, r in ins] + [math.sqrt(e[0] / e[1]) for e in alone]
        assert all(x <= eps for x in rel) if zero else all(x > 1e-3 for x in rel), (press, rel)
        assert math.sqrt(alone[0][0] / alone[0][1]) == pytest.approx(math.sqrt(ins[0][0] / ins[0][1]), rel=1e-5)
