"""Tests for methods/wildcat.py and its Triton kernel (CPU; the kernel in the interpreter)."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import rel_err
from methods import build
from methods.exact import dense_attention
from methods.wildcat import (
    WildCat,
    compress_bins,
    compress_kv_cache,
    decode_weighted,
    kernel_temperature,
    lambert_w,
    rp_cholesky,
    weighted_attention,
    with_weight_channel,
)
from tasks.sources import make_qkv

ROOT = Path(__file__).resolve().parent.parent


def qkv(source="gaussian", n=256, seed=0, heads=2, d=32, **cfg):
    out = make_qkv({"source": source, "batch": 1, "heads": heads, "head_dim": d, **cfg}, n, seed,
                   torch.device("cpu"), torch.float32)
    return out["q"], out["k"], out["v"]


def run(method, q, k, v, seed=0, **kw):
    method.reseed(seed)
    return method(q, k, v, **kw)


# --------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("block", [1, 8])
@pytest.mark.parametrize("num_bins", [1, 4])
def test_full_budget_is_exact(block, num_bins):
    q, k, v = qkv(n=200)
    exact = dense_attention(q.double(), k.double(), v.double())
    out = run(WildCat(r=200, num_bins=num_bins, block=block), q, k, v)
    assert rel_err(out, exact) < 1e-5


def test_cross_attention_and_fraction_budget_exact():
    q, _, _ = qkv(n=96, seed=1)
    _, k, v = qkv(n=160, seed=2)
    exact = dense_attention(q.double(), k.double(), v.double())
    m = WildCat(r=1.0)  # a fraction of n: all of it
    out = run(m, q, k, v)
    assert out.shape == (1, 2, 96, 32)
    assert rel_err(out, exact) < 1e-5
    assert m.extra_stats()["coreset_size"] == 160


def test_remainder_bin_counts_and_is_exact_when_small():
    # n = 103 with 4 bins: 4 bins of 25 keys (r 100 -> 25 per bin, exact) + a leftover bin of 3 keys
    q, k, v = qkv(n=103)
    m = WildCat(r=100, num_bins=4)
    out = run(m, q, k, v)
    assert m.extra_stats()["coreset_size"] == 103
    assert rel_err(out, dense_attention(q.double(), k.double(), v.double())) < 1e-5


def test_nystrom_weights_match_explicit_formula():
    """Our Ṽ = diag(e^-h_S) U⁻¹ F diag(e^h) V equals the official W = G_SS⁻¹ G_S· ∘ e^(h_j - h_s)."""
    g = torch.Generator().manual_seed(3)
    k = torch.randn(2, 120, 8, generator=g, dtype=torch.float64)
    k = k - k.mean(1, keepdim=True)
    v = torch.randn(2, 120, 5, generator=g, dtype=torch.float64)
    scale = 8 ** -0.5
    ks, vs, w = compress_bins(k, v, 20, scale, None, generator=torch.Generator().manual_seed(0))
    tau = kernel_temperature(scale, k.norm(dim=-1).amax(-1, keepdim=True), k.norm(dim=-1).amax(-1, keepdim=True), 120)
    x = k * (math.sqrt(scale) / tau).unsqueeze(-1)
    xs = ks * (math.sqrt(scale) / tau).unsqueeze(-1)
    gauss = lambda a, b: torch.exp(-torch.cdist(a, b) ** 2 / 2)  # noqa: E731
    W = torch.linalg.solve(gauss(xs, xs), gauss(xs, x))
    W = W * torch.exp((x.square().sum(-1).unsqueeze(1) - xs.square().sum(-1).unsqueeze(2)) / 2)
    assert torch.allclose(vs, W @ v, rtol=1e-6, atol=1e-8)
    assert torch.allclose(w, W.sum(-1), rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------- accuracy vs budget
@pytest.mark.parametrize("source", ["gaussian", "bounded"])
def test_error_falls_with_budget(source):
    errs = {}
    for r in (12, 48, 192):
        e = []
        for seed in range(3):
            q, k, v = qkv(source, n=384, seed=seed, heads=2, d=32)
            exact = dense_attention(q.double(), k.double(), v.double())
            e.append(rel_err(run(WildCat(r=r), q, k, v, seed=seed), exact))
        errs[r] = sum(e) / len(e)
    assert errs[12] > errs[48] > errs[192]
    assert errs[192] < 0.9 * errs[12]


def test_accelerated_matches_plain_accuracy():
    """Accelerated RPCholesky has the pivot distribution of plain RPCholesky: similar mean error."""
    res = {1: [], 16: []}
    for seed in range(4):
        q, k, v = qkv("bounded", n=512, seed=seed, radius=3.0)
        exact = dense_attention(q.double(), k.double(), v.double())
        for b in res:
            res[b].append(rel_err(run(WildCat(r=64, block=b), q, k, v, seed=seed), exact))
    plain, acc = (sum(res[b]) / 4 for b in (1, 16))
    assert abs(plain - acc) < 0.25 * plain


def test_lambert_rule_runs_and_is_accurate():
    q, k, v = qkv("bounded", n=512, seed=0, radius=3.0)
    exact = dense_attention(q.double(), k.double(), v.double())
    e_lam = rel_err(run(WildCat(r=128, temperature="lambert"), q, k, v), exact)
    e_small = rel_err(run(WildCat(r=8, temperature="lambert"), q, k, v), exact)
    assert e_lam < e_small


# --------------------------------------------------------------------------- RPCholesky
@pytest.mark.parametrize("block", [1, 4, 16])
def test_residual_nonnegative_and_pivots_distinct(block):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 300, 6, generator=g) * 0.7
    piv, Fm, d = rp_cholesky(x, 60, torch.Generator().manual_seed(1), block)
    assert piv.shape == (3, 60) and Fm.shape == (3, 60, 300)
    assert bool((d >= 0).all())
    for row in piv:
        assert len(set(row.tolist())) == 60
    # F reproduces G on the pivots exactly and approximates it elsewhere (residual = diag gap)
    G = torch.exp(-torch.cdist(x, x) ** 2 / 2)
    approx = Fm.transpose(1, 2) @ Fm
    res_diag = (G - approx).diagonal(dim1=1, dim2=2)
    assert torch.allclose(res_diag.clamp_min(0), d, atol=1e-4)
    assert torch.allclose(d.gather(1, piv), torch.zeros(3, 60))


def test_exhausted_residual_leaves_empty_pivots():
    # 5 distinct keys repeated: the residual is 0 after 5 pivots; the rest must stay empty, no NaN
    base = torch.randn(1, 5, 4)
    x = base.repeat(1, 20, 1)
    for block in (1, 8):
        piv, Fm, d = rp_cholesky(x, 12, torch.Generator().manual_seed(0), block)
        assert torch.isfinite(Fm).all()
        assert int((Fm.abs().sum(-1) > 0).sum()) == 5
    q = torch.randn(1, 1, 7, 4)
    k = base.repeat(1, 20, 1).unsqueeze(0)
    v = torch.randn(1, 1, 100, 3)
    out = run(WildCat(r=12), q, k, v)
    assert torch.isfinite(out).all()
    assert rel_err(out, dense_attention(q.double(), k.double(), v.double())) < 1e-3


@pytest.mark.parametrize("block", [1, 8])
def test_seeded_sampling_repeats(block):
    q, k, v = qkv(n=300)
    m = WildCat(r=32, block=block)
    a, b = run(m, q, k, v, seed=5), run(m, q, k, v, seed=5)
    c = run(m, q, k, v, seed=6)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    x = torch.randn(2, 300, 8)
    p1 = rp_cholesky(x, 20, torch.Generator().manual_seed(9), block)[0]
    p2 = rp_cholesky(x, 20, torch.Generator().manual_seed(9), block)[0]
    assert torch.equal(p1, p2)


@pytest.mark.parametrize("batch", [1, 3])
def test_many_rejections_still_give_a_valid_factor(batch):
    """Clustered keys make accelerated RPCholesky reject many candidates (many rounds): F stays a
    valid partial Cholesky factor with r distinct pivots, whether rows fill at one rate (B=1,
    written in place) or at different rates (B>1)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, 6, generator=g).mul(2).repeat_interleave(100, 1) + 0.05 * torch.randn(batch, 400, 6, generator=g)
    piv, Fm, d = rp_cholesky(x, 30, torch.Generator().manual_seed(0), 16)
    assert all(len(set(row.tolist())) == 30 for row in piv)
    G = torch.exp(-torch.cdist(x, x) ** 2 / 2)
    assert torch.allclose((G - Fm.transpose(1, 2) @ Fm).diagonal(dim1=1, dim2=2).clamp_min(0), d, atol=1e-4)
    assert torch.allclose(d.gather(1, piv), torch.zeros(batch, 30))


