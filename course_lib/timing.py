"""Time code honestly: repeated samples, percentiles, and interleaved comparisons that give a ratio."""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Timing", "Comparison", "measure", "measure_sync", "compare", "compare_sync", "percentile", "median_ms",
           "paired_ratios"]

Call = Callable[[], Any] | Callable[[], Awaitable[Any]]


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0–100) of `samples`, by linear interpolation."""
    if not samples:
        raise ValueError("percentile of no samples")
    ordered = sorted(samples)
    k = (len(ordered) - 1) * q / 100
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def median_ms(samples: Sequence[float]) -> float:
    """The median of durations in seconds, in milliseconds (the one median every lesson quotes)."""
    if not samples:
        raise statistics.StatisticsError("median of no samples")
    return statistics.median(samples) * 1000


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """a / b for each round's pair of figures (rounds whose b is 0 left out): drift between rounds cancels out."""
    return [a / b for a, b in zip(numerators, denominators, strict=True) if b > 0]


def _fmt_ms(ms: float) -> str:
    if ms < 1:
        return f"{ms * 1000:.0f} µs"
    if ms < 100:
        return f"{ms:.2f} ms"
    return f"{ms:,.0f} ms"


@dataclass
class Timing:
    """Samples of one operation's duration (seconds) with the statistics a lesson quotes."""

    label: str
    samples: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Number of samples."""
        return len(self.samples)

    @property
    def median_ms(self) -> float:
        """Median duration in milliseconds."""
        return median_ms(self.samples)

    @property
    def mean_ms(self) -> float:
        """Mean duration in milliseconds."""
        return statistics.fmean(self.samples) * 1000

    @property
    def p95_ms(self) -> float:
        """95th percentile in milliseconds."""
        return percentile(self.samples, 95) * 1000

    @property
    def p99_ms(self) -> float:
        """99th percentile in milliseconds."""
        return percentile(self.samples, 99) * 1000

    @property
    def per_second(self) -> float:
        """Sequential throughput: operations per second at the mean duration."""
        mean = statistics.fmean(self.samples)
        return 1 / mean if mean > 0 else float("inf")

    def __repr__(self) -> str:
        return (
            f"{self.label}: median {_fmt_ms(self.median_ms)}, p95 {_fmt_ms(self.p95_ms)}, "
            f"p99 {_fmt_ms(self.p99_ms)}, mean {_fmt_ms(self.mean_ms)} "
            f"({self.per_second:,.0f}/s, n={self.n})"
        )


@dataclass
class Comparison:
    """Timings of variants measured interleaved in one run; `ratio` is first median / last median."""

    timings: dict[str, Timing]

    @property
    def ratio(self) -> float:
        """How many times faster the last variant is than the first (by median)."""
        first, *_, last = self.timings.values()
        return first.median_ms / last.median_ms if last.median_ms > 0 else float("inf")

    @property
    def paired_ratio(self) -> float:
        """The median, over rounds, of first / last in the same round: for effects of a few %, which drift between
        rounds (another program, the CPU's clock) would hide in `ratio`."""
        first, *_, last = self.timings.values()
        pairs = paired_ratios(first.samples, last.samples)
        return statistics.median(pairs) if pairs else float("inf")

    def __getitem__(self, label: str) -> Timing:
        return self.timings[label]

    def __repr__(self) -> str:
        lines = [repr(t) for t in self.timings.values()]
        names = list(self.timings)
        verdict = "faster" if self.ratio >= 1 else "slower"
        factor = self.ratio if self.ratio >= 1 else 1 / self.ratio
        lines.append(f"→ {names[-1]} is {factor:.1f}× {verdict} than {names[0]} (median)")
        return "\n".join(lines)


async def _call(fn: Call) -> Any:
    result = fn()
    if inspect.isawaitable(result):
        result = await result
    return result


def _check_args(fn: Any, n: int) -> None:
    if not callable(fn):
        raise TypeError(f"pass a function to time (e.g. `lambda: client.get('/')`), not {type(fn).__name__}")
    if n < 1:
        raise ValueError("n must be at least 1")


def _labelled(variants: Mapping[str, Any], n: int, minimum: int) -> dict[str, Timing]:
    if len(variants) < minimum:
        raise ValueError("compare needs at least two variants, e.g. {'before': f, 'after': g}")
    for fn in variants.values():
        _check_args(fn, n)
    return {label: Timing(label) for label in variants}


async def _interleaved(variants: Mapping[str, Call], n: int, warmup: int, minimum: int) -> dict[str, Timing]:
    timings = _labelled(variants, n, minimum)
    for _ in range(warmup):
        for fn in variants.values():
            await _call(fn)
    for _ in range(n):
        for label, fn in variants.items():
            start = time.perf_counter()
            await _call(fn)
            timings[label].samples.append(time.perf_counter() - start)
    return timings


def _interleaved_sync(variants: Mapping[str, Callable[[], Any]], n: int, warmup: int, minimum: int) -> dict[str, Timing]:
    timings = _labelled(variants, n, minimum)
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    for _ in range(n):
        for label, fn in variants.items():
            start = time.perf_counter()
            fn()
            timings[label].samples.append(time.perf_counter() - start)
    return timings


async def measure(fn: Call, n: int = 30, warmup: int = 2, label: str = "") -> Timing:
    """Call `fn` (sync or async) `warmup` times untimed, then `n` times timed; return the Timing."""
    label = label or getattr(fn, "__name__", "call")
    return (await _interleaved({label: fn}, n, warmup, 1))[label]


def measure_sync(fn: Callable[[], Any], n: int = 30, warmup: int = 2, label: str = "") -> Timing:
    """`measure` for plain functions, usable where no event loop can be awaited (widget callbacks)."""
    label = label or getattr(fn, "__name__", "call")
    return _interleaved_sync({label: fn}, n, warmup, 1)[label]


async def compare(variants: Mapping[str, Call], n: int = 30, warmup: int = 2) -> Comparison:
    """Time several variants interleaved (a, b, a, b …) so machine noise hits them alike; ratio first/last."""
    return Comparison(await _interleaved(variants, n, warmup, 2))


def compare_sync(variants: Mapping[str, Callable[[], Any]], n: int = 30, warmup: int = 2) -> Comparison:
    """`compare` for plain functions (widget callbacks, ORM code without HTTP)."""
    return Comparison(_interleaved_sync(variants, n, warmup, 2))
