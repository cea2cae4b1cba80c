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
* Shared-QK cross-attention, Nq = c·Nk (c an integer), as the KDEformer and WildCat BigGAN scripts
  run it (majid-daliri/kdeformer ``biggan_models/model_reformer.py`` ``fastformer``: 4096 queries,
  1024 keys): the queries are cut into c consecutive chunks of Nk; each chunk runs shared-QK LSH
  attention on its own, with its own normalised queries as keys and the layer's v as values (the
  j-th query of a chunk carries value v_j), and fresh random rotations per chunk (a new call, hence a
  new ``torch.randn``, per chunk in the reference; here one draw of c rotation sets from the method's
  seeded generator). The chunks are evaluated together (folded into the batch). k is ignored. Nq not
  a multiple of Nk raises NotImplementedError.

Departures, all documented here:

* ``shared_qk=False`` (default) hashes q and k separately with the same rotations, sorts each by
  (bucket, position), and cuts both into the same number C = ceil(Nk / bucket_size) of chunks:
  query chunk c (Nq/C queries) attends to key chunks c and c-1. Keys are not normalised and
  there is no self-mask, so with C = 1 (bucket_size ≥ Nk) the method is exact softmax attention.
  This also gives cross-attention (Nq != Nk, e.g. BigGAN's 4096 queries × 1024 keys). The
  KDEformer and WildCat BigGAN scripts instead ran shared-QK Reformer on chunks of the queries and
  ignored the keys entirely (``shared_qk=True`` above); their FIDs are therefore not the numbers
  this variant should reproduce.
* With C = 1 there is no look-back (it would repeat the only chunk).
* Lengths that are not a multiple of the chunk size are padded; padded keys are sorted last and
  masked, padded queries are dropped. The reference instead zero-pads q and v to a multiple of
  2·bucket_size (T2T-ViT layer 2: 784 → 792 with bucket_size 12) and keeps the zero rows: they hash to
  bucket 0 (all rotations of a zero vector tie), sort among the real tokens, and stay in the softmax
  as keys with score 0 and value 0, so a query whose chunk (or look-back chunk) holds padding has its
  weights shrunk by the extra exp(0) terms in the normaliser. Ours masks them (exact renormalisation
  over the real keys). Bucket counts always agree (2·ceil(n / (2·bucket_size))); chunk counts agree
  when ceil(n / bucket_size) is even (784 / 12: 66 chunks), otherwise ours has one chunk fewer (the
  reference pads a whole extra chunk of zeros).
* Look-one-back wraps within a hashing round (the first chunk of a round looks back at that round's
  last chunk). The vendored lucidrains code lays all rounds' chunks end to end, so the first chunk of
  round r > 0 looks back at the last chunk of round r-1 (``ReformerAttention2`` in the same file, the
  HazyResearch/fly rewrite, notes this difference and keeps the look-back within the round, as here).
* Causal: positions are compared after sorting (future keys masked). With separate hashing
  a query may not see its own key, so each query also attends to its own key through one extra
  slot (duplicates of it in the chunks are masked): every row has a visible key, as in the
  shared-QK scheme where the diagonal always lies in the query's own chunk.
* The scale is the caller's ``scale`` (the vendored KDEformer version applied none; lucidrains
  uses d^-1/2).

Cost: hashing is O(n_hashes · n · d · n/bucket_size) (the bucket count grows with n, as in the
reference), attention O(n_hashes · n · bucket_size · d). The chunks are evaluated one round and a
cache-sized group of chunks at a time and the rounds are combined online (running log-sum-exp),
which is the same softmax-over-rounds weighting up to float rounding. Memory: O(Nq · Dv) plus
the hash codes and one block of scores; never Nq × Nk (unless bucket_size ≥ Nk).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from attnbench.methods import register
from attnbench.methods.base import SCORE_TILE_ELEMS, AttentionMethod, check_positive_int, resolve_budget

SELF_ATTN_VALUE = -5e4  # score of a token with itself in shared-QK mode (as in the reference)


