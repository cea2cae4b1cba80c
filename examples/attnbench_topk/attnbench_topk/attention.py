"""Top-k attention: exact softmax attention restricted to the k highest-scoring keys of each query.

An example of a method kept in its own package and found by attnbench through the entry point
``attnbench.methods: topk`` (see pyproject.toml). The contract it meets: subclass
``AttentionMethod``, implement ``_attend(q, k, v, *, causal, scale)`` on validated inputs
(q: (B, H, Nq, D), k: (B, H, Nk, D), v: (B, H, Nk, Dv) -> (B, H, Nq, Dv)), take every budget as
a constructor argument (the yaml mirrors the defaults), draw randomness only from
``self.generator(device)`` (this method needs none), and declare where it is exact.

Cost: every score is computed (O(n^2 d) time, like exact attention), in chunks of queries, so
memory is O(chunk_size * n) per head; the gain a real kernel would get from touching only k
values per query is not realised by this dense-then-gather reference.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attnbench import AttentionMethod, check_positive_int


class TopKAttention(AttentionMethod):
    """Softmax over the ``k`` largest scores of each query (ties: ``torch.topk``'s order);
    causal masking is applied before the top-k, so future keys are never chosen."""

    version = 1  # bump when the fixed-seed outputs change (attnbench's site marks older rows stale)

    def __init__(self, k: int = 64, chunk_size: int = 1024) -> None:
        super().__init__()
        self.k = check_positive_int("k", k)
        self.chunk_size = check_positive_int("chunk_size", chunk_size)

    @classmethod
    def exact_knobs(cls, n: int) -> dict[str, Any]:
        return {"k": n}

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
        nq, nk = q.shape[2], k.shape[2]
        top = min(self.k, nk)
        out = q.new_empty(*q.shape[:3], v.shape[-1])
        keys = torch.arange(nk, device=q.device)
        for c0 in range(0, nq, self.chunk_size):
            c1 = min(nq, c0 + self.chunk_size)
            scores = torch.matmul(q[:, :, c0:c1], k.transpose(-1, -2)) * scale
            if causal:
                future = keys[None, :] > torch.arange(c0, c1, device=q.device)[:, None]
                scores.masked_fill_(future, float("-inf"))
            best, idx = scores.topk(top, dim=-1)
            probs = torch.zeros_like(scores).scatter_(-1, idx, torch.softmax(best, dim=-1))
            out[:, :, c0:c1] = torch.matmul(probs, v)
        return out
