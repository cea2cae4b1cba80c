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
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor


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


def kdeformer_attention(q: Tensor, k: Tensor, v: Tensor, plan: dict, scale: float) -> Tensor:
    """Evaluate a KDEformer plan with the fused kernel. q, k, v: (B, H, N, D) fp16/bf16/fp32.

    Returns (B, H, Nq, Dv) in q's dtype; same estimate as ``KDEformer.attend_torch``.
    """
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"the KDEformer Triton kernel takes fp16, bf16 or fp32 inputs, got {q.dtype}.")
    B, H, Nq, D = q.shape
    Nk, Dv = k.shape[2], v.shape[-1]
    nb, bk, bq, m = plan["nb"], plan["bk"], plan["bq"], plan["m"]
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
    block_m = 64 if bq > 32 else (32 if bq > 16 else 16)
    block_n = 64 if max(bk, m) > 32 else (32 if max(bk, m) > 16 else 16)
    if block_d * block_dv > 128 * 128:  # large head dims: smaller tiles to stay within shared memory
        block_m, block_n = min(block_m, 32), min(block_n, 32)
    grid = (triton.cdiv(bq, block_m), nb, B * H)
    _kde_fwd[grid](
        q_, k_, v_, out, qord, kord, sidx, sblk, slw,
        Nq, Nk, nb, m, D, Dv, float(scale) * math.log2(math.e),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_DV=block_dv,
        IEEE=q.dtype == torch.float32,
    )
    return out
