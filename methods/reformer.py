"""Reformer LSH attention (Kitaev, Kaiser & Levskaya, ICLR 2020).

Follows ``LSHAttention`` of lucidrains/reformer-pytorch, as vendored by the KDEformer authors
(majid-daliri/kdeformer ``Reformer.py``, also the basis of HazyResearch/fly's ``ReformerAttention``):

* angular LSH with random rotations R (d × n_buckets/2), one per hashing round, shared by batch
  and heads: ``bucket = argmax([xR, -xR])``;
* the sequence is sorted by (bucket, position) and cut into chunks of ``bucket_size``;
  every chunk attends to itself and to the previous chunk (look-one-back, wrapping around);
* each of the ``n_hashes`` rounds gives an output and a log-normaliser (logsumexp of its
  scores); the rounds are combined with weights softmax over rounds of those log-normalisers;
  pairs seen in several rounds are not de-duplicated (the vendored code's default);
* ``shared_qk=True`` is the paper's shared-QK attention: k is ignored, keys are the queries
  normalised to unit length, and a token attends to itself only with score -5e4 (only when
  nothing else is visible).

Departures, all documented here:

* ``shared_qk=False`` (default) hashes q and k separately with the same rotations, sorts each by
  (bucket, position), and cuts both into the same number C = ceil(Nk / bucket_size) of chunks:
  query chunk c (Nq/C queries) attends to key chunks c and c-1. Keys are not normalised and
  there is no self-mask, so with C = 1 (bucket_size ≥ Nk) the method is exact softmax attention.
  This also gives cross-attention (Nq != Nk, e.g. BigGAN's 4096 queries × 1024 keys). The
  KDEformer BigGAN script instead ran shared-QK Reformer on chunks of the queries and ignored
  the keys entirely; its FID is therefore not the number this variant should reproduce.
* With C = 1 there is no look-back (it would repeat the only chunk).
* Lengths that are not a multiple of the chunk size are padded; padded keys are sorted last and
  masked, padded queries are dropped (the reference requires n divisible by 2·bucket_size).
* Causal: positions are compared after sorting (future keys masked). With separate hashing
  a query may not see its own key, so each query also attends to its own key through one extra
  slot (duplicates of it in the chunks are masked): every row has a visible key, as in the
  shared-QK scheme where the diagonal always lies in the query's own chunk.
* The scale is the caller's ``scale`` (the vendored KDEformer version applied none; lucidrains
  uses d^-1/2).

Memory: O(n_hashes · Nq · 2·bucket_size) scores; never Nq × Nk (unless bucket_size ≥ Nk).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from . import register
from .base import AttentionMethod, check_positive_int, resolve_budget

SELF_ATTN_VALUE = -5e4  # score of a token with itself in shared-QK mode (as in the reference)


def _gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """x: (B, H, N, D), idx: (B, H, R, M) -> (B, H, R, M, D) rows of x."""
    b, h, r, m = idx.shape
    flat = idx.reshape(b, h, r * m, 1).expand(-1, -1, -1, x.shape[-1])
    return x.gather(2, flat).reshape(b, h, r, m, x.shape[-1])


def _look_one_back(x: Tensor) -> Tensor:
    """(..., C, S, *rest) chunks -> each chunk followed by the previous one (wrapping): (..., C, 2S, *rest)."""
    return torch.cat([x, x.roll(1, dims=3)], dim=4)


@register("reformer")
class Reformer(AttentionMethod):
    """LSH attention: ``n_hashes`` rounds of angular LSH, chunks of ``bucket_size`` with look-one-back."""

    supports_causal = True
    supports_bidirectional = True
    supports_cross = True  # with shared_qk=False (shared-QK needs Nq == Nk)

    def __init__(self, bucket_size: int = 64, n_hashes: int = 8, shared_qk: bool = False):
        super().__init__()
        resolve_budget("bucket_size", bucket_size, 1 << 30)  # int >= 1 or a fraction of n in (0, 1]
        check_positive_int("n_hashes", n_hashes)
        if not isinstance(shared_qk, bool):
            raise ValueError(f"method.shared_qk must be true or false, got {shared_qk!r}.")
        self.bucket_size = bucket_size
        self.n_hashes = n_hashes
        self.shared_qk = shared_qk

    def _hash(self, x: Tensor, rotations: Tensor) -> Tensor:
        """x: (B, H, N, D), rotations: (D, R, nb/2) -> buckets (B, H, R, N) in [0, nb).

        bucket = argmax over [xR, -xR]. The number of buckets grows with n (n / bucket_size, as in
        the paper), so hashing costs O(n²·d / bucket_size) time; it is done in row chunks so that
        memory stays O(n) instead of holding the (n × n_buckets) rotation products at once.
        """
        b, h, n, _ = x.shape
        r, half = rotations.shape[1], rotations.shape[2]
        rows = max(1, (1 << 22) // max(1, b * h * r * half))
        out = []
        for start in range(0, n, rows):
            rot = torch.einsum("bhnd,dri->bhrni", x[:, :, start : start + rows], rotations)
            hi, hi_idx = rot.max(dim=-1)
            lo, lo_idx = rot.min(dim=-1)
            out.append(torch.where(hi >= -lo, hi_idx, lo_idx + half))
        return torch.cat(out, dim=-1)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
        bsz, heads, nq, d = q.shape
        nk, dv = k.shape[2], v.shape[-1]
        shared = self.shared_qk
        if shared and nq != nk:
            raise NotImplementedError("reformer with shared_qk=True needs as many queries as keys; use shared_qk=False.")
        bs = resolve_budget("bucket_size", self.bucket_size, nk)
        n_chunks = math.ceil(nk / bs)
        rounds = self.n_hashes if n_chunks > 1 else 1  # one chunk: every round is the same exact attention
        qc = math.ceil(nq / n_chunks)  # queries per chunk (= bs when Nq == Nk and bs divides n)
        nk_pad, nq_pad = n_chunks * bs, n_chunks * qc
        if shared:
            keys = F.normalize(q, p=2, dim=-1)
            qc, nq_pad = bs, nk_pad
        else:
            keys = k
        dev = q.device

        # --- hash and sort by (bucket, position) ---------------------------------------
        if n_chunks > 1:
            half = math.ceil(n_chunks / 2)  # n_buckets = 2·half ≥ number of chunks
            rotations = torch.randn(d, rounds, half, generator=self.generator(dev), device=dev, dtype=q.dtype)
            kb = self._hash(k if not shared else q, rotations)
            qb = kb if shared else self._hash(q, rotations)
            n_buckets = 2 * half
        else:
            kb = torch.zeros(bsz, heads, 1, nk, dtype=torch.long, device=dev)
            qb = kb if shared else torch.zeros(bsz, heads, 1, nq, dtype=torch.long, device=dev)
            n_buckets = 1

        def sort_order(buckets: Tensor, n: int, n_pad: int) -> Tensor:
            # padded positions get bucket n_buckets so they sort last
            if n_pad > n:
                pad = torch.full((*buckets.shape[:-1], n_pad - n), n_buckets, dtype=buckets.dtype, device=dev)
                buckets = torch.cat([buckets, pad], dim=-1)
            pos = torch.arange(n_pad, device=dev)
            return (buckets * n_pad + pos).argsort(dim=-1)  # (B, H, R, n_pad) positions in sorted order

        kperm = sort_order(kb, nk, nk_pad)
        qperm = kperm if shared else sort_order(qb, nq, nq_pad)

        def pad_rows(x: Tensor, n_pad: int) -> Tensor:
            return F.pad(x, (0, 0, 0, n_pad - x.shape[2])) if n_pad > x.shape[2] else x

        keys_p, v_p = pad_rows(keys, nk_pad), pad_rows(v, nk_pad)
        q_p = pad_rows(q, nq_pad)

        # --- chunked attention -------------------------------------------------------
        sq = _gather_rows(q_p, qperm).reshape(bsz, heads, rounds, n_chunks, qc, d)
        sk = _gather_rows(keys_p, kperm).reshape(bsz, heads, rounds, n_chunks, bs, d)
        sv = _gather_rows(v_p, kperm).reshape(bsz, heads, rounds, n_chunks, bs, dv)
        qpos = qperm.reshape(bsz, heads, rounds, n_chunks, qc)
        kpos = kperm.reshape(bsz, heads, rounds, n_chunks, bs)
        if n_chunks > 1:
            sk, sv, kpos = _look_one_back(sk), _look_one_back(sv), _look_one_back(kpos)

        dots = torch.einsum("bhrcid,bhrcjd->bhrcij", sq, sk) * scale
        qp, kp = qpos.unsqueeze(-1), kpos.unsqueeze(-2)
        neg_inf = float("-inf")
        if nk_pad > nk:
            dots = dots.masked_fill(kp >= nk, neg_inf)
        if causal:
            dots = dots.masked_fill(kp > qp, neg_inf)
        if shared:
            dots = dots.masked_fill(kp == qp, SELF_ATTN_VALUE)
        extra = None
        if not shared and causal:
            # own key through one extra slot; its copies inside the chunks are masked
            dots = dots.masked_fill(kp == qp, neg_inf)
            k_self = _gather_rows(pad_rows(keys, nq_pad), qperm).reshape(bsz, heads, rounds, n_chunks, qc, d)
            extra = _gather_rows(pad_rows(v, nq_pad), qperm).reshape(bsz, heads, rounds, n_chunks, qc, dv)
            dots = torch.cat([dots, (sq * k_self).sum(-1, keepdim=True) * scale], dim=-1)

        lse = torch.logsumexp(dots, dim=-1, keepdim=True)
        probs = torch.exp(dots - lse)
        if extra is None:
            out = torch.einsum("bhrcij,bhrcjd->bhrcid", probs, sv)
        else:
            out = torch.einsum("bhrcij,bhrcjd->bhrcid", probs[..., :-1], sv) + probs[..., -1:] * extra

        # --- unsort and combine rounds ---------------------------------------------
        out = out.reshape(bsz, heads, rounds, nq_pad, dv)
        lse = lse.reshape(bsz, heads, rounds, nq_pad)
        inv = qperm.argsort(dim=-1)
        out = out.gather(3, inv.unsqueeze(-1).expand(-1, -1, -1, -1, dv))[:, :, :, :nq]
        lse = lse.gather(3, inv)[:, :, :, :nq]
        weights = torch.softmax(lse, dim=2).unsqueeze(-1)
        self._stats = {"n_chunks": float(n_chunks)}
        return (out * weights).sum(dim=2)
