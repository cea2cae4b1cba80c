"""LATTE: low-precision approximate attention with head-wise trainable thresholds.

Wang, Lin, Wu (National Taiwan University), "Low-Precision Approximate Attention with
Head-wise Trainable Threshold for Efficient Transformer", arXiv 2404.07519. The paper has no
public code; this file is the suite's implementation.

From the paper:
  * Q and K are quantised to 8 bits; a cheap estimate of every score uses only the most
    significant 4 bits of each operand (the "hi" nibble).
  * A head-wise threshold filter keeps, for each query, the keys whose estimated score is close
    to the row maximum: a *differential* threshold, ``ŝ_ij >= max_j ŝ_ij - θ_h``. With
    ``θ_h = -ln γ_h`` this keeps keys whose estimated softmax probability is at least ``γ_h``
    times the row's largest one.
  * Computation reuse: the full-precision score of a kept key reuses the 4-bit partial product.
  * Thresholds are trained end to end (with a penalty that pushes filtering up).

This suite's choices (the paper's exact recipe is not public):
  * Quantisation: symmetric int8 per (batch, head), scale = max|x| / 127, round to nearest;
    ``x = 16·hi + lo`` with ``hi = floor(x/16)`` in [-8, 7] and ``lo`` in [0, 15] (exact).
    The scale is taken over all tokens of the call, so in causal use future keys can move the
    scale (not the mask) of past ones; a deployment with a KV cache would calibrate it instead.
  * Estimate ``ŝ = 256·(q_hi·k_hi)·s_q·s_k·scale``. Full int8 score with reuse:
    ``q·k = 256·(q_hi·k_hi) + [q_hi, q_lo]·[16·k_lo, k]`` (equal to
    ``256 hh + 16(hl + lh) + ll``). ``score="float"`` uses the unquantised score of kept keys
    instead (the filter still uses the 4-bit estimate).
  * Softmax runs over kept keys only (the row maximum is always kept, so no row is empty).
  * Training: forward uses the hard mask; backward a straight-through sigmoid surrogate
    ``σ((ŝ - max ŝ + θ_h)/T)`` (``temperature`` = T, in logit units). The int8 score passes
    gradients to q, k as if it were the float score (straight-through over the rounding).
    ``self.soft_kept`` holds the differentiable kept fraction of the last call for the
    regulariser ``λ·kept`` (see ``runners/train_thresholds.py``). θ is clamped to >= 0.
  * Heads: ``heads`` fixes the number of thresholds; ``heads=None`` sizes θ lazily on the first
    call (build the optimiser after one forward). ``thresholds_path`` loads a ``.pt`` file of
    ``{layer_name: θ tensor}``; ``threshold_layer`` picks the entry (may be omitted when the
    file holds exactly one; with several and none picked, calling the method is an error, so that
    a task can give each layer its entry: ``task=lm`` does).

Complexity: a filter, not a sub-quadratic method: O(n²·d) time. The PyTorch path works in query
chunks of ``chunk_size``, so memory is O(chunk_size·n), never n×n for n > chunk_size (during
training autograd still keeps every chunk). On CUDA (fp32 compute, no gradients needed) a
two-pass Triton kernel (``methods/kernels/latte.py``) computes the 4-bit estimate, and skips the
full-score work of key blocks in which nothing is kept.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from . import register
from .base import AttentionMethod, check_positive_int

SCORES = ("int8", "float")
BACKENDS = ("auto", "torch", "triton")


def quantize_int8(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per (batch, head): integer-valued tensor in [-127, 127] (x's float dtype)
    and the scale (B, H, 1, 1) with ``x ≈ x_int · scale``."""
    amax = x.detach().abs().amax(dim=(-2, -1), keepdim=True)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    x_int = torch.round(x.detach() / scale).clamp_(-127, 127)
    return x_int, scale


def split_hi_lo(x_int: Tensor) -> tuple[Tensor, Tensor]:
    """``x_int = 16·hi + lo`` exactly, hi = floor(x/16) (signed 4-bit, [-8, 7]), lo in [0, 15]."""
    hi = torch.floor(x_int / 16)
    lo = x_int - 16 * hi
    return hi, lo


class _LatteStats:
    """Per-head kept / valid counts accumulated over query chunks."""

    def __init__(self, heads: int, device: torch.device) -> None:
        self.kept = torch.zeros(heads, dtype=torch.float64, device=device)
        self.valid = torch.zeros(heads, dtype=torch.float64, device=device)