def test_grouped_compression_equals_row_by_row(monkeypatch):
    """With a tiny GROUP_ELEMS the rows are compressed one at a time through a shared workspace:
    the result must equal compressing each row alone with the same random stream."""
    import methods.wildcat as W

    q, k, v = qkv(n=200, heads=3)
    keys, vals = k[0], v[0]  # (3, 200, ·)
    mean = keys.mean(1, keepdim=True)
    qs = q[0].norm(dim=-1).amax(-1, keepdim=True)
    monkeypatch.setattr(W, "GROUP_ELEMS", 1)
    grouped = W.compress_bins(keys, vals, 24, 0.2, qs, block=8, generator=torch.Generator().manual_seed(3),
                              key_mean=mean)
    monkeypatch.setattr(W, "GROUP_ELEMS", 1 << 30)
    g = torch.Generator().manual_seed(3)
    single = [W.compress_bins(keys[i : i + 1], vals[i : i + 1], 24, 0.2, qs[i : i + 1], block=8, generator=g,
                              key_mean=mean[i : i + 1]) for i in range(3)]
    for a, b in zip(grouped, (torch.cat(t, 0) for t in zip(*single))):
        assert torch.equal(a, b)


def test_weighted_attention_independent_of_query_tile():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 37, 8, generator=g), torch.randn(2, 11, 8, generator=g), torch.randn(2, 11, 5, generator=g))
    w = torch.rand(2, 11, generator=g) + 0.1
    vmin, vmax = v.amin(1, keepdim=True), v.amax(1, keepdim=True)
    whole = weighted_attention(q, k, v, w, 0.4, vmin, vmax, tile=10**9)
    for tile in (1, 22, 100):
        torch.testing.assert_close(weighted_attention(q, k, v, w, 0.4, vmin, vmax, tile=tile), whole)


