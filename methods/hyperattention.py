"""HyperAttention: sortLSH block-diagonal attention plus a uniformly sampled residual.

Han, Jayaram, Karbasi, Mirrokni, Woodruff, Zandieh, "HyperAttention: Long-context Attention in
Near-Linear Time" (2023); follows the official ``insuhan/hyper-attn`` code
(``models/attention/hyper_attn.py``, ``angular_lsh.py``, ``utils.py``), re-written here.

Non-causal (``forward_no_causal_mask`` in the official code):

1. Angular LSH with ``lsh_num_projs`` Gaussian directions (shared by all batches and heads):
   the sign bits give a bucket id, mapped through the reflected Gray code so that neighbouring
   ids differ in one bit; queries and keys are stably sorted by it.
2. Block-diagonal attention in sorted order: keys in blocks of ``block_size``, the sorted queries
   cut into as many equal blocks; exact attention within each block (with its log-sum-exp).
3. Residual: ``sample_size`` key indices drawn uniformly with replacement; each query attends to
   the sampled keys outside its own block, its log-sum-exp raised by log(Nk / sample_size).
4. The two parts are merged by their log-sum-exps (``add_self_attentions``) and un-sorted.
   With one block (``block_size >= Nk``) there is no residual and the result is exact.
   If ``min_seq_len > Nq`` the call is exact attention (as in the official code).

Causal (the official recursion): if ``Nk <= min_seq_len`` exact causal attention; otherwise
(odd lengths padded by one zero row) both halves go through the causal routine as extra heads,
the lower-left block (second-half queries, first-half keys) through the non-causal routine, and
the lower half's two results are merged by log-sum-exp.

Departures: padded keys of the last block are masked out (the official code pads with zero keys
that enter the last block's softmax); the residual mask is always applied (the official CUDA
path omits it); Nq != Nk is supported by cutting the sorted queries into ``ceil(Nk/block_size)``
blocks of ``ceil(Nq/blocks)``; the LSH directions are drawn from the run's generator at each call
(the official module draws them once at construction); exact parts are computed in PyTorch in
query chunks (no flash kernel), so memory stays bounded but the exact fallback below
``min_seq_len`` costs O(n²) time. ``extra_stats()['exact_fallback']`` is 1 when a call was
entirely exact because of ``min_seq_len``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from . import register
from .base import AttentionMethod, check_positive_int

_CHUNK_ELEMS = 1 << 21  # score entries per chunk in the exact parts (cache-sized blocks)


def _attn_lse(q: Tensor, k: Tensor, v: Tensor, scale: float, *, bias: Tensor | None = None,
              bias_rows=None, causal: bool = False) -> tuple[Tensor, Tensor]:
    """Exact attention and its log-sum-exp over the last two dims, chunked over query rows.

    q (..., Nq, D), k (..., Nk, D), v (..., Nk, Dv); ``bias`` broadcastable to (..., Nq, Nk)
    with -inf for excluded entries, or ``bias_rows(r0, r1)`` giving it for query rows r0:r1
    (so that no (Nq × Nk)-sized bias is held); ``causal`` masks key j > query i (Nq == Nk).
    Rows with every entry excluded give output 0 and log-sum-exp -inf.
    """
    nq, nk = q.shape[-2], k.shape[-2]
    lead = max(1, math.prod(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])))
    rows = max(1, _CHUNK_ELEMS // (lead * nk))
    outs, lses = [], []
    for r0 in range(0, nq, rows):
        r1 = min(nq, r0 + rows)
        s = (q[..., r0:r1, :] @ k.transpose(-1, -2)) * scale
        if bias is not None:
            s = s + (bias if bias.shape[-2] == 1 else bias[..., r0:r1, :])
        if bias_rows is not None:
            s = s + bias_rows(r0, r1)
        if causal:
            keep = torch.arange(r0, r1, device=q.device).unsqueeze(-1) >= torch.arange(nk, device=q.device)
            s = s.masked_fill(~keep, float("-inf"))
        mx = s.amax(-1, keepdim=True)
        mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
        p = torch.exp(s - mx)
        den = p.sum(-1, keepdim=True)
        outs.append((p @ v) / den.clamp_min(torch.finfo(den.dtype).tiny))
        lses.append((den.log() + mx).squeeze(-1))
    return torch.cat(outs, -2), torch.cat(lses, -1)


def _merge(o1: Tensor, l1: Tensor, o2: Tensor, l2: Tensor) -> tuple[Tensor, Tensor]:
    """Combine two partial attentions over disjoint key sets by their log-sum-exps."""
    lse = torch.logaddexp(l1, l2)
    w1 = torch.exp(l1 - lse).unsqueeze(-1)
    w2 = torch.exp(l2 - lse).unsqueeze(-1)
    return w1 * o1 + w2 * o2, lse


def _lsh_codes(x: Tensor, proj: Tensor) -> Tensor:
    """Gray-coded angular-LSH bucket of each row of x (..., N, D) -> (..., N) int64."""
    bits = (x @ proj) > 0
    ids = (bits.long() << torch.arange(proj.shape[-1], device=x.device)).sum(-1)
    return ids ^ (ids >> 1)


@register("hyperattention")
class HyperAttention(AttentionMethod):
    """sortLSH block-diagonal + uniform-sample residual attention; causal by recursive halving.

    Knobs (official defaults): ``lsh_num_projs`` (7), ``block_size`` (256), ``sample_size`` (256),
    ``min_seq_len`` (4096): below it the call (causal: each diagonal block) is exact.
    """

    supports_causal = True
    supports_bidirectional = True
    supports_cross = True

    def __init__(self, lsh_num_projs: int = 7, block_size: int = 256, sample_size: int = 256,
                 min_seq_len: int = 4096) -> None:
        super().__init__()
        if isinstance(lsh_num_projs, bool) or not isinstance(lsh_num_projs, int) or not 0 <= lsh_num_projs <= 30:
            raise ValueError(f"method.lsh_num_projs must be an integer in [0, 30], got {lsh_num_projs!r}.")
        if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 0:
            raise ValueError(f"method.sample_size must be a non-negative integer, got {sample_size!r}.")
        self.lsh_num_projs = lsh_num_projs
        self.block_size = check_positive_int("block_size", block_size)
        self.sample_size = sample_size
        self.min_seq_len = check_positive_int("min_seq_len", min_seq_len)

    # --- non-causal ----------------------------------------------------------------------
    def _noncausal(self, q: Tensor, k: Tensor, v: Tensor, scale: float, proj: Tensor,
                   gen: torch.Generator) -> tuple[Tensor, Tensor]:
        B, H, nq, D = q.shape
        nk, dv = k.shape[2], v.shape[-1]
        if self.min_seq_len > nq:
            return _attn_lse(q, k, v, scale)
        G = B * H
        q, k, v = q.reshape(G, nq, D), k.reshape(G, nk, D), v.reshape(G, nk, dv)
        q_idx = torch.sort(_lsh_codes(q, proj), dim=-1, stable=True).indices
        k_idx = torch.sort(_lsh_codes(k, proj), dim=-1, stable=True).indices
        qs = q.gather(1, q_idx.unsqueeze(-1).expand(G, nq, D))
        ks = k.gather(1, k_idx.unsqueeze(-1).expand(G, nk, D))
        vs = v.gather(1, k_idx.unsqueeze(-1).expand(G, nk, dv))

        bs = self.block_size
        nb = -(-nk // bs)
        qbs = -(-nq // nb)
        pad_k, pad_q = nb * bs - nk, nb * qbs - nq
        qb = F.pad(qs, (0, 0, 0, pad_q)).view(G, nb, qbs, D)
        kb = F.pad(ks, (0, 0, 0, pad_k)).view(G, nb, bs, D)
        vb = F.pad(vs, (0, 0, 0, pad_k)).view(G, nb, bs, dv)
        bias = None
        if pad_k:
            bias = torch.zeros(nb * bs, dtype=q.dtype, device=q.device)
            bias[nk:] = float("-inf")
            bias = bias.view(1, nb, 1, bs)
        out, lse = _attn_lse(qb, kb, vb, scale, bias=bias)
        out, lse = out.reshape(G, nb * qbs, dv)[:, :nq], lse.reshape(G, nb * qbs)[:, :nq]

        if self.sample_size > 0 and nb > 1:
            s = self.sample_size
            pick = torch.randint(nk, (G, s), device=q.device, generator=gen)
            k_smp = ks.gather(1, pick.unsqueeze(-1).expand(G, s, D))
            v_smp = vs.gather(1, pick.unsqueeze(-1).expand(G, s, dv))
            pick_block = (pick // bs).unsqueeze(1)  # (G, 1, s)

            def res_bias(r0: int, r1: int) -> Tensor:  # -inf where the sample lies in the query's own block
                same = (torch.arange(r0, r1, device=q.device) // qbs).view(1, -1, 1) == pick_block
                return torch.zeros(same.shape, dtype=q.dtype, device=q.device).masked_fill_(same, float("-inf"))

            o_res, l_res = _attn_lse(qs, k_smp, v_smp, scale, bias_rows=res_bias)
            out, lse = _merge(out, lse, o_res, l_res + math.log(nk / s))

        inv = torch.empty_like(q_idx).scatter_(1, q_idx, torch.arange(nq, device=q.device).expand(G, nq))
        out = out.gather(1, inv.unsqueeze(-1).expand(G, nq, dv))
        lse = lse.gather(1, inv)
        return out.view(B, H, nq, dv), lse.view(B, H, nq)

    # --- causal ----------------------------------------------------------------------------
    def _causal(self, q: Tensor, k: Tensor, v: Tensor, scale: float, proj: Tensor,
                gen: torch.Generator) -> tuple[Tensor, Tensor]:
        B, H, n, D = q.shape
        dv = v.shape[-1]
        if n <= self.min_seq_len:
            return _attn_lse(q, k, v, scale, causal=True)
        odd = n % 2
        if odd:  # one zero row at the end; causality keeps it out of every real query
            q, k, v = (F.pad(t, (0, 0, 0, 1)) for t in (q, k, v))
        m = (n + odd) // 2
        o_bd, l_bd = self._causal(q.reshape(B, 2 * H, m, D), k.reshape(B, 2 * H, m, D),
                                  v.reshape(B, 2 * H, m, dv), scale, proj, gen)
        o_bd, l_bd = o_bd.reshape(B, H, 2 * m, dv), l_bd.reshape(B, H, 2 * m)
        o_off, l_off = self._noncausal(q[:, :, m:], k[:, :, :m], v[:, :, :m], scale, proj, gen)
        o_lo, l_lo = _merge(o_bd[:, :, m:], l_bd[:, :, m:], o_off, l_off)
        out = torch.cat((o_bd[:, :, :m], o_lo), 2)
        lse = torch.cat((l_bd[:, :, :m], l_lo), 2)
        return out[:, :, :n], lse[:, :, :n]

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
        gen = self.generator(q.device)
        proj = torch.randn(q.shape[-1], self.lsh_num_projs, device=q.device, dtype=q.dtype, generator=gen)
        if causal:
            out, _ = self._causal(q, k, v, scale, proj, gen)
            fallback = q.shape[2] <= self.min_seq_len
        else:
            out, _ = self._noncausal(q, k, v, scale, proj, gen)
            fallback = q.shape[2] < self.min_seq_len
        self._stats = {"exact_fallback": float(fallback)}
        return out
