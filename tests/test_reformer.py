"""Tests for methods/reformer.py (LSH attention)."""
from __future__ import annotations

import pytest
import torch

from attnbench.methods import build
from attnbench.methods.exact import dense_attention


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def qkv(b=2, h=3, nq=96, nk=None, d=16, dv=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    nk = nq if nk is None else nk
    q = torch.randn(b, h, nq, d, generator=g, dtype=dtype)
    k = torch.randn(b, h, nk, d, generator=g, dtype=dtype)
    v = torch.randn(b, h, nk, dv, generator=g, dtype=dtype)
    return q, k, v


def shared_reference(q, v, scale, causal=False):
    """Dense shared-QK attention: keys = unit-norm queries, self score -5e4."""
    kn = torch.nn.functional.normalize(q, dim=-1)
    s = torch.einsum("bhid,bhjd->bhij", q, kn) * scale
    n = q.shape[2]
    if causal:
        s = s.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    s = s.masked_fill(torch.eye(n, dtype=torch.bool), -5e4)
    return torch.softmax(s, -1) @ v


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n", [96, 101])
def test_one_chunk_is_exact(causal, n):
    q, k, v = qkv(nq=n)
    m = build("reformer", bucket_size=n, n_hashes=1)
    assert rel(m(q, k, v, causal=causal), dense_attention(q, k, v, causal=causal)) < 1e-12


@pytest.mark.parametrize("causal", [False, True])
def test_two_chunks_with_look_back_is_exact(causal):
    # two chunks: each sees itself and the other one -> every key, whatever the hashes
    q, k, v = qkv(nq=90)
    m = build("reformer", bucket_size=45, n_hashes=3)
    assert rel(m(q, k, v, causal=causal), dense_attention(q, k, v, causal=causal)) < 1e-12


@pytest.mark.parametrize("causal", [False, True])
def test_shared_qk_one_chunk_matches_dense_shared(causal):
    q, k, v = qkv(nq=64)
    m = build("reformer", bucket_size=64, n_hashes=1, shared_qk=True)
    out = m(q, k, v, causal=causal)
    assert rel(out, shared_reference(q, v, 16 ** -0.5, causal)) < 1e-12
    # k is ignored in shared-QK mode
    assert torch.equal(out, m(q, torch.zeros_like(k), v, causal=causal))


def _mean_error(bucket_size, n_hashes, seeds=4, causal=False):
    q, k, v = qkv(b=1, h=2, nq=128, seed=1)
    k = q + 0.3 * k  # keys near the queries: attention concentrated, as LSH assumes
    q, k = 2 * q, 2 * k
    ref = dense_attention(q, k, v, causal=causal)
    m = build("reformer", bucket_size=bucket_size, n_hashes=n_hashes)
    errs = []
    for s in range(seeds):
        m.reseed(s)
        errs.append(rel(m(q, k, v, causal=causal), ref))
    return sum(errs) / len(errs)


def test_error_falls_with_hashes_and_bucket_size():
    e_small = _mean_error(8, 1)
    e_hashes = _mean_error(8, 8)
    e_bucket = _mean_error(32, 8)
    assert e_hashes < 0.85 * e_small
    assert e_bucket < 0.85 * e_hashes
    assert e_small > 1e-3  # really an approximation at this budget


def test_causal_error_falls_and_no_future_leak():
    assert _mean_error(32, 8, causal=True) < _mean_error(8, 1, causal=True)
    q, k, v = qkv(nq=64)
    m = build("reformer", bucket_size=8, n_hashes=4)
    out = m(q, k, v, causal=True)
    v2 = v.clone()
    v2[:, :, 40:] += 100.0  # changing future values must not change earlier outputs
    m.reseed(0)
    out2 = m(q, k, v2, causal=True)
    assert torch.allclose(out[:, :, :40], out2[:, :, :40], atol=1e-12)
    assert torch.isfinite(out).all()


def test_rounds_combine_as_softmax_over_multiset_union():
    """Independent dense reference: rebuild each round's chunk visibility from the same rotations;
    logsumexp-weighted rounds equal softmax over all visible pairs counted with multiplicity."""
    n, bs, rounds, d = 96, 12, 4, 16
    q, k, v = qkv(nq=n, d=d)
    m = build("reformer", bucket_size=bs, n_hashes=rounds)
    m.reseed(7)
    out = m(q, k, v)
    n_chunks = n // bs
    rot = torch.randn(d, rounds, n_chunks // 2, generator=torch.Generator().manual_seed(7), dtype=q.dtype)

    def chunk_of(x):  # (B, H, R, N): chunk index of each position after sorting by (bucket, position)
        r = torch.einsum("bhnd,dri->bhrni", x, rot)
        buckets = torch.cat([r, -r], -1).argmax(-1)
        order = (buckets * n + torch.arange(n)).argsort(-1)
        rank = order.argsort(-1)
        return rank // bs

    cq, ck = chunk_of(q).unsqueeze(-1), chunk_of(k).unsqueeze(-2)
    count = ((cq == ck) | (cq == (ck + 1) % n_chunks)).sum(2).to(q.dtype)  # (B, H, N, N)
    w = count * torch.exp(torch.einsum("bhid,bhjd->bhij", q, k) * d ** -0.5)
    ref = (w @ v) / w.sum(-1, keepdim=True)
    assert rel(out, ref) < 1e-12
    assert rel(out, dense_attention(q, k, v)) > 1e-3  # a real approximation


def test_cross_attention_and_non_divisible_lengths():
    q, k, v = qkv(nq=150, nk=37)
    m = build("reformer", bucket_size=10, n_hashes=2)
    out = m(q, k, v)
    assert out.shape == (2, 3, 150, 8) and torch.isfinite(out).all()
    # bucket covering all keys: exact cross attention
    m = build("reformer", bucket_size=37, n_hashes=2)
    assert rel(m(q, k, v), dense_attention(q, k, v)) < 1e-12


@pytest.mark.parametrize("nq,nk", [(20, 30), (50, 20)])
def test_shared_qk_rejects_cross_unless_nq_multiple_of_nk(nq, nk):
    q, k, v = qkv(nq=nq, nk=nk)
    with pytest.raises(NotImplementedError, match=f"Nq={nq}, Nk={nk}"):
        build("reformer", shared_qk=True)(q, k, v)


def _shared_chunks_reference(q, v, scale, nk):
    """Dense shared-QK attention of each consecutive query chunk of nk onto itself with values v."""
    return torch.cat([shared_reference(q[:, :, i : i + nk], v, scale) for i in range(0, q.shape[2], nk)], 2)


@pytest.mark.parametrize("bucket_size,n_hashes", [(32, 1), (16, 3)])  # one chunk; two chunks + look-back
def test_shared_qk_query_chunks_exact_when_every_key_visible(bucket_size, n_hashes):
    # Nq = 3·Nk: each chunk of Nk queries attends to its own normalised queries with the layer's v
    q, k, v = qkv(nq=96, nk=32)
    m = build("reformer", bucket_size=bucket_size, n_hashes=n_hashes, shared_qk=True)
    out = m(q, k, v)
    assert out.shape == (2, 3, 96, 8)
    assert rel(out, _shared_chunks_reference(q, v, 16 ** -0.5, 32)) < 1e-12
    m.reseed(0)
    assert torch.equal(out, m(q, torch.zeros_like(k), v))  # k ignored


def test_shared_qk_query_chunks_fresh_rotations_per_chunk():
    """Independent reference: chunk i hashed with the i-th of c rotation sets drawn from the seed;
    rounds combine as softmax over visible pairs counted with multiplicity."""
    nk, c, bs, rounds, d = 48, 3, 6, 3, 16
    q, k, v = qkv(nq=c * nk, nk=nk, d=d)
    m = build("reformer", bucket_size=bs, n_hashes=rounds, shared_qk=True)
    m.reseed(5)
    out = m(q, k, v)
    n_chunks = nk // bs
    rot = torch.randn(c, d, rounds, n_chunks // 2, generator=torch.Generator().manual_seed(5), dtype=q.dtype)
    scale = d ** -0.5
    refs = []
    for i in range(c):
        x = q[:, :, i * nk : (i + 1) * nk]
        r = torch.einsum("bhnd,dri->bhrni", x, rot[i])
        buckets = torch.cat([r, -r], -1).argmax(-1)
        chunk = (buckets * nk + torch.arange(nk)).argsort(-1).argsort(-1) // bs  # (B, H, R, N)
        cq, ck = chunk.unsqueeze(-1), chunk.unsqueeze(-2)
        count = ((cq == ck) | (cq == (ck + 1) % n_chunks)).sum(2).to(q.dtype)
        s = torch.einsum("bhid,bhjd->bhij", x, torch.nn.functional.normalize(x, dim=-1)) * scale
        s = s.masked_fill(torch.eye(nk, dtype=torch.bool), -5e4)
        w = count * torch.exp(s - s.amax(-1, keepdim=True))
        refs.append((w @ v) / w.sum(-1, keepdim=True))
    assert rel(out, torch.cat(refs, 2)) < 1e-12
    assert rel(out, _shared_chunks_reference(q, v, scale, nk)) > 1e-3  # a real approximation
    # chunk 1 hashed with chunk 0's rotations would differ: the chunks do not share rotations
    m.reseed(5)
    same = m(q[:, :, nk : 2 * nk], k, v)
    assert not torch.allclose(same, out[:, :, nk : 2 * nk])


def test_seeded_repeatability_and_dtypes():
    q, k, v = qkv(nq=70, dtype=torch.float32)
    m = build("reformer", bucket_size=8, n_hashes=3)
    m.reseed(5)
    a = m(q, k, v)
    m.reseed(5)
    assert torch.equal(a, m(q, k, v))
    m.reseed(6)
    assert not torch.equal(a, m(q, k, v))
    assert m(q.half(), k.half(), v.half()).dtype == torch.float16
    assert m(q.double(), k.double(), v.double()).dtype == torch.float64


def test_gradients_flow():
    q, k, v = (t.requires_grad_() for t in qkv(nq=40, dtype=torch.float32))
    build("reformer", bucket_size=8, n_hashes=2)(q, k, v, causal=True).sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize(
    "knobs", [{"bucket_size": 0}, {"bucket_size": 1.5}, {"n_hashes": 0}, {"n_hashes": 2.0}, {"shared_qk": "yes"}]
)
def test_bad_knobs(knobs):
    with pytest.raises(ValueError, match="method\\."):
        build("reformer", **knobs)
