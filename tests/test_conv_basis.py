"""Tests for methods/conv_basis.py (Conv-Basis, arXiv 2405.05219)."""
from __future__ import annotations

import pytest
import torch

from methods import build
from methods.conv_basis import (
    conv_basis_matrix,
    exp_basis,
    fft_causal_conv,
    next_fast_len,
    qk_entries,
    recover_conv_basis,
)
from methods.exact import dense_attention


def rel(a, b):
    return float((a - b).norm() / b.norm())


def dense_oracle(H):
    """Entries function over a dense (G, n, n) masked score matrix: f(c, r) = H[g, c+r, c]."""
    G, n, _ = H.shape
    g = torch.arange(G)[:, None]

    def f(c, r):
        rows = c[:, None] + r
        valid = rows < n
        vals = H[g, rows.clamp(max=n - 1), c[:, None].expand_as(rows)]
        return vals.masked_fill(~valid, 0.0)

    return f


def planted_starts(gen, G, n, k):
    """k sorted distinct segment starts per head, the first 0 (adjacent starts allowed)."""
    out = []
    for _ in range(G):
        rest = torch.randperm(n - 1, generator=gen)[: k - 1] + 1
        out.append(torch.cat([torch.zeros(1, dtype=torch.long), rest.sort().values]))
    return torch.stack(out)


def relpos_qk(n, starts, gen, *, n_freq=6, dtype=torch.float64):
    """Q (n, D), K (n, D) with q_i·k_j = f_{t(j)}(i - j): rotary-like features plus an ALiBi term, with
    per-segment amplitudes and slopes (t(j) = segment of column j given by ``starts``)."""
    i = torch.arange(n, dtype=dtype)
    w = torch.rand(n_freq, generator=gen, dtype=dtype) * 1.5
    seg = torch.bucketize(i, starts.to(dtype), right=True) - 1  # segment of each column
    amp = torch.randn(len(starts), n_freq, generator=gen, dtype=dtype)
    slope = torch.rand(len(starts), generator=gen, dtype=dtype) * 0.2
    q = torch.cat([torch.cos(i[:, None] * w), torch.sin(i[:, None] * w), i[:, None], torch.ones(n, 1, dtype=dtype)], 1)
    a = amp[seg]
    s = slope[seg][:, None]
    kk = torch.cat([a * torch.cos(i[:, None] * w), a * torch.sin(i[:, None] * w), -s, s * i[:, None]], 1)
    return q, kk


# --- building blocks -------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 7, 37, 64])
def test_fft_conv_equals_dense_toeplitz(n):
    g = torch.Generator().manual_seed(n)
    a = torch.randn(3, n, generator=g, dtype=torch.float64)
    x = torch.randn(3, n, 5, generator=g, dtype=torch.float64)
    i = torch.arange(n)
    T = a[:, (i[:, None] - i[None, :]).clamp(min=0)] * (i[:, None] >= i[None, :])
    torch.testing.assert_close(fft_causal_conv(a, x), T @ x, rtol=1e-10, atol=1e-10)


def test_next_fast_len():
    for n in [1, 2, 7, 97, 1000, 2047, 4097]:
        m = next_fast_len(n)
        assert m >= n
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        assert r == 1
        assert all(not _smooth(x) for x in range(n, m))


def _smooth(x):
    for p in (2, 3, 5):
        while x % p == 0:
            x //= p
    return x == 1


# --- recovery -------------------------------------------------------------------------
@pytest.mark.parametrize("n,k", [(50, 4), (33, 1), (40, 7)])
def test_recovery_returns_planted_basis(n, k):
    g = torch.Generator().manual_seed(n + k)
    G = 4
    starts = planted_starts(g, G, n, k)
    b = torch.randn(G, k, n, generator=g, dtype=torch.float64)
    H = conv_basis_matrix(starts, b)
    s_hat, B_hat, found, overflow = recover_conv_basis(
        dense_oracle(H), n, k + 2, eps=1e-9, T=4, num_heads=G, device="cpu", dtype=torch.float64
    )
    assert found.tolist() == [k] * G and not overflow.any()
    assert torch.equal(s_hat[:, :k], starts) and (s_hat[:, k:] == n).all()
    valid = torch.arange(n) < (n - starts)[..., None]
    torch.testing.assert_close(B_hat[:, :k] * valid, b.cumsum(1) * valid)  # B_j = b_1 + … + b_j
    # the recovered basis reproduces H, and exponentiation inside the basis gives exp(H)∘M
    torch.testing.assert_close(conv_basis_matrix(s_hat, torch.diff(B_hat, dim=1, prepend=torch.zeros_like(B_hat[:, :1]))), H)
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    torch.testing.assert_close(conv_basis_matrix(s_hat, exp_basis(s_hat, B_hat)), torch.exp(H) * mask)


