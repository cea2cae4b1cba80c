"""Tests for methods/hyperattention.py (sortLSH + sampled residual; causal recursion)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from attnbench.methods import build
from attnbench.methods.exact import dense_attention
from attnbench.methods.hyperattention import HyperAttention, _attn_lse, _lsh_codes

ROOT = Path(__file__).resolve().parents[1]


def qkv(b=1, h=2, nq=96, nk=96, d=16, dv=8, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, nq, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, h, nk, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, h, nk, dv, generator=g, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def make(**kw):
    return build({"name": "hyperattention", **kw})


def test_yaml_matches_defaults():
    cfg = yaml.safe_load((ROOT / "conf/method/hyperattention.yaml").read_text())
    m = build(cfg)
    want = {"lsh_num_projs": 7, "block_size": 256, "sample_size": 256, "min_seq_len": 4096, "exact_kernel": "torch"}
    assert m.hparams() == want == HyperAttention().hparams()


@pytest.mark.parametrize("nq,nk", [(96, 96), (101, 101), (200, 50), (3, 70)])
def test_exact_when_one_block(nq, nk):
    q, k, v = qkv(nq=nq, nk=nk)
    m = make(block_size=nk, min_seq_len=1)
    out = m(q, k, v, scale=0.3)
    assert out.shape == (1, 2, nq, 8) and out.dtype == torch.float64
    assert m.extra_stats()["exact_fallback"] == 0.0
    assert rel(out, dense_attention(q, k, v, scale=0.3)) < 1e-12


def test_exact_below_min_seq_len():
    q, k, v = qkv(nq=100, nk=300)
    m = make(block_size=16, sample_size=8)  # min_seq_len 4096 > Nq: exact, as in the official code
    assert rel(m(q, k, v), dense_attention(q, k, v)) < 1e-12
    assert m.extra_stats()["exact_fallback"] == 1.0
    q, k, v = qkv(nq=257, nk=257)
    assert rel(m(q, k, v, causal=True), dense_attention(q, k, v, causal=True)) < 1e-12
    assert m.extra_stats()["exact_fallback"] == 1.0


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("causal", [False, True])
def test_flash_exact_parts_equal_the_chunked_ones(causal, dtype, tol):
    # exact_kernel='flash': the exact parts (diagonal blocks of the causal recursion, the fallback
    # below min_seq_len) from PyTorch's fused CPU kernel, with the same log-sum-exps, so the whole
    # result equals the chunked evaluation up to the dtype's rounding, approximate parts included
    q, k, v = qkv(b=2, nq=300, nk=300, dtype=dtype)
    for kw in ({"min_seq_len": 4096}, {"block_size": 32, "sample_size": 16, "min_seq_len": 64}):
        a = make(**kw)(q, k, v, causal=causal, scale=0.5)
        b = make(exact_kernel="flash", **kw)(q, k, v, causal=causal, scale=0.5)
        assert b.dtype == dtype and rel(b, a) < tol
    exact = make(exact_kernel="flash", block_size=512, min_seq_len=16)(q, k, v, causal=causal, scale=0.5)
    assert rel(exact, dense_attention(q, k, v, causal=causal, scale=0.5)) < tol


def test_flash_exact_parts_refuse_other_devices():
    q, k, v = (t.to("meta") for t in qkv())
    with pytest.raises(ValueError, match="method.exact_kernel=flash"):
        _attn_lse(q, k, v, 0.5, kernel="flash")


@pytest.mark.parametrize("n", [256, 257, 300])
def test_causal_recursion_exact_with_full_blocks(n):
    # min_seq_len 16 forces several halving levels (odd lengths padded); block_size >= every
    # off-diagonal block makes each non-causal part exact, so the recursion must reproduce
    # causal attention exactly.
    q, k, v = qkv(b=2, nq=n, nk=n)
    m = make(block_size=512, sample_size=64, min_seq_len=16)
    out = m(q, k, v, causal=True, scale=0.5)
    assert out.shape == (2, 2, n, 8)
    assert m.extra_stats()["exact_fallback"] == 0.0
    assert rel(out, dense_attention(q, k, v, causal=True, scale=0.5)) < 1e-12


def test_causal_approximate_error_falls():
    errs = []
    for bs in (8, 32, 128):
        e = 0.0
        for seed in range(3):
            q, k, v = qkv(nq=256, nk=256, seed=seed)
            m = make(block_size=bs, sample_size=bs, min_seq_len=32)
            m.reseed(seed)
            e += rel(m(q, k, v, causal=True), dense_attention(q, k, v, causal=True)) / 3
        errs.append(e)
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 0.5 * errs[0]


@pytest.mark.parametrize("nq,nk", [(512, 512), (300, 500)])
def test_error_falls_with_budget(nq, nk):
    errs = []
    for budget in (16, 64, 256):
        e = 0.0
        for seed in range(3):
            q, k, v = qkv(nq=nq, nk=nk, seed=seed)
            m = make(block_size=budget, sample_size=budget, min_seq_len=1)
            m.reseed(seed)
            e += rel(m(q, k, v), dense_attention(q, k, v)) / 3
        errs.append(e)
    assert all(a > b for a, b in zip(errs, errs[1:])), errs


def test_residual_is_unbiased_with_many_samples():
    # Two blocks and a huge sample: the residual estimate of the off-block mass converges, so
    # the output approaches exact attention (a missing block mask would double-count the block).
    q, k, v = qkv(nq=256, nk=256, d=8)
    ref = dense_attention(q, k, v)
    few, many = make(block_size=128, sample_size=2500, min_seq_len=1), make(block_size=128, sample_size=40000, min_seq_len=1)
    e_few = sum(rel(few(q, k, v), ref) for _ in range(2)) / 2
    e_many = sum(rel(many(q, k, v), ref) for _ in range(2)) / 2
    assert e_many < 0.06 and e_many < 0.6 * e_few  # error ~ 1/sqrt(samples): no bias floor
    no_res = make(block_size=128, sample_size=0, min_seq_len=1)
    assert rel(no_res(q, k, v), ref) > 0.5


def test_sort_lsh_finds_heavy_entries():
    # Queries are a permutation of large keys: attention is nearly a permutation matrix. Sorting
    # by LSH puts each query beside its key; without hashing (blocks in input order) it rarely does.
    g = torch.Generator().manual_seed(0)
    k = torch.randn(1, 2, 512, 64, generator=g, dtype=torch.float64)
    perm = torch.randperm(512, generator=g)
    q, v = k[:, :, perm], torch.randn(1, 2, 512, 8, generator=g, dtype=torch.float64)
    ref = dense_attention(q, k, v, scale=1.0)
    lsh = make(block_size=64, sample_size=0, min_seq_len=1)
    off = make(block_size=64, sample_size=0, min_seq_len=1, lsh_num_projs=0)
    assert rel(lsh(q, k, v, scale=1.0), ref) < 0.35
    assert rel(off(q, k, v, scale=1.0), ref) > 0.9


def test_lsh_codes_are_gray_coded():
    proj = torch.eye(3, dtype=torch.float64)
    x = torch.tensor([[-1.0, -1, -1], [1, -1, -1], [-1, 1, -1], [1, 1, -1], [1, 1, 1]], dtype=torch.float64)
    # bucket ids 0,1,2,3,7 -> reflected Gray code 0,1,3,2,4
    assert _lsh_codes(x, proj).tolist() == [0, 1, 3, 2, 4]


def test_seeded_repeatability():
    q, k, v = qkv(nq=300, nk=300, dtype=torch.float32)
    m = make(block_size=32, sample_size=32, min_seq_len=64)
    outs = []
    for seed, causal in [(1, False), (1, False), (2, False)]:
        m.reseed(seed)
        outs.append(m(q, k, v, causal=causal))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    m.reseed(1)
    a = m(q, k, v, causal=True)
    m.reseed(1)
    assert torch.equal(a, m(q, k, v, causal=True))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dtypes(dtype):
    q, k, v = qkv(nq=200, nk=200, dtype=dtype)
    m = make(block_size=32, sample_size=32, min_seq_len=50)
    for causal in (False, True):
        out = m(q, k, v, causal=causal)
        assert out.dtype == dtype and out.shape == (1, 2, 200, 8) and torch.isfinite(out).all()


def dense_reference(q, k, v, scale, seed, block_size, sample_size, lsh_num_projs=7):
    """The non-causal algorithm written densely (n × n masks), with the same random draws."""
    g = torch.Generator().manual_seed(seed)
    B, H, nq, D = q.shape
    nk = k.shape[2]
    proj = torch.randn(D, lsh_num_projs, generator=g, dtype=q.dtype)
    nb = -(-nk // block_size)
    qbs = -(-nq // nb)
    q_pos = torch.sort(_lsh_codes(q, proj), dim=-1, stable=True).indices.argsort(-1)  # sorted position
    k_pos = torch.sort(_lsh_codes(k, proj), dim=-1, stable=True).indices.argsort(-1)
    same = (q_pos // qbs).unsqueeze(-1) == (k_pos // block_size).unsqueeze(-2)  # (B, H, nq, nk)
    w = same.to(q.dtype)
    if sample_size and nb > 1:
        pick = torch.randint(nk, (B * H, sample_size), generator=g).view(B, H, sample_size)
        # count of each sorted key position among the draws, mapped back to original keys
        cnt = torch.zeros(B, H, nk, dtype=q.dtype).scatter_add_(-1, pick, torch.ones_like(pick, dtype=q.dtype))
        cnt = cnt.gather(-1, k_pos)
        w = w + (~same) * cnt.unsqueeze(-2) * (nk / sample_size)
    s = (q @ k.transpose(-1, -2)) * scale
    e = torch.exp(s - s.amax(-1, keepdim=True)) * w
    return (e @ v) / e.sum(-1, keepdim=True)


@pytest.mark.parametrize("nq,nk,bs,smp", [(512, 512, 64, 40), (301, 301, 32, 50), (300, 500, 48, 30), (3, 70, 16, 8)])
def test_matches_dense_rederivation(nq, nk, bs, smp):
    # sorted blocks (query blocks of ceil(Nq / blocks)), padded keys of the last block excluded,
    # uniform samples outside the query's own block weighted Nk / sample_size
    q, k, v = qkv(b=2, nq=nq, nk=nk)
    m = make(block_size=bs, sample_size=smp, min_seq_len=1)
    m.reseed(5)
    out = m(q, k, v, scale=0.4)
    assert rel(out, dense_reference(q, k, v, 0.4, 5, bs, smp)) < 1e-12


@pytest.mark.parametrize("elems", [1, 3000, 1 << 30])
def test_grouping_does_not_change_the_result(monkeypatch, elems):
    # one block of one head per group, a few blocks per group, everything in one group
    import attnbench.methods.hyperattention as mod

    q, k, v = qkv(b=2, h=3, nq=333, nk=517)
    m = make(block_size=24, sample_size=40, min_seq_len=1)
    for causal, (a, b) in ((False, (q, k)), (True, (k, k))):
        m.reseed(0)
        ref = m(a, b, v, causal=causal)
        monkeypatch.setattr(mod, "SCORE_TILE_ELEMS", elems)
        m.reseed(0)
        out = m(a, b, v, causal=causal)
        monkeypatch.undo()
        assert (out - ref).abs().max().item() < 1e-13


def test_no_whole_sequence_score_tensor():
    from attnbench.core.measure import cpu_peak_memory_mb

    n, h, block, samples = 16384, 4, 64, 192
    q, k, v = qkv(b=1, h=h, nq=n, nk=n, d=8, dv=8, dtype=torch.float32)
    scores_mb = h * n * (block + samples) * 4 / 2**20  # one fp32 score tensor over the whole sequence
    for causal in (False, True):
        m = make(block_size=block, sample_size=samples, min_seq_len=1024)
        m(q, k, v, causal=causal)
        peak_mb = cpu_peak_memory_mb(lambda: m(q, k, v, causal=causal))[1]
        assert peak_mb < 0.5 * scores_mb, (causal, peak_mb, scores_mb)


@pytest.mark.parametrize("kw", [{"block_size": 0}, {"sample_size": -1}, {"lsh_num_projs": -1},
                                {"lsh_num_projs": 31}, {"min_seq_len": 0}, {"block_size": 2.5},
                                {"sample_size": True}, {"exact_kernel": "cuda"}])
def test_bad_knobs(kw):
    with pytest.raises(ValueError, match="method\\."):
        make(**kw)
