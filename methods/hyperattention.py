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
(the official module draws them once at construction); exact parts are computed by default in
PyTorch in query chunks (no flash kernel; every score of a causal block, masked ones included), so
memory stays bounded but the exact fallback below ``min_seq_len`` costs O(n²) time;
``exact_kernel='flash'`` computes them with PyTorch's fused CPU flash kernel instead (the official
code's FlashAttention role; it skips the causally masked blocks), equal up to float rounding.
``extra_stats()['exact_fallback']`` is 1 when a call was entirely exact because of ``min_seq_len``.

Evaluation (same arithmetic as steps 2-4 up to float rounding): a cache-sized group of query
blocks at a time (block and sample scores of about 2^21 entries) picks its rows from the
flattened inputs by index (no sorted copies of q, k, v), shares one row maximum between its
block and sample scores (instead of merging two log-sum-exps), and writes its normalised rows
and log-sum-exps straight to their original positions in one preallocated output (no un-sort).
Time O(n·(block_size + sample_size)·d) plus the sorts; memory O(n·d) plus one group. The
causal recursion merges each lower half into its output in place.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from attnbench.methods import register
from attnbench.methods.base import SCORE_TILE_ELEMS, AttentionMethod, check_positive_int, score_groups



EXACT_KERNELS = ("torch", "flash")


