"""Timing: percentiles, sample counts, interleaved comparisons and their ratio, clear errors."""

from __future__ import annotations

import asyncio
import time

import pytest

from course_lib import compare, compare_sync, measure, measure_sync
from course_lib.timing import Comparison, Timing, paired_ratios, percentile


def test_percentile_interpolates():
    assert percentile([1, 2, 3, 4, 5], 50) == 3
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10], 99) == 10
    assert percentile([1, 2, 3, 4, 5], 100) == 5
    with pytest.raises(ValueError):
        percentile([], 50)


def test_timing_statistics():
    timing = Timing("x", [0.001, 0.002, 0.003, 0.004, 0.100])
    assert timing.median_ms == pytest.approx(3)
    assert timing.mean_ms == pytest.approx(22)
    assert timing.p99_ms > timing.p95_ms > timing.median_ms
    assert "median 3.00 ms" in repr(timing)


def test_measure_calls_warmup_plus_n_and_awaits():
    calls = []

    async def op() -> None:
        calls.append(1)
        await asyncio.sleep(0)

    timing = asyncio.run(measure(op, n=7, warmup=2))
    assert timing.n == 7 and len(calls) == 9
    assert timing.label == "op"


def test_compare_orders_ratio_first_over_last():
    result = compare_sync({"slow": lambda: time.sleep(0.004), "fast": lambda: time.sleep(0.0005)}, n=5)
    assert result.ratio > 2
    assert "fast is" in repr(result) and "faster than slow" in repr(result)
    assert result["slow"].n == 5


def test_paired_ratio_is_the_median_of_each_rounds_ratio():
    # rounds say 2, 0.4 and 2 (round 2 slowed b alone; round 3 slowed both, still 2×); the ratio of medians says 0.4
    result = Comparison({"a": Timing("a", [0.002, 0.004, 0.100]), "b": Timing("b", [0.001, 0.010, 0.050])})
    assert result.paired_ratio == pytest.approx(2) and result.ratio == pytest.approx(0.4)
    assert Comparison({"a": Timing("a", [0.002, 0.003, 0.004]), "b": Timing("b", [0.004, 0.001, 0.002])}).paired_ratio \
        == pytest.approx(2)


def test_paired_ratios_pair_rounds_and_skip_empty_ones():
    assert paired_ratios([4.0, 3.0, 9.0], [2.0, 0.0, 3.0]) == [2.0, 3.0]
    with pytest.raises(ValueError):
        paired_ratios([1.0, 2.0], [1.0])  # rounds that do not pair up are a bug, not data


def test_async_compare_interleaves():
    order = []

    async def a() -> None:
        order.append("a")

    def b() -> None:
        order.append("b")

    asyncio.run(compare({"a": a, "b": b}, n=3, warmup=0))
    assert order == ["a", "b"] * 3


def test_bad_arguments_are_explained():
    with pytest.raises(TypeError, match="pass a function"):
        measure_sync(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least two"):
        compare_sync({"only": lambda: None})
    with pytest.raises(ValueError, match="at least 1"):
        measure_sync(lambda: None, n=0)


def test_one_median_helper_for_every_lesson():
    """`median_ms` is the one median of durations: Timing, lesson 01's bursts and lesson 04's gzip costs use it."""
    import statistics

    from course_lib.lessons import l01_workers, l04_pagination
    from course_lib.timing import median_ms

    assert median_ms([0.003, 0.001, 0.002]) == pytest.approx(2.0)
    assert median_ms([0.001, 0.002]) == pytest.approx(1.5)
    with pytest.raises(statistics.StatisticsError, match="no samples"):
        median_ms([])
    assert Timing("t", [0.004, 0.001, 0.002]).median_ms == median_ms([0.004, 0.001, 0.002])
    assert l04_pagination.median_ms is median_ms
    burst = l01_workers.Burst(n=3, wall_s=0.1, latencies_s=[0.01, 0.03, 0.02])
    assert burst.median_ms == pytest.approx(20.0)
    assert l01_workers.Burst(n=0, wall_s=0.0).median_ms != l01_workers.Burst(n=0, wall_s=0.0).median_ms  # NaN
