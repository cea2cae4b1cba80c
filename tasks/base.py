"""The task interface: a model and a metric that a method is plugged into."""
from __future__ import annotations

from typing import Any, ClassVar, Iterator, Mapping

import torch

from attnbench.core.knobs import Check, resolve_knobs
from attnbench.core.measure import Meter
from attnbench.methods.base import AttentionMethod


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


def capped(cfg: Mapping[str, Any], method_name: str, values: list[int], what: str) -> list[int]:
    """``values`` (the sequence lengths of a run, named ``what`` in messages) up to the method's
    entry of ``task.method_max_n`` ({method: largest length}; all of them when it has none). The
    skipped lengths are printed; a cap that is not an integer >= 1 raises ``ValueError``."""
    cap = (cfg.get("method_max_n") or {}).get(method_name)
    if cap is None:
        return list(values)
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ValueError(f"task.method_max_n.{method_name} must be an integer >= 1, got {cap!r}.")
    skipped = [v for v in values if v > cap]
    if skipped:
        print(f"[attnbench] {method_name}: {what} = {skipped} skipped (task.method_max_n.{method_name}={cap})", flush=True)
    return [v for v in values if v <= cap]
