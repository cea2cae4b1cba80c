"""tasks.adapters: for each model family on a tiny random model, exact swapped in reproduces the
untouched model, the method runs in every selected layer, capture gives the right shapes, and
unknown layers name the candidates."""
from __future__ import annotations

import pytest
import torch

from attnbench import methods
from attnbench.methods.base import AttentionMethod
from attnbench.methods.exact import dense_attention
from attnbench.tasks import adapters
from attnbench.tasks.adapters import biggan as biggan_adapter
from attnbench.tasks.adapters import hf, t2t_vit, timm_vit
from attnbench.tasks.adapters.base import resolve_layers


class Counter(AttentionMethod):
    """Dense attention counting its calls: (Nq, Nk, causal, scale) per call."""

    name = "counter"

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, int, bool, float]] = []

    def _attend(self, q, k, v, *, causal, scale):
        self.calls.append((q.shape[2], k.shape[2], causal, scale))
        return dense_attention(q, k, v, causal=causal, scale=scale)


def _close(out, ref):
    tol = {torch.float64: 1e-10, torch.float32: 1e-5}[ref.dtype]
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)


# --------------------------------------------------------------------------------------------
# tiny models
# --------------------------------------------------------------------------------------------
def tiny_vit(**kw):
    import timm

    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=5)
    args.update(kw)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **args).eval()


def tiny_t2t(name="t2t_vit_t_14"):
    from attnbench.tasks.models.t2t_vit import create_t2t_vit

    torch.manual_seed(0)
    return create_t2t_vit(name, img_size=32, embed_dim=32, depth=2, num_heads=2, token_dim=16, num_classes=5).eval()


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    return BertModel(cfg).eval()


def images(dtype=torch.float32):
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(dtype)


def token_ids(n=12):
    return torch.randint(0, 64, (2, n), generator=torch.Generator().manual_seed(1))


# --------------------------------------------------------------------------------------------
# layer selection
# --------------------------------------------------------------------------------------------
def test_resolve_layers_forms():
    cands = {"layer0": "m.0.a", "layer1": "m.1.a", "layer2": "m.2.a", "layer3": "m.3.a", "layer4": "m.4.a"}
    assert resolve_layers(cands) == list(cands) == resolve_layers(cands, "all")
    assert resolve_layers(cands, "every:2") == ["layer0", "layer2", "layer4"]
    assert resolve_layers(cands, [3, "layer1", "m.4.a", 3]) == ["layer3", "layer1", "layer4"]
    assert resolve_layers(cands, "layer2, 0") == ["layer2", "layer0"]
    assert resolve_layers(cands, "first:2") == ["layer0", "layer1"]
    assert resolve_layers(cands, "last:2") == ["layer3", "layer4"] and resolve_layers(cands, "last:5") == list(cands)
    with pytest.raises(ValueError, match=r"task.layers='last:6' asks for 6 layers; the model has 5"):
        resolve_layers(cands, "last:6", what="task.layers")
    for bad in ("first:0", "last:x"):
        with pytest.raises(ValueError, match=r"task.layers=.*needs an integer K >= 1"):
            resolve_layers(cands, bad, what="task.layers")
    for bad in (["layer9"], [7], "every:0", "nope"):
        with pytest.raises(ValueError, match=r"task.layers.*candidates: \['layer0'"):
            resolve_layers(cands, bad, what="task.layers")


# --------------------------------------------------------------------------------------------
# timm ViT
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_timm_exact_swap_reproduces_model(dtype):
    model = tiny_vit(qk_norm=True).to(dtype)  # q/k norm on: the wrapper must apply it as timm does
    x = images(dtype)
    with torch.no_grad():
        ref = model(x)
        ws = timm_vit.swap(model)
        out = model(x)
    assert list(ws) == ["block0", "block1", "block2"]
    assert all(isinstance(w, timm_vit.SwappedTimmAttention) for w in ws.values())
    _close(out, ref)


def test_timm_gated_and_scale_norm_attention_is_exact():
    from timm.models.vision_transformer import Attention

    torch.manual_seed(0)
    attn = Attention(16, num_heads=2, gated=True, scale_norm=True, norm_layer=torch.nn.LayerNorm).double().eval()
    model = torch.nn.Sequential(attn)
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
        timm_vit.swap(model)
        _close(model(x), ref)


