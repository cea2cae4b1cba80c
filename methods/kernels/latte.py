"""Two-pass Triton kernel for LATTE (``methods/latte.py``), forward only, float32.

Pass 1 (``_latte_rowmax``): for each query block, the row maximum of the 4-bit estimate
``hh = q_hi·k_hi`` over the (causally) valid keys.
Pass 2 (``_latte_attend``): for each key block, recompute ``hh`` (cheap), form the keep mask
``256·hh·c >= 256·max(hh)·c - θ_h`` and, only when some key in the block is kept, compute the
full score (int8 with reuse: ``256·hh + q_hi·(16·k_lo) + q_lo·k``, or float ``q·k·scale``) and
update an online softmax over kept keys. Blocks with nothing kept skip the full-score and
``P·V`` work; the fraction of skipped (valid) blocks is returned.

The integer-valued operands are exact in fp16 (|values| <= 240), and their products
accumulate exactly in fp32, so the keep decisions match the PyTorch path bit for bit.
This is the suite's kernel (the paper publishes no code); it targets correctness first.

Tile sizes are autotuned on the GPU over ``CONFIGS`` (each pass separately, keyed on the sizes,
causality and score type; see ``_autotune``), each at the head dims where it compiles without
register spills (``SPACE``); under ``TRITON_INTERPRET=1`` only the first config (the former fixed
32 x 32) is used. Outputs and kept counts do not depend on the config; the
skipped-block fraction does (it counts BLOCK_M x BLOCK_N tiles), so it describes the chosen tiling.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from attnbench.methods.kernels._autotune import HEAD_DIMS, describe, launch, prune_tiles, tuning_space

# GPU tuning space, shared by both passes: (config, padded head dims it is launched at in pass 1,
# in pass 2 with int8 scores, in pass 2 with float scores). Pass 1 has one fp16 dot; pass 2 also
# keeps the fp32 P·V accumulator and, with float scores, takes IEEE fp32 q·k products (FMA, no
# tensor cores): each config is launched only where it compiles with no spill on sm_80, sm_90 and
# sm_100 (results/gpu/compile.md). Small tiles skip more (the keep test is per tile), large ones
# use the tensor cores better: 16..128 query rows and 16..64 keys are tried.
SPACE = [
    # The former fixed 32 x 32 (the only config under the interpreter), 8 warps instead of 4 (with 4,
    # pass 2 spills from head dim 64 with float scores); pass 2 still spills with it at 128, and with
    # int8 scores at 32 (4 B on sm_90).
    (triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=8, num_stages=3), HEAD_DIMS, (64,), (32, 64)),
    # 16..128 query rows, 32..64 keys: pass 2 at the head dims where they fit.
    (triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=3), HEAD_DIMS, (32, 64), ()),
    (triton.Config({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=8, num_stages=3), HEAD_DIMS, (32, 64), (32,)),
    (triton.Config({"BLOCK_M": 32, "BLOCK_N": 64}, num_warps=4, num_stages=2), HEAD_DIMS, (32,), ()),
    (triton.Config({"BLOCK_M": 16, "BLOCK_N": 32}, num_warps=2, num_stages=3), HEAD_DIMS, (32, 64), (32,)),
    # Wide tiles for pass 1 only (pass 2 spills with them on sm_80).
    (triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2), HEAD_DIMS, (), ()),
    (triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=2), HEAD_DIMS, (), ()),
    # Small tiles for head dim 128 in pass 2 (16 x 16 with 8 warps: the only one for float scores).
    (triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=2), HEAD_DIMS, HEAD_DIMS, (32, 64)),
    (triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=8, num_stages=2), HEAD_DIMS, (32, 128), (64, 128)),
    (triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=8, num_stages=2), (), (128,), ()),
    (triton.Config({"BLOCK_M": 16, "BLOCK_N": 32}, num_warps=8, num_stages=2), (), (128,), ()),
]
CONFIGS = [c for c, *_ in SPACE]
HEAD_DIMS_OF = {describe(c): dims for c, *dims in SPACE}  # (pass 1, pass 2 int8, pass 2 float)
MIN_BLOCK_M = min(c.kwargs["BLOCK_M"] for c in CONFIGS)  # sizes the per-tile counter buffer


def _prune(configs, named_args, **kwargs):
    """Keep the configs launched at this head dim for this pass and score (``SPACE``) whose tiles
    are no larger than (the next power of two of) Nq / Nk."""
    m_cap = max(16, triton.next_power_of_2(int(named_args["Nq"])))
    n_cap = max(16, triton.next_power_of_2(int(named_args["Nk"])))
    which = 0 if "BLOCK_DV" not in kwargs else 1 if kwargs["INT8"] else 2  # pass 1 has no BLOCK_DV
    return prune_tiles(configs, max(kwargs["BLOCK_D"], kwargs.get("BLOCK_DV", 0)),
                       lambda c: HEAD_DIMS_OF[describe(c)][which],
                       lambda c: c.kwargs["BLOCK_M"] <= m_cap and c.kwargs["BLOCK_N"] <= n_cap,
                       lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])


@triton.autotune(configs=tuning_space(CONFIGS), key=["Nq", "Nk", "D", "CAUSAL"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _latte_rowmax(
    QH, KH, MAXHH,
    stride_qb, stride_qn, stride_kb, stride_kn,
    Nq, Nk, D,
    CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_mask = (offs_m[:, None] < Nq) & (offs_d[None, :] < D)
    qh = tl.load(QH + bh * stride_qb + offs_m[:, None] * stride_qn + offs_d[None, :], mask=q_mask, other=0.0)
    qh = qh.to(tl.float16)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    if CAUSAL:
        n_end = tl.minimum(Nk, (pid_m + 1) * BLOCK_M + (Nk - Nq))
    else:
        n_end = Nk
    for start_n in range(0, n_end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_mask = (offs_n[:, None] < Nk) & (offs_d[None, :] < D)
        kh = tl.load(KH + bh * stride_kb + offs_n[:, None] * stride_kn + offs_d[None, :], mask=k_mask, other=0.0)
        hh = tl.dot(qh, tl.trans(kh.to(tl.float16)), out_dtype=tl.float32)
        valid = offs_n[None, :] < Nk
        if CAUSAL:
            valid = valid & (offs_n[None, :] <= offs_m[:, None] + (Nk - Nq))
        hh = tl.where(valid, hh, float("-inf"))
        m_i = tl.maximum(m_i, tl.max(hh, axis=1))
    tl.store(MAXHH + bh * Nq + offs_m, m_i, mask=offs_m < Nq)


# BLOCKS is zeroed before every timing run: a config with fewer query tiles leaves slots unwritten.
@triton.autotune(configs=tuning_space(CONFIGS), key=["Nq", "Nk", "D", "DV", "CAUSAL", "INT8"],
                 prune_configs_by={"early_config_prune": _prune}, reset_to_zero=["BLOCKS"])
@triton.jit
def _latte_attend(
    Q, K, V, QH, QL, KH, KL16, KI, C, THETA, MAXHH, OUT, KEPT, BLOCKS,
    stride_qb, stride_qn, stride_kb, stride_kn, stride_vb, stride_vn, stride_ob, stride_on,
    H, Nq, Nk, D, DV, scale,
    CAUSAL: tl.constexpr, INT8: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    n_mblocks = tl.num_programs(0)
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q_mask = (offs_m[:, None] < Nq) & (offs_d[None, :] < D)
    q_off = bh * stride_qb + offs_m[:, None] * stride_qn + offs_d[None, :]
    qh = tl.load(QH + q_off, mask=q_mask, other=0.0).to(tl.float16)
    if INT8:
        ql = tl.load(QL + q_off, mask=q_mask, other=0.0).to(tl.float16)
    else:
        qf = tl.load(Q + q_off, mask=q_mask, other=0.0)
    c = tl.load(C + bh)
    theta = tl.load(THETA + h)
    mhh = tl.load(MAXHH + bh * Nq + offs_m, mask=offs_m < Nq, other=0.0)
    est_max = (256.0 * mhh) * c
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
    kept = tl.zeros((BLOCK_M,), tl.int32)
    n_blocks = 0
    n_done = 0
    if CAUSAL:
        n_end = tl.minimum(Nk, (pid_m + 1) * BLOCK_M + (Nk - Nq))
    else:
        n_end = Nk
    for start_n in range(0, n_end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_mask = (offs_n[:, None] < Nk) & (offs_d[None, :] < D)
        k_off = bh * stride_kb + offs_n[:, None] * stride_kn + offs_d[None, :]
        kh = tl.load(KH + k_off, mask=k_mask, other=0.0).to(tl.float16)
        hh = tl.dot(qh, tl.trans(kh), out_dtype=tl.float32)
        valid = (offs_n[None, :] < Nk) & (offs_m[:, None] < Nq)
        if CAUSAL:
            valid = valid & (offs_n[None, :] <= offs_m[:, None] + (Nk - Nq))
        est = (256.0 * hh) * c
        keep = valid & ((est - est_max[:, None]) >= -theta)
        n_keep = tl.sum(keep.to(tl.int32))
        n_blocks += 1
        if n_keep > 0:
            n_done += 1
            kept += tl.sum(keep.to(tl.int32), axis=1)
            if INT8:
                kl = tl.load(KL16 + k_off, mask=k_mask, other=0.0).to(tl.float16)
                ki = tl.load(KI + k_off, mask=k_mask, other=0.0).to(tl.float16)
                rest = tl.dot(qh, tl.trans(kl), out_dtype=tl.float32) + tl.dot(ql, tl.trans(ki), out_dtype=tl.float32)
                s = (256.0 * hh + rest) * c
            else:
                kf = tl.load(K + k_off, mask=k_mask, other=0.0)
                s = tl.dot(qf, tl.trans(kf), input_precision="ieee") * scale
            s = tl.where(keep, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v_mask = (offs_n[:, None] < Nk) & (offs_dv[None, :] < DV)
            vv = tl.load(V + bh * stride_vb + offs_n[:, None] * stride_vn + offs_dv[None, :], mask=v_mask, other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p, vv, input_precision="ieee")
            m_i = m_new
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]
    o_mask = (offs_m[:, None] < Nq) & (offs_dv[None, :] < DV)
    tl.store(OUT + bh * stride_ob + offs_m[:, None] * stride_on + offs_dv[None, :], out, mask=o_mask)
    tl.store(KEPT + bh * Nq + offs_m, kept, mask=offs_m < Nq)
    tl.store(BLOCKS + (bh * n_mblocks + pid_m) * 2, n_blocks)
    tl.store(BLOCKS + (bh * n_mblocks + pid_m) * 2 + 1, n_done)


def _pow2(x: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(int(x)))


def latte_attention_triton(
    q: Tensor, k: Tensor, v: Tensor,
    q_hi: Tensor, q_lo: Tensor, k_hi: Tensor, k_lo: Tensor, k_int: Tensor,
    c: Tensor, theta: Tensor, *, causal: bool, score: str, scale: float,
    config: triton.Config | None = None,
) -> tuple[Tensor, Tensor, Tensor, float]:
    """LATTE forward. Tensors (B, H, N, D) float32; c (B, H, 1, 1) = s_q·s_k·scale; theta (H,).

    Returns (out, kept per row (B, H, Nq), valid keys per row (B, H, Nq), skipped-block fraction).
    ``config`` (one of ``CONFIGS``, for tests) bypasses autotuning and runs it in both passes.
    """
    B, H, Nq, D = q.shape
    Nk, DV = k.shape[2], v.shape[-1]
    f32 = lambda t: t.to(torch.float32).reshape(B * H, t.shape[2], t.shape[3]).contiguous()  # noqa: E731
    qf, kf, vf = f32(q), f32(k), f32(v)
    qh, ql = f32(q_hi), f32(q_lo)
    kh, kl16, ki = f32(k_hi), f32(16 * k_lo), f32(k_int)
    cc = c.to(torch.float32).reshape(B * H).contiguous()
    th = theta.to(device=q.device, dtype=torch.float32).contiguous()
    maxhh = torch.empty(B * H, Nq, device=q.device, dtype=torch.float32)
    out = torch.empty(B * H, Nq, DV, device=q.device, dtype=torch.float32)
    kept = torch.empty(B * H, Nq, device=q.device, dtype=torch.int32)
    # (tiles visited, tiles computed) per query tile; sized for the smallest BLOCK_M, unused slots stay 0.
    min_bm = MIN_BLOCK_M if config is None else min(MIN_BLOCK_M, config.kwargs["BLOCK_M"])
    blocks = torch.zeros(B * H * triton.cdiv(Nq, min_bm) * 2, device=q.device, dtype=torch.int32)
    grid = lambda cfg: (triton.cdiv(Nq, cfg["BLOCK_M"]), B * H)  # noqa: E731
    BD, BDV = _pow2(D), _pow2(DV)
    launch(_latte_rowmax, grid,
           (qh, kh, maxhh, qh.stride(0), qh.stride(1), kh.stride(0), kh.stride(1), Nq, Nk, D),
           {"CAUSAL": causal, "BLOCK_D": BD}, config)
    launch(_latte_attend, grid,
           (qf, kf, vf, qh, ql, kh, kl16, ki, cc, th, maxhh, out, kept, blocks,
            qf.stride(0), qf.stride(1), kf.stride(0), kf.stride(1), vf.stride(0), vf.stride(1),
            out.stride(0), out.stride(1), H, Nq, Nk, D, DV, float(scale)),
           {"CAUSAL": causal, "INT8": score == "int8", "BLOCK_D": BD, "BLOCK_DV": BDV}, config)
    rows = torch.arange(Nq, device=q.device)
    if causal:
        valid = (rows + 1 + (Nk - Nq)).clamp(0, Nk)
    else:
        valid = torch.full((Nq,), Nk, device=q.device)
    valid = valid.to(torch.int32).expand(B, H, Nq)
    b = blocks.view(-1, 2).sum(0).tolist()
    skipped = 1.0 - b[1] / max(b[0], 1)
    return out.view(B, H, Nq, DV).to(q.dtype), kept.view(B, H, Nq), valid, skipped


def chosen_config() -> str | None:
    """The config the autotuner used for the attend pass in the last autotuned call (None before any)."""
    best = getattr(_latte_attend, "best_config", None)
    return None if best is None else describe(best)
