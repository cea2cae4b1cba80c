import math

import pytest
import torch

from attnbench import methods
from attnbench.methods.exact import dense_attention
from attnbench.methods.performer import draw_orthogonal_features, softmax_kernel_features
from conftest import rel_err


def inputs(n=256, d=16, std=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, 2, n, d, generator=g) * s for s in (std, std, 1.0))


def mean_error(nb, causal=False, seeds=range(4)):
    q, k, v = inputs()
    ref = dense_attention(q.double(), k.double(), v.double(), causal=causal)
    m = methods.build({"name": "performer", "nb_features": nb})
    errs = []
    for s in seeds:
        m.reseed(s)
        errs.append(rel_err(m(q, k, v, causal=causal), ref))
    return sum(errs) / len(errs)


def test_error_falls_with_features():
    e = [mean_error(nb) for nb in (8, 64, 512)]
    assert e[0] > e[1] > e[2], e
    assert e[2] < 0.5 * e[0], e


def test_causal_error_falls_with_features():
    e = [mean_error(nb, causal=True) for nb in (8, 512)]
    assert e[1] < e[0], e


def test_orthogonal_blocks():
    g = torch.Generator().manual_seed(0)
    w = draw_orthogonal_features(40, 16, g, "cpu")
    blk = w[:16] / w[:16].norm(dim=1, keepdim=True)
    torch.testing.assert_close(blk @ blk.T, torch.eye(16), atol=1e-5, rtol=0)


def test_kernel_estimate_is_unbiased():
    g = torch.Generator().manual_seed(0)
    d, scale = 8, 8 ** -0.5
    q = torch.randn(1, 1, 5, d, generator=g, dtype=torch.float64) * 0.5
    k = torch.randn(1, 1, 5, d, generator=g, dtype=torch.float64) * 0.5
    target = torch.exp(scale * q[0, 0] @ k[0, 0].T)
    est = torch.zeros_like(target)
    trials = 3000
    for _ in range(trials):
        w = draw_orthogonal_features(64, d, g, "cpu", torch.float64)
        qf = softmax_kernel_features(q, w, scale, is_query=True, eps=0.0, stabilize=False)
        kf = softmax_kernel_features(k, w, scale, is_query=False, eps=0.0, stabilize=False)
        est += (qf @ kf.transpose(-1, -2))[0, 0] / trials
    assert float(((est - target).abs() / target).max()) < 0.03


def test_causal_equals_bidirectional_on_prefixes():
    q, k, v = inputs(n=40)
    m = methods.build({"name": "performer", "nb_features": 32, "redraw": False, "eps": 0.0, "chunk_size": 16})
    m.reseed(3)
    causal = m(q, k, v, causal=True)
    for i in (0, 7, 15, 16, 39):
        prefix = m(q[:, :, i:i + 1], k[:, :, : i + 1], v[:, :, : i + 1])
        torch.testing.assert_close(causal[:, :, i:i + 1], prefix, atol=1e-5, rtol=1e-4)


def test_seeded_runs_repeat_bit_for_bit():
    q, k, v = inputs()
    a, b = methods.build("performer"), methods.build("performer")
    a.reseed(11)
    b.reseed(11)
    assert torch.equal(a(q, k, v), b(q, k, v))
    assert not torch.equal(a(q, k, v), methods.build("performer")(q, k, v))  # seed 0 differs


def test_default_features_d_log_d():
    q, k, v = inputs(d=16)
    m = methods.build("performer")
    m(q, k, v)
    assert m.extra_stats()["nb_features"] == int(16 * math.log(16))


def _eps0_pair(q, k, v, causal, chunk_size=128):
    """eps=0 outputs in float32 and float64 (the same features: drawn in float32, then cast)."""
    outs = []
    for dt in (torch.float32, torch.float64):
        m = methods.build({"name": "performer", "nb_features": 64, "eps": 0.0, "chunk_size": chunk_size})
        m.reseed(1)
        outs.append(m(q.to(dt), k.to(dt), v.to(dt), causal=causal, scale=1.0))
    return outs


@pytest.mark.parametrize("causal", [False, True])
def test_eps0_large_inputs_finite_float32(causal):
    # inputs x5, d = 32, scale 1: exp(w·x' - |x'|²/2 - max w·x') underflowed to 0 in every feature (NaN)
    q, k, v = inputs(d=32)
    q, k = 5 * q, 5 * k
    out32, out64 = _eps0_pair(q, k, v, causal)
    assert torch.isfinite(out32).all()
    assert rel_err(out32.double(), out64) < 1e-4


def test_eps0_causal_early_prefix_of_small_keys():
    # keys 0..19 have tiny features next to the later ones (|k'|²/2 large): one global key shift would
    # underflow the first queries' prefixes in float32; the running-max shift keeps them
    q, k, v = inputs(n=64, d=32)
    k[:, :, :20] *= 8
    out32, out64 = _eps0_pair(q, k, v, True, chunk_size=16)
    assert torch.isfinite(out32).all()
    assert rel_err(out32.double(), out64) < 1e-4


@pytest.mark.parametrize("n,chunk", [(50, 16), (64, 64)])
def test_eps0_causal_matches_unstabilised_prefix_formula(n, chunk):
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, n, 8, generator=g, dtype=torch.float64) for _ in range(3))
    m = methods.build({"name": "performer", "nb_features": 24, "eps": 0.0, "chunk_size": chunk, "redraw": False})
    out = m(q, k, v, causal=True)
    w = m.features(8, q.device, q.dtype)
    qf = softmax_kernel_features(q, w, 8 ** -0.5, is_query=True, eps=0.0, stabilize=False)
    kf = softmax_kernel_features(k, w, 8 ** -0.5, is_query=False, eps=0.0, stabilize=False)
    a = (qf @ kf.transpose(-1, -2)).tril()
    assert rel_err(out, (a @ v) / a.sum(-1, keepdim=True)) < 1e-12
    qr = q.clone().requires_grad_()
    m(qr, k, v, causal=True).sum().backward()
    assert torch.isfinite(qr.grad).all()
