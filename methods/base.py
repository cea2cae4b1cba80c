"""The attention-method interface and the input checks every method shares.

A method is a ``torch.nn.Module`` whose ``forward(q, k, v, *, causal, scale)`` maps
q: (B, H, Nq, D), k: (B, H, Nk, D), v: (B, H, Nk, Dv) to (B, H, Nq, Dv).
Subclasses implement ``_attend`` and receive validated inputs, the resolved scale, and
(when ``upcast`` is true) half-precision inputs cast to float32; the output is cast back
to the input dtype.
"""
from __future__ import annotations

import math
import threading
from typing import Any, Iterator

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Scores (or feature entries) held at once by the chunked PyTorch paths: a cache-sized tile
# (8 MB in fp32). The one tile-size constant of the methods; tests patch it per module.
SCORE_TILE_ELEMS = 1 << 21

# the dtype names configs use (task.dtype); the one map of the suite
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def check_qkv(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False) -> None:
    """Raise ``ValueError`` with one sentence when q, k, v do not form a valid attention call."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, heads, tokens, dim), got shape {tuple(t.shape)}.")
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name} must be a floating tensor (fp16, bf16, fp32, fp64), got {t.dtype}.")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}.")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}.")
    if q.shape[:2] != k.shape[:2] or k.shape[:2] != v.shape[:2]:
        raise ValueError(
            f"q, k, v must share batch and heads, got {tuple(q.shape[:2])}, {tuple(k.shape[:2])}, {tuple(v.shape[:2])}."
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share the head dim, got {q.shape[-1]} and {k.shape[-1]}.")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v must have the same number of tokens, got {k.shape[2]} and {v.shape[2]}.")
    if min(q.shape[2], k.shape[2], q.shape[-1], v.shape[-1]) == 0:
        raise ValueError(f"q, k, v must be non-empty, got shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}.")
    if causal and q.shape[2] != k.shape[2]:
        raise ValueError(f"causal attention needs as many queries as keys, got Nq={q.shape[2]} and Nk={k.shape[2]}.")
    for name, t in (("q", q), ("k", k), ("v", v)):
        # one pass: a finite sum means finite entries; only an inf/NaN sum (NaN, inf, or an
        # overflowing sum of huge finite values) needs the full check
        if not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or infinite values.")


def check_scale(scale: float | None, head_dim: int) -> float:
    """Resolve ``scale`` (default ``head_dim ** -0.5``); it must be a finite positive number."""
    if scale is None:
        return head_dim ** -0.5
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite positive number, got {scale}.")
    return scale


def check_positive_int(name: str, value: Any) -> int:
    """``value`` as an int >= 1, or ``ValueError`` naming the knob ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"method.{name} must be a positive integer, got {value!r}.")
    return value


def resolve_budget(name: str, value: Any, n: int, *, allow_exceed: bool = True) -> int:
    """A budget knob as a count of tokens for sequence length ``n``.

    ``value`` is an int >= 1 or a float in (0, 1] (a fraction of ``n``, rounded up: 1.0 is all
    of ``n``; an integral float above 1, e.g. 64.0, is a count).
    With ``allow_exceed`` a budget above ``n`` is returned as ``n`` (the method is then exact
    or degenerate by construction) and the call's row says ``budget_clipped``; without it, it is
    a ``ValueError``.
    """
    if isinstance(value, float):
        if value > 1 and value.is_integer():
            value = int(value)
        elif not 0 < value <= 1:
            raise ValueError(f"method.{name} as a fraction of n must lie in (0, 1], got {value}.")
        else:
            return max(1, math.ceil(value * n))
    value = check_positive_int(name, value)
    if value > n and not allow_exceed:
        raise ValueError(f"method.{name}={value} exceeds the sequence length n={n}.")
    if value > n:
        _clipped.names = [*getattr(_clipped, "names", []), f"{name}={value} > n={n}"]
    return min(value, n)


# budgets clipped to n during the current call (read by AttentionMethod.forward: budget_clipped)
_clipped = threading.local()


