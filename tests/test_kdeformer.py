"""Tests for methods/kdeformer.py (and its Triton kernel, in the interpreter, in a subprocess)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from attnbench.methods import build
from attnbench.methods.exact import dense_attention
from attnbench.methods.kdeformer import KDEformer, draw_samples, gray_rank

ROOT = Path(__file__).resolve().parents[1]


def qkv(b=1, h=2, nq=96, nk=96, d=16, dv=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, nq, d, generator=g)
    k = torch.randn(b, h, nk, d, generator=g)
    v = torch.randn(b, h, nk, dv, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def make(**kw):
    return build({"name": "kdeformer", **kw})


def test_yaml_matches_defaults():
    cfg = yaml.safe_load((ROOT / "conf/method/kdeformer.yaml").read_text())
    m = build(cfg)
    assert m.hparams() == {"sample_size": 256, "bucket_size": 64, "num_projs": 7, "backend": "auto"}
    assert KDEformer().hparams() == m.hparams()


@pytest.mark.parametrize("nq,nk", [(96, 96), (100, 100), (200, 50), (3, 70)])
def test_exact_when_one_block(nq, nk):
    q, k, v = qkv(nq=nq, nk=nk)
    m = make(bucket_size=nk, sample_size=4096)
    out = m(q, k, v, scale=0.3)
    assert out.shape == (1, 2, nq, 16)
    assert rel(out, dense_attention(q.double(), k.double(), v.double(), scale=0.3)) < 1e-5
    # fp64 stays fp64 and is exact to fp64 rounding (GloVe experiment)
    out64 = m(q.double(), k.double(), v.double(), scale=0.3)
    assert out64.dtype == torch.float64
    assert rel(out64, dense_attention(q.double(), k.double(), v.double(), scale=0.3)) < 1e-12


def test_large_scores_are_stable():
    # scale 1 with big norms: raw exp would overflow (the official code uses float64 for this).
    q, k, v = qkv(nq=64, nk=64)
    q, k = q * 6, k * 6
    out = make(bucket_size=64)(q, k, v, scale=1.0)
    assert torch.isfinite(out).all()
    assert rel(out, dense_attention(q.double(), k.double(), v.double(), scale=1.0)) < 1e-5
    out = make(bucket_size=16, sample_size=32)(q, k, v, scale=1.0)
    assert torch.isfinite(out).all()


def block_reference(q, k, v, plan, scale):
    """Dense softmax restricted to the plan's (query block, key block) pairs."""
    qb = torch.empty_like(plan["q_order"]).scatter_(-1, plan["q_order"], plan["qblock_of"].expand_as(plan["q_order"]))
    kb = torch.empty_like(plan["k_order"]).scatter_(-1, plan["k_order"], plan["kblock_of"].expand_as(plan["k_order"]))
    mask = qb[..., :, None] == kb[..., None, :]
    s = (q.double() @ k.double().transpose(-1, -2)) * scale
    return torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v.double(), mask


