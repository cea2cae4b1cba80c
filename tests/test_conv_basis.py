"""Tests for methods/conv_basis.py (Conv-Basis, arXiv 2405.05219)."""
from __future__ import annotations

import math

import pytest
import torch

import attnbench.methods.conv_basis as cb
from attnbench.methods import build
from attnbench.methods.conv_basis import (
    conv_basis_matrix,
    exp_basis,
    fft_causal_conv,
    next_fast_len,
    qk_entries,
    recover_conv_basis,
    segment_product,
)
from attnbench.methods.exact import dense_attention


def rel(a, b):
    return float((a - b).norm() / b.norm())


def dense_oracle(H):
    """Entries function over a dense (G, n, n) masked score matrix: f(c, r) = H[g, c+r, c], for c (G,) or (G, P)."""
    G, n, _ = H.shape

    def f(c, r):
        cc = c[..., None]  # (G, 1) or (G, P, 1)
        rows = cc + (r if c.dim() == 1 else r[:, None, :])
        valid = rows < n
        g = torch.arange(G).view(-1, *[1] * (rows.dim() - 1))
        vals = H[g, rows.clamp(max=n - 1), cc.expand_as(rows)]
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


def segment_matrix(starts, W):
    """Dense (G, n, n) matrix of the segment-disjoint form: M[g, i, c] = W[g, j(c), i - c] for i >= c."""
    G, k, n = W.shape
    i = torch.arange(n)
    seg = torch.searchsorted(starts, i.expand(G, n).contiguous(), right=True) - 1  # (G, n) segment of column c
    diff = (i[:, None] - i[None, :]).clamp(min=0)
    M = W[torch.arange(G)[:, None, None], seg[:, None, :], diff[None]]
    return M * (i[:, None] >= i[None, :])


def random_segments(gen, G, n, k, n_used):
    """k starts per head, ascending, s_0 = 0, the first n_used real (mixed short and long segments), the rest n."""
    out = []
    for _ in range(G):
        rest = (torch.randperm(n - 1, generator=gen)[: n_used - 1] + 1).sort().values
        real = torch.cat([torch.zeros(1, dtype=torch.long), rest])
        out.append(torch.cat([real, torch.full((k - n_used,), n, dtype=torch.long)]))
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n,k,n_used", [(1, 1, 1), (5, 3, 2), (70, 6, 6), (97, 9, 4), (200, 16, 16), (300, 5, 3)])
@pytest.mark.parametrize("direct_max_len", [0, 3, 32, None])
def test_segment_product_equals_dense_form(dtype, n, k, n_used, direct_max_len):
    """The direct / FFT split (any threshold, unused slots, short and long segments) equals the dense formula
    out[i] = Σ_{c<=i} W_{j(c)}[i - c] x[c], within rounding: FFT error ~ eps·log2(N)·max|W|·Σ|x|."""
    g = torch.Generator().manual_seed(n * 31 + k)
    G, ch = 3, 5
    starts = random_segments(g, G, n, k, n_used)
    valid = torch.arange(n) < (n - starts)[..., None]
    decay = torch.exp(-3 * torch.rand(G, k, 1, generator=g, dtype=torch.float64))  # terms of different sizes
    W = torch.rand(G, k, n, generator=g, dtype=torch.float64) * decay * valid
    x = torch.randn(G, ch, n, generator=g, dtype=torch.float64)
    M = segment_matrix(starts, W)
    ref = (M @ x.transpose(1, 2)).transpose(1, 2)
    out = segment_product(starts, W.to(dtype), x.to(dtype), direct_max_len=direct_max_len)
    assert out.shape == (G, ch, n) and out.dtype == dtype
    scale = (M.abs() @ x.abs().transpose(1, 2)).max()
    tol = 20 * torch.finfo(dtype).eps * max(1.0, math.log2(2 * n)) * float(scale)
    assert float((out.double() - ref).abs().max()) <= tol
    # a float32, transposed x with the ones channel appended (the method's call): the last channel is M·1
    xt = x.transpose(1, 2).float().contiguous().transpose(1, 2)
    out1 = segment_product(starts, W.to(dtype), xt, direct_max_len=direct_max_len, ones=True)
    assert out1.shape == (G, ch + 1, n) and out1.dtype == dtype
    ref1 = torch.cat([(M @ xt.double().transpose(1, 2)).transpose(1, 2), M.sum(-1)[:, None]], dim=1)
    assert float((out1.double() - ref1).abs().max()) <= tol + 20 * torch.finfo(dtype).eps * float(M.sum(-1).max())


def test_direct_and_fft_paths_agree_in_the_method(monkeypatch):
    """The whole method with every segment by FFT (the former evaluation) and with the default split agree
    to float64 rounding; gaussian inputs give k-1 one-column segments (direct) and one long one (FFT)."""
    n = 300
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(1, 4, n, 16, generator=g) for _ in range(3))
    m = build({"name": "conv_basis", "k": 8})
    y = m(q, k, v, causal=True).double()
    monkeypatch.setattr(cb, "DIRECT_MAX_LEN", 0)
    y_fft = m(q, k, v, causal=True).double()
    assert rel(y, y_fft) < 1e-6  # float32 outputs of two float64 evaluations
    # and both equal the paper's form: dense Σ_j conv(b'_j, m_j) with b'_j the differences of exp(B_j - c)
    starts, B, _, _ = recover_conv_basis(qk_entries(q[0], k[0], 16 ** -0.5), n, 8, eps=1e-3, T=8, num_heads=4,
                                         device="cpu", dtype=torch.float32)
    valid = torch.arange(n) < (n - starts)[..., None]
    shift = B.masked_fill(~valid, float("-inf")).amax(dim=(1, 2))
    A = conv_basis_matrix(starts, exp_basis(starts, B.double(), shift.double()))
    num, den = A @ v[0].double(), A.sum(-1, keepdim=True)
    assert rel(y[0], num / den) < 1e-6


