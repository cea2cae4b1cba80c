"""KDEformer (Zandieh, Han, Daliri, Karbasi, ICML 2023): LSH block-diagonal + sampled residual.

The practical algorithm (the paper's Algorithm 3), as in the official code
(github.com/majid-daliri/kdeformer, ``KDEformer.py`` and ``vit_models/kdeformer.py``):

1. Scaling: ``exp(scale·q·k) = exp(q'·k')`` with ``q' = sqrt(scale)·q``, ``k' = sqrt(scale)·k``
   (the ViT variant's ``softmax_temp``; BigGAN/GloVe pass already-scaled inputs, i.e. scale=1).
2. Angular LSH: ``num_projs`` Gaussian directions (fresh per call, independent per batch×head,
   as in ``KDEformer.py``); sign bits -> integer code -> its rank in the reflected Gray-code order;
   keys and queries are sorted (stably) by that rank.
3. Heavy part: sorted keys are cut into ``ceil(Nk/bucket_size)`` blocks and sorted queries into as
   many blocks; each query block sees its key block exactly: ``exp(q'K_bᵀ)·[V_b | 1]``.
4. Residual: ``sample_size`` keys drawn with replacement with probability
   ``p_j ∝ ‖[v_j, 1]‖ / λ + 1/Nk``, λ the top eigenvalue of ``[V,1]ᵀ[V,1]`` (power iteration),
   exactly the official code's formula (norm, not squared norm, over λ = ‖[V,1]‖²_op).
   A sampled key adds ``exp(q'k_sᵀ)·[v_s, 1]/(m·p_s)`` to every query except those of the query
   block paired with the sampled key's block (already counted exactly there): unbiased for the
   off-block-diagonal part.
5. Output = numerator / estimated denominator (the last channel of ``[V | 1]``).

Departures, all deliberate:
- Numerics: every exponent of a query row is shifted by that row's largest included score
  (block keys and unmasked samples); the shift cancels in the ratio. The official code instead
  casts BigGAN inputs to float64 and takes raw ``exp``. Here fp64 inputs stay fp64 (GloVe) and
  fp16/bf16/fp32 are computed in fp32.
- Gray order: the official code indexes its Gray table by the code (sort key ``gray(c)``), which
  for ``num_projs >= 3`` does not put one-bit neighbours side by side; we sort by the rank
  ``gray⁻¹(c)`` so adjacent buckets differ in exactly one bit, as the paper describes.
- Lengths not divisible by ``bucket_size`` are split into near-equal blocks (sizes differing by at
  most one, each ``<= bucket_size``) instead of asserting / reshaping across batch boundaries;
  query blocks likewise (so Nq != Nk cross-attention works: block i of queries meets block i of keys).
- The top eigenvalue uses 32 power iterations done as 5 normalised squarings of the Gram matrix
  (same estimate ``‖G·G³²x₀‖``, fewer kernel launches); x₀ comes from the seeded generator.
- ``sample_size = 0`` turns the residual off (heavy part only), as in the official code.
Bidirectional only (the official code has no causal variant). The PyTorch path evaluates a
cache-sized group of query blocks at a time (block and sample scores of about 2^21 entries)
and writes each group's rows into one preallocated output: time O(n·(bucket_size +
sample_size)·d), memory O(n·d) plus one group; never a whole-sequence score tensor.
On CUDA (fp16/bf16/fp32) the block-diagonal and sampled parts run in one fused Triton kernel
(``methods/kernels/kdeformer.py``); elsewhere in PyTorch.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from attnbench.methods import register
from attnbench.methods.base import SCORE_TILE_ELEMS, AttentionMethod, check_positive_int, score_groups

_POWER_SQUARINGS = 5  # 2**5 = 32 power iterations, as vit_models/kdeformer.py


def gray_rank(code: Tensor) -> Tensor:
    """Rank of integer ``code`` in the reflected Gray-code sequence (inverse Gray code).

    The sequence is ``r ^ (r >> 1)`` for r = 0, 1, …; consecutive entries differ in one bit.
    """
    r = code.clone()
    shift = 1
    while shift < 64:
        r ^= r >> shift
        shift *= 2
    return r


def lsh_rank(x: Tensor, proj: Tensor) -> Tensor:
    """Angular-LSH bucket of each row of x (B, H, N, D) under proj (B, H, D, P), as Gray rank."""
    bits = (x @ proj > 0).long()  # (B, H, N, P)
    weights = 2 ** torch.arange(proj.shape[-1], device=x.device, dtype=torch.long)
    return gray_rank((bits * weights).sum(-1))


def top_eigenvalue(gram: Tensor, generator: torch.Generator) -> Tensor:
    """Largest eigenvalue of the PSD matrices gram (..., c, c) by power iteration (32 steps)."""
    a = gram
    for _ in range(_POWER_SQUARINGS):
        a = a @ a
        a = a / a.abs().amax(dim=(-1, -2), keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
    x = torch.randn(gram.shape[:-1], generator=generator, device=gram.device, dtype=gram.dtype)
    x = x / x.norm(dim=-1, keepdim=True)
    x = (a @ x.unsqueeze(-1)).squeeze(-1)
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
    return (gram @ x.unsqueeze(-1)).squeeze(-1).norm(dim=-1)


def split_blocks(n: int, nb: int, device) -> tuple[Tensor, Tensor, Tensor, int]:
    """Near-equal split of n sorted positions into nb blocks.

    Returns (gather (nb, bs) positions clamped to n-1, valid (nb, bs) bool, block id of each
    position (n,), bs = max block size).
    """
    starts = torch.div(torch.arange(nb + 1, device=device) * n, nb, rounding_mode="floor")
    bs = -(-n // nb)
    pos = starts[:-1, None] + torch.arange(bs, device=device)[None, :]
    valid = pos < starts[1:, None]
    block_of = torch.searchsorted(starts[1:], torch.arange(n, device=device), right=True)
    return pos.clamp_max(n - 1), valid, block_of, bs


def draw_samples(plan: dict, m: int, generator: torch.Generator) -> dict:
    """Draw m residual keys i.i.d. from ``plan["p_sorted"]`` (in place; returns plan).

    Sets ``s_idx`` (original key index), ``s_block`` (key block that already holds it) and
    ``s_weight`` = 1/(m·p), so that the masked residual sum is unbiased.
    """
    p_sorted = plan["p_sorted"]
    B, H, Nk = p_sorted.shape
    s_pos = torch.multinomial(p_sorted.reshape(B * H, Nk), m, replacement=True, generator=generator).view(B, H, m)
    plan["m"] = m
    plan["s_idx"] = plan["k_order"].gather(-1, s_pos)
    plan["s_block"] = plan["kblock_of"][s_pos]
    plan["s_weight"] = 1.0 / (m * p_sorted.gather(-1, s_pos))
    return plan


@register("kdeformer")
class KDEformer(AttentionMethod):
    """KDEformer attention (see module docstring). Knobs: ``sample_size`` (residual samples m,
    0 disables the residual), ``bucket_size`` (keys per LSH block), ``num_projs`` (LSH bits)."""

    supports_grad = False  # chunked evaluation into preallocated outputs (out=...): no autograd

    supports_causal = False
    supports_bidirectional = True
    version = 1
    supports_cross = True
    upcast = False  # the Triton path takes fp16/bf16 as they are; the PyTorch path upcasts itself

    @classmethod
    def exact_knobs(cls, n: int) -> dict:
        return {"bucket_size": n}  # one bucket holding every key

    def __init__(self, sample_size: int = 256, bucket_size: int = 64, num_projs: int = 7, backend: str = "auto"):
        super().__init__()
        if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 0:
            raise ValueError(f"method.sample_size must be a non-negative integer, got {sample_size!r}.")
        check_positive_int("bucket_size", bucket_size)
        check_positive_int("num_projs", num_projs)
        if num_projs > 62:
            raise ValueError(f"method.num_projs must be at most 62 (bits of an int64 code), got {num_projs}.")
        if backend not in ("auto", "torch", "triton"):
            raise ValueError(f"method.backend must be 'auto', 'torch' or 'triton', got {backend!r}.")
        self.sample_size = sample_size
        self.bucket_size = bucket_size
        self.num_projs = num_projs
        self.backend = backend

    # ---------------------------------------------------------------------------------
    def plan(self, q: Tensor, k: Tensor, v: Tensor) -> dict[str, Tensor | int]:
        """Random choices of one call: sort orders, block layout, samples and their weights.

        q, k, v as in ``forward``; uses ``self.generator`` (LSH directions, power-iteration start,
        multinomial draws, in that order).
        """
        B, H, Nq, D = q.shape
        Nk = k.shape[2]
        dev = q.device
        g = self.generator(dev)
        ct = torch.float64 if q.dtype == torch.float64 else torch.float32
        proj = torch.randn(B, H, D, self.num_projs, generator=g, device=dev, dtype=ct)
        # scale > 0 does not change signs, so hashing the unscaled q, k is the same as hashing q', k'.
        k_order = torch.sort(lsh_rank(k.to(ct), proj), dim=-1, stable=True).indices
        q_order = torch.sort(lsh_rank(q.to(ct), proj), dim=-1, stable=True).indices
        nb = -(-Nk // min(self.bucket_size, Nk))
        kpos, kvalid, kblock_of, bk = split_blocks(Nk, nb, dev)
        qpos, qvalid, qblock_of, bq = split_blocks(Nq, nb, dev)
        plan: dict[str, Tensor | int] = dict(
            k_order=k_order, q_order=q_order, nb=nb, bk=bk, bq=bq, kpos=kpos, kvalid=kvalid, qpos=qpos,
            qvalid=qvalid, qblock_of=qblock_of, kblock_of=kblock_of,
        )
        m = self.sample_size if nb > 1 else 0  # one block covers every pair: nothing left to sample
        plan["m"] = 0
        if m > 0:
            va = torch.cat([v.to(ct), torch.ones(B, H, Nk, 1, device=dev, dtype=ct)], dim=-1)
            lam = top_eigenvalue(va.transpose(-1, -2) @ va, g)  # (B, H)
            p = va.norm(dim=-1) / lam[..., None] + 1.0 / Nk
            p = p / p.sum(-1, keepdim=True)
            plan["p_sorted"] = p.gather(-1, k_order)  # sampling law over sorted key positions
            draw_samples(plan, m, g)
        return plan

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
        plan = self.plan(q, k, v)
        Nk = k.shape[2]
        nb, bk, m = plan["nb"], plan["bk"], plan["m"]
        self._stats = {
            "num_blocks": float(nb),
            "block_keys": float(bk),
            "samples": float(m),
            "kept_fraction": min(1.0, (bk + m) / Nk),
        }
        use_triton = self.backend == "triton" or (
            self.backend == "auto" and q.is_cuda and q.dtype != torch.float64
        )
        if use_triton:
            from attnbench.methods.kernels.kdeformer import kdeformer_attention

            return kdeformer_attention(q, k, v, plan, scale)
        if q.dtype in (torch.float16, torch.bfloat16):
            q, k, v = q.float(), k.float(), v.float()
        return self.attend_torch(q, k, v, plan, scale)

    @staticmethod
    def attend_torch(
        q: Tensor, k: Tensor, v: Tensor, plan: dict, scale: float, *, normalize: bool = True
    ) -> Tensor | tuple[Tensor, Tensor]:
        """PyTorch evaluation of a plan, a cache-sized group of query blocks at a time.

        Each group gathers its sorted query rows and key blocks, evaluates its block-diagonal
        scores ``(bq × bk)`` and its sample scores ``(bq × m)`` (about ``SCORE_TILE_ELEMS`` entries in
        all), and writes its normalised rows straight to their original positions in one
        preallocated output, so memory is O(B·H·Nq·Dv) plus one group, never a whole-sequence
        score tensor.

        With ``normalize=False`` returns the unshifted numerator (B, H, Nq, Dv) and denominator
        (B, H, Nq), i.e. the estimates of ``exp(scale·QKᵀ)V`` and ``exp(scale·QKᵀ)1`` (for tests:
        no overflow guard).
        """
        B, H, Nq, D = q.shape
        Nk, Dv = k.shape[2], v.shape[-1]
        nb, bq, bk, m = plan["nb"], plan["bq"], plan["bk"], plan["m"]
        BH, dev, dt = B * H, q.device, q.dtype
        s = math.sqrt(scale)
        neg = torch.finfo(dt).min
        # Rows of the (BH·N, ·) flattened inputs: sorted block slot -> original index (+ head offset).
        qi = plan["q_order"].reshape(BH, Nq)[:, plan["qpos"].reshape(-1)]  # (BH, nb*bq)
        qi = qi + torch.arange(BH, device=dev)[:, None] * Nq
        ki = plan["k_order"].reshape(BH, Nk)[:, plan["kpos"].reshape(-1)]  # (BH, nb*bk)
        ki = ki + torch.arange(BH, device=dev)[:, None] * Nk
        qf, kf, vf = q.reshape(BH * Nq, D), k.reshape(BH * Nk, D), v.reshape(BH * Nk, Dv)
        kvalid, qvalid = plan["kvalid"], plan["qvalid"]
        kmask = None if bool(kvalid.all()) else ~kvalid  # (nb, bk) padded key slots
        all_q_valid = bool(qvalid.all())
        if m > 0:
            si = plan["s_idx"].reshape(BH, m) + torch.arange(BH, device=dev)[:, None] * Nk
            ks = kf.index_select(0, si.reshape(-1)).view(BH, m, D).mul_(s)  # (BH, m, D)
            vs = vf.index_select(0, si.reshape(-1)).view(BH, m, Dv)
            s_block = plan["s_block"].reshape(BH, 1, m)
            s_weight = plan["s_weight"].reshape(BH, 1, m).to(dt)
        out = torch.empty(BH * Nq, Dv, device=dev, dtype=dt)
        den_out = None if normalize else torch.empty(BH * Nq, device=dev, dtype=dt)

        # groups of query blocks and heads holding about SCORE_TILE_ELEMS scores each
        width = bq * (bk + m)
        for h0, h1, c0, c1 in score_groups(BH, nb, width, SCORE_TILE_ELEMS):
            nh, g = h1 - h0, c1 - c0
            qrows = qi[h0:h1, c0 * bq : c1 * bq]  # (nh, g*bq)
            krows = ki[h0:h1, c0 * bk : c1 * bk].reshape(-1)
            qb = qf.index_select(0, qrows.reshape(-1)).view(nh, g, bq, D).mul_(s)
            kb = kf.index_select(0, krows).view(nh, g, bk, D).mul_(s)
            vb = vf.index_select(0, krows).view(nh, g, bk, Dv)
            sh = qb @ kb.transpose(-1, -2)  # (nh, g, bq, bk)
            if kmask is not None:
                sh.masked_fill_(kmask[c0:c1, None, :], neg)
            if m > 0:
                sr = torch.bmm(qb.view(nh, g * bq, D), ks[h0:h1].transpose(-1, -2)).view(nh, g, bq, m)
                # a sample in the query's own block is counted exactly there: weight 0. Its
                # score is also one of the block scores, so the row maximum is unchanged.
                own = s_block[h0:h1, None] == torch.arange(c0, c1, device=dev)[None, :, None, None]
                w = s_weight[h0:h1, None].masked_fill(own, 0.0)  # (nh, g, 1, m)
                if not normalize:  # no shift: exp may overflow, so mask the scores themselves
                    sr.masked_fill_(own, neg)
            if normalize:
                row_max = sh.amax(-1, keepdim=True)
                if m > 0:
                    row_max = torch.maximum(row_max, sr.amax(-1, keepdim=True))
                sh.sub_(row_max)
                if m > 0:
                    sr.sub_(row_max)
            eh = sh.exp_()  # masked entries underflow to 0
            num = eh @ vb  # (nh, g, bq, Dv)
            den = eh.sum(-1)
            if m > 0:
                er = sr.exp_().mul_(w)
                num.view(nh, g * bq, Dv).baddbmm_(er.view(nh, g * bq, m), vs[h0:h1])
                den.add_(er.sum(-1))
            num = num.view(nh, g * bq, Dv)
            den = den.view(nh, g * bq)
            if normalize:
                num.div_(den.unsqueeze(-1))
            if not all_q_valid:  # drop padded slots (they repeat a neighbouring query)
                keep = qvalid[c0:c1].reshape(-1)
                num, den, qrows = num[:, keep], den[:, keep], qrows[:, keep]
            dst = qrows.reshape(-1)
            out.index_copy_(0, dst, num.reshape(-1, Dv))
            if den_out is not None:
                den_out.index_copy_(0, dst, den.reshape(-1))
        out = out.view(B, H, Nq, Dv)
        if not normalize:
            return out, den_out.view(B, H, Nq)
        return out
