"""Tests for methods/thinformer.py (KH-Compress coreset attention)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from attnbench.methods import build
from attnbench.methods.exact import dense_attention
from attnbench.methods.thinformer import Thinformer, _halve, kh_compress

ROOT = Path(__file__).resolve().parents[1]


def qkv(b=1, h=2, nq=64, nk=64, d=16, dv=8, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, nq, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, h, nk, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, h, nk, dv, generator=g, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def make(**kw):
    return build({"name": "thinformer", **kw})


def test_yaml_matches_defaults():
    cfg = yaml.safe_load((ROOT / "conf/method/thinformer.yaml").read_text())
    m = build(cfg)
    assert m.hparams() == {"g": 2, "delta": 0.5} == Thinformer().hparams()


@pytest.mark.parametrize("g,nk,nq", [(2, 16, 16), (2, 4, 9), (3, 64, 30), (1, 1, 5)])
def test_exact_when_coreset_covers_all_keys(g, nk, nq):
    # Nk a power of four <= 4**g: the coreset is every key, so the output is exact.
    q, k, v = qkv(nq=nq, nk=nk)
    m = make(g=g)
    out = m(q, k, v, scale=0.4)
    assert out.shape == (1, 2, nq, 8) and out.dtype == torch.float64
    assert m.extra_stats()["coreset_size"] == nk
    assert rel(out, dense_attention(q, k, v, scale=0.4)) < 1e-12


@pytest.mark.parametrize("nk,g,size,n4", [(1024, 0, 32, 1024), (1024, 2, 128, 1024), (1000, 1, 32, 256),
                                          (1000, 3, 128, 256), (784, 4, 256, 256), (200, 0, 8, 64)])
def test_coreset_size(nk, g, size, n4):
    q, k, v = qkv(b=2, h=1, nq=7, nk=nk, d=8, dtype=torch.float32)
    m = make(g=g)
    out = m(q, k, v)
    assert out.shape == (2, 1, 7, 8)
    st = m.extra_stats()
    assert st["coreset_size"] == size and st["standard_thin_n"] == n4
    assert st["kept_fraction"] == pytest.approx(size / nk)


def test_coreset_is_a_subset_of_key_value_pairs():
    g = torch.Generator().manual_seed(3)
    k = torch.randn(3, 256, 4, generator=g, dtype=torch.float64)
    v = torch.randn(3, 256, 5, generator=g, dtype=torch.float64)
    kc, vc, n = kh_compress(k, v, 1, 0.5, torch.Generator().manual_seed(0))
    assert n == 256 and kc.shape == (3, 32, 4) and vc.shape == (3, 32, 5)
    for b in range(3):
        hit = (kc[b].unsqueeze(1) == k[b].unsqueeze(0)).all(-1)  # (32, 256)
        assert (hit.sum(1) == 1).all()
        j = hit.double().argmax(1)
        assert len(set(j.tolist())) == 32  # no key kept twice
        assert torch.equal(vc[b], v[b, j])  # values stay with their keys


def _halving_mmd(seed, G=16, S=512):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(G, 1, S, 2, generator=g, dtype=torch.float64) * 0.5
    v = torch.ones(G, 1, S, 1, dtype=torch.float64)
    shift = k.square().sum(-1).amax(-1).view(G, 1, 1, 1)
    b = torch.ones(G, 1, 1, 1, dtype=torch.float64)
    K = torch.exp(k @ k.transpose(-1, -2) - shift) * 2
    kh, _ = _halve(k, v, shift, b, 1e-3, g)
    idx = (kh.unsqueeze(-2) == k.unsqueeze(-3)).all(-1).double().argmax(-1)

    def mmd(idx):
        w = torch.full((G, 1, S), -1.0 / S, dtype=torch.float64)
        w.scatter_add_(2, idx, torch.full(idx.shape, 2.0 / S, dtype=torch.float64))
        return (w.unsqueeze(-2) @ K @ w.unsqueeze(-1)).squeeze().clamp_min(0).sqrt().mean().item()

    pair_random = torch.arange(0, S, 2) + torch.randint(0, 2, (G, 1, S // 2), generator=g)
    return mmd(idx), mmd(pair_random)


def test_kernel_halving_beats_random_halving():
    # The self-balancing walk must give a smaller kernel discrepancy than a random choice per pair.
    res = [_halving_mmd(s) for s in range(3)]
    kh = sum(r[0] for r in res) / 3
    rnd = sum(r[1] for r in res) / 3
    assert kh < 0.85 * rnd


def test_error_falls_with_g():
    errs = []
    for g in range(4):
        e = 0.0
        for seed in range(4):
            q, k, v = qkv(nq=64, nk=256, d=8, dv=8, seed=seed)
            m = make(g=g)
            m.reseed(seed)
            e += rel(m(q, k, v), dense_attention(q, k, v)) / 4
        errs.append(e)
    assert all(a > b for a, b in zip(errs, errs[1:])), errs


def test_seeded_repeatability():
    q, k, v = qkv(nk=512, dtype=torch.float32)
    m = make(g=1)
    m.reseed(5)
    a = m(q, k, v)
    m.reseed(5)
    b = m(q, k, v)
    m.reseed(6)
    c = m(q, k, v)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dtypes(dtype):
    q, k, v = qkv(nk=300, dtype=dtype)
    out = make(g=1)(q, k, v)
    assert out.dtype == dtype and torch.isfinite(out).all()


def test_causal_not_supported():
    q, k, v = qkv()
    with pytest.raises(NotImplementedError):
        make()(q, k, v, causal=True)


@pytest.mark.parametrize("kw", [{"g": -1}, {"g": 1.5}, {"g": True}, {"delta": 0.0}, {"delta": 1.5}, {"delta": "a"}])
def test_bad_knobs(kw):
    with pytest.raises(ValueError, match="method\\."):
        make(**kw)
