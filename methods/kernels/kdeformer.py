"""Fused Triton kernel for KDEformer: LSH block-diagonal part + sampled residual in one pass.

For a plan from ``methods.kdeformer.KDEformer.plan`` each program takes a tile of the sorted
queries of block i, gathers them through ``q_order``, and streams (online softmax, base-2
exponent) first over the keys of key block i (gathered through ``k_order``), then over the
``m`` sampled keys with additive log-weight ``log(1/(m·p_s))``, masked where the sample lies in
key block i. ``Σ w·exp(s)·[v, 1]`` and its last channel are exactly the numerator and denominator
of the PyTorch path, so the output is the same estimate; the running max replaces that path's
per-row shift. Results are written straight to the queries' original positions: nothing of size
n × n, nor any sorted copy of q, k, v, is materialised.

Runs on CUDA, and on the CPU under ``TRITON_INTERPRET=1`` (tests). fp16/bf16 operands go to
``tl.dot`` as they are (fp32 accumulation); fp32 operands use IEEE fp32 products (no TF32).

Tile sizes are autotuned on the GPU over ``CONFIGS`` (keyed on the sizes and the block/sample
counts; see ``_autotune``), pruned to the configs that compile without register spills at the
head dim and dtype (``SPACE``) and to tiles no larger than the query block / key block / sample
count need; under ``TRITON_INTERPRET=1`` only the first config is used. Every config is correct
for any sizes: query rows, keys, samples and head dims are masked.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from attnbench.methods.kernels._autotune import HEAD_DIMS, describe, launch, prune_tiles, tuning_space

# GPU tuning space: (config, padded head dims it is launched at in fp32, in fp16 / bf16). fp32
# operands take IEEE products (FMA, no tensor cores) and need far more registers than fp16 / bf16
# ones (tensor cores): each config is launched only where it compiles with no spill on sm_80,
# sm_90 and sm_100 (results/gpu/compile.md). LSH blocks are bucket_size long (often 64-256) and
# the sample loop m long, so 16..128 tiles are tried; pruning drops tiles far larger than a block.
SPACE = [
    # The former first tile (the only config under the interpreter), 8 warps instead of 4: with 4 its
    # fp32 products spill at every head dim; with 8 it fits fp32 at 32, fp16 / bf16 at 64 and 128
    # (at 32 it spills 8 B on sm_80).
    (triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=8, num_stages=3), (32,), (64, 128)),
    # fp16 / bf16 tiles of 32..128 rows (their fp32 products spill).
    (triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=3), (), HEAD_DIMS),
    (triton.Config({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=8, num_stages=2), (), HEAD_DIMS),
    (triton.Config({"BLOCK_M": 32, "BLOCK_N": 64}, num_warps=4, num_stages=2), (), HEAD_DIMS),
    # 128 x 64: fp16 / bf16 at head dim 64 only (spills on sm_80 at 32 and 128).
    (triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3), (), (64,)),
    # 32 x 32 and 16 x 32 with twice the former warps (fp32 spilled from head dim 64 with them).
    (triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=8, num_stages=3), (32,), HEAD_DIMS),
    (triton.Config({"BLOCK_M": 16, "BLOCK_N": 32}, num_warps=4, num_stages=2), (32,), HEAD_DIMS),
    # 16 x 16 (4 warps, 2 before): short blocks and few samples, and every fp32 head dim.
    (triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=2), HEAD_DIMS, HEAD_DIMS),
    # fp32 at head dim 64: the large tile with 16 warps (it spills at 32 and, on sm_80, at 128).
    (triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=16, num_stages=3), (64,), ()),
    # fp32 at head dim 128: small tiles with 8 warps.
    (triton.Config({"BLOCK_M": 16, "BLOCK_N": 32}, num_warps=8, num_stages=2), (128,), ()),
    (triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=8, num_stages=2), (128,), ()),
]
CONFIGS = [c for c, _, _ in SPACE]
HEAD_DIMS_OF = {describe(c): {True: fp32, False: half} for c, fp32, half in SPACE}  # keyed by IEEE (fp32)


def _prune(configs, named_args, **kwargs):
    """Keep the configs launched at this head dim and dtype (``SPACE``) whose tiles are no larger than
    (the next power of two of) a query block / key block or sample count."""
    nb = max(1, int(named_args["n_blocks"]))
    bq = -(-int(named_args["n_q"]) // nb)
    bn = max(-(-int(named_args["n_k"]) // nb), int(named_args["n_samples"]))
    m_cap, n_cap = max(16, triton.next_power_of_2(bq)), max(16, triton.next_power_of_2(bn))
    ieee = bool(kwargs["IEEE"])
    return prune_tiles(configs, max(kwargs["BLOCK_D"], kwargs["BLOCK_DV"]),
                       lambda c: HEAD_DIMS_OF[describe(c)][ieee],
                       lambda c: c.kwargs["BLOCK_M"] <= m_cap and c.kwargs["BLOCK_N"] <= n_cap,
                       lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])


@triton.autotune(configs=tuning_space(CONFIGS), key=["n_q", "n_k", "n_blocks", "n_samples", "d", "dv"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _kde_fwd(
    Q, K, V, O, QORD, KORD, SIDX, SBLK, SLW,
    n_q, n_k, n_blocks, n_samples, d, dv, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    IEEE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    blk = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)

    q_lo = (blk * n_q) // n_blocks
    q_hi = ((blk + 1) * n_q) // n_blocks
    k_lo = (blk * n_k) // n_blocks
    k_hi = ((blk + 1) * n_k) // n_blocks

    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    rows = q_lo + pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < q_hi
    qi = tl.load(QORD + bh * n_q + rows, mask=rmask, other=0)
    q = tl.load(
        Q + bh * n_q * d + qi[:, None] * d + offs_d[None, :],
        mask=rmask[:, None] & (offs_d[None, :] < d), other=0.0,
    )

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)

    # Heavy part: exact scores against this block's keys.
    for start in range(k_lo, k_hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        cmask = cols < k_hi
        ki = tl.load(KORD + bh * n_k + cols, mask=cmask, other=0)
        kt = tl.load(
            K + bh * n_k * d + ki[None, :] * d + offs_d[:, None],
            mask=cmask[None, :] & (offs_d[:, None] < d), other=0.0,
        )
        if IEEE:
            s = tl.dot(q, kt, input_precision="ieee")
        else:
            s = tl.dot(q, kt)
        s = tl.where(cmask[None, :], s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        vt = tl.load(
            V + bh * n_k * dv + ki[:, None] * dv + offs_dv[None, :],
            mask=cmask[:, None] & (offs_dv[None, :] < dv), other=0.0,
        )
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new

    # Residual: sampled keys with weight 1/(m p), skipped where the sample sits in this block.
    for start in range(0, n_samples, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        smask = cols < n_samples
        ki = tl.load(SIDX + bh * n_samples + cols, mask=smask, other=0)
        sb = tl.load(SBLK + bh * n_samples + cols, mask=smask, other=0)
        lw = tl.load(SLW + bh * n_samples + cols, mask=smask, other=0.0)
        keep = smask & (sb != blk)
        kt = tl.load(
            K + bh * n_k * d + ki[None, :] * d + offs_d[:, None],
            mask=keep[None, :] & (offs_d[:, None] < d), other=0.0,
        )
        if IEEE:
            s = tl.dot(q, kt, input_precision="ieee")
        else:
            s = tl.dot(q, kt)
        s = tl.where(keep[None, :], s * qk_scale + lw[None, :], float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        vt = tl.load(
            V + bh * n_k * dv + ki[:, None] * dv + offs_dv[None, :],
            mask=keep[:, None] & (offs_dv[None, :] < dv), other=0.0,
        )
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new

    out = acc / l_i[:, None]
    tl.store(
        O + bh * n_q * dv + qi[:, None] * dv + offs_dv[None, :],
        out.to(O.dtype.element_ty),
        mask=rmask[:, None] & (offs_dv[None, :] < dv),
    )


def kdeformer_attention(
    q: Tensor, k: Tensor, v: Tensor, plan: dict, scale: float, *, config: triton.Config | None = None
) -> Tensor:
    """Evaluate a KDEformer plan with the fused kernel. q, k, v: (B, H, N, D) fp16/bf16/fp32.

    Returns (B, H, Nq, Dv) in q's dtype; same estimate as ``KDEformer.attend_torch``.
    ``config`` (one of ``CONFIGS``, for tests) bypasses autotuning and runs that config.
    """
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"the KDEformer Triton kernel takes fp16, bf16 or fp32 inputs, got {q.dtype}.")
    B, H, Nq, D = q.shape
    Nk, Dv = k.shape[2], v.shape[-1]
    nb, bq, m = plan["nb"], plan["bq"], plan["m"]
    q_, k_, v_ = (t.contiguous() for t in (q, k, v))
    qord = plan["q_order"].contiguous()
    kord = plan["k_order"].contiguous()
    if m > 0:
        sidx = plan["s_idx"].contiguous()
        sblk = plan["s_block"].contiguous()
        slw = torch.log2(plan["s_weight"]).to(torch.float32).contiguous()
    else:  # dummies, never read
        sidx = torch.zeros(1, dtype=torch.long, device=q.device)
        sblk = sidx
        slw = torch.zeros(1, dtype=torch.float32, device=q.device)
    out = torch.empty(B, H, Nq, Dv, device=q.device, dtype=q.dtype)
    block_d = max(16, triton.next_power_of_2(D))
    block_dv = max(16, triton.next_power_of_2(Dv))
    args = (q_, k_, v_, out, qord, kord, sidx, sblk, slw, Nq, Nk, nb, m, D, Dv, float(scale) * math.log2(math.e))
    meta = {"BLOCK_D": block_d, "BLOCK_DV": block_dv, "IEEE": q.dtype == torch.float32}
    grid = lambda c: (triton.cdiv(bq, c["BLOCK_M"]), nb, B * H)  # noqa: E731
    launch(_kde_fwd, grid, args, meta, config)
    return out


def chosen_config() -> str | None:
    """The config the autotuner used in the last autotuned call (None before any)."""
    best = getattr(_kde_fwd, "best_config", None)
    return None if best is None else describe(best)