def test_first_pivot_distribution_follows_weighted_diagonal():
    """First pivot ∝ exp(|x_i|²) (residual diagonal is 1): Gumbel-max frequencies match."""
    x = torch.tensor([[[0.0], [0.5], [1.0]]])
    p = torch.exp(x.squeeze(-1).square()[0])
    p = p / p.sum()
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(3)
    for _ in range(3000):
        counts[rp_cholesky(x, 1, g, 1)[0][0, 0]] += 1
    assert torch.allclose(counts / 3000, p, atol=0.03)


def test_lambert_w():
    x = torch.tensor([1e-3, 0.5, 1.0, math.e, 10.0, 1e6], dtype=torch.float64)
    w = lambert_w(x)
    assert torch.allclose(w * torch.exp(w), x, rtol=1e-10)


# --------------------------------------------------------------------------- KV cache
def test_kv_cache_weight_channel_sdpa_equals_weighted_attention():
    g = torch.Generator().manual_seed(0)
    B, H, N, E, D = 1, 2, 300, 16, 16
    k = torch.randn(B, H, N, E, generator=g) + 0.3
    v = torch.randn(B, H, N, D, generator=g)
    q = torch.randn(B, H, 5, E, generator=g)
    scale = E ** -0.5
    c = compress_kv_cache(k, v, scale, compression_ratio=0.75, sink=32, window=32, bin_r=12,
                          generator=torch.Generator().manual_seed(1))
    n_mid = N - 64
    bins = math.floor(n_mid * 0.25) // 12
    assert c.keys.shape == (B, H, 32 + bins * 12 + (N - 32 - bins * (n_mid // bins)), E)
    assert c.values.shape[-1] == D + 1
    assert torch.equal(c.keys[..., :32, :], k[..., :32, :]) and torch.equal(c.keys[..., -32:, :], k[..., -32:, :])
    assert torch.equal(c.values[..., :32, -1], torch.ones(B, H, 32))
    out = decode_weighted(F.scaled_dot_product_attention(q, c.keys, c.values, scale=scale), c.vmin, c.vmax)
    direct = weighted_attention(q.reshape(B * H, 5, E), c.keys.reshape(B * H, -1, E),
                                c.values[..., :D].reshape(B * H, -1, D), c.values[..., D].reshape(B * H, -1),
                                scale, c.vmin.reshape(B * H, 1, D), c.vmax.reshape(B * H, 1, D))
    assert torch.allclose(out, direct.reshape(B, H, 5, D), atol=1e-5)
    # and it approximates exact attention over the full cache
    exact = dense_attention(q.double(), k.double(), v.double(), scale=scale)
    assert rel_err(out, exact) < 0.5
    # decoding step: a new exact token appended with weight 1
    k2 = torch.cat((c.keys, k[..., :1, :]), -2)
    v2 = torch.cat((c.values, with_weight_channel(v[..., :1, :])), -2)
    assert decode_weighted(F.scaled_dot_product_attention(q, k2, v2, scale=scale)).shape == (B, H, 5, D)


def test_kv_cache_too_short_is_uncompressed():
    k, v = torch.randn(1, 1, 70, 8), torch.randn(1, 1, 70, 8)
    q = torch.randn(1, 1, 3, 8)
    c = compress_kv_cache(k, v, 8 ** -0.5)
    assert c.keys.shape[-2] == 70
    out = decode_weighted(F.scaled_dot_product_attention(q, c.keys, c.values), c.vmin, c.vmax)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v), atol=1e-5)
    with pytest.raises(ValueError, match="compression_ratio"):
        compress_kv_cache(k, v, 1.0, compression_ratio=1.5)


def test_compress_contract():
    q, k, v = qkv("bounded", n=256, seed=0)
    m = WildCat(r=64)
    m.reseed(0)
    kc, vc, log_w = m.compress(k, v, 64)
    assert kc.shape == (1, 2, 64, 32) and vc.shape == (1, 2, 64, 32) and log_w.shape == (1, 2, 64)
    approx = torch.softmax(q @ kc.transpose(-1, -2) * 32 ** -0.5 + log_w.unsqueeze(-2), -1) @ vc
    exact = dense_attention(q.double(), k.double(), v.double())
    assert rel_err(approx, exact) < 0.5
    assert "nonpositive_weights" in m.extra_stats()
    kc, vc, log_w = m.compress(k, v, 256)  # full budget: exact, log_w = 0
    approx = torch.softmax(q @ kc.transpose(-1, -2) * 32 ** -0.5 + log_w.unsqueeze(-2), -1) @ vc
    assert rel_err(approx, exact) < 1e-5
    assert torch.allclose(log_w, torch.zeros_like(log_w))


# --------------------------------------------------------------------------- Triton kernel
def test_triton_kernel_matches_pytorch_in_interpreter():
    code = r"""
import torch
from methods.kernels.wildcat import weighted_attention_triton
from methods.wildcat import weighted_attention
torch.manual_seed(0)
for (B, M, R, E, D) in [(3, 70, 45, 20, 24), (2, 64, 32, 64, 64)]:
    q, k, v = torch.randn(B, M, E), torch.randn(B, R, E), torch.randn(B, R, D)
    w = torch.rand(B, R) + 0.1
    w[0, :5] = -1.0                      # signed weights
    q[1, :3] = 0.0; w[1] = 0.0           # zero denominators -> 0 before the clamp
    vmin, vmax = v.amin(1, keepdim=True) * 0.5, v.amax(1, keepdim=True) * 0.5
    a = weighted_attention_triton(q, k, v, w, 0.3, vmin, vmax)
    b = weighted_attention(q, k, v, w, 0.3, vmin, vmax)
    assert a.shape == b.shape, (a.shape, b.shape)
    err = (a - b).abs().max().item()
    assert err < 1e-5, err
print("OK")
"""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]