def test_recovery_from_qk_uses_planted_segments():
    n, k = 60, 3
    g = torch.Generator().manual_seed(1)
    starts = torch.tensor([0, 17, 41])
    q, kk = relpos_qk(n, starts, g)
    s_hat, B_hat, found, overflow = recover_conv_basis(
        qk_entries(q[None], kk[None], 0.7), n, k, eps=1e-6, T=8, num_heads=1, device="cpu", dtype=torch.float64
    )
    assert s_hat[0].tolist() == starts.tolist() and found.item() == k and not overflow.any()
    H = (q @ kk.T * 0.7).tril()
    for j, s in enumerate(starts.tolist()):
        torch.testing.assert_close(B_hat[0, j, : n - s], H[s:, s])


def test_overflow_detected_and_fallbacks():
    n, k = 48, 4
    g = torch.Generator().manual_seed(3)
    H = torch.randn(2, n, n, generator=g, dtype=torch.float64).tril()
    for fb, want in [("none", list(range(k))), ("even", [0, 12, 24, 36])]:
        s, B, found, overflow = recover_conv_basis(
            dense_oracle(H), n, k, eps=1e-6, T=4, num_heads=2, device="cpu", dtype=torch.float64, fallback=fb
        )
        assert overflow.all() and found.tolist() == [k, k]
        assert s.tolist() == [want, want]
        for j in range(k):  # each segment is represented by its first column
            torch.testing.assert_close(B[:, j, : n - want[j]], H[:, want[j]:, want[j]])


# --- the method -----------------------------------------------------------------------
@pytest.mark.parametrize("n", [24, 37])
@pytest.mark.parametrize("fallback", ["none", "even"])
def test_k_equal_n_is_exact(n, fallback):
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g, dtype=torch.float64) for _ in range(3))
    m = build({"name": "conv_basis", "k": n, "fallback": fallback})
    torch.testing.assert_close(m(q, k, v, causal=True), dense_attention(q, k, v, causal=True), rtol=1e-9, atol=1e-10)
    assert m.extra_stats()["overflow_head_fraction"] == 0.0
    m32 = build({"name": "conv_basis", "k": 0.999, "fft_dtype": "input"})  # a fraction of n, rounded up to n
    y32 = m32(q.float(), k.float(), v.float(), causal=True)
    assert rel(y32.double(), dense_attention(q, k, v, causal=True)) < 1e-4  # float32 FFT rounding
    m64 = build({"name": "conv_basis", "k": n, "fft_dtype": "float64"})
    assert rel(m64(q.float(), k.float(), v.float(), causal=True).double(), dense_attention(q, k, v, causal=True)) < 2e-6


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-6)])
def test_relative_position_scores_exact_with_k1(dtype, tol):
    n = 100  # not a power of two
    g = torch.Generator().manual_seed(0)
    q, kk = relpos_qk(n, torch.tensor([0]), g)
    v = torch.randn(1, 1, n, 5, generator=g, dtype=torch.float64)
    ref = dense_attention(q[None, None], kk[None, None], v, causal=True, scale=0.5)
    m = build({"name": "conv_basis", "k": 1})
    y = m(q[None, None].to(dtype), kk[None, None].to(dtype), v.to(dtype), causal=True, scale=0.5)
    assert y.dtype == dtype
    assert rel(y.double(), ref) < tol
    st = m.extra_stats()
    assert st["segments_found"] == 1.0 and st["overflow_head_fraction"] == 0.0 and st["clamped_row_fraction"] == 0.0


