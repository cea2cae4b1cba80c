"""One timing and memory protocol for every task: ``Meter.measure`` and ``Meter.compare``.

Timing (both devices): untimed warm-up calls, then samples until the median is stable, the way
``torch.utils.benchmark.Timer.adaptive_autorange`` decides: sampling goes on for at least
``min_run_s`` seconds and ``min_samples`` samples, then stops as soon as the inter-quartile range
is within ``threshold`` of the median, or when ``max_run_s`` is spent (or ``max_samples`` taken).
The loop is written out here rather than taken from ``torch.utils.benchmark`` because a paired
comparison must interleave two callables (A B A B …), which that module cannot do, and because
``Timer.timeit`` adds untimed calls to every sample (ruinous for a 45-second call).

- CPU: ``time.perf_counter`` around a block of calls (enough calls that a block lasts
  ``block_ms``; one call for anything slower), garbage collection off, the thread count pinned
  (``num_threads``, recorded in each row).
- CUDA: CUDA events around each call, with the L2 cache flushed (a 256 MB buffer zeroed) before
  every call, as ``triton.testing.do_bench`` does.

``compare(method_fn, exact_fn)`` times the two interleaved in one process, so drift on a shared
machine hits both, and reports the speed-up (ratio of medians, exact / method) with a 95 %
bootstrap interval over the paired samples. Every row keeps the raw samples
(``latency_samples_ms``) so any statistic can be recomputed.

Memory: CUDA allocator peak on GPU; on CPU the torch profiler's memory events (the maximum of the
running sum of allocations and frees inside one call), through ``cpu_peak_memory_mb``, the one
place that touches the profiler's private API.

This module imports torch and the standard library only (the bottom layer of the suite).
"""
from __future__ import annotations

import contextlib
import gc
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

Clock = Callable[[], float]