def test_timm_method_called_in_selected_layers_and_capture():
    model = tiny_vit()
    assert timm_vit.candidates(model) == {f"block{i}": f"blocks.{i}.attn" for i in range(3)}
    rec = Counter()
    ws = timm_vit.swap(model, rec, layers=["block0", "blocks.2.attn"])
    assert list(ws) == ["block0", "block2"] and type(model.blocks[1].attn).__name__ == "Attention"
    with torch.no_grad():
        caps = adapters.capture(ws, lambda: model(images()))
    assert len(rec.calls) == 2 and all(c == (17, 17, False, pytest.approx(16 ** -0.5)) for c in rec.calls)
    for c in caps.values():
        assert c.q.shape == c.k.shape == c.v.shape == (2, 2, 17, 16) and c.out.shape == (2, 2, 17, 16)
        assert c.scale == pytest.approx(16 ** -0.5) and c.causal is False
    assert all(w.captured is None and not w.capture for w in ws.values())
    with pytest.raises(ValueError, match="candidates: \\['block1'\\]"):  # swapped layers are no candidates
        timm_vit.swap(model, layers=["block5"])


def test_set_exact_and_per_layer_methods():
    model = tiny_vit()
    x = images()
    with torch.no_grad():
        ref = model(x)
    a, b = Counter(), Counter()
    ws = timm_vit.swap(model, {"block0": a, "block2": b})
    assert list(ws) == ["block0", "block2"]
    adapters.set_exact(ws, True)
    with torch.no_grad():
        _close(model(x), ref)
    assert a.calls == b.calls == []
    adapters.set_exact(ws, False)
    with torch.no_grad():
        model(x)
    assert len(a.calls) == len(b.calls) == 1
    assert adapters.wrappers(model).keys() == ws.keys()
    with pytest.raises(ValueError, match="no method given for layers \\['block1'\\]"):
        timm_vit.swap(model, {"block0": a}, layers=["block1"])


# --------------------------------------------------------------------------------------------
# T2T-ViT (token layers + timm blocks)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["t2t_vit_t_14", "t2t_vit_7"])
def test_t2t_swap(name):
    dtype = torch.float64 if name == "t2t_vit_t_14" else torch.float32  # TokenPerformer's features are float32
    model = tiny_t2t(name).to(dtype)
    x = images(dtype)
    families = [t2t_vit.FAMILY, timm_vit.FAMILY]
    assert list(adapters.candidates(model, families)) == ["t2t1", "t2t2", "block0", "block1"]
    assert list(t2t_vit.candidates(model)) == ["t2t1", "t2t2"]
    with torch.no_grad():
        ref = model(x)
        rec = Counter()
        ws = adapters.swap(model, rec, families=families)
        out = model(x)
    if name == "t2t_vit_t_14":  # TokenAttention: exact reproduces the model
        _close(out, ref)
        assert ws["t2t1"].scale == pytest.approx(147 ** -0.5)
    else:  # TokenPerformer's own attention is a random-feature estimate: exact differs, scale 1
        assert ws["t2t1"].scale == 1.0
    assert [c[0] for c in rec.calls] == [64, 16, 5, 5]  # 8x8, 4x4 tokens, then 2x2 + class token
    with pytest.raises(ValueError, match="candidates: \\['t2t1', 't2t2'\\]"):
        t2t_vit.swap(tiny_t2t(name), layers=["block0"])


# --------------------------------------------------------------------------------------------
# BigGAN
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def test_biggan_swap_capture_and_errors():
    from pytorch_pretrained_biggan.utils import truncated_noise_sample

    from attnbench.tasks.biggan import tiny_biggan

    z = torch.from_numpy(truncated_noise_sample(2, 16, 0.4, seed=1))
    y = torch.eye(10)[:2]
    model = tiny_biggan(3)
    ref = model(z, y, 0.4)
    assert list(biggan_adapter.candidates(model)) == ["attn"]
    rec = Counter()
    ws = biggan_adapter.swap(model, rec)
    caps = adapters.capture(ws, lambda: model(z, y, 0.4))
    assert (model(z, y, 0.4) - ref).abs().max() < 1e-5
    assert rec.calls[0] == (1024, 256, False, 1.0) and len(rec.calls) == 2
    c = caps["attn"]
    assert (c.q.shape, c.k.shape, c.v.shape, c.out.shape) == ((2, 1, 1024, 4), (2, 1, 256, 4), (2, 1, 256, 16),
                                                              (2, 1, 1024, 16))
    with pytest.raises(ValueError, match="candidates: \\['attn'\\]"):
        biggan_adapter.swap(tiny_biggan(3), layers=["attn2"])


