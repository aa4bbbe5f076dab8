"""Small matplotlib helpers: distributions of timings and "y against x" curves, closed after drawing."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from .timing import Comparison, Timing

__all__ = ["plot_timings", "plot_curve", "plot_bars", "readable_number"]


def readable_number(value: float) -> str:
    """A number as a reader says it: 2,060 and 0.42 and 3, never 2.06e+03 or 3×10⁰."""
    magnitude = abs(value)
    if magnitude >= 100 or value == int(value):
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:,.1f}"
    return f"{value:.3g}"


def _plain_log_axis(axis: Axis) -> None:
    """Label a log axis with plain numbers at 1, 2, 5 × 10ⁿ (only the decades when the range is wide)."""
    low, high = sorted(abs(v) for v in axis.get_view_interval())
    decades = (high / low) if low > 0 else float("inf")
    if decades > 1000:
        subs: tuple[float, ...] = (1.0,)
    elif decades > 20:
        subs = (1.0, 2.0, 5.0)
    elif decades > 3:
        subs = (1.0, 2.0, 3.0, 5.0)
    else:
        subs = tuple(float(n) for n in range(1, 10))
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: readable_number(v)))
    axis.set_minor_formatter(NullFormatter())


def _readable_labels(labels: Sequence[str], bars: int) -> list[str]:
    """Wrap long bar labels so neighbours do not overlap (narrower when there are many bars)."""
    width = max(8, 60 // max(bars, 1))
    return ["\n".join(part for line in label.splitlines() for part in (textwrap.wrap(line, width, break_long_words=False) or [""]))
            for label in labels]


def plot_timings(timings: Comparison | Mapping[str, Timing] | Sequence[Timing], title: str = "",
                 log: bool = True) -> Figure:
    """Box plot of each timing's samples in milliseconds, medians annotated; one box per variant."""
    if isinstance(timings, Comparison):
        timings = timings.timings
    items = list(timings.values()) if isinstance(timings, Mapping) else list(timings)
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.7 * len(items)))
    ax.boxplot([[s * 1000 for s in t.samples] for t in items], orientation="horizontal", showfliers=False)
    ax.set_yticks(range(1, len(items) + 1), [t.label for t in items])
    for i, t in enumerate(items, 1):
        ax.annotate(f"{t.median_ms:.2f} ms", (t.median_ms, i), xytext=(0, 12), textcoords="offset points",
                    ha="center", fontsize=8)
    if log:
        ax.set_xscale("log")
        _plain_log_axis(ax.xaxis)
    ax.set_xlabel("milliseconds per call (log scale)" if log else "milliseconds per call")
    ax.set_title(title)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_curve(x: Sequence[float], series: Mapping[str, Sequence[float]], *, xlabel: str, ylabel: str,
               title: str = "", logx: bool = False, logy: bool = False,
               reference: Mapping[str, Sequence[float]] | None = None) -> Figure:
    """Line plot of one or more series against `x`; `reference` series are drawn dashed (e.g. an ideal)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, ys in series.items():
        ax.plot(x, ys, marker="o", label=name)
    for name, ys in (reference or {}).items():
        ax.plot(x, ys, linestyle="--", color="grey", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log")
        _plain_log_axis(ax.xaxis)
    elif all(float(v).is_integer() for v in x):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # 1, 2, 3 workers, never 1.25
    if logy:
        ax.set_yscale("log")
        _plain_log_axis(ax.yaxis)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_bars(values: Mapping[str, float], *, ylabel: str, title: str = "", logy: bool = False) -> Figure:
    """Bar chart of one number per label, each bar annotated with its value."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = _readable_labels([str(k) for k in values], len(values))
    bars = ax.bar(range(len(values)), list(values.values()), color="#4c72b0")
    ax.set_xticks(range(len(values)), labels, fontsize=8 if len(values) > 4 else 10)
    ax.bar_label(bars, labels=[readable_number(v) for v in values.values()], fontsize=8)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
        _plain_log_axis(ax.yaxis)
    else:
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: readable_number(v)))
    ax.set_title(title)
    fig.tight_layout()
    plt.close(fig)
    return fig
