"""The timing protocol (core/measure.py): stopping rule, paired sampling, bootstrap interval."""
import itertools

import pytest
import torch

from attnbench.core.measure import Measurement, Meter, bootstrap_speedup


class FakeClock:
    """A clock that advances only when a callable 'runs': ``work(ms)`` returns a function that
    costs ``ms`` (or the next value of an iterator of costs)."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def work(self, ms, out=None):
        costs = iter(ms) if not isinstance(ms, (int, float)) else itertools.repeat(ms)

        def fn():
            self.t += next(costs) / 1e3
            return out

        return fn


def meter(clock, **kw):
    args = dict(warmup=1, min_samples=5, max_samples=200, min_run_s=1.0, max_run_s=10.0, threshold=0.1,
                block_ms=0.0, memory=False, clock=clock)
    return Meter(**{**args, **kw})


def test_constant_clock_gives_zero_width_interval_and_stops_at_min_run_time():
    clock = FakeClock()
    m = meter(clock)
    _, _, comp = m.compare(clock.work(10.0), clock.work(40.0), label="x")
    assert comp.speedup == pytest.approx(4.0)
    assert comp.speedup_hi - comp.speedup_lo < 1e-12  # zero width (up to the fake clock's float rounding)
    # stable from the start: stops once 1 s of sampling is spent (50 ms per pair -> 20 pairs)
    assert len(comp.method.samples_ms) == len(comp.exact.samples_ms)
    assert 20 <= len(comp.method.samples_ms) <= 21
    assert comp.paired


def test_identical_callables_give_an_interval_containing_one():
    clock = FakeClock()
    noise = [10 + (i * 7919 % 13) / 13 for i in range(10_000)]  # deterministic jitter, same for both
    m = meter(clock)
    _, _, comp = m.compare(clock.work(iter(noise)), clock.work(iter(noise[1:] + [10.0])), label="x")
    assert comp.speedup_lo <= 1.0 <= comp.speedup_hi


def test_unstable_samples_run_until_the_time_budget():
    clock = FakeClock()
    # alternating 1 ms / 100 ms: the IQR never falls within 10 % of the median
    m = meter(clock, max_run_s=3.0)
    m.measure(clock.work(itertools.cycle([1.0, 100.0])), "x")
    samples = m.results["x"].samples_ms
    spent = sum(samples) / 1e3
    assert 3.0 <= spent < 3.2 and len(samples) > 5


def test_min_samples_wins_over_a_spent_budget():
    clock = FakeClock()
    m = meter(clock, min_samples=3, min_run_s=0.0, max_run_s=1.0)
    m.measure(clock.work(5000.0), "slow")  # one call is 5 s, far beyond the budget
    assert len(m.results["slow"].samples_ms) == 3


def test_max_samples_caps_sampling():
    clock = FakeClock()
    m = meter(clock, min_run_s=100.0, max_run_s=1000.0, max_samples=7, min_samples=2)
    m.measure(clock.work(1.0), "x")
    assert len(m.results["x"].samples_ms) == 7


def test_fast_calls_are_timed_in_blocks():
    clock = FakeClock()
    m = meter(clock, block_ms=2.0, min_run_s=0.0, min_samples=3)
    m.measure(clock.work(0.5), "x")
    res = m.results["x"]
    assert res.calls_per_sample == 4 and res.samples_ms[0] == pytest.approx(0.5)


def test_warmup_output_is_returned_and_compare_interleaves():
    clock = FakeClock()
    order = []

    def a():
        order.append("a")
        clock.t += 0.01
        return "A"

    def b():
        order.append("b")
        clock.t += 0.01
        return "B"

    m = meter(clock, min_run_s=0.0, min_samples=3)
    out_a, out_b, _ = m.compare(a, b, label="x")
    assert (out_a, out_b) == ("A", "B")
    assert order[:2] == ["a", "b"] and order[2:8] == ["a", "b"] * 3


def test_shared_exact_samples_give_an_unpaired_comparison():
    clock = FakeClock()
    m = meter(clock, min_run_s=0.0)
    exact = Measurement([20.0] * 9)
    out, exact_out, comp = m.compare(clock.work(10.0, out=1), label="x", exact=exact)
    assert out == 1 and exact_out is None and not comp.paired
    assert comp.speedup == pytest.approx(2.0) and comp.exact is exact
    with pytest.raises(ValueError, match="exactly one of"):
        m.compare(clock.work(1.0), clock.work(1.0), exact=exact)


def test_bootstrap_interval_is_repeatable_and_covers_the_point():
    e, mth = [10, 11, 12, 13, 30], [5, 5.5, 6, 7, 9]
    a = bootstrap_speedup(e, mth, paired=True)
    assert a == bootstrap_speedup(e, mth, paired=True)
    assert a[1] <= a[0] <= a[2] and a[0] == pytest.approx(12 / 6)


def test_columns_keep_raw_samples_and_quantiles():
    res = Measurement([1.0, 2.0, 3.0, 4.0, 5.0], peak_mem_mb=3.0)
    cols = res.columns("exact_")
    assert cols["exact_latency_ms"] == 3.0 and cols["exact_latency_samples_ms"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert cols["exact_latency_p10_ms"] == pytest.approx(1.4) and cols["exact_peak_mem_mb"] == 3.0


def test_bad_meter_knobs_are_clear_errors():
    with pytest.raises(ValueError, match="meter.warmup"):
        Meter(warmup=0)
    with pytest.raises(ValueError, match="meter.max_run_s"):
        Meter(min_run_s=5.0, max_run_s=1.0)


def test_threads_are_pinned_and_recorded():
    before = torch.get_num_threads()
    try:
        assert Meter(num_threads=1).num_threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_progress_lines_with_time_left_and_quiet(capsys):
    from attnbench.core.progress import Progress

    clock = FakeClock()
    p = Progress("imagenet: batch", 4, every_s=10.0, clock=clock)
    for _ in range(4):
        clock.t += 6.0
        p.step()
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["[attnbench] imagenet: batch 2/4, 12 s, about 12 s left", "[attnbench] imagenet: batch 4/4, 24 s"]
    Progress.quiet = True
    try:
        q = Progress("x", 1, clock=clock)
        q.step()
        assert capsys.readouterr().out == ""
    finally:
        Progress.quiet = False
