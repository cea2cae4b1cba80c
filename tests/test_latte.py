import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from attnbench import methods
from attnbench.methods.exact import dense_attention
import attnbench.methods.latte as latte_mod
from attnbench.core.measure import cpu_peak_memory_mb
from attnbench.methods.latte import Latte, _row_threshold, quantize_int8, split_hi_lo

ROOT = Path(__file__).resolve().parent.parent


def _qkv(seed, b=2, h=3, nq=40, nk=40, d=16, dv=16, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, nq, d, generator=g, dtype=dtype)
    k = torch.randn(b, h, nk, d, generator=g, dtype=dtype)
    v = torch.randn(b, h, nk, dv, generator=g, dtype=dtype)
    return q, k, v


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_hi_lo_split_reconstructs_int8_exactly():
    x = torch.arange(-127, 128, dtype=torch.float32)
    hi, lo = split_hi_lo(x)
    assert torch.equal(16 * hi + lo, x)
    assert hi.min() == -8 and hi.max() == 7 and lo.min() == 0 and lo.max() == 15
    assert torch.equal(hi, torch.round(hi)) and torch.equal(lo, torch.round(lo))
    q = torch.randn(2, 3, 20, 8, generator=torch.Generator().manual_seed(0)) * 5
    q_int, s = quantize_int8(q)
    assert s.shape == (2, 3, 1, 1)
    assert q_int.abs().max() == 127 and torch.equal(q_int, torch.round(q_int))
    assert (q_int * s - q).abs().max() <= s.max() / 2 + 1e-6


@pytest.mark.parametrize("causal,nq,nk", [(False, 40, 40), (True, 40, 40), (False, 25, 40)])
def test_large_threshold_float_score_equals_exact(causal, nq, nk):
    q, k, v = _qkv(1, nq=nq, nk=nk)
    m = methods.build({"name": "latte", "threshold": 1e9, "score": "float", "chunk_size": 16})
    with torch.no_grad():
        out = m(q, k, v, causal=causal, scale=0.3)
    torch.testing.assert_close(out, dense_attention(q, k, v, causal=causal, scale=0.3), atol=1e-12, rtol=1e-12)
    assert m.extra_stats()["kept_fraction"] == 1.0


@pytest.mark.parametrize("causal", [False, True])
def test_large_threshold_int8_equals_exact_on_dequantised_qk(causal):
    q, k, v = _qkv(2)
    m = methods.build({"name": "latte", "threshold": 1e9, "score": "int8"})
    with torch.no_grad():
        out = m(q, k, v, causal=causal)
    (qi, sq), (ki, sk) = quantize_int8(q), quantize_int8(k)
    ref_deq = dense_attention(qi * sq, ki * sk, v, causal=causal)
    torch.testing.assert_close(out, ref_deq, atol=1e-10, rtol=1e-10)
    assert _rel(out, dense_attention(q, k, v, causal=causal)) < 0.02  # quantisation error only


def test_kept_fraction_monotone_and_error_falls_with_threshold():
    thetas = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 1e9]
    kept = torch.zeros(len(thetas))
    err = torch.zeros(len(thetas))
    for seed in range(4):
        q, k, v = _qkv(10 + seed, nq=48, nk=48)
        q, k = 2 * q, 2 * k  # peaked attention
        ref = dense_attention(q, k, v, causal=True)
        for i, th in enumerate(thetas):
            m = Latte(threshold=th, score="float")
            with torch.no_grad():
                out = m(q, k, v, causal=True)
            kept[i] += m.extra_stats()["kept_fraction"] / 4
            err[i] += _rel(out, ref) / 4
    assert torch.all(kept[1:] >= kept[:-1]) and kept[0] < 0.2 and kept[-1] == 1.0
    assert err[-1] < 1e-12 and err[0] > err[3] > err[5]


