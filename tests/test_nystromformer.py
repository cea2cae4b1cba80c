"""Tests for methods/nystromformer.py (landmark Nyström attention)."""
from __future__ import annotations

import pytest
import torch

from attnbench.methods import build
from attnbench.methods.exact import dense_attention
from attnbench.methods.nystromformer import iterative_pinv, segment_means


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def qkv(b=2, h=3, nq=64, nk=None, d=16, dv=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    nk = nq if nk is None else nk
    q = torch.randn(b, h, nq, d, generator=g, dtype=dtype)
    k = torch.randn(b, h, nk, d, generator=g, dtype=dtype)
    v = torch.randn(b, h, nk, dv, generator=g, dtype=dtype)
    return q, k, v


def test_all_landmarks_exact_up_to_pinv_accuracy():
    q, k, v = qkv()
    ref = dense_attention(q, k, v)
    errs = [rel(build("nystromformer", num_landmarks=64, pinv_iters=it)(q, k, v), ref) for it in (6, 10, 20)]
    # 6 iterations (the paper's setting): a few per cent; more iterations converge to exact
    assert errs[0] < 0.1
    assert errs[1] < errs[0]
    assert errs[2] < 1e-5


def test_iterative_pinv_converges_to_pinv():
    g = torch.Generator().manual_seed(0)
    a = torch.softmax(torch.randn(2, 3, 12, 12, generator=g, dtype=torch.float64) * 2, -1)
    z = iterative_pinv(a, 30)
    assert torch.allclose(z, torch.linalg.pinv(a), atol=1e-8)


def test_segment_means_uneven():
    x = torch.arange(10, dtype=torch.float64).reshape(1, 1, 10, 1)
    # 10 tokens, 4 segments: sizes 2, 2, 3, 3 (the T2T port's split)
    got = segment_means(x, 4).flatten().tolist()
    assert got == [0.5, 2.5, 5.0, 8.0]


def test_error_falls_with_landmarks():
    q, k, v = qkv(b=1, h=2, nq=128, seed=1)
    # smooth sequences: segment means are good landmarks
    t = torch.linspace(0, 3, 128, dtype=torch.float64)[:, None]
    enc = torch.cat([torch.cos(t * torch.arange(1, 9)), torch.sin(t * torch.arange(1, 9))], -1)
    q, k = q * 0.2 + enc, k * 0.2 + enc
    ref = dense_attention(q, k, v)
    errs = [rel(build("nystromformer", num_landmarks=m)(q, k, v), ref) for m in (4, 16, 64)]
    assert errs[0] > errs[1] > errs[2]
    assert errs[0] > 1e-3


def test_shapes_cross_and_non_divisible():
    q, k, v = qkv(nq=101, nk=53, dv=5)
    m = build("nystromformer", num_landmarks=8)
    out = m(q, k, v)
    assert out.shape == (2, 3, 101, 5) and torch.isfinite(out).all()
    # more landmarks than tokens: clamped to min(Nq, Nk)
    out = build("nystromformer", num_landmarks=500)(q, k, v)
    assert out.shape == (2, 3, 101, 5)


def test_causal_not_supported():
    q, k, v = qkv(nq=32)
    with pytest.raises(NotImplementedError):
        build("nystromformer", num_landmarks=8)(q, k, v, causal=True)


def test_deterministic_and_dtypes():
    q, k, v = qkv(nq=48, dtype=torch.float32)
    m = build("nystromformer", num_landmarks=8)
    assert torch.equal(m(q, k, v), m(q, k, v))
    assert m(q.half(), k.half(), v.half()).dtype == torch.float16


def test_gradients_flow():
    q, k, v = (t.requires_grad_() for t in qkv(nq=40, dtype=torch.float32))
    build("nystromformer", num_landmarks=8)(q, k, v).sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("knobs", [{"num_landmarks": 0}, {"num_landmarks": 1.5}, {"pinv_iters": 0}, {"pinv_iters": 2.5}])
def test_bad_knobs(knobs):
    with pytest.raises(ValueError, match="method\\."):
        build("nystromformer", **knobs)


def reference_formula(q, k, v, n_land, pinv_iters=6):
    """The unchunked formula of the official code: both n × L score matrices built whole."""
    scale = q.shape[-1] ** -0.5
    q_land, k_land = segment_means(q, n_land), segment_means(k, n_land)
    kernel_1 = torch.softmax(q @ k_land.transpose(-1, -2) * scale, dim=-1)
    kernel_2 = torch.softmax(q_land @ k_land.transpose(-1, -2) * scale, dim=-1)
    kernel_3 = torch.softmax(q_land @ k.transpose(-1, -2) * scale, dim=-1)
    return kernel_1 @ (iterative_pinv(kernel_2, pinv_iters) @ (kernel_3 @ v))


@pytest.mark.parametrize("block", [1, 7 * 2 * 3 * 8, 1 << 30])
def test_chunked_equals_unchunked(monkeypatch, block):
    import attnbench.methods.nystromformer as nys

    # uneven chunks (block // (B·H·L) = 7 tokens), one token per chunk, and a single chunk
    monkeypatch.setattr(nys, "SCORE_TILE_ELEMS", block)
    q, k, v = qkv(nq=101, nk=53, dv=5, seed=3)
    q, k = q * 2, k * 2  # peaked softmax rows: the running max must matter
    out = build("nystromformer", num_landmarks=8)(q, k, v)
    assert torch.allclose(out, reference_formula(q, k, v, 8), rtol=0, atol=1e-12)


def test_chunked_gradients_match_unchunked(monkeypatch):
    import attnbench.methods.nystromformer as nys

    q, k, v = qkv(nq=40, nk=33, dv=4, seed=4)
    m = build("nystromformer", num_landmarks=8)
    grads = []
    for block in (1 << 30, 5 * 2 * 3 * 8):
        monkeypatch.setattr(nys, "SCORE_TILE_ELEMS", block)
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        (m(*leaves) * torch.linspace(-1, 1, 4, dtype=q.dtype)).sum().backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_no_whole_sequence_score_matrix():
    from attnbench.core.measure import cpu_peak_memory_mb

    n, h, n_land = 16384, 8, 256
    q, k, v = qkv(b=1, h=h, nq=n, d=8, dv=8, dtype=torch.float32)
    m = build("nystromformer", num_landmarks=n_land)
    m(q, k, v)
    peak_mb = cpu_peak_memory_mb(lambda: m(q, k, v))[1]
    scores_mb = h * n * n_land * 4 / 2**20  # one fp32 n × L score matrix (128 MB)
    assert peak_mb < 0.3 * scores_mb, (peak_mb, scores_mb)
