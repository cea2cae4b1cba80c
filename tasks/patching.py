"""Shared machinery for swapping a method into a model's attention layers.

Model-specific wrappers (timm, T2T-ViT, BigGAN, Hugging Face) live next to the task that
uses them; they all go through ``replace_modules`` and ``MethodCall``.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from methods.base import AttentionMethod
from runners.measure import Meter


class MethodCall:
    """Calls ``method`` on (q, k, v); when a meter is attached and ``timing`` is on, records
    the call's latency under ``label`` (synchronised on GPU)."""

    def __init__(self, method: AttentionMethod, label: str, meter: Meter | None = None) -> None:
        self.method = method
        self.label = label
        self.meter = meter
        self.timing = meter is not None

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, scale: float | None = None) -> Tensor:
        if self.timing and self.meter is not None:
            return self.meter.timed(self.label, lambda: self.method(q, k, v, causal=causal, scale=scale))
        return self.method(q, k, v, causal=causal, scale=scale)


def replace_modules(
    model: nn.Module,
    match: Callable[[str, nn.Module], bool],
    make: Callable[[str, nn.Module], nn.Module],
    layers: Iterable[str] | None = None,
) -> list[str]:
    """Replace each submodule for which ``match(name, module)`` holds (and whose name is in
    ``layers`` when given) by ``make(name, module)``; return the replaced names.

    Raises ``ValueError`` naming the candidates when a requested layer does not exist.
    """
    candidates = [name for name, mod in model.named_modules() if name and match(name, mod)]
    wanted = list(candidates) if layers is None else [str(x) for x in layers]
    missing = [w for w in wanted if w not in candidates]
    if missing:
        raise ValueError(f"task.layers names {missing}, which are not attention layers; candidates: {candidates}.")
    for name in wanted:
        old = model.get_submodule(name)
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, make(name, old))
    return wanted


@torch.no_grad()
def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Load ``src``'s state into ``dst`` (wrappers keep the original parameter names)."""
    dst.load_state_dict(src.state_dict())
