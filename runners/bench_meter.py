"""Benchmark (not a test): the Meter's overhead against a bare timing loop, and exact vs exact.

``attnbench bench_meter [--n 1024] [--rounds 5]`` prints, for exact SDPA at n (8 heads,
d=64, fp32): the median of a bare ``perf_counter`` loop, the Meter's median for the same call,
their ratio per round (interleaved rounds), and ``Meter.compare(exact, exact)``'s speed-up with its
95 % interval (which should contain 1). Check ``uptime`` first: run it on an idle machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from attnbench.core.measure import Meter


def bare_median_ms(fn, calls: int) -> float:
    fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1024, 8192])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    print(f"load average {os.getloadavg()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for n in args.n:
        q, k, v = (torch.randn(1, 8, n, 64) for _ in range(3))

        def exact():
            return F.scaled_dot_product_attention(q, k, v)

        meter = Meter(memory=False)
        ratios = []
        for _ in range(args.rounds):
            meter.measure(exact, "exact")
            m = meter.results["exact"]
            bare = bare_median_ms(exact, len(m.samples_ms) * m.calls_per_sample)
            ratios.append(m.median_ms / bare)
        _, _, comp = meter.compare(exact, exact, label="exact_vs_exact")
        print(f"n={n}: meter/bare median ratio over {args.rounds} rounds: "
              f"min {min(ratios):.3f}, median {statistics.median(ratios):.3f}, max {max(ratios):.3f}; "
              f"exact vs exact speed-up {comp.speedup:.3f} [{comp.speedup_lo:.3f}, {comp.speedup_hi:.3f}] "
              f"({len(comp.method.samples_ms)} pairs, {comp.method.calls_per_sample} calls per sample)")


if __name__ == "__main__":
    main()