def test_chunking_does_not_change_result():
    q, k, v = _qkv(3, nq=50, nk=50)
    outs = []
    for chunk in (7, 50, 512):
        m = Latte(threshold=2.0, chunk_size=chunk)
        with torch.no_grad():
            outs.append(m(q, k, v, causal=True))
    torch.testing.assert_close(outs[0], outs[2], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(outs[1], outs[2], atol=1e-12, rtol=1e-12)


def test_causal_masking_honoured():
    q, k, v = _qkv(4, nq=30, nk=30)
    m = Latte(threshold=3.0)
    with torch.no_grad():
        a = m(q, k, v, causal=True)
        # permuting future keys keeps the per-head int8 scale (max |k|); future values change freely
        k2, v2 = k.clone(), v.clone()
        k2[:, :, 20:] = k[:, :, 20:].flip(2)
        v2[:, :, 20:] += 100
        b = m(q, k2, v2, causal=True)
    torch.testing.assert_close(a[:, :, :20], b[:, :, :20], atol=0, rtol=0)
    with torch.no_grad():
        Latte(threshold=1e9)(q, k, v, causal=True)
    # the first query sees only key 0
    torch.testing.assert_close(a[:, :, 0], v[:, :, 0])


def test_per_head_thresholds_and_stats():
    q, k, v = _qkv(5, h=2)
    m = Latte(heads=2, threshold=0.0)
    with torch.no_grad():
        m.theta.copy_(torch.tensor([0.0, 1e9]))
        m(q, k, v)
    st = m.extra_stats()
    assert st["kept_fraction_h0"] < 0.2 and st["kept_fraction_h1"] == 1.0
    assert abs(st["kept_fraction"] - (st["kept_fraction_h0"] + 1.0) / 2) < 1e-12


def test_lazy_heads_and_mismatch():
    q, k, v = _qkv(6, h=3)
    m = Latte()
    assert m.theta is None
    m(q, k, v)
    assert m.heads == 3 and m.theta.shape == (3,)
    with pytest.raises(ValueError, match="heads"):
        m(*_qkv(6, h=4))


@pytest.mark.parametrize(
    "knobs",
    [{"threshold": -1.0}, {"threshold": float("nan")}, {"score": "fp16"}, {"heads": 0}, {"temperature": 0.0},
     {"chunk_size": 0}, {"backend": "cuda"}, {"thresholds_path": "/nonexistent/latte.pt"}],
)
def test_bad_knobs_raise(knobs):
    with pytest.raises(ValueError, match="method\\."):
        methods.build({"name": "latte", **knobs})


@pytest.fixture(params=["kernel", "kernel-dense", "kernel-sparse", "ops"])
def cpu_impl(request, monkeypatch):
    """The cpu path with its compiled row kernel (tiles dense or sparse by their kept fraction, or all
    of one kind), and without it (PyTorch ops only)."""
    kernel = request.param.startswith("kernel")
    if kernel and latte_mod._rows_kernel() is None:
        pytest.skip("the compiled row kernel cannot be built here (no C++ compiler)")
    monkeypatch.setattr(latte_mod, "CPU_KERNEL", kernel)
    forced = {"kernel-dense": -1.0, "kernel-sparse": 2.0}  # CPU_DENSE below / above every tile's kept fraction
    if request.param in forced:
        monkeypatch.setattr(latte_mod, "CPU_DENSE", forced[request.param])
    return request.param


def _cpu_vs_dense(q, k, v, causal, knobs, theta=None):
    """Outputs and stats of the dense PyTorch path and the CPU path on the same input."""
    outs, stats = [], []
    for backend in ("torch", "cpu"):
        m = Latte(backend=backend, **knobs)
        with torch.no_grad():
            if theta is not None:
                m(q[:, :, :1], k[:, :, :1], v[:, :, :1])  # size θ, then set it per head
                m.theta.copy_(theta)
            outs.append(m(q, k, v, causal=causal))
        stats.append(m.extra_stats())
    return outs, stats


@pytest.mark.parametrize("score", ["int8", "float"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("causal,nq,nk", [(True, 300, 300), (False, 300, 300), (False, 37, 530), (True, 9, 9)])
def test_cpu_path_keeps_the_same_keys_and_matches_the_dense_path(cpu_impl, score, dtype, causal, nq, nk):
    # several tiles (chunk_size 48), key groups of 256 with padding, batch 2 with per-head θ
    d = 16
    q, k, v = _qkv(20, b=2, h=3, nq=nq, nk=nk, d=d, dv=8, dtype=dtype)
    q, k = 2 * q, 2 * k  # peaked rows, so that thresholds bite
    scale = d ** -0.5
    eps = torch.finfo(dtype).eps
    for theta in (torch.tensor([0.0, 1.5, 5.0]), torch.tensor([1e9, 3.0, 0.25])):
        (dense, cpu), (st_dense, st_cpu) = _cpu_vs_dense(q, k, v, causal, {"score": score, "chunk_size": 48}, theta)
        assert st_cpu == st_dense  # identical kept counts, per head
        # the same kept scores up to: summation order (numerator and denominator, <= nk terms each)
        # and, for float scores, the products' rounding (<= d·eps·|q|·|k|·scale per score, doubled by softmax)
        ds = d * eps * float(q.norm(dim=-1).max() * k.norm(dim=-1).max()) * scale if score == "float" else 0.0
        tol = (2 * nk * eps + 2 * ds) * float(v.abs().max())
        torch.testing.assert_close(cpu, dense, atol=tol, rtol=0)


def test_cpu_path_thresholds_exactly_on_an_estimate(cpu_impl):
    # θ_h = ŝ_top - ŝ_j in float32 for a row's top and another of its estimates: that key sits on the boundary
    q, k, v = _qkv(25, b=1, h=2, nq=64, nk=64, d=16, dtype=torch.float32)
    q, k = 2 * q, 2 * k
    scale = 0.25
    (qi, sq), (ki, sk) = quantize_int8(q), quantize_int8(k)
    hh = split_hi_lo(qi)[0] @ split_hi_lo(ki)[0].transpose(-2, -1)
    c = sq * sk * scale
    est = (256 * hh) * c
    row = est[0, :, 10]
    top = row.amax(-1)
    second = torch.where(row < top[:, None], row, -float("inf")).amax(-1)
    theta = (top - second).flatten()
    for backend_theta in (theta, torch.nextafter(theta, theta + 1), torch.nextafter(theta, theta - 1)):
        _, (st_dense, st_cpu) = _cpu_vs_dense(q, k, v, False, {"score": "int8"}, backend_theta)
        assert st_cpu == st_dense


def test_cpu_path_takes_strided_inputs(cpu_impl):
    g = torch.Generator().manual_seed(24)
    q, k, v = (torch.randn(2, 70, 3, 16, generator=g).transpose(1, 2) for _ in range(3))  # (B, N, H, D) memory
    m = Latte(backend="cpu", threshold=2.0)
    with torch.no_grad():
        assert torch.equal(m(q, k, v, causal=True), m(q.contiguous(), k.contiguous(), v.contiguous(), causal=True))


def test_row_threshold_is_the_dense_float_test():
    # t is the smallest integer estimate passing the dense path's test, in its float order of operations
    g = torch.Generator().manual_seed(0)
    lowest = -(64 * 16 + 2)
    for dtype in (torch.float32, torch.float64):
        rows = 400
        top = torch.randint(-300, 300, (rows,), generator=g)
        c = (torch.rand(rows, generator=g, dtype=torch.float64) * 1e-2 + 1e-5).to(dtype)
        est = lambda x, c: (256 * x.to(dtype)) * c  # noqa: E731
        h = top - torch.randint(0, 200, (rows,), generator=g)
        theta = est(top, c) - est(h, c)  # the boundary exactly on an integer ...
        nudge = torch.tensor([-1.0, 0.0, 1.0], dtype=dtype)[torch.randint(0, 3, (rows,), generator=g)]
        theta = torch.nextafter(theta, theta + nudge).clamp_min(0)  # ... or one ulp either side
        theta[:20] = torch.rand(20, generator=g, dtype=torch.float64).to(dtype) * 10
        theta[20:25] = 1e9  # every key kept
        t = _row_threshold(top, c, theta, lowest).long()
        grid = torch.arange(lowest - 2, 301)[None, :]
        passes = (est(grid, c[:, None]) - est(top, c)[:, None]) >= -theta[:, None]
        brute = torch.where(passes, grid, 10**6).amin(1)
        # below lowest every possible estimate passes: there only t <= lowest matters
        assert torch.equal(t.clamp_min(lowest), brute.clamp_min(lowest))
        assert bool((t <= top).all())


def test_cpu_backend_contract_and_auto_choice():
    q, k, v = _qkv(21, dtype=torch.float32)
    m = Latte(backend="cpu", threshold=2.0, heads=3)
    with pytest.raises(ValueError, match="method.backend='cpu' is forward-only"):
        m(q, k, v)  # θ requires grad and grad is on: training, which only the torch path does
    with torch.no_grad():
        ref = m(q, k, v, causal=True)
        auto = Latte(threshold=2.0, heads=3)
        assert torch.equal(auto(q, k, v, causal=True), ref) and auto.soft_kept is None
    auto(q, k, v, causal=True)  # grad on: the differentiable path, with its surrogate
    assert auto.soft_kept is not None


def test_cpu_path_without_int_mm_gives_the_same_output(monkeypatch):
    q, k, v = _qkv(22, nq=70, nk=70, dtype=torch.float32)
    with torch.no_grad():
        a = Latte(backend="cpu", threshold=2.0)(q, k, v, causal=True)
        monkeypatch.setattr(latte_mod, "_INT_MM", False)  # as where torch._int_mm is missing: float products
        b = Latte(backend="cpu", threshold=2.0)(q, k, v, causal=True)
    torch.testing.assert_close(a, b, atol=2 * 70 * torch.finfo(torch.float32).eps * float(v.abs().max()), rtol=0)


@pytest.mark.parametrize("threshold", [5.0, 1e9])
def test_cpu_path_memory_is_linear_in_chunk_times_n(cpu_impl, threshold):
    # the inputs' quantised copies (a few B·H·n·d) plus one tile: chunk_size·n int32 estimates and, when
    # every key is kept, its pairs (index, score, weight: < 96 bytes each); never an n×n matrix per head
    b, h, n, d, chunk = 1, 2, 2048, 16, 32
    q, k, v = _qkv(23, b=b, h=h, nq=n, nk=n, d=d, dv=d, dtype=torch.float32)
    m = Latte(backend="cpu", threshold=threshold, chunk_size=chunk)
    with torch.no_grad():
        m(q, k, v, causal=True)
        _, peak_mb = cpu_peak_memory_mb(lambda: m(q, k, v, causal=True))
    n_pad = -(-n // 256) * 256
    bound = 6 * b * h * n * 2 * d * 4 + 96 * chunk * n_pad
    assert peak_mb * 2**20 <= bound < 4 * b * h * n * n  # below one float n×n score matrix per head


def test_triton_backend_on_cpu_without_interpreter_raises():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("interpreter enabled")
    with pytest.raises(ValueError, match="backend"):
        with torch.no_grad():
            Latte(backend="triton")(*_qkv(0, dtype=torch.float32))


def test_deterministic_dtypes_and_shapes():
    q, k, v = _qkv(7, nq=20, nk=33, dv=24, dtype=torch.float32)
    m = methods.build("latte")
    m.reseed(3)
    a = m(q, k, v)
    m.reseed(3)
    b = m(q, k, v)
    assert torch.equal(a, b) and a.shape == (2, 3, 20, 24) and a.dtype == torch.float32
    assert m(q.half(), k.half(), v.half()).dtype == torch.float16
    assert m(q.double(), k.double(), v.double()).dtype == torch.float64


def test_gradients_reach_theta():
    q, k, v = _qkv(8, dtype=torch.float32)
    q.requires_grad_(True)
    m = Latte(threshold=2.0, heads=3)
    out = m(q, k, v, causal=True)
    assert m.soft_kept is not None and abs(float(m.soft_kept.detach()) - m.extra_stats()["kept_fraction"]) < 1e-5
    (out.square().sum() + m.soft_kept).backward()
    assert m.theta.grad is not None and torch.all(m.theta.grad != 0) and q.grad.abs().sum() > 0
    m.theta.grad = None
    m(q, k, v, causal=True)
    m.soft_kept.backward()
    assert torch.all(m.theta.grad > 0)  # raising θ keeps more keys


def test_save_load_thresholds(tmp_path):
    path = tmp_path / "th.pt"
    torch.save({"blocks.0.attn": torch.tensor([1.0, 2.0]), "blocks.1.attn": torch.tensor([3.0, 4.0])}, path)
    m = methods.build({"name": "latte", "thresholds_path": str(path), "threshold_layer": "blocks.1.attn"})
    assert m.heads == 2 and torch.equal(m.theta.detach(), torch.tensor([3.0, 4.0]))
    several = Latte(thresholds_path=str(path))  # a task may still pick the entry per layer; a call may not
    with pytest.raises(ValueError, match="threshold_layer must name one of"):
        several(*(torch.randn(1, 2, 8, 4) for _ in range(3)))
    with pytest.raises(ValueError, match="heads"):
        Latte(thresholds_path=str(path), threshold_layer="blocks.0.attn", heads=3)


def _tiny_vit():
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             num_classes=4).eval()


def test_training_lowers_kept_fraction_at_bounded_loss_increase(tmp_path):
    from attnbench.runners import train_thresholds as tt

    model = _tiny_vit()
    with torch.no_grad():  # a random ViT attends almost uniformly; sharpen it so filtering matters
        for blk in model.blocks:
            blk.attn.qkv.weight.mul_(4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 32, 32, generator=g)
    with torch.no_grad():
        y = model(x).argmax(-1)  # the exact model's own predictions as labels
    batches = [(x, y)]
    ms = tt.patch_timm(model, lambda name, heads: Latte(threshold=6.0, heads=heads, score="float"))
    tt.set_exact_timm(model, True)
    with torch.no_grad():
        loss_exact = float(tt._vit_loss(model, batches[0]))
    tt.set_exact_timm(model, False)
    with torch.no_grad():
        loss0 = float(tt._vit_loss(model, batches[0]))
        kept0 = tt.mean_kept(ms, soft=False)
    assert abs(loss0 - loss_exact) < 0.05
    tt.train(model, ms, batches, tt._vit_loss, lam=1.0, steps=6, lr=0.5, log=lambda s: None)
    with torch.no_grad():
        loss1 = float(tt._vit_loss(model, batches[0]))
        kept1 = tt.mean_kept(ms, soft=False)
    assert kept1 < kept0 - 0.1
    assert loss1 < loss_exact + 0.5
    assert all(not p.requires_grad for p in model.parameters())
    path = tmp_path / "vit.pt"
    tt.save_thresholds(ms, path)
    other = tt.patch_timm(_tiny_vit(), lambda name, heads: Latte(heads=heads))
    tt.load_thresholds(other, path)
    for name in ms:
        assert torch.equal(other[name].theta.detach(), ms[name].theta.detach())


def test_vit_cli_on_generated_imagefolder(tmp_path):
    from PIL import Image

    from attnbench.runners import train_thresholds as tt

    g = torch.Generator().manual_seed(0)
    for c in range(2):
        (tmp_path / "data" / f"class{c}").mkdir(parents=True)
        for i in range(6):
            arr = (torch.rand(40, 40, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(arr).save(tmp_path / "data" / f"class{c}" / f"{i}.png")
    rows = tt.main([
        "vit", "--model", "vit_tiny_patch16_224",
        "--model-kwargs", json.dumps({"img_size": 32, "patch_size": 8, "depth": 2, "num_classes": 2}),
        "--data", str(tmp_path / "data"), "--lambdas", "1.0", "--steps", "3", "--batch-size", "4",
        "--train-images", "8", "--eval-images", "4", "--out-dir", str(tmp_path / "th"),
        "--table", str(tmp_path / "t.md"),
    ])
    assert len(rows) == 2 and rows[1]["kept_fraction"] <= rows[0]["kept_fraction"]
    table = torch.load(tmp_path / "th" / "vit_tiny_patch16_224_lambda1.pt")
    assert sorted(table) == ["blocks.0.attn", "blocks.1.attn"] and table["blocks.0.attn"].shape == (3,)
    assert "| lambda |" in (tmp_path / "t.md").read_text()


def test_hf_patch_matches_sdpa_at_large_threshold():
    from transformers import LlamaConfig, LlamaForCausalLM

    from attnbench.runners import train_thresholds as tt

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        ms = tt.patch_hf(model, lambda name, heads: Latte(threshold=1e9, heads=heads, score="float"))
        out = model(input_ids=ids).logits
        assert sorted(ms) == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        for m in ms.values():
            m.theta.fill_(0.0)
        low = model(input_ids=ids).logits
        assert tt.mean_kept(ms, soft=False) < 0.9 and not torch.allclose(low, ref, atol=1e-3)
        tt.set_exact(model, True)
        torch.testing.assert_close(model(input_ids=ids).logits, ref)


_KERNEL_SCRIPT = textwrap.dedent(
    """
    import torch
    from attnbench.methods.latte import Latte
    torch.manual_seed(0)
    worst, kept_diff = 0.0, 0.0
    for nq, nk, d, causal, score, th in [(50, 50, 16, True, "int8", 1.0), (37, 70, 24, False, "float", 2.0),
                                         (40, 40, 16, True, "float", 1e9), (33, 33, 8, False, "int8", 0.0)]:
        q, k, v = torch.randn(1, 2, nq, d), torch.randn(1, 2, nk, d), torch.randn(1, 2, nk, 12)
        a, b = Latte(threshold=th, score=score, backend="torch"), Latte(threshold=th, score=score, backend="triton")
        with torch.no_grad():
            oa, ob = a(q, k, v, causal=causal), b(q, k, v, causal=causal)
        worst = max(worst, float((oa - ob).abs().max()))
        kept_diff = max(kept_diff, abs(a.extra_stats()["kept_fraction"] - b.extra_stats()["kept_fraction"]))
        assert "skipped_block_fraction" in b.extra_stats()
    print("RESULT", worst, kept_diff)
    """
)


def test_triton_kernel_matches_torch_in_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _KERNEL_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
    worst, kept_diff = map(float, line.split()[1:])
    assert worst < 1e-5 and kept_diff == 0.0


@pytest.mark.slow
def test_smollm2_patch_exact_at_large_threshold():
    from attnbench.runners import train_thresholds as tt

    model, tok = tt.load_smollm2()
    ids = tok("def add(a, b):\n    return a + b\n\nprint(add(1, 2))", return_tensors="pt").input_ids[:, :32]
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        tt.patch_hf(model, lambda name, heads: Latte(threshold=1e9, heads=heads, score="float"))
        out = model(input_ids=ids).logits
    torch.testing.assert_close(out, ref, atol=2e-3, rtol=2e-3)