def _attn_lse(q: Tensor, k: Tensor, v: Tensor, scale: float, *, causal: bool = False,
              kernel: str = "torch") -> tuple[Tensor, Tensor]:
    """Exact attention and its log-sum-exp over the last two dims.

    q (..., Nq, D), k (..., Nk, D), v (..., Nk, Dv) with equal leading dims; ``causal`` masks
    key j > query i (Nq == Nk). ``kernel='torch'``: chunked over query rows, each chunk written into
    one preallocated output (every score computed, masked ones included). ``kernel='flash'``:
    PyTorch's fused flash-attention CPU kernel, which returns the log-sum-exp and skips the blocks the
    causal mask removes (the official code calls FlashAttention here).
    """
    nq, nk = q.shape[-2], k.shape[-2]
    lead = q.shape[:-2]
    if kernel == "flash":
        if q.device.type != "cpu":
            raise ValueError(f"method.exact_kernel=flash runs PyTorch's fused CPU kernel; on {q.device.type} "
                             "use method.exact_kernel=torch.")
        dv, width = v.shape[-1], max(q.shape[-1], v.shape[-1])  # the kernel takes one head size: zero columns
        flat = [F.pad(t, (0, width - t.shape[-1])).reshape(1, -1, t.shape[-2], width) for t in (q, k, v)]
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(*flat, 0.0, causal, scale=scale)[:2]
        return out[..., :dv].reshape(*lead, nq, dv), lse.to(q.dtype).reshape(*lead, nq)
    rows = max(1, SCORE_TILE_ELEMS // (max(1, math.prod(lead)) * nk))
    out = q.new_empty(*lead, nq, v.shape[-1])
    lse = q.new_empty(*lead, nq)
    for r0 in range(0, nq, rows):
        r1 = min(nq, r0 + rows)
        s = (q[..., r0:r1, :] @ k.transpose(-1, -2)).mul_(scale)
        if causal:
            drop = torch.arange(r0, r1, device=q.device).unsqueeze(-1) < torch.arange(nk, device=q.device)
            s.masked_fill_(drop, float("-inf"))
        mx = s.amax(-1, keepdim=True)  # finite: every row keeps at least one key
        p = s.sub_(mx).exp_()
        den = p.sum(-1, keepdim=True)
        torch.div(p @ v, den, out=out[..., r0:r1, :])
        torch.add(den.log_(), mx, out=lse[..., r0:r1].unsqueeze(-1))
    return out, lse


def _merge_(o1: Tensor, l1: Tensor, o2: Tensor, l2: Tensor) -> None:
    """Combine two partial attentions over disjoint key sets by their log-sum-exps, into o1, l1."""
    lse = torch.logaddexp(l1, l2)
    o1.mul_(torch.sub(l1, lse).exp_().unsqueeze(-1))
    o1.add_(o2.mul_(torch.sub(l2, lse).exp_().unsqueeze(-1)))
    l1.copy_(lse)


def _lsh_codes(x: Tensor, proj: Tensor) -> Tensor:
    """Gray-coded angular-LSH bucket of each row of x (..., N, D) -> (..., N) int64."""
    bits = (x @ proj) > 0
    ids = torch.zeros(bits.shape[:-1], dtype=torch.long, device=x.device)
    for p in range(proj.shape[-1]):
        ids.bitwise_or_(bits[..., p].long().bitwise_left_shift_(p))
    return ids ^ (ids >> 1)


def _pad_last(rows: Tensor, width: int) -> Tensor:
    """Pad rows (h, w) to (h, width) by repeating its last column."""
    if rows.shape[1] == width:
        return rows
    return torch.cat((rows, rows[:, -1:].expand(-1, width - rows.shape[1])), 1)


@register("hyperattention")
class HyperAttention(AttentionMethod):
    """sortLSH block-diagonal + uniform-sample residual attention; causal by recursive halving.

    Knobs (official defaults): ``lsh_num_projs`` (7), ``block_size`` (256), ``sample_size`` (256),
    ``min_seq_len`` (4096): below it the call (causal: each diagonal block) is exact. ``exact_kernel``
    computes those exact parts: ``'torch'`` (default) chunked PyTorch products, ``'flash'`` PyTorch's fused
    CPU flash kernel with its log-sum-exp (as the official code uses FlashAttention; CPU only; equal up to
    float rounding, and faster: it skips the causally masked blocks).
    """

    supports_grad = False  # chunked evaluation into preallocated outputs (out=...): no autograd

    supports_causal = True
    supports_bidirectional = True
    version = 1
    supports_cross = True

    @classmethod
    def exact_knobs(cls, n: int) -> dict:
        return {"block_size": n, "min_seq_len": 1}  # one block holding every key

    def __init__(self, lsh_num_projs: int = 7, block_size: int = 256, sample_size: int = 256,
                 min_seq_len: int = 4096, exact_kernel: str = "torch") -> None:
        super().__init__()
        if isinstance(lsh_num_projs, bool) or not isinstance(lsh_num_projs, int) or not 0 <= lsh_num_projs <= 30:
            raise ValueError(f"method.lsh_num_projs must be an integer in [0, 30], got {lsh_num_projs!r}.")
        if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 0:
            raise ValueError(f"method.sample_size must be a non-negative integer, got {sample_size!r}.")
        self.lsh_num_projs = lsh_num_projs
        self.block_size = check_positive_int("block_size", block_size)
        self.sample_size = sample_size
        self.min_seq_len = check_positive_int("min_seq_len", min_seq_len)
        if exact_kernel not in EXACT_KERNELS:
            raise ValueError(f"method.exact_kernel must be one of {EXACT_KERNELS}, got {exact_kernel!r}.")
        self.exact_kernel = exact_kernel

    # --- non-causal ----------------------------------------------------------------------
    def _noncausal(self, q: Tensor, k: Tensor, v: Tensor, scale: float, proj: Tensor,
                   gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """Sorted block-diagonal part plus sampled residual, one group of query blocks at a time.

        Rows of the flattened (B·H·N, ·) inputs are picked with ``index_select`` (no permuted
        copies of q, k, v); each group's block scores (qbs × block_size) and sample scores
        (qbs × sample_size) share one row maximum, and the normalised rows and their
        log-sum-exps go straight to their original positions (``index_copy_``).
        """
        B, H, nq, D = q.shape
        nk, dv = k.shape[2], v.shape[-1]
        if self.min_seq_len > nq:
            return _attn_lse(q, k, v, scale, kernel=self.exact_kernel)
        G, dev, dt = B * H, q.device, q.dtype
        qf, kf, vf = q.reshape(G * nq, D), k.reshape(G * nk, D), v.reshape(G * nk, dv)
        head = torch.arange(G, device=dev).unsqueeze(1)
        # flattened row of each sorted position (stable sort by Gray-coded bucket)
        qi = torch.sort(_lsh_codes(qf.view(G, nq, D), proj), dim=-1, stable=True).indices.add_(head * nq)
        ki = torch.sort(_lsh_codes(kf.view(G, nk, D), proj), dim=-1, stable=True).indices.add_(head * nk)

        bs = self.block_size
        nb = -(-nk // bs)
        qbs = -(-nq // nb)
        pad_k = nb * bs - nk  # padded key slots at the end of the last block: masked out
        s = self.sample_size if nb > 1 else 0  # one block covers every pair: no residual
        if s:
            pick = torch.randint(nk, (G, s), device=dev, generator=gen)  # sorted key positions
            srows = ki.gather(1, pick).view(-1)
            k_smp = kf.index_select(0, srows).view(G, s, D)
            v_smp = vf.index_select(0, srows).view(G, s, dv)
            pick_block = (pick // bs).view(G, 1, 1, s)
            w = torch.tensor(nk / s, dtype=dt, device=dev)  # residual log-sum-exp raised by log(Nk / s)

        out = q.new_empty(G * nq, dv)
        lse = q.new_empty(G * nq)
        width = qbs * (bs + s)
        for h0, h1, c0, c1 in score_groups(G, nb, width, SCORE_TILE_ELEMS):
            nh, gc = h1 - h0, c1 - c0
            nv = min(c1 * qbs, nq) - c0 * qbs  # real (unpadded) query slots of the group
            if nv <= 0:  # a group of padding only
                continue
            qrows = qi[h0:h1, c0 * qbs: c0 * qbs + nv]
            krows = _pad_last(ki[h0:h1, c0 * bs: c1 * bs], gc * bs).reshape(-1)
            qb = qf.index_select(0, _pad_last(qrows, gc * qbs).reshape(-1)).view(nh, gc, qbs, D).mul_(scale)
            kb = kf.index_select(0, krows).view(nh, gc, bs, D)
            vb = vf.index_select(0, krows).view(nh, gc, bs, dv)
            sc = torch.matmul(qb, kb.transpose(-1, -2))  # (nh, gc, qbs, bs)
            if pad_k and c1 == nb:
                sc[:, -1, :, bs - pad_k:] = float("-inf")
            mx = sc.amax(-1, keepdim=True)  # finite: every key block holds a real key
            if s:
                sr = torch.bmm(qb.view(nh, gc * qbs, D), k_smp[h0:h1].transpose(1, 2)).view(nh, gc, qbs, s)
                # a sample in the query's own block is already counted there: weight 0. Its
                # score is one of that block's scores, so the row maximum is unchanged.
                own = pick_block[h0:h1] == torch.arange(c0, c1, device=dev).view(1, gc, 1, 1)
                wr = torch.where(own, 0.0, w)  # (nh, gc, 1, s)
                torch.maximum(mx, sr.amax(-1, keepdim=True), out=mx)
            eh = sc.sub_(mx).exp_()
            num = (eh @ vb).view(nh, gc * qbs, dv)
            den = eh.sum(-1).view(nh, gc * qbs)
            if s:
                er = sr.sub_(mx).exp_().mul_(wr).view(nh, gc * qbs, s)
                num.baddbmm_(er, v_smp[h0:h1])
                den.add_(er.sum(-1))
            num.div_(den.unsqueeze(-1))
            den.log_().add_(mx.view(nh, gc * qbs))
            dst = qrows.reshape(-1)
            out.index_copy_(0, dst, num[:, :nv].reshape(-1, dv))
            lse.index_copy_(0, dst, den[:, :nv].reshape(-1))
        return out.view(B, H, nq, dv), lse.view(B, H, nq)

    # --- causal ----------------------------------------------------------------------------
    def _causal(self, q: Tensor, k: Tensor, v: Tensor, scale: float, proj: Tensor,
                gen: torch.Generator) -> tuple[Tensor, Tensor]:
        B, H, n, D = q.shape
        dv = v.shape[-1]
        if n <= self.min_seq_len:
            return _attn_lse(q, k, v, scale, causal=True, kernel=self.exact_kernel)
        odd = n % 2
        if odd:  # one zero row at the end; causality keeps it out of every real query
            q, k, v = (F.pad(t, (0, 0, 0, 1)) for t in (q, k, v))
        m = (n + odd) // 2
        o_bd, l_bd = self._causal(q.reshape(B, 2 * H, m, D), k.reshape(B, 2 * H, m, D),
                                  v.reshape(B, 2 * H, m, dv), scale, proj, gen)
        o_bd, l_bd = o_bd.reshape(B, H, 2 * m, dv), l_bd.reshape(B, H, 2 * m)
        o_off, l_off = self._noncausal(q[:, :, m:], k[:, :, :m], v[:, :, :m], scale, proj, gen)
        _merge_(o_bd[:, :, m:], l_bd[:, :, m:], o_off, l_off)  # lower half, in place
        return o_bd[:, :, :n], l_bd[:, :, :n]

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