def score_groups(heads: int, blocks: int, width: int, budget: int) -> Iterator[tuple[int, int, int, int]]:
    """Ranges ``(h0, h1, c0, c1)`` of heads and query blocks, each group holding about ``budget``
    scores when one block of one head holds ``width``: several blocks of all heads when a block of
    every head fits, else one block of as many heads as fit (at least one of each)."""
    per = max(1, min(blocks, budget // max(1, heads * width)))
    hb = heads if per > 1 else max(1, min(heads, budget // max(1, width)))
    for h0 in range(0, heads, hb):
        for c0 in range(0, blocks, per):
            yield h0, min(heads, h0 + hb), c0, min(blocks, c0 + per)


class AttentionMethod(torch.nn.Module):
    """Base class: validation, scale, dtype handling and the run's random generator.

    Subclasses set ``name``, ``supports_causal`` / ``supports_bidirectional`` and implement
    ``_attend(q, k, v, causal, scale)``. Randomness must come from ``self.generator(device)``,
    which the runner seeds through ``reseed(seed)``; two runs with one seed match.
    """

    name: str = "base"
    supports_causal: bool = True
    supports_bidirectional: bool = True
    supports_cross: bool = True  # Nq != Nk allowed (bidirectional only)
    upcast: bool = True  # compute fp16/bf16 inputs in float32, as the papers' code does
    supports_grad: bool = True  # False: evaluation writes into preallocated buffers; no autograd
    # the outputs' version (as lm-evaluation-harness versions its tasks): bump it whenever the method's
    # fixed-seed outputs change (tests/test_method_versions.py fails until then); rows record it as
    # method_version. version_commits: version (>= 2) -> the commit its outputs date from (default: the
    # commit that introduced its `version = N` line), so a row without method_version gets the latest
    # version whose commit is an ancestor of its git_commit (runners/site.py).
    version: int = 1
    version_commits: dict[int, str] = {}

    def __init__(self) -> None:
        super().__init__()
        self._seed = 0
        self._generators: dict[str, torch.Generator] = {}
        self._stats: dict[str, float] = {}

    # --- randomness -------------------------------------------------------------------
    def reseed(self, seed: int) -> None:
        """Restart this method's random stream at ``seed`` (all devices)."""
        self._seed = int(seed)
        self._generators.clear()

    def generator(self, device: torch.device | str) -> torch.Generator:
        """The seeded generator for ``device`` (created on first use)."""
        device = torch.device(device)
        key = str(device)
        if key not in self._generators:
            g = torch.Generator(device=device)
            g.manual_seed(self._seed)
            self._generators[key] = g
        return self._generators[key]

    # --- the call ----------------------------------------------------------------------
    def forward(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, scale: float | None = None) -> Tensor:
        """q: (B, H, Nq, D), k: (B, H, Nk, D), v: (B, H, Nk, Dv) -> (B, H, Nq, Dv).

        ``scale`` defaults to D**-0.5 (SAGAN/BigGAN passes scale=1.0).
        """
        check_qkv(q, k, v, causal=causal)
        scale = check_scale(scale, q.shape[-1])
        if causal and not self.supports_causal:
            raise NotImplementedError(f"{self.name} does not support causal attention (bidirectional only).")
        if not causal and not self.supports_bidirectional:
            raise NotImplementedError(f"{self.name} supports only causal attention; pass causal=True.")
        if not self.supports_grad and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            raise NotImplementedError(
                f"{self.name} does not support gradients (its chunked evaluation writes into preallocated "
                "buffers); call it under torch.no_grad() or use a method that does."
            )
        if q.shape[2] != k.shape[2] and not self.supports_cross:
            raise NotImplementedError(f"{self.name} needs as many queries as keys (no cross-attention).")
        dtype = q.dtype
        if self.upcast and dtype in (torch.float16, torch.bfloat16):
            q, k, v = q.float(), k.float(), v.float()
        _clipped.names = []
        out = self._attend(q, k, v, causal=causal, scale=scale)
        self._stats["budget_clipped"] = bool(_clipped.names)
        return out.to(dtype)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
        raise NotImplementedError

    # --- optional parts ----------------------------------------------------------------
    @classmethod
    def exact_knobs(cls, n: int) -> dict[str, Any] | None:
        """Knobs at which this method computes exact attention on ``n`` keys (a budget that covers
        n), which the conformance check (``runners.check``) tests; ``None``: never exact by construction."""
        return None

    def causal_leak(self) -> str | None:
        """Why, with ``causal=True``, keys after a query can still change its output *by the
        reference algorithm's design* (reported by ``runners.check`` instead of a failure);
        ``None``: they cannot (queries see only earlier keys, through every step)."""
        return None

    def compress(self, k: Tensor, v: Tensor, budget: int) -> tuple[Tensor, Tensor, Tensor]:
        """Coreset (k_c, v_c, log_w) such that softmax(q k_cᵀ·scale + log_w) v_c ≈ attention.

        Only methods that compress a KV cache implement this.
        """
        raise NotImplementedError(f"{self.name} does not implement KV-cache compression (compress).")

    def extra_stats(self) -> dict[str, float]:
        """Method-specific figures of the last call (kept fraction, coreset size …)."""
        return dict(self._stats)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.hparams().items())

    def hparams(self) -> dict[str, Any]:
        """The constructor knobs (public attributes set in ``__init__``) for results rows."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "training"}