# --------------------------------------------------------------------------- dtypes, knobs
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(dtype):
    q, k, v = (t.to(dtype) for t in qkv(n=128))
    out = run(WildCat(r=32), q, k, v)
    assert out.dtype == dtype and torch.isfinite(out).all()
    full = run(WildCat(r=128), q, k, v)
    tol = 1e-10 if dtype == torch.float64 else 2e-2
    assert rel_err(full, dense_attention(q.double(), k.double(), v.double())) < tol


@pytest.mark.parametrize(
    "kw",
    [{"r": 0}, {"r": 1.5}, {"r": "big"}, {"num_bins": 0}, {"block": 0}, {"temperature": "x"}, {"rho": -1.0},
     {"use_triton": "yes"}],
)
def test_bad_knobs(kw):
    with pytest.raises(ValueError, match="method\\."):
        WildCat(**kw)


def test_causal_unsupported_and_triton_needs_cuda():
    q, k, v = qkv(n=32)
    with pytest.raises(NotImplementedError):
        WildCat()(q, k, v, causal=True)
    with pytest.raises(ValueError, match="use_triton"):
        WildCat(use_triton=True)(q, k, v)


def test_build_from_yaml_and_stats():
    import yaml

    cfg = yaml.safe_load((ROOT / "conf/method/wildcat.yaml").read_text())
    m = build(cfg)
    assert isinstance(m, WildCat) and m.r == 128 and m.num_bins == 1 and m.block == 32
    q, k, v = qkv(n=512)
    m(q, k, v)
    assert m.extra_stats()["coreset_size"] == 128 and m.extra_stats()["kept_fraction"] == 0.25
    assert set(cfg) - {"name"} == set(m.hparams())


@pytest.mark.slow
def test_smollm2_error_falls_with_budget(tmp_path):
    out = make_qkv({"source": "smollm2", "batch": 1, "cache_dir": str(tmp_path)}, 512, 0, torch.device("cpu"),
                   torch.float32)
    q, k, v = out["q"][:, :4], out["k"][:, :4], out["v"][:, :4]
    exact = dense_attention(q.double(), k.double(), v.double())
    errs = [sum(rel_err(run(WildCat(r=r), q, k, v, seed=s), exact) for s in range(2)) / 2 for r in (16, 64, 256)]
    assert errs[0] > errs[1] > errs[2]
