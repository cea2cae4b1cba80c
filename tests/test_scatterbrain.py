"""Tests for methods/scatterbrain.py (local + Performer attention)."""
from __future__ import annotations

import pytest
import torch

from attnbench.methods import build
from attnbench.methods.exact import dense_attention
from attnbench.methods.scatterbrain import sb_features


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def qkv(b=2, h=3, nq=96, nk=None, d=16, dv=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    nk = nq if nk is None else nk
    q = torch.randn(b, h, nq, d, generator=g, dtype=dtype)
    k = torch.randn(b, h, nk, d, generator=g, dtype=dtype)
    v = torch.randn(b, h, nk, dv, generator=g, dtype=dtype)
    return q, k, v


@pytest.mark.parametrize("n", [64, 77])
def test_full_window_is_exact(n):
    q, k, v = qkv(nq=n)
    m = build("scatterbrain", local_context=2 * n, nb_features=8)
    assert rel(m(q, k, v), dense_attention(q, k, v)) < 1e-10
    m = build("scatterbrain", local_context=n, nb_features=8)
    assert rel(m(q, k, v, causal=True), dense_attention(q, k, v, causal=True)) < 1e-10


def test_cross_full_window_is_exact():
    q, k, v = qkv(nq=150, nk=41)
    m = build("scatterbrain", local_context=82, nb_features=8)
    out = m(q, k, v)
    assert out.shape == (2, 3, 150, 8)
    assert rel(out, dense_attention(q, k, v)) < 1e-10


def test_features_are_unbiased_softmax_kernel():
    # E[φ(q)·φ(k)] = exp(scale·q·k): check with many features
    g = torch.Generator().manual_seed(0)
    q = 0.5 * torch.randn(1, 1, 5, 8, generator=g, dtype=torch.float64)
    k = 0.5 * torch.randn(1, 1, 6, 8, generator=g, dtype=torch.float64)
    proj = torch.randn(20000, 8, generator=g, dtype=torch.float64)
    qf, qs = sb_features(q, proj, 0.5, is_query=True)
    kf, ks = sb_features(k, proj, 0.5, is_query=False)
    est = (qf @ kf.transpose(-1, -2)) * torch.exp(qs + ks)
    assert rel(est, torch.exp(0.5 * q @ k.transpose(-1, -2))) < 0.03


def _mean_error(local_context, nb_features, causal=False, seeds=4):
    q, k, v = qkv(b=1, h=2, nq=128, seed=1)
    # attention that decays with distance plus a global component: what ScatterBrain assumes
    pos = torch.linspace(0, 6, 128, dtype=torch.float64)[:, None]
    enc = torch.cat([torch.cos(pos * torch.arange(1, 9)), torch.sin(pos * torch.arange(1, 9))], -1)
    q, k = q * 0.3 + enc, k * 0.3 + enc
    ref = dense_attention(q, k, v, causal=causal)
    m = build("scatterbrain", local_context=local_context, nb_features=nb_features)
    errs = []
    for s in range(seeds):
        m.reseed(s)
        errs.append(rel(m(q, k, v, causal=causal), ref))
    return sum(errs) / len(errs)


@pytest.mark.parametrize("causal", [False, True])
def test_error_falls_with_budget(causal):
    e_small = _mean_error(4, 8, causal)
    e_feat = _mean_error(4, 128, causal)
    e_local = _mean_error(48, 128, causal)
    assert e_feat < 0.8 * e_small
    assert e_local < 0.8 * e_feat
    assert e_local > 1e-4  # still an approximation


def test_no_future_leak_in_causal_mode():
    q, k, v = qkv(nq=64)
    m = build("scatterbrain", local_context=8, nb_features=16)
    out = m(q, k, v, causal=True)
    v2 = v.clone()
    v2[:, :, 40:] += 100.0
    m.reseed(0)
    out2 = m(q, k, v2, causal=True)
    assert torch.allclose(out[:, :, :40], out2[:, :, :40], atol=1e-10)


def test_non_divisible_lengths_and_shapes():
    q, k, v = qkv(nq=101, dv=5)
    m = build("scatterbrain", local_context=16, nb_features=32)
    for causal in (False, True):
        out = m(q, k, v, causal=causal)
        assert out.shape == (2, 3, 101, 5) and torch.isfinite(out).all()


def test_seeded_repeatability_and_dtypes():
    q, k, v = qkv(nq=70, dtype=torch.float32)
    m = build("scatterbrain", local_context=8, nb_features=16)
    m.reseed(3)
    a = m(q, k, v)
    m.reseed(3)
    assert torch.equal(a, m(q, k, v))
    m.reseed(4)
    assert not torch.equal(a, m(q, k, v))
    assert m(q.bfloat16(), k.bfloat16(), v.bfloat16()).dtype == torch.bfloat16
    assert m(q.double(), k.double(), v.double()).dtype == torch.float64


def test_gradients_flow():
    q, k, v = (t.requires_grad_() for t in qkv(nq=40, dtype=torch.float32))
    build("scatterbrain", local_context=8, nb_features=16)(q, k, v).sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize(
    "knobs", [{"local_context": 0}, {"local_context": 2.5}, {"nb_features": 0}, {"nb_features": 7}, {"nb_features": 8.0}]
)
def test_bad_knobs(knobs):
    with pytest.raises(ValueError, match="method\\."):
        build("scatterbrain", **knobs)