@dataclass
class Measurement:
    """Latency samples (ms per call) of one region, and its peak memory (MB) above the start."""

    samples_ms: list[float]
    peak_mem_mb: float | None = None
    calls_per_sample: int = 1

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms) if self.samples_ms else math.nan

    def quantile_ms(self, p: float) -> float:
        """Linear-interpolated quantile ``p`` in [0, 1] of the samples."""
        xs = sorted(self.samples_ms)
        if not xs:
            return math.nan
        pos = p * (len(xs) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    def columns(self, prefix: str = "") -> dict[str, Any]:
        """Row columns ``{prefix}latency_ms`` (median), ``…_p10_ms``, ``…_p90_ms``,
        ``{prefix}latency_samples_ms`` and ``{prefix}peak_mem_mb``."""
        return {
            f"{prefix}latency_ms": self.median_ms,
            f"{prefix}latency_p10_ms": self.quantile_ms(0.1),
            f"{prefix}latency_p90_ms": self.quantile_ms(0.9),
            f"{prefix}latency_samples_ms": [round(x, 6) for x in self.samples_ms],
            f"{prefix}peak_mem_mb": self.peak_mem_mb,
        }


def bootstrap_speedup(
    exact_ms: list[float], method_ms: list[float], *, paired: bool, confidence: float = 0.95,
    resamples: int = 2000, seed: int = 0,
) -> tuple[float, float, float]:
    """Speed-up ``median(exact) / median(method)`` and its percentile-bootstrap interval.

    Paired samples (taken interleaved, equal counts) are resampled together; otherwise each list
    is resampled on its own. The resampling generator is seeded, so the interval is repeatable.
    """
    import numpy as np

    e, m = np.asarray(exact_ms, dtype=float), np.asarray(method_ms, dtype=float)
    if e.size == 0 or m.size == 0:
        return math.nan, math.nan, math.nan
    point = float(np.median(e) / np.median(m))
    rng = np.random.default_rng(seed)
    if paired and e.size == m.size:
        idx = rng.integers(0, e.size, size=(resamples, e.size))
        ratios = np.median(e[idx], axis=1) / np.median(m[idx], axis=1)
    else:
        ie = rng.integers(0, e.size, size=(resamples, e.size))
        im = rng.integers(0, m.size, size=(resamples, m.size))
        ratios = np.median(e[ie], axis=1) / np.median(m[im], axis=1)
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(ratios, [alpha, 1.0 - alpha])
    return point, float(min(lo, point)), float(max(hi, point))


@dataclass
class Comparison:
    """A method and exact attention timed together; ``speedup`` = exact / method medians."""

    method: Measurement
    exact: Measurement
    speedup: float
    speedup_lo: float
    speedup_hi: float
    paired: bool

    def columns(self, prefix: str = "") -> dict[str, Any]:
        """``{prefix}latency_ms`` … (method), ``exact_{prefix}latency_ms`` … (exact),
        ``{prefix}speedup``, ``{prefix}speedup_lo``, ``{prefix}speedup_hi``."""
        return {
            **self.method.columns(prefix),
            **self.exact.columns(f"exact_{prefix}"),
            f"{prefix}speedup": self.speedup,
            f"{prefix}speedup_lo": self.speedup_lo,
            f"{prefix}speedup_hi": self.speedup_hi,
        }


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
    This reads the profiler's private event tree; a torch release that changes it gives a
    ``RuntimeError`` saying so (set ``meter.memory=false`` to run without memory figures).
    """
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    try:
        from torch._C._profiler import _EventType

        allocs = []
        stack = list(prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            e = stack.pop()
            stack.extend(e.children)
            if e.tag == _EventType.Allocation:
                allocs.append((e.start_time_ns, e.extra_fields.alloc_size))
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(
            f"CPU peak memory reads torch's private profiler events, which torch {torch.__version__} "
            f"no longer provides as expected ({type(exc).__name__}: {exc}); set meter.memory=false."
        ) from exc
    allocs.sort()
    cur = peak = 0
    for _, size in allocs:
        cur += size
        peak = max(peak, cur)
    return out, peak / 2**20


@dataclass
class Meter:
    """Times callables with one protocol (see the module docstring) and keeps what it measured.

    ``measure(fn, label)`` and ``compare(method_fn, exact_fn, label)`` store a ``Measurement`` /
    ``Comparison`` under ``label`` in ``results``. ``timed(label, fn)`` adds one sample of a
    region that cannot be repeated (e.g. an attention call inside a model forward, or a whole
    generation pass). ``clock`` is injectable (tests use a fake clock; CPU only).
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    warmup: int = 1
    min_samples: int = 5
    max_samples: int = 1000
    min_run_s: float = 1.0
    max_run_s: float = 10.0
    threshold: float = 0.1
    block_ms: float = 2.0
    memory: bool = True
    num_threads: int | None = None
    clock: Clock = time.perf_counter
    results: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        rules = [
            ("warmup", self.warmup >= 1, ">= 1 (the first call's output is the one returned)"),
            ("min_samples", self.min_samples >= 1, ">= 1"),
            ("max_samples", self.max_samples >= self.min_samples, f">= meter.min_samples={self.min_samples}"),
            ("min_run_s", self.min_run_s >= 0, ">= 0"),
            ("max_run_s", self.max_run_s >= self.min_run_s, f">= meter.min_run_s={self.min_run_s}"),
            ("threshold", self.threshold >= 0, ">= 0"),
            ("block_ms", self.block_ms >= 0, ">= 0"),
        ]
        for key, ok, allowed in rules:
            if not ok:
                raise ValueError(f"meter.{key}={getattr(self, key)!r} is out of range: it must be {allowed}.")
        if self.num_threads is None:
            self.num_threads = torch.get_num_threads()
        if int(self.num_threads) < 1:
            raise ValueError(f"meter.num_threads must be a positive integer or null, got {self.num_threads}.")
        self.num_threads = int(self.num_threads)
        torch.set_num_threads(self.num_threads)
        self._flush_buffer: torch.Tensor | None = None

    @classmethod
    def quick(cls, device: torch.device | str = "cpu", samples: int = 1, memory: bool = False) -> "Meter":
        """One warm-up call and ``samples`` timed samples, no stopping rule (tests, smoke runs;
        such timings are not evidence). The config group ``meter=quick`` is the same."""
        return cls(device=torch.device(device), warmup=1, min_samples=samples, max_samples=samples, min_run_s=0.0,
                   max_run_s=0.0, block_ms=0.0, memory=memory)

    # --- primitives ---------------------------------------------------------------------
    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _flush_l2(self) -> None:
        if self._flush_buffer is None:
            self._flush_buffer = torch.empty(256 * 2**20, dtype=torch.int8, device=self.device)
        self._flush_buffer.zero_()

    def _sample(self, fn: Callable[[], Any], calls: int) -> float:
        """One sample: milliseconds per call, averaged over ``calls`` back-to-back calls (CPU) or
        one event-timed call after an L2 flush (CUDA)."""
        if self.device.type == "cuda":
            self._flush_l2()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(self.device)
            return float(start.elapsed_time(end))
        t0 = self.clock()
        for _ in range(calls):
            fn()
        return (self.clock() - t0) * 1e3 / calls

    def _warm(self, fn: Callable[[], Any]) -> tuple[Any, int]:
        """Warm-up calls; returns fn's output and the calls per sample for this device."""
        out = None
        for _ in range(self.warmup):
            self.sync()
            t0 = self.clock()
            out = fn()
            self.sync()
            one_ms = (self.clock() - t0) * 1e3
        if self.device.type == "cuda" or one_ms <= 0:
            return out, 1
        return out, max(1, min(1000, math.ceil(self.block_ms / one_ms)))

    def _stable(self, samples: list[float]) -> bool:
        if len(samples) < max(2, self.min_samples):
            return False
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
        med = statistics.median(samples)
        return q3 == q1 or (med > 0 and (q3 - q1) / med <= self.threshold)

    def _done(self, series: list[list[float]], elapsed_s: float) -> bool:
        count = len(series[0])
        if count >= self.max_samples:
            return True
        if count < self.min_samples or elapsed_s < self.min_run_s:
            return False
        return elapsed_s >= self.max_run_s or all(self._stable(s) for s in series)

    def _sample_loop(self, fns: list[Callable[[], Any]], calls: list[int]) -> list[list[float]]:
        """Interleaved samples of every callable (A B A B …) until the stopping rule holds."""
        series: list[list[float]] = [[] for _ in fns]
        gc_was_on = gc.isenabled()
        gc.disable()
        try:
            t_start = self.clock()
            while True:
                for fn, c, s in zip(fns, calls, series):
                    s.append(self._sample(fn, c))
                if self._done(series, self.clock() - t_start):
                    return series
        finally:
            if gc_was_on:
                gc.enable()

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

    # --- the protocol -------------------------------------------------------------------
    def measure(self, fn: Callable[[], Any], label: str = "main") -> Any:
        """Time ``fn`` alone; store a ``Measurement`` under ``label``; return fn's output."""
        out, calls = self._warm(fn)
        (samples,) = self._sample_loop([fn], [calls])
        peak = self.peak_memory(fn) if self.memory else None
        self.results[label] = Measurement(samples, peak, calls)
        return out

    def compare(
        self, method_fn: Callable[[], Any], exact_fn: Callable[[], Any] | None = None, label: str = "main", *,
        exact: Measurement | None = None,
    ) -> tuple[Any, Any, Comparison]:
        """Time ``method_fn`` and ``exact_fn`` interleaved; return both outputs and the ``Comparison``
        (also stored under ``label``). With ``exact`` (samples measured earlier, e.g. shared by the
        methods of a sweep) only the method is timed, the exact output is ``None`` and the
        interval resamples the two sample lists independently (``paired`` false)."""
        if (exact_fn is None) == (exact is None):
            raise ValueError("compare needs exactly one of exact_fn (time it now) or exact (earlier samples).")
        if exact is not None:
            out = self.measure(method_fn, label=f"{label}/method")
            m = self.results.pop(f"{label}/method")
            exact_out, e, paired = None, exact, False
        else:
            out, c_m = self._warm(method_fn)
            exact_out, c_e = self._warm(exact_fn)
            s_m, s_e = self._sample_loop([method_fn, exact_fn], [c_m, c_e])
            m = Measurement(s_m, self.peak_memory(method_fn) if self.memory else None, c_m)
            e = Measurement(s_e, self.peak_memory(exact_fn) if self.memory else None, c_e)
            paired = True
        speedup, lo, hi = bootstrap_speedup(e.samples_ms, m.samples_ms, paired=paired)
        comp = Comparison(m, e, speedup, lo, hi, paired)
        self.results[label] = comp
        return out, exact_out, comp

    def timed(self, label: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` once (synchronised) and append its time as one sample under ``label``."""
        self.sync()
        t0 = self.clock()
        out = fn()
        self.sync()
        m = self.results.setdefault(label, Measurement([]))
        m.samples_ms.append((self.clock() - t0) * 1e3)
        return out


METER_KNOBS = ("warmup", "min_samples", "max_samples", "min_run_s", "max_run_s", "threshold", "block_ms",
               "memory", "num_threads")


def meter_from_config(cfg: dict[str, Any] | None, device: torch.device) -> Meter:
    """A ``Meter`` from the ``meter`` config group; unknown keys are an error naming the accepted ones."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(METER_KNOBS))
    if unknown:
        raise ValueError(f"meter has no knob(s) {unknown}; it accepts {list(METER_KNOBS)}.")
    return Meter(device=device, **cfg)