def _gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """x: (B, H, N, D), idx: (B, H, R, M) -> (B, H, R, M, D) rows of x."""
    b, h, r, m = idx.shape
    flat = idx.reshape(b, h, r * m, 1).expand(-1, -1, -1, x.shape[-1])
    return x.gather(2, flat).reshape(b, h, r, m, x.shape[-1])


@register("reformer")
class Reformer(AttentionMethod):
    """LSH attention: ``n_hashes`` rounds of angular LSH, chunks of ``bucket_size`` with look-one-back."""

    supports_causal = True
    supports_bidirectional = True
    supports_cross = True  # shared_qk=False: any Nq, Nk; shared_qk=True: Nq a multiple of Nk (query chunks)
    version = 1

    @classmethod
    def exact_knobs(cls, n: int) -> dict:
        return {"bucket_size": n, "n_hashes": 1}  # one chunk holding every key

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
        the paper and the reference), so hashing costs O(n²·d / bucket_size) time, the one
        super-linear part of the method; it is done in row chunks so that memory stays O(n)
        instead of holding the (n × n_buckets) rotation products at once.

        Rotations (G, D, R, nb/2): one set per group of B/G consecutive batch entries (the query
        chunks folded into the batch by shared-QK cross-attention, chunk-major).
        """
        if rotations.dim() == 4:
            per = x.shape[0] // rotations.shape[0]
            return torch.cat([self._hash(x[i * per : (i + 1) * per], rot) for i, rot in enumerate(rotations)])
        b, h, n, d = x.shape
        r, half = rotations.shape[1], rotations.shape[2]
        rot_mat = rotations.reshape(d, r * half)
        rows = max(1, (1 << 22) // max(1, b * h * r * half))
        out = []
        for start in range(0, n, rows):
            rot = (x[:, :, start : start + rows] @ rot_mat).view(b, h, -1, r, half)  # (B, H, rows, R, nb/2)
            hi, hi_idx = rot.max(dim=-1)
            lo, lo_idx = rot.min(dim=-1)
            out.append(torch.where(hi >= -lo, hi_idx, lo_idx + half))
        return torch.cat(out, dim=2).transpose(2, 3)

    def causal_leak(self) -> str | None:
        return ("LSH attention sorts all tokens by bucket and cuts the sorted order into chunks, so later tokens "
                "move the chunk boundaries that decide which earlier keys a query sees (as in the reference).")

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
        nq, nk = q.shape[2], k.shape[2]
        if not self.shared_qk or nq == nk:
            return self._lsh(q, k, v, causal=causal, scale=scale)
        # shared-QK with Nq = c·Nk (the KDEformer/WildCat BigGAN scripts): c consecutive query chunks of
        # Nk, each attending shared-QK to its own normalised queries with the layer's v (value j for the
        # chunk's j-th query). The chunks are folded into the batch (chunk-major), one rotation set each.
        if nq % nk:
            raise NotImplementedError(
                f"reformer with shared_qk=True needs Nq to be a multiple of Nk (consecutive query chunks of Nk "
                f"each attend to themselves with v), got Nq={nq}, Nk={nk}; use shared_qk=False."
            )
        c = nq // nk
        bsz, heads, _, d = q.shape
        dv = v.shape[-1]
        qf = q.view(bsz, heads, c, nk, d).permute(2, 0, 1, 3, 4).reshape(c * bsz, heads, nk, d)
        vf = v.unsqueeze(0).expand(c, -1, -1, -1, -1).reshape(c * bsz, heads, nk, dv)
        out = self._lsh(qf, qf, vf, causal=causal, scale=scale, groups=c)  # k is ignored in shared-QK mode
        return out.view(c, bsz, heads, nk, dv).permute(1, 2, 0, 3, 4).reshape(bsz, heads, nq, dv)

    def _lsh(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float, groups: int = 1) -> Tensor:
        """LSH attention with Nq == Nk when shared; ``groups`` > 1 (shared only): the batch holds that many
        independent problems, chunk-major, each hashed with its own rotations."""
        bsz, heads, nq, d = q.shape
        nk, dv = k.shape[2], v.shape[-1]
        shared = self.shared_qk
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
            shape = (d, rounds, half) if groups == 1 else (groups, d, rounds, half)
            rotations = torch.randn(shape, generator=self.generator(dev), device=dev, dtype=q.dtype)
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
        self_attn = not shared and causal
        if self_attn:
            keys_self, v_self = pad_rows(keys, nq_pad), pad_rows(v, nq_pad)

        # --- chunked attention, a group of chunks of one round at a time -------------
        # Sorted chunk c of round r holds queries qperm[r, c·qc:(c+1)·qc] and keys kperm[r, c·bs:(c+1)·bs];
        # its keys are those of chunk c followed by those of chunk c-1 (wrapping). Groups of chunks
        # keep the score blocks small (O(SCORE_TILE_ELEMS) memory, cache-sized) instead of holding all
        # n_hashes·Nq·2·bucket_size scores at once; the rounds are combined online below.
        qchunks = qperm.view(bsz, heads, rounds, n_chunks, qc)
        kchunks = kperm.view(bsz, heads, rounds, n_chunks, bs)
        prev = (torch.arange(n_chunks, device=dev) - 1) % n_chunks
        kw = 2 * bs if n_chunks > 1 else bs
        group = max(1, SCORE_TILE_ELEMS // (bsz * heads * qc * (kw + 1)))
        neg_inf = float("-inf")
        acc = m_run = s_run = None
        for r in range(rounds):
            out_u = torch.empty(bsz, heads, nq_pad, dv, dtype=q.dtype, device=dev)
            lse_u = torch.empty(bsz, heads, nq_pad, dtype=q.dtype, device=dev)
            for c0 in range(0, n_chunks, group):
                c1 = min(n_chunks, c0 + group)
                qi = qchunks[:, :, r, c0:c1]  # (B, H, G, qc) query positions
                ki = kchunks[:, :, r, c0:c1]
                if n_chunks > 1:
                    ki = torch.cat([ki, kchunks[:, :, r, prev[c0:c1]]], dim=-1)  # (B, H, G, 2·bs)
                sq = _gather_rows(q_p, qi)
                dots = (sq @ _gather_rows(keys_p, ki).transpose(-1, -2)).mul_(scale)  # (B, H, G, qc, kw)
                qp, kp = qi.unsqueeze(-1), ki.unsqueeze(-2)
                if nk_pad > nk:
                    dots.masked_fill_(kp >= nk, neg_inf)
                if causal:
                    dots.masked_fill_(kp > qp, neg_inf)
                if shared:
                    dots.masked_fill_(kp == qp, SELF_ATTN_VALUE)
                if self_attn:
                    # own key through one extra slot; its copies inside the chunks are masked
                    dots.masked_fill_(kp == qp, neg_inf)
                    own = (sq * _gather_rows(keys_self, qi)).sum(-1, keepdim=True) * scale
                    dots = torch.cat([dots, own], dim=-1)
                lse = torch.logsumexp(dots, dim=-1, keepdim=True)
                probs = torch.exp(dots - lse)
                sv = _gather_rows(v_p, ki)
                if self_attn:
                    out = probs[..., :-1] @ sv + probs[..., -1:] * _gather_rows(v_self, qi)
                else:
                    out = probs @ sv
                # un-sort: write the group's rows at their original positions
                flat = qi.reshape(bsz, heads, -1)
                out_u.scatter_(2, flat.unsqueeze(-1).expand(-1, -1, -1, dv), out.reshape(bsz, heads, -1, dv))
                lse_u.scatter_(2, flat, lse.reshape(bsz, heads, -1))
            # --- combine rounds: weights softmax over rounds of the log-normalisers (online) ---
            if acc is None:
                acc, m_run, s_run = out_u, lse_u, torch.ones_like(lse_u)
            else:
                m_new = torch.maximum(m_run, lse_u)
                a, w = torch.exp(m_run - m_new), torch.exp(lse_u - m_new)
                acc = acc * a.unsqueeze(-1) + out_u * w.unsqueeze(-1)
                s_run = s_run * a + w
                m_run = m_new
        self._stats = {"n_chunks": float(n_chunks)}
        return (acc / s_run.unsqueeze(-1))[:, :, :nq]