def test_float64_fft_keeps_small_rows_accurate():
    """q_i·k_j = 5 cos(π(i-j)/20 - π): row 0's only weight is e^-10 of the head's largest (offset 20), and
    float32 FFT rounding, relative to that largest weight, costs it digits; fft_dtype='float64' does not."""
    n, w = 200, torch.pi / 20
    i = torch.arange(n, dtype=torch.float64)
    q = 5 * torch.stack([torch.cos(w * i), torch.sin(w * i)], -1)[None, None]
    kk = torch.stack([torch.cos(w * i + torch.pi), torch.sin(w * i + torch.pi)], -1)[None, None]
    v = torch.randn(1, 1, n, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ref = dense_attention(q, kk, v, causal=True, scale=1.0)
    args = (q.float(), kk.float(), v.float())
    y32 = build({"name": "conv_basis", "k": 1, "fft_dtype": "input"})(*args, causal=True, scale=1.0).double()
    y64 = build({"name": "conv_basis", "k": 1, "fft_dtype": "float64"})(*args, causal=True, scale=1.0).double()
    assert rel(y64, ref) < 2e-6
    assert rel(y32[..., 0, :], ref[..., 0, :]) > 1e-4 > 1e-5 > rel(y64[..., 0, :], ref[..., 0, :])


def test_piecewise_relative_position_exact_per_head():
    """Heads with different planted segments (k=3 and k=1) and one gaussian head in one batch."""
    n = 90
    g = torch.Generator().manual_seed(5)
    q1, k1 = relpos_qk(n, torch.tensor([0, 30, 71]), g)
    q2, k2 = relpos_qk(n, torch.tensor([0]), g)
    q = torch.stack([q1, q2])[None]
    k = torch.stack([k1, k2])[None]
    v = torch.randn(1, 2, n, 6, generator=g, dtype=torch.float64)
    ref = dense_attention(q, k, v, causal=True)
    m = build({"name": "conv_basis", "k": 3})
    y = m(q.float(), k.float(), v.float(), causal=True)
    assert rel(y.double(), ref) < 2e-6
    assert m.extra_stats()["segments_found"] == 2.0  # mean of 3 and 1
    # with k=2 the 3-segment head overflows and is approximate, the other head stays exact
    m2 = build({"name": "conv_basis", "k": 2})
    y2 = m2(q.float(), k.float(), v.float(), causal=True)
    assert m2.extra_stats()["overflow_head_fraction"] == 0.5
    assert rel(y2[:, 1].double(), ref[:, 1]) < 2e-6
    assert rel(y2[:, 0].double(), ref[:, 0]) > 1e-3


def test_error_falls_with_k_on_gaussian_inputs():
    n, errs = 64, {4: [], 16: [], 48: []}
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        q, k, v = (torch.randn(1, 2, n, 8, generator=g, dtype=torch.float64) for _ in range(3))
        ref = dense_attention(q, k, v, causal=True)
        for kk in errs:
            errs[kk].append(rel(build({"name": "conv_basis", "k": kk})(q, k, v, causal=True), ref))
    mean = {kk: sum(e) / len(e) for kk, e in errs.items()}
    assert mean[4] > mean[16] > mean[48]


def test_denominator_guard_counts_underflowing_rows():
    n = 64
    g = torch.Generator().manual_seed(2)
    q = torch.ones(1, 1, n, 1)
    k = torch.randn(1, 1, n, 1, generator=g)
    k[..., :4, :] = -150.0  # rows 0..3 see only scores 150 below the head's maximum: exp underflows in fp32
    v = torch.randn(1, 1, n, 4, generator=g)
    m = build({"name": "conv_basis", "k": n})
    y = m(q, k, v, causal=True, scale=1.0)
    assert torch.isfinite(y).all()
    assert m.extra_stats()["clamped_row_fraction"] == pytest.approx(4 / n)
    ref = dense_attention(q.double(), k.double(), v.double(), causal=True, scale=1.0)
    torch.testing.assert_close(y[..., 4:, :].double(), ref[..., 4:, :], rtol=1e-4, atol=1e-4)


def test_dtypes_shapes_and_repeatability():
    g = torch.Generator().manual_seed(9)
    q, k = (torch.randn(2, 2, 33, 8, generator=g) for _ in range(2))
    v = torch.randn(2, 2, 33, 5, generator=g)
    m = build({"name": "conv_basis", "k": 4})
    y1, y2 = m(q, k, v, causal=True), m(q, k, v, causal=True)
    assert y1.shape == (2, 2, 33, 5) and torch.equal(y1, y2)
    yh = m(q.half(), k.half(), v.half(), causal=True)
    assert yh.dtype == torch.float16 and torch.isfinite(yh).all()
    assert set(m.extra_stats()) == {"segments_found", "segments_used", "overflow_head_fraction", "clamped_row_fraction"}
    assert m.hparams() == {"k": 4, "eps": 1e-3, "T": 8, "fallback": "none", "fft_dtype": "float64"}


def test_bidirectional_and_cross_raise():
    q = torch.randn(1, 1, 8, 4)
    m = build("conv_basis")
    with pytest.raises(NotImplementedError, match="causal"):
        m(q, q, q, causal=False)
    with pytest.raises(NotImplementedError):
        m(q, torch.randn(1, 1, 9, 4), torch.randn(1, 1, 9, 4), causal=False)


@pytest.mark.parametrize(
    "knobs,name",
    [({"k": 0}, "method.k"), ({"k": "a"}, "method.k"), ({"k": 1.5}, "method.k"), ({"k": True}, "method.k"),
     ({"eps": -1.0}, "method.eps"), ({"eps": float("nan")}, "method.eps"), ({"T": 0}, "method.T"),
     ({"T": 2.5}, "method.T"), ({"fallback": "greedy"}, "method.fallback"), ({"fft_dtype": "half"}, "method.fft_dtype")],
)
def test_bad_knobs_raise(knobs, name):
    with pytest.raises(ValueError, match=name):
        build({"name": "conv_basis", **knobs})
