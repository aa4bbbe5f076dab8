"""Small matplotlib helpers: distributions of timings and "y against x" curves, closed after drawing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from .timing import Comparison, Timing

__all__ = ["plot_timings", "plot_curve", "plot_bars"]


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
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_bars(values: Mapping[str, float], *, ylabel: str, title: str = "", logy: bool = False) -> Figure:
    """Bar chart of one number per label, each bar annotated with its value."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bars = ax.bar(list(values), list(values.values()), color="#4c72b0")
    ax.bar_label(bars, labels=[f"{v:,.3g}" for v in values.values()], fontsize=8)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    fig.tight_layout()
    plt.close(fig)
    return fig