@register("latte")
class Latte(AttentionMethod):
    """LATTE threshold filter on a 4-bit score estimate; softmax over the kept keys.

    Knobs: ``threshold`` (initial θ for every head, logit units, >= 0; keep keys within θ of the
    row max of the estimate), ``heads`` (number of thresholds or None = lazy), ``score``
    ("int8" | "float": how kept scores are computed), ``temperature`` (surrogate T > 0),
    ``chunk_size`` (queries per chunk on the PyTorch path), ``backend`` ("auto" | "torch" |
    "triton"), ``thresholds_path`` / ``threshold_layer`` (learned θ).
    """

    supports_causal = True
    supports_bidirectional = True
    supports_cross = True

    @classmethod
    def exact_knobs(cls, n: int) -> dict:
        return {"threshold": 1e9, "score": "float"}  # a threshold no score gap reaches keeps every key

    def __init__(
        self,
        threshold: float = 5.0,
        heads: int | None = None,
        score: str = "int8",
        temperature: float = 1.0,
        chunk_size: int = 512,
        backend: str = "auto",
        thresholds_path: str | None = None,
        threshold_layer: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= float(threshold) < float("inf"):
            raise ValueError(f"method.threshold must be a finite number >= 0, got {threshold!r}.")
        if heads is not None:
            check_positive_int("heads", heads)
        if score not in SCORES:
            raise ValueError(f"method.score must be one of {SCORES}, got {score!r}.")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not 0 < float(temperature) < float("inf"):
            raise ValueError(f"method.temperature must be a finite number > 0, got {temperature!r}.")
        check_positive_int("chunk_size", chunk_size)
        if backend not in BACKENDS:
            raise ValueError(f"method.backend must be one of {BACKENDS}, got {backend!r}.")
        self.threshold = float(threshold)
        self.heads = heads
        self.score = score
        self.temperature = float(temperature)
        self.chunk_size = chunk_size
        self.backend = backend
        self.thresholds_path = thresholds_path
        self.threshold_layer = threshold_layer
        self.theta: nn.Parameter | None = None
        self._soft_kept: Tensor | None = None
        self._unresolved = ""  # set when thresholds_path holds several layers and threshold_layer is None
        if heads is not None:
            self.theta = nn.Parameter(torch.full((heads,), self.threshold))
        if thresholds_path is not None:
            self.load_thresholds(thresholds_path, threshold_layer)

    # --- thresholds ------------------------------------------------------------------------
    def load_thresholds(self, path: str, layer: str | None = None) -> None:
        """Set θ from a ``.pt`` file of ``{layer_name: θ tensor}``."""
        if not os.path.isfile(path):
            raise ValueError(f"method.thresholds_path {path!r} is not a file.")
        table = torch.load(path, map_location="cpu")
        if not isinstance(table, dict) or not table:
            raise ValueError(f"method.thresholds_path {path!r} must hold a non-empty dict {{layer_name: θ tensor}}.")
        if layer is None:
            if len(table) != 1:  # an error at the first call: a task may still pick the layer (task=lm does)
                self._unresolved = (f"method.threshold_layer must name one of {sorted(table)} "
                                    f"(the file holds several layers).")
                return
            layer = next(iter(table))
        if layer not in table:
            raise ValueError(f"method.threshold_layer {layer!r} is not in {path!r}; it holds {sorted(table)}.")
        theta = torch.as_tensor(table[layer], dtype=torch.float32).flatten()
        if self.heads is not None and theta.numel() != self.heads:
            raise ValueError(f"method.heads={self.heads} but {path!r}[{layer!r}] has {theta.numel()} thresholds.")
        if not bool(torch.isfinite(theta).all()) or bool((theta < 0).any()):
            raise ValueError(f"thresholds in {path!r}[{layer!r}] must be finite and >= 0.")
        self.heads = int(theta.numel())
        self.theta = nn.Parameter(theta.clone())

    def _theta_for(self, heads: int, device: torch.device) -> Tensor:
        if self._unresolved:
            raise ValueError(self._unresolved)
        if self.theta is None:  # lazy sizing on the first call
            self.theta = nn.Parameter(torch.full((heads,), self.threshold, device=device))
            self.heads = heads
        if self.theta.numel() != heads:
            raise ValueError(f"method.heads={self.theta.numel()} thresholds but the input has {heads} heads.")
        if self.theta.device != device:
            self.theta.data = self.theta.data.to(device)
        return self.theta.clamp_min(0)

    @property
    def soft_kept(self) -> Tensor | None:
        """Differentiable kept fraction of the last call (forward value = hard fraction)."""
        return self._soft_kept

    # --- the call --------------------------------------------------------------------------
    def _use_triton(self, q: Tensor) -> bool:
        if self.backend == "torch":
            return False
        needs_grad = torch.is_grad_enabled() and (
            q.requires_grad or (self.theta is not None and self.theta.requires_grad)
        )
        if self.backend == "triton":
            if q.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
                raise ValueError("method.backend='triton' needs a CUDA device (or TRITON_INTERPRET=1).")
            if q.dtype != torch.float32:
                raise ValueError(f"method.backend='triton' computes in float32, got {q.dtype}.")
            if needs_grad:
                raise ValueError("method.backend='triton' is forward-only; run under torch.no_grad().")
            return True
        return q.device.type == "cuda" and q.dtype == torch.float32 and not needs_grad

    def causal_leak(self) -> str | None:
        return ("the int8 quantisation scale of q and k is the max over all tokens of the call, so later tokens can "
                "move earlier scores' rounding and kept sets (a deployment would calibrate the scale).")

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
        B, H, Nq, D = q.shape
        theta = self._theta_for(H, q.device)
        q_int, s_q = quantize_int8(q)
        k_int, s_k = quantize_int8(k)
        q_hi, q_lo = split_hi_lo(q_int)
        k_hi, k_lo = split_hi_lo(k_int)
        c = (s_q * s_k * scale).to(q.dtype)  # (B, H, 1, 1): int score -> logit
        if self._use_triton(q):
            from .kernels.latte import latte_attention_triton

            out, kept_rows, valid_rows, blocks = latte_attention_triton(
                q, k, v, q_hi, q_lo, k_hi, k_lo, k_int, c, theta.detach(), causal=causal, score=self.score, scale=scale
            )
            kept_h = kept_rows.double().sum(dim=(0, 2))
            valid_h = valid_rows.double().sum(dim=(0, 2))
            self._soft_kept = None
            self._record(kept_h, valid_h, extra={"skipped_block_fraction": blocks})
            return out
        return self._attend_torch(q, k, v, q_hi, q_lo, k_hi, k_lo, k_int, c, theta, causal=causal, scale=scale)

    def _attend_torch(self, q, k, v, q_hi, q_lo, k_hi, k_lo, k_int, c, theta, *, causal, scale) -> Tensor:
        B, H, Nq, D = q.shape
        Nk = k.shape[2]
        train = torch.is_grad_enabled() and theta.requires_grad
        th = theta.view(1, H, 1, 1).to(q.dtype)
        k_rest = torch.cat([16 * k_lo, k_int], dim=-1)  # reuse: q·k = 256 hh + [q_hi, q_lo]·[16 k_lo, k]
        stats = _LatteStats(H, q.device)
        soft_sum = q.new_zeros(()) if train else None
        outs = []
        cols = torch.arange(Nk, device=q.device)
        for start in range(0, Nq, self.chunk_size):
            stop = min(Nq, start + self.chunk_size)
            # causal: keys after the chunk's last query are masked for every row of the chunk, so
            # they are left out (the same output, half the work over the whole call)
            kend = min(Nk, stop + (Nk - Nq)) if causal else Nk
            k_hi_c, k_rest_c, k_c, v_c = k_hi[:, :, :kend], k_rest[:, :, :kend], k[:, :, :kend], v[:, :, :kend]
            hh = q_hi[:, :, start:stop] @ k_hi_c.transpose(-2, -1)  # exact small-integer products
            est = 256 * hh * c
            if causal:
                rows = torch.arange(start, stop, device=q.device) + (Nk - Nq)
                valid = (cols[None, :kend] <= rows[:, None]).expand(B, H, -1, -1)
                est = est.masked_fill(~valid, float("-inf"))
            else:
                valid = None
            rel = est - est.amax(dim=-1, keepdim=True)  # <= 0, -inf where invalid
            keep = rel >= -th
            if self.score == "int8":
                q_rest = torch.cat([q_hi[:, :, start:stop], q_lo[:, :, start:stop]], dim=-1)
                s = (256 * hh + q_rest @ k_rest_c.transpose(-2, -1)) * c
                if q.requires_grad or k.requires_grad:  # straight-through over the rounding
                    s_f = (q[:, :, start:stop] @ k_c.transpose(-2, -1)) * scale
                    s = s_f + (s - s_f).detach()
            else:
                s = (q[:, :, start:stop] @ k_c.transpose(-2, -1)) * scale
            m_hard = keep.to(q.dtype)
            if train:
                m_soft = torch.sigmoid((rel + th) / self.temperature)
                if valid is not None:
                    m_soft = m_soft * valid
                m = m_hard + (m_soft - m_soft.detach())
                soft_sum = soft_sum + m.sum()
            else:
                m = m_hard
            # Dropped keys stay in the exponent (times a zero mask) so that the surrogate gradient
            # can reach θ through them; the forward value is the softmax over kept keys.
            if valid is not None:
                s = s.masked_fill(~valid, float("-inf"))
            row_max = s.detach().masked_fill(~keep, float("-inf")).amax(dim=-1, keepdim=True)
            w = torch.exp((s - row_max).clamp_max(80.0)) * m
            p = w / w.sum(dim=-1, keepdim=True)
            outs.append(p @ v_c)
            stats.kept += keep.sum(dim=(0, 2, 3)).double()
            n_valid = (valid.sum(dim=(0, 2, 3)).double() if valid is not None
                       else torch.full_like(stats.valid, B * (stop - start) * Nk))
            stats.valid += n_valid
        total_valid = float(stats.valid.sum())
        self._soft_kept = soft_sum / total_valid if train else None
        self._record(stats.kept, stats.valid)
        return torch.cat(outs, dim=2)

    def _record(self, kept_h: Tensor, valid_h: Tensor, extra: dict[str, Any] | None = None) -> None:
        kept_h, valid_h = kept_h.double().cpu(), valid_h.double().cpu()
        self._stats = {"kept_fraction": float(kept_h.sum() / valid_h.sum())}
        for h, frac in enumerate((kept_h / valid_h).tolist()):
            self._stats[f"kept_fraction_h{h}"] = float(frac)
        if extra:
            self._stats.update({k: float(v) for k, v in extra.items()})

    def hparams(self) -> dict[str, Any]:
        return {k: v for k, v in super().hparams().items() if k != "theta"}
