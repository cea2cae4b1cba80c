"""Progress lines for long loops: ``[attnbench] <what> 12/50, 31 s, about 98 s left``.

Printed at most every ``every_s`` seconds and once at the end; silent when ``Progress.quiet`` is
set (the runner sets it from ``quiet=true``).
"""
from __future__ import annotations

import time
from typing import Callable


class Progress:
    quiet: bool = False

    def __init__(self, what: str, total: int, every_s: float = 10.0, clock: Callable[[], float] = time.perf_counter):
        self.what, self.total, self.every_s, self.clock = what, max(1, int(total)), every_s, clock
        self.done = 0
        self.start = self.last = clock()

    def line(self) -> str:
        elapsed = self.clock() - self.start
        left = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        tail = f", about {left:.0f} s left" if self.done < self.total else ""
        return f"[attnbench] {self.what} {self.done}/{self.total}, {elapsed:.0f} s{tail}"

    def step(self, k: int = 1) -> None:
        self.done += k
        now = self.clock()
        if not self.quiet and (now - self.last >= self.every_s or self.done >= self.total):
            self.last = now
            print(self.line(), flush=True)