@pytest.mark.parametrize("nq,nk,bucket", [(100, 100, 16), (256, 64, 16), (37, 130, 32), (3, 100, 16)])
def test_heavy_part_is_block_diagonal_softmax(nq, nk, bucket):
    q, k, v = qkv(nq=nq, nk=nk)
    m = make(bucket_size=bucket, sample_size=0)
    m.reseed(3)
    out = m(q, k, v, scale=0.25)
    m.reseed(3)
    plan = m.plan(q, k, v)
    ref, mask = block_reference(q, k, v, plan, 0.25)
    assert rel(out, ref) < 1e-5
    nb = -(-nk // bucket)
    assert plan["nb"] == nb
    # every key and every query lies in exactly one block; blocks hold at most bucket_size keys
    per_block = torch.bincount(plan["kblock_of"], minlength=nb)
    assert per_block.max() <= bucket and per_block.max() - per_block.min() <= 1
    assert mask.any(-1).all()


def test_lsh_groups_nearby_points():
    # Queries equal to keys: each query's own key should usually land in its block.
    q, _, v = qkv(nq=512, nk=512, d=16)
    m = make(bucket_size=32, sample_size=0, num_projs=7)
    plan = m.plan(q, q, v)
    _, mask = block_reference(q, q, v, plan, 1.0)
    hit = mask.diagonal(dim1=-2, dim2=-1).float().mean().item()
    assert hit > 0.3  # random blocks would give 32/512 ≈ 0.06


def test_gray_code_neighbours_differ_by_one_bit():
    for p in (1, 3, 7, 10):
        codes = torch.arange(2**p)
        r = gray_rank(codes)
        assert torch.equal(r.sort().values, codes)  # a bijection
        order = torch.argsort(r)  # codes in bucket order
        assert torch.equal(order, codes ^ (codes >> 1))  # the reflected Gray sequence
        diff = order[1:] ^ order[:-1]
        assert ((diff & (diff - 1)) == 0).all() and (diff > 0).all()  # powers of two: one bit


def test_error_falls_with_sample_size():
    q, k, v = qkv(nq=256, nk=256, d=16)
    q = q * 2
    ex = dense_attention(q.double(), k.double(), v.double())
    errs = []
    for s in (8, 64, 512):
        e = 0.0
        for seed in range(4):
            m = make(bucket_size=32, sample_size=s)
            m.reseed(seed)
            e += rel(m(q, k, v), ex) / 4
        errs.append(e)
    assert errs[0] > 1.5 * errs[1] > 2.25 * errs[2]


def test_residual_estimator_is_unbiased():
    q, k, v = qkv(b=1, h=1, nq=48, nk=48, d=8)
    scale = 0.35
    m = make(bucket_size=12, sample_size=8)
    plan = m.plan(q, k, v)
    heavy = {**plan, "m": 0}
    num_h, den_h = KDEformer.attend_torch(q.double(), k.double(), v.double(), heavy, scale, normalize=False)
    e = torch.exp(q.double() @ k.double().transpose(-1, -2) * scale)
    target_num, target_den = e @ v.double() - num_h, e.sum(-1) - den_h  # masked exact product
    assert target_den.min() > 0
    # Many independent draws at once: tile the fixed LSH plan over a batch of `trials` copies.
    trials = 2000
    tiled = {key: (val.expand(trials, *val.shape[1:]).contiguous() if key in ("q_order", "k_order", "p_sorted") else val)
             for key, val in plan.items()}
    draw_samples(tiled, 32, torch.Generator().manual_seed(1))
    qt, kt, vt = (t.double().expand(trials, -1, -1, -1) for t in (q, k, v))
    num, den = KDEformer.attend_torch(qt, kt, vt, tiled, scale, normalize=False)
    num, den = num - num_h, den - den_h
    acc_num, acc_den = num.mean(0, keepdim=True), den.mean(0, keepdim=True)
    single = sum(rel(num[i:i + 1], target_num) for i in range(50)) / 50
    err_mean = rel(acc_num, target_num)
    # an unbiased estimator's mean error shrinks like single / sqrt(trials) (≈ 0.025 here)
    assert err_mean < 0.05
    assert err_mean < 2.0 * single / trials**0.5
    assert rel(acc_den, target_den) < 0.05


def test_sampling_law_matches_official_formula():
    q, k, v = qkv(nq=64, nk=64, dv=8)
    plan = make(bucket_size=16, sample_size=4).plan(q, k, v)
    va = torch.cat([v.double(), torch.ones(*v.shape[:3], 1, dtype=torch.float64)], -1)
    lam = torch.linalg.eigvalsh(va.transpose(-1, -2) @ va)[..., -1]
    p = va.norm(dim=-1) / lam[..., None] + 1 / 64
    p = p / p.sum(-1, keepdim=True)
    assert torch.allclose(plan["p_sorted"].double(), p.gather(-1, plan["k_order"]), rtol=1e-4)


def test_scale_equals_prescaled_inputs():
    q, k, v = qkv(nq=80, nk=80)
    a = make(bucket_size=16, sample_size=32)(q, k, v, scale=0.2)
    b = make(bucket_size=16, sample_size=32)(q * 0.2**0.5, k * 0.2**0.5, v, scale=1.0)
    assert rel(a, b) < 1e-5


def test_seeded_runs_repeat():
    q, k, v = qkv(nq=100, nk=100)
    m = make(bucket_size=16, sample_size=32)
    m.reseed(7)
    a = m(q, k, v)
    m.reseed(7)
    b = m(q, k, v)
    assert torch.equal(a, b)
    m.reseed(8)
    assert not torch.equal(a, m(q, k, v))
    stats = m.extra_stats()
    assert stats["num_blocks"] == 7 and stats["samples"] == 32 and 0 < stats["kept_fraction"] <= 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_in_half_out(dtype):
    q, k, v = qkv(nq=64, nk=64, dtype=dtype)
    out = make(bucket_size=64)(q, k, v)
    assert out.dtype == dtype
    assert rel(out, dense_attention(q.double(), k.double(), v.double())) < 1e-2
    assert make(bucket_size=16, sample_size=16)(q, k, v).dtype == dtype


def dense_estimate(q, k, v, plan, scale):
    """The plan's estimate written densely in float64 (block pairs exact + weighted masked samples)."""
    q, k, v = q.double(), k.double(), v.double()
    qb = torch.empty_like(plan["q_order"]).scatter_(-1, plan["q_order"], plan["qblock_of"].expand_as(plan["q_order"]))
    kb = torch.empty_like(plan["k_order"]).scatter_(-1, plan["k_order"], plan["kblock_of"].expand_as(plan["k_order"]))
    e = torch.exp(q @ k.transpose(-1, -2) * scale)
    w = (e * (qb[..., :, None] == kb[..., None, :])).to(torch.float64)
    if plan["m"] > 0:
        cols = torch.zeros_like(e)  # (B, H, Nq, Nk): total sample weight on each key, own block masked
        own = plan["s_block"][..., None, :] == qb[..., :, None]  # (B, H, Nq, m)
        wt = (plan["s_weight"].double()[..., None, :] * ~own).expand(-1, -1, q.shape[2], -1)
        cols.scatter_add_(-1, plan["s_idx"][..., None, :].expand(-1, -1, q.shape[2], -1).contiguous(), wt.contiguous())
        w = w + e * cols
    return (w @ v) / w.sum(-1, keepdim=True)


@pytest.mark.parametrize("block_elems", [1, 700, 1 << 21])
@pytest.mark.parametrize("b,h,nq,nk,bucket,samples", [(2, 3, 100, 100, 16, 24), (1, 2, 257, 61, 8, 16), (1, 2, 70, 333, 32, 40)])
def test_grouped_evaluation_matches_dense_formula(monkeypatch, block_elems, b, h, nq, nk, bucket, samples):
    # Groups of one block of one head, groups that straddle heads/blocks unevenly, and one group.
    import attnbench.methods.kdeformer as mod

    monkeypatch.setattr(mod, "SCORE_TILE_ELEMS", block_elems)
    q, k, v = qkv(b=b, h=h, nq=nq, nk=nk, dv=12)
    m = make(bucket_size=bucket, sample_size=samples)
    m.reseed(2)
    out = m(q, k, v, scale=0.3)
    m.reseed(2)
    plan = m.plan(q, k, v)
    assert rel(out, dense_estimate(q, k, v, plan, 0.3)) < 1e-5
    num, den = KDEformer.attend_torch(q.double(), k.double(), v.double(), plan, 0.3, normalize=False)
    assert rel(num / den[..., None], dense_estimate(q, k, v, plan, 0.3)) < 1e-12


def test_no_whole_sequence_score_tensor():
    from attnbench.core.measure import cpu_peak_memory_mb

    n, h, bucket, samples = 16384, 4, 64, 192
    q, k, v = qkv(b=1, h=h, nq=n, nk=n, d=8, dv=8)
    m = make(bucket_size=bucket, sample_size=samples)
    m(q, k, v)
    peak_mb = cpu_peak_memory_mb(lambda: m(q, k, v))[1]
    scores_mb = h * n * (bucket + samples) * 4 / 2**20  # one fp32 score tensor over the whole sequence
    assert peak_mb < 0.5 * scores_mb, (peak_mb, scores_mb)


@pytest.mark.parametrize(
    "kw",
    [
        {"sample_size": -1},
        {"sample_size": 2.5},
        {"bucket_size": 0},
        {"bucket_size": True},
        {"num_projs": 0},
        {"num_projs": 63},
        {"backend": "cuda"},
    ],
)
def test_bad_knobs_raise(kw):
    with pytest.raises(ValueError, match="method\\."):
        make(**kw)


def test_causal_not_supported():
    q, k, v = qkv(nq=32, nk=32)
    with pytest.raises(NotImplementedError):
        make()(q, k, v, causal=True)


KERNEL_CHECK = textwrap.dedent(
    """
    import torch
    from attnbench.methods import build
    from attnbench.methods.kdeformer import KDEformer
    from attnbench.methods.kernels.kdeformer import kdeformer_attention
    cases = [
        (2, 2, 100, 100, 16, 16, 16, 40, torch.float32),
        (1, 2, 256, 64, 8, 24, 16, 20, torch.float32),   # cross, Dv != D, D < 16
        (1, 1, 70, 130, 16, 16, 32, 0, torch.float32),   # no residual, non-divisible
        (1, 1, 3, 100, 16, 16, 16, 10, torch.float32),   # fewer queries than blocks
        (1, 1, 64, 64, 16, 16, 16, 30, torch.float16),
        (1, 1, 48, 48, 16, 16, 64, 30, torch.float32),   # one block: exact
    ]
    for b, h, nq, nk, d, dv, bs, ss, dt in cases:
        g = torch.Generator().manual_seed(nq)
        q, k, v = (torch.randn(b, h, n, e, generator=g).to(dt) for n, e in ((nq, d), (nk, d), (nk, dv)))
        m = build({"name": "kdeformer", "bucket_size": bs, "sample_size": ss, "backend": "triton"})
        m.reseed(1)
        out = m(q, k, v, scale=0.3)
        assert out.dtype == dt and out.shape == (b, h, nq, dv)
        m.reseed(1)
        plan = m.plan(q, k, v)
        ref = KDEformer.attend_torch(q.float(), k.float(), v.float(), plan, 0.3)
        tol = 2e-3 if dt == torch.float16 else 1e-5
        err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
        assert err < tol, (nq, nk, bs, ss, dt, err)
    print("KERNEL_OK")
    """
)


def test_triton_kernel_matches_torch_in_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(
        [sys.executable, "-c", KERNEL_CHECK], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0 and "KERNEL_OK" in res.stdout, res.stdout + res.stderr
