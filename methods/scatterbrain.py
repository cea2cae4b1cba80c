"""ScatterBrain (Chen, Dao et al., NeurIPS 2021): local (sparse) + Performer (low-rank) attention.

Follows ``SBLocalAttention`` of HazyResearch/fly (``src/models/modules/attention/
sblocal_attention.py``, with the feature map of ``feature_maps_sb.py``), the code the KDEformer
authors ran:

* low rank: Performer positive random features with the "cosh" map, φ(x) ∝ [exp(w·x'), exp(-w·x')]
  over ``nb_features/2`` orthogonal Gaussian rows w (so ``nb_features`` features in all),
  x' = sqrt(scale)·x, each feature map carried as (features, log-scale) so that exact and
  approximate scores can be added without overflow (row max for queries, global max for keys);
* sparse part: exact scores exp(scale·q·k) inside a window of ``local_context`` keys,
  ``[c - local_context//2, c - local_context//2 + local_context)`` around the query's position c
  (cut at the sequence ends, as fast_transformers' ``local_dot_product`` does);
* overlap correction: inside the window the low-rank estimate φ(q)·φ(k) is replaced by the exact
  score, i.e. attention ≈ (S_local + Φ_q Φ_kᵀ − [Φ_q Φ_kᵀ]_local) V / normaliser, with the
  low-rank part of the normaliser clamped at 1e-24 (as in the reference).

Departures (documented):

* Projections come from ``methods.performer.draw_orthogonal_features`` (rows rescaled by
  chi(d) norms, the reference's ``ortho_scaling=0``), drawn from the run's generator on every
  call (the reference draws once per module; the KDEformer scripts build a new module per call).
* Local windows are computed blockwise (blocks of ``local_context`` queries against a contiguous
  key span), a cache-sized group of blocks at a time together with those queries' features and
  low-rank terms (the same per-row arithmetic, without n-sized temporaries): memory
  O(n·(d + nb_features)) plus O(group·local_context²), no custom CUDA kernel.
* Cross-attention (Nq != Nk): query i is centred at key position floor(i·Nk/Nq). The KDEformer
  BigGAN script instead ran the module on chunks of 1024 of the 4096 queries (query i centred
  at key i mod 1024); both are positional conventions without spatial meaning.
* Causal (the reference leaves it as a TODO): the window is the ``local_context`` keys ending at
  the query, [i - local_context + 1, i], and the low-rank part uses causal prefix sums.
* Exact limit: bidirectional windows are centred, so the method is exact (up to rounding) once
  ``local_context ≥ 2n − 1``; causal once ``local_context ≥ n``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from attnbench.methods import register
from attnbench.methods.base import SCORE_TILE_ELEMS, AttentionMethod, check_positive_int, resolve_budget
from attnbench.methods.performer import draw_orthogonal_features

LR_CLAMP = 1e-24  # floor of the low-rank part of the normaliser (as in the reference)


def sb_features(x: Tensor, proj: Tensor, scale: float, *, is_query: bool) -> tuple[Tensor, Tensor]:
    """Cosh positive random features of fly's ``softmax_kernel`` with their log-scale.

    x: (B, H, N, D), proj: (m/2, D) -> (feat (B, H, N, m), log_scale) with
    φ(x) = feat · exp(log_scale) and E[φ(q)·φ(k)] = exp(scale·q·k). log_scale is (B, H, N, 1)
    for queries (row max) and (B, H, 1, 1) for keys (max over tokens and features).
    """
    m = 2 * proj.shape[0]
    xs = x * math.sqrt(scale)
    dash = xs @ proj.T
    dash = torch.cat([dash, -dash], dim=-1) - 0.5 * (xs * xs).sum(-1, keepdim=True) - 0.5 * math.log(m)
    if is_query:
        log_scale = dash.amax(dim=-1, keepdim=True)
    else:
        log_scale = dash.amax(dim=(-1, -2), keepdim=True)
    return torch.exp(dash - log_scale), log_scale


def _prefix_lowrank(qf: Tensor, kf: Tensor, v: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """Causal Σ_{j≤i} (qf_i·kf_j)[v_j, 1] by chunks: returns (numerator (B,H,N,Dv), denominator (B,H,N))."""
    b, h, n, m = qf.shape
    dv = v.shape[-1]
    pad = (-n) % chunk
    v1 = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
    if pad:
        qf, kf, v1 = (F.pad(t, (0, 0, 0, pad)) for t in (qf, kf, v1))
    nc = (n + pad) // chunk
    qc = qf.reshape(b, h, nc, chunk, m)
    kc = kf.reshape(b, h, nc, chunk, m)
    vc = v1.reshape(b, h, nc, chunk, dv + 1)
    state = kc.transpose(-1, -2) @ vc
    state = state.cumsum(dim=2) - state  # exclusive prefix over chunks
    out = qc @ state + (qc @ kc.transpose(-1, -2)).tril() @ vc
    out = out.reshape(b, h, nc * chunk, dv + 1)[:, :, :n]
    return out[..., :dv], out[..., dv]


@register("scatterbrain")
class ScatterBrain(AttentionMethod):
    """Local window of ``local_context`` exact scores + ``nb_features`` Performer features, overlap removed."""

    supports_causal = True
    supports_bidirectional = True
    version = 1
    supports_cross = True

    @classmethod
    def exact_knobs(cls, n: int) -> dict:
        return {"local_context": 2 * n}  # a local window covering every key

    def __init__(self, local_context: int = 64, nb_features: int = 128):
        super().__init__()
        resolve_budget("local_context", local_context, 1 << 30)  # int >= 1 or a fraction of n
        check_positive_int("nb_features", nb_features)
        if nb_features % 2:
            raise ValueError(f"method.nb_features must be even (cosh features come in ± pairs), got {nb_features}.")
        self.local_context = local_context
        self.nb_features = nb_features

    def _windows(self, nq: int, nk: int, w: int, causal: bool) -> tuple[Tensor, Tensor, int, int]:
        """Window starts (nq,), key-span starts per block of ``bq`` queries, bq, span length (CPU tensors)."""
        i = torch.arange(nq)
        if causal:
            start = i - w + 1
        else:
            centre = i if nq == nk else (i * nk) // nq
            start = centre - w // 2
        bq = max(1, min(w, nq))
        first = torch.arange(0, nq, bq)
        last = (first + bq - 1).clamp(max=nq - 1)
        span_start = start[first].clamp(min=0)
        span_end = (start[last] + w).clamp(max=nk)
        span = int((span_end - span_start).max())
        return start, span_start, bq, span

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
        bsz, heads, nq, d = q.shape
        nk, dv = k.shape[2], v.shape[-1]
        dev = q.device
        if isinstance(self.local_context, float) and not self.local_context.is_integer():
            w = resolve_budget("local_context", self.local_context, nk)  # a fraction of n
        else:
            w = min(int(self.local_context), 2 * max(nq, nk))  # wider windows change nothing
        start, span_start, bq, span = self._windows(nq, nk, w, causal)
        start, span_start = start.to(dev), span_start.to(dev)
        n_blocks = span_start.shape[0]

        # --- low-rank features -------------------------------------------------------
        proj = draw_orthogonal_features(self.nb_features // 2, d, self.generator(dev), dev, q.dtype)
        kf, k_ls = sb_features(k, proj, scale, is_query=False)
        if causal:
            qf_all, q_ls_all = sb_features(q, proj, scale, is_query=True)
            lr_num_all, lr_den_all = _prefix_lowrank(qf_all, kf, v, chunk=max(16, min(bq, 256)))
        else:
            context = kf.transpose(-1, -2) @ v  # (B, H, m, Dv)
            kf_sum = kf.sum(dim=2).unsqueeze(-1)  # (B, H, m, 1)

        # --- local window, a group of query blocks at a time -----------------------
        # Everything below is per query row, so it is evaluated group by group (cache-sized
        # temporaries, O(group·bq·span) memory) and written into ``out``.
        nq_pad = n_blocks * bq
        q_p = F.pad(q, (0, 0, 0, nq_pad - nq)) if nq_pad > nq else q
        start_p = F.pad(start, (0, nq_pad - nq), value=0).reshape(n_blocks, bq, 1)
        group = max(1, SCORE_TILE_ELEMS // (bsz * heads * bq * max(span, self.nb_features)))
        out = torch.empty(bsz, heads, nq_pad, dv, dtype=q.dtype, device=dev)
        for b0 in range(0, n_blocks, group):
            b1 = min(n_blocks, b0 + group)
            g, r0, r1 = b1 - b0, b0 * bq, b1 * bq
            kidx = span_start[b0:b1, None] + torch.arange(span, device=dev)  # (g, span) key positions
            kvalid = (kidx >= 0) & (kidx < nk)
            kidx_c = kidx.clamp(0, nk - 1).reshape(-1)
            kb = k.index_select(2, kidx_c).reshape(bsz, heads, g, span, d)
            kfb = kf.index_select(2, kidx_c).reshape(bsz, heads, g, span, -1)
            vb = v.index_select(2, kidx_c).reshape(bsz, heads, g, span, dv)
            qg = q_p[:, :, r0:r1]
            if causal:
                rows = slice(r0, min(r1, nq))
                pad_g = r1 - min(r1, nq)

                def rows_of(x: Tensor) -> Tensor:
                    x = x[:, :, rows]
                    return F.pad(x, (0, 0, 0, pad_g)) if pad_g else x

                qf, q_ls = rows_of(qf_all), rows_of(q_ls_all)
                lr_num, lr_den = rows_of(lr_num_all), rows_of(lr_den_all.unsqueeze(-1))
            else:
                qf, q_ls = sb_features(qg, proj, scale, is_query=True)
                lr_num, lr_den = qf @ context, qf @ kf_sum  # (B, H, g·bq, Dv), (B, H, g·bq, 1)
            prime_log_scale = q_ls + k_ls  # (B, H, g·bq, 1)

            qpos = torch.arange(r0, r1, device=dev).reshape(g, bq, 1)
            kpos = kidx.unsqueeze(1)  # (g, 1, span)
            sp = start_p[b0:b1]
            in_window = (kpos >= sp) & (kpos < sp + w) & kvalid.unsqueeze(1) & (qpos < nq)
            if causal:
                in_window = in_window & (kpos <= qpos)

            qb = qg.reshape(bsz, heads, g, bq, d)
            qk = (qb @ kb.transpose(-1, -2)) * scale  # (B, H, g, bq, span)
            qk = qk.masked_fill(~in_window, float("-inf"))
            dots_prime = (qf.reshape(bsz, heads, g, bq, -1) @ kfb.transpose(-1, -2)).masked_fill(~in_window, 0.0)

            qk_lse = torch.logsumexp(qk, dim=-1, keepdim=True).reshape(bsz, heads, g * bq, 1)
            lr_rest = (lr_den - dots_prime.sum(-1).reshape(bsz, heads, g * bq, 1)).clamp_min(LR_CLAMP)
            log_norm = torch.logaddexp(qk_lse, torch.log(lr_rest) + prime_log_scale)
            prime_scale = torch.exp(prime_log_scale - log_norm)  # (B, H, g·bq, 1)
            weights = torch.exp(qk - log_norm.reshape(bsz, heads, g, bq, 1)) - dots_prime * prime_scale.reshape(
                bsz, heads, g, bq, 1)
            out_local = (weights @ vb).reshape(bsz, heads, g * bq, dv)
            out[:, :, r0:r1] = out_local + lr_num * prime_scale
        self._stats = {"local_context": float(w), "nb_features": float(self.nb_features)}
        return out[:, :, :nq]
