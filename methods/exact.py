"""Exact softmax attention through PyTorch's ``scaled_dot_product_attention`` (the baseline)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnbench.methods import register
from attnbench.methods.base import AttentionMethod


@register("exact")
class Exact(AttentionMethod):
    """softmax(scale·QKᵀ [+ causal mask]) V via SDPA (flash / memory-efficient kernels where
    PyTorch has them). Computes in the input dtype: it is the speed baseline."""

    upcast = False
    version = 1

    @classmethod
    def exact_knobs(cls, n: int) -> dict:
        return {}  # exact attention at any knobs

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)


def dense_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, scale: float | None = None) -> Tensor:
    """Reference attention with an explicit n×n score matrix (for tests; O(n²) memory)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    if causal:
        n_q, n_k = s.shape[-2:]
        mask = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril(n_k - n_q)
        s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, dim=-1) @ v
