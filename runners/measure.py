"""Latency and peak memory of a region of code.

GPU: CUDA events and ``torch.cuda.max_memory_allocated``. CPU: ``time.perf_counter`` and the
torch profiler's memory accounting (the running sum of the allocations and frees it records,
whose maximum is the peak of tensor memory allocated inside the region).
"""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass
class Measurement:
    """Latencies (ms) of the repeats of one region, and its peak memory (MB) above the start."""

    times_ms: list[float]
    peak_mem_mb: float | None = None

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    def quantile_ms(self, p: float) -> float:
        xs = sorted(self.times_ms)
        if len(xs) == 1:
            return xs[0]
        pos = p * (len(xs) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    def row(self, prefix: str = "") -> dict[str, float | None]:
        """Results-row columns: ``{prefix}latency_ms``, ``…_p10_ms``, ``…_p90_ms``, ``{prefix}peak_mem_mb``."""
        out: dict[str, float | None] = {
            f"{prefix}latency_ms": self.median_ms,
            f"{prefix}peak_mem_mb": self.peak_mem_mb,
        }
        if not prefix:
            out["latency_p10_ms"] = self.quantile_ms(0.1)
            out["latency_p90_ms"] = self.quantile_ms(0.9)
        return out


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the C++ profiler's start/stop lines written straight to file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def cpu_peak_memory_mb(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``fn`` once under the torch profiler; return its result and peak tensor memory (MB).

    The peak is the maximum of the running sum of every allocation and free the profiler
    recorded inside the call, in time order (memory held before the call is not counted).
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    allocs = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        stack.extend(e.children)
        if e.tag == _EventType.Allocation:
            allocs.append((e.start_time_ns, e.extra_fields.alloc_size))
    allocs.sort()
    cur = peak = 0
    for _, size in allocs:
        cur += size
        peak = max(peak, cur)
    return out, peak / 2**20


@dataclass
class Meter:
    """Times a callable: ``warmup`` untimed calls, then ``repeats`` timed ones.

    ``measure(fn, label)`` returns fn's last output and stores the ``Measurement`` under
    ``label`` in ``self.results``. ``record(label, seconds)`` adds single timings taken
    elsewhere (e.g. by a patched layer inside a model forward).
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    warmup: int = 1
    repeats: int = 5
    memory: bool = True
    results: dict[str, Measurement] = field(default_factory=dict)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def measure(self, fn: Callable[[], Any], label: str = "main") -> Any:
        out = None
        for _ in range(self.warmup):
            out = fn()
        self.sync()
        times = []
        for _ in range(max(1, self.repeats)):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = fn()
                end.record()
                torch.cuda.synchronize(self.device)
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                out = fn()
                times.append((time.perf_counter() - t0) * 1e3)
        peak = self.peak_memory(fn) if self.memory else None
        self.results[label] = Measurement(times, peak)
        return out

    def peak_memory(self, fn: Callable[[], Any]) -> float:
        """Peak memory (MB) allocated by one call of ``fn``, above what was allocated before."""
        if self.device.type == "cuda":
            self.sync()
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            fn()
            self.sync()
            return (torch.cuda.max_memory_allocated(self.device) - base) / 2**20
        return cpu_peak_memory_mb(fn)[1]

    def record(self, label: str, seconds: float) -> None:
        m = self.results.setdefault(label, Measurement([], None))
        m.times_ms.append(seconds * 1e3)

    def timed(self, label: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` once (synchronised) and ``record`` its time under ``label``."""
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        self.record(label, time.perf_counter() - t0)
        return out