# --------------------------------------------------------------------------------------------
# Hugging Face
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_hf_decoder_exact_swap_every_other_layer(dtype):
    model = tiny_llama().to(dtype)
    ids = token_ids()
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        assert hf.candidates(model) == {f"layer{i}": f"model.layers.{i}.self_attn" for i in range(4)}
        rec = Counter()
        ws = hf.swap(model, rec, layers="every:2")
        out = model(input_ids=ids).logits
        assert list(ws) == ["layer0", "layer2"]
        assert rec.calls == [(12, 12, True, pytest.approx(8 ** -0.5))] * 2  # causal, one call per swapped layer
        _close(out, ref)
        adapters.set_exact(ws)  # methods.exact in the same layers
        _close(model(input_ids=ids).logits, ref)
        assert len(rec.calls) == 2
        hf.set_native(model, True)  # HF's own SDPA everywhere
        torch.testing.assert_close(model(input_ids=ids).logits, ref, rtol=0, atol=0)
        hf.set_native(model, False)
        adapters.set_exact(ws, False)
        model(input_ids=ids)
        assert len(rec.calls) == 4
        hf.unswap(model)
        assert model.config._attn_implementation == "sdpa" and not adapters.wrappers(model)
        torch.testing.assert_close(model(input_ids=ids).logits, ref, rtol=0, atol=0)


@torch.no_grad()
def test_hf_decoding_with_cache_and_capture():
    model = tiny_llama()
    ids = token_ids(10)
    ref = model.generate(ids, max_new_tokens=4, do_sample=False)
    rec = Counter()
    ws = hf.swap(model, rec, layers=[1])
    caps = adapters.capture(ws, lambda: model(input_ids=ids))
    c = caps["layer1"]
    assert c.q.shape == c.k.shape == c.v.shape == (2, 4, 10, 8) and c.causal  # 2 KV heads expanded to 4
    assert torch.equal(model.generate(ids, max_new_tokens=4, do_sample=False), ref)
    assert (1, 11, False, pytest.approx(8 ** -0.5)) in rec.calls  # a decoding step sees the whole cache
    with pytest.raises(NotImplementedError, match="attention mask"):
        mask = torch.ones_like(ids)
        mask[0, :2] = 0
        model(input_ids=ids, attention_mask=mask)
    with pytest.raises(ValueError, match="candidates: \\['layer0', 'layer1'"):
        hf.swap(model, layers=[9])


@torch.no_grad()
def test_hf_capture_without_swap_matches_the_layer():
    model = tiny_llama()
    ids = token_ids()
    ref = model(input_ids=ids).logits
    caps = hf.capture(model, [0, 3], lambda: model(input_ids=ids))
    assert list(caps) == ["layer0", "layer3"]
    assert model.config._attn_implementation == "sdpa" and not adapters.wrappers(model)  # left as it was
    c = caps["layer3"]
    assert c.q.shape == c.k.shape == (2, 4, 12, 8) and c.scale == pytest.approx(8 ** -0.5)
    torch.testing.assert_close(dense_attention(c.q, c.k, c.v, causal=True, scale=c.scale), c.out)
    torch.testing.assert_close(model(input_ids=ids).logits, ref, rtol=0, atol=0)


@torch.no_grad()
def test_hf_encoder_is_bidirectional():
    model = tiny_bert()
    ids = token_ids()
    ref = model(input_ids=ids).last_hidden_state
    assert hf.candidates(model) == {"layer0": "encoder.layer.0.attention.self", "layer1": "encoder.layer.1.attention.self"}
    rec = Counter()
    ws = hf.swap(model, rec)
    _close(model(input_ids=ids).last_hidden_state, ref)
    assert [c[2] for c in rec.calls] == [False, False]
    caps = adapters.capture(ws, lambda: model(input_ids=ids))
    assert caps["layer0"].q.shape == (2, 4, 12, 8) and not caps["layer0"].causal


def test_hf_swap_needs_hf_attention():
    with pytest.raises(ValueError, match="no Hugging Face attention module"):
        hf.swap(torch.nn.Linear(2, 2), methods.build("exact"))
