"""The task interface: a model and a metric that a method is plugged into."""
from __future__ import annotations

from typing import Any, ClassVar, Iterator, Mapping

import torch

from core.knobs import Check, resolve_knobs
from core.measure import Meter
from methods.base import AttentionMethod


class Task:
    """A task loads its model and data once (in ``__init__`` or lazily), plugs ``method``
    into the attention it names, and yields result rows.

    ``knobs`` declares every config key once, with its check; the defaults are in
    ``conf/task/<name>.yaml`` only. They are filled in and checked (``tasks.resolve``, and again
    here for direct construction), so ``self.cfg[key]`` always exists and is valid.

    ``run`` yields one dict per results row (metric columns, plus ``n`` where the task sweeps
    sequence lengths). The runner adds the config, seed, device, versions and timing columns,
    and saves each row as soon as it is yielded. All timing goes through ``meter``.
    """

    name: str = "base"
    knobs: ClassVar[dict[str, Check]] = {}

    def __init__(self, cfg: Mapping[str, Any], device: torch.device, seed: int = 0) -> None:
        self.cfg = resolve_knobs("task", self.name, self.knobs, cfg)  # idempotent: resolved configs pass as they are
        self.device = device
        self.seed = seed

    def num_rows(self) -> int | None:
        """How many rows ``run`` will yield, when known (for progress lines)."""
        return None

    def run(self, method: AttentionMethod, meter: Meter) -> Iterator[dict[str, Any]]:
        raise NotImplementedError