def test_blocked_evaluation_matches_one_block(monkeypatch):
    """Blocks of one head and one channel, and one-row chunks of the direct part, give the same output
    and statistics as one block (float64 inputs: equal to rounding)."""
    n = 400
    g = torch.Generator().manual_seed(12)
    q, k, v = (torch.randn(2, 2, n, 8, generator=g, dtype=torch.float64) for _ in range(3))
    k[:, 1] = 0  # constant scores in two heads: one segment (FFT); gaussian heads: one-column ones (direct) too
    for fallback in ("none", "even"):  # 'even': six segments of ~67 columns, all by FFT
        m = build({"name": "conv_basis", "k": 6, "fallback": fallback})
        with monkeypatch.context() as mp:
            y, st = m(q, k, v, causal=True), m.extra_stats()
            mp.setattr(cb, "SCORE_TILE_ELEMS", 1)
            yb = m(q, k, v, causal=True)
        assert rel(yb, y) < 1e-13 and m.extra_stats() == st
        assert rel(y[:, 1], dense_attention(q, k, v, causal=True)[:, 1]) < 1e-13


def test_gradients_match_dense_attention_where_exact():
    """Autograd through the recovery's columns, the direct part (k = n: one-column segments, exact in q, k
    and v) and the FFT part (k = 1 on relative-position scores: exact in v)."""
    def grads(fn, *ts):
        ts = [t.clone().requires_grad_(True) for t in ts]
        fn(*ts).square().sum().backward()
        return [t.grad for t in ts]

    n = 40
    g = torch.Generator().manual_seed(13)
    q, k, v = (torch.randn(1, 2, n, 4, generator=g, dtype=torch.float64) for _ in range(3))
    m = build({"name": "conv_basis", "k": n})
    for a, b in zip(grads(lambda *t: m(*t, causal=True), q, k, v), grads(lambda *t: dense_attention(*t, causal=True), q, k, v)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    qr, kr = relpos_qk(n, torch.tensor([0]), g)
    m1 = build({"name": "conv_basis", "k": 1})
    gv = grads(lambda t: m1(qr[None, None], kr[None, None], t, causal=True, scale=0.5), v[:, :1])[0]
    gv_ref = grads(lambda t: dense_attention(qr[None, None], kr[None, None], t, causal=True, scale=0.5), v[:, :1])[0]
    torch.testing.assert_close(gv, gv_ref, rtol=1e-9, atol=1e-11)


def plain_binary_search_starts(entries, n, k, eps, T, G):
    """The recovery's search with one probe per head and step (the former loop), for comparison."""
    log_steps = max(1, math.ceil(math.log2(n + 1)) + 1)
    offs = torch.arange(T).expand(G, T)
    cur = torch.zeros(G, dtype=torch.long)
    active = torch.ones(G, dtype=torch.bool)
    starts = [cur.clone()]
    for _ in range(1, k):
        pred = entries(cur, torch.arange(n).expand(G, n))[:, :T]  # as the recovery: from the full column
        lo, hi = cur.clone(), torch.full_like(cur, n)
        for _ in range(log_steps):
            go = active & (hi - lo > 1)
            if not bool(go.any()):
                break
            mid = torch.where(go, (lo + hi) // 2, lo)
            vals = entries(mid, offs)
            match = (((vals - pred).abs() <= eps) | (offs >= (n - mid)[:, None])).all(dim=1)
            lo = torch.where(go & match, mid, lo)
            hi = torch.where(go & ~match, mid, hi)
        new = active & (hi < n)
        starts.append(torch.where(new, hi, torch.full_like(hi, n)))
        cur = torch.where(new, hi, cur)
        active = new
    return torch.stack(starts, 1)


@pytest.mark.parametrize("levels", [1, 2, 5, 64])
@pytest.mark.parametrize("n,scale", [(1, 1.0), (2, 1.0), (63, 1.0), (200, 1.0), (200, 0.01), (513, 0.05)])
def test_batched_binary_search_follows_the_plain_search(monkeypatch, levels, n, scale):
    """Resolving several search steps per probe batch gives exactly the starts of one probe per step
    (gaussian scores: non-monotone matches; small scale: long segments)."""
    monkeypatch.setattr(cb, "SEARCH_LEVELS", levels)
    g = torch.Generator().manual_seed(n + levels)
    G, k = 5, 12
    q, kk = (torch.randn(G, n, 8, generator=g, dtype=torch.float64) * scale for _ in range(2))
    f = qk_entries(q, kk, 1.0)
    for eps in (1e-3, 0.3):
        starts, _, _, _ = recover_conv_basis(f, n, k, eps=eps, T=min(4, n), num_heads=G, device="cpu", dtype=torch.float64)
        assert torch.equal(starts, plain_binary_search_starts(f, n, k, eps, min(4, n), G))


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
    assert {"segments_found", "segments_used", "overflow_head_fraction", "clamped_row_fraction"} <= set(m.extra_stats())
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
