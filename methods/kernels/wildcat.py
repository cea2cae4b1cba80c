"""Fused Triton kernel for WildCat's weighted attention step (GPU; runs under TRITON_INTERPRET=1).

out[m] = clamp( Σ_s e^{β q_m·k_s - μ_m} Ṽ_s / Σ_s e^{β q_m·k_s - μ_m} w_s , vmin, vmax ),
0 where the denominator is ≤ 1e-20, with μ_m the row maximum of β q_m·k_sᵀ — the PyTorch
reference is ``methods.wildcat.weighted_attention``. One program handles BLOCK_M queries of one
(batch·head) and streams the coreset in BLOCK_R tiles with a running maximum (flash-attention
style), so the (M × R) score matrix is never stored. Products use IEEE fp32 (no TF32): the weights
w can be signed and the quotient is sensitive to rounding in the denominator.

Tile sizes are autotuned on the GPU over ``CONFIGS`` (keyed on M, R, E, D; see ``_autotune``),
each at the head dims where it compiles without register spills (``SPACE``); under
``TRITON_INTERPRET=1`` only the first config (the former fixed tile) is used. Every config is
correct for any sizes: rows, coreset entries and head dims are masked.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from attnbench.methods.kernels._autotune import HEAD_DIMS, describe, launch, prune_tiles, tuning_space

DENOM_EPS = 1e-20

# GPU tuning space: (config, the padded head dims it is launched at). The products are IEEE fp32
# (FMA, no tensor cores), so registers grow with BLOCK_M x head dim: each config is launched only
# where it compiles with no spill on sm_80, sm_90 and sm_100 (results/gpu/compile.md).
SPACE = [
    # The former fixed tile (the only config under the interpreter), 16 warps instead of 4: with 4 or
    # 8 its fp32 products spill from head dim 64 (4 warps) or 128 (8 warps).
    (triton.Config({"BLOCK_M": 64, "BLOCK_R": 32}, num_warps=16, num_stages=3), HEAD_DIMS),
    # Smaller query tiles for every head dim: short inputs, fewer registers (32 x 32 had 4 warps and
    # spilled at head dim 128).
    (triton.Config({"BLOCK_M": 32, "BLOCK_R": 32}, num_warps=8, num_stages=2), HEAD_DIMS),
    (triton.Config({"BLOCK_M": 16, "BLOCK_R": 32}, num_warps=4, num_stages=2), HEAD_DIMS),
    # Short coreset tiles: more query rows per program at the same register cost.
    (triton.Config({"BLOCK_M": 64, "BLOCK_R": 16}, num_warps=8, num_stages=2), HEAD_DIMS),
    (triton.Config({"BLOCK_M": 32, "BLOCK_R": 16}, num_warps=4, num_stages=2), HEAD_DIMS),
    # 64-entry coreset tiles halve the loop trips for large coresets (head dims <= 64; 4 warps before).
    (triton.Config({"BLOCK_M": 32, "BLOCK_R": 64}, num_warps=8, num_stages=2), (32, 64)),
    # Tall query tiles for long inputs: only at head dim 32, where they fit (64 x 64 had 4 warps; the
    # former 128 x 64 is dropped: it spilled at head dims 32 and 64 on sm_80).
    (triton.Config({"BLOCK_M": 128, "BLOCK_R": 32}, num_warps=8, num_stages=2), (32,)),
    (triton.Config({"BLOCK_M": 64, "BLOCK_R": 64}, num_warps=8, num_stages=2), (32,)),
]
CONFIGS = [c for c, _ in SPACE]
HEAD_DIMS_OF = {describe(c): dims for c, dims in SPACE}


def _prune(configs, named_args, **kwargs):
    """Keep the configs launched at this head dim (``SPACE``) whose tiles are not far larger than the
    problem (M queries, R coreset entries)."""
    m_cap = max(32, triton.next_power_of_2(int(named_args["M"])))
    r_cap = max(32, triton.next_power_of_2(int(named_args["R"])))
    return prune_tiles(configs, max(kwargs["E_P"], kwargs["D_P"]), lambda c: HEAD_DIMS_OF[describe(c)],
                       lambda c: c.kwargs["BLOCK_M"] <= m_cap and c.kwargs["BLOCK_R"] <= r_cap,
                       lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_R"])


@triton.autotune(configs=tuning_space(CONFIGS), key=["M", "R", "E", "D"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _wildcat_wattn_kernel(
    Q, K, V, W, VMIN, VMAX, O,
    M, R, E, D,
    sqb, sqm, sqe,
    skb, skr, ske,
    svb, svr, svd,
    swb, swr,
    smb, smd,
    sob, som, sod,
    scale,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, E_P: tl.constexpr, D_P: tl.constexpr,
):
    pid_m = tl.program_id(0)
    b = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_e = tl.arange(0, E_P)
    offs_d = tl.arange(0, D_P)
    mask_m = offs_m < M
    q = tl.load(Q + b * sqb + offs_m[:, None] * sqm + offs_e[None, :] * sqe,
                mask=mask_m[:, None] & (offs_e[None, :] < E), other=0.0)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    den = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, D_P), tl.float32)
    for start in range(0, R, BLOCK_R):
        offs_r = start + tl.arange(0, BLOCK_R)
        mask_r = offs_r < R
        k = tl.load(K + b * skb + offs_r[:, None] * skr + offs_e[None, :] * ske,
                    mask=mask_r[:, None] & (offs_e[None, :] < E), other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
        s = tl.where(mask_r[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        w = tl.load(W + b * swb + offs_r * swr, mask=mask_r, other=0.0)
        v = tl.load(V + b * svb + offs_r[:, None] * svr + offs_d[None, :] * svd,
                    mask=mask_r[:, None] & (offs_d[None, :] < D), other=0.0)
        den = den * alpha + tl.sum(p * w[None, :], axis=1)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        m_i = m_new
    ok = den > 1e-20
    safe = tl.where(ok, den, 1.0)
    out = tl.where(ok[:, None], acc / safe[:, None], 0.0)
    mask_d = offs_d < D
    vmin = tl.load(VMIN + b * smb + offs_d * smd, mask=mask_d, other=0.0)
    vmax = tl.load(VMAX + b * smb + offs_d * smd, mask=mask_d, other=0.0)
    out = tl.minimum(tl.maximum(out, vmin[None, :]), vmax[None, :])
    tl.store(O + b * sob + offs_m[:, None] * som + offs_d[None, :] * sod, out,
             mask=mask_m[:, None] & mask_d[None, :])


def weighted_attention_triton(
    q: Tensor, k_s: Tensor, v_s: Tensor, w: Tensor, scale: float, vmin: Tensor, vmax: Tensor,
    *, config: triton.Config | None = None,
) -> Tensor:
    """q (B, M, E), k_s (B, R, E), v_s (B, R, D), w (B, R), vmin/vmax (B, 1, D) -> (B, M, D) fp32.

    ``config`` (one of ``CONFIGS``, for tests) bypasses autotuning and runs that config.
    """
    B, M, E = q.shape
    R, D = k_s.shape[1], v_s.shape[-1]
    q, k_s, v_s, w = (t.float() for t in (q, k_s, v_s, w))
    vmin = vmin.float().reshape(B, D).contiguous()
    vmax = vmax.float().reshape(B, D).contiguous()
    out = torch.empty(B, M, D, device=q.device, dtype=torch.float32)
    e_p = max(16, triton.next_power_of_2(E))
    d_p = max(16, triton.next_power_of_2(D))
    args = (
        q, k_s, v_s, w, vmin, vmax, out,
        M, R, E, D,
        *q.stride(), *k_s.stride(), *v_s.stride(), *w.stride(), *vmin.stride(), *out.stride(),
        float(scale),
    )
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), B)  # noqa: E731
    launch(_wildcat_wattn_kernel, grid, args, {"E_P": e_p, "D_P": d_p}, config)
    return out


def chosen_config() -> str | None:
    """The config the autotuner used in the last autotuned call (None before any)."""
    best = getattr(_wildcat_wattn_kernel, "best_config", None)
    return None if best is None else describe(best)
