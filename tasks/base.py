"""The task interface: a model and a metric that a method is plugged into."""
from __future__ import annotations

from typing import Any, Iterator, Mapping

import torch

from methods.base import AttentionMethod
from runners.measure import Meter


class Task:
    """A task loads its model and data once (in ``__init__`` or lazily), plugs ``method``
    into the attention it names, and yields result rows.

    ``run`` yields one dict per results row (metric columns of ../README.md's table, plus
    ``n`` where the task sweeps sequence lengths). The runner adds the config, seed, device,
    versions and timing columns, and saves each row as soon as it is yielded.
    """

    name: str = "base"

    def __init__(self, cfg: Mapping[str, Any], device: torch.device, seed: int = 0) -> None:
        self.cfg = cfg
        self.device = device
        self.seed = seed

    def run(self, method: AttentionMethod, meter: Meter) -> Iterator[dict[str, Any]]:
        raise NotImplementedError
