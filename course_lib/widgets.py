"""Notebook display helpers: measured prose (`say`) and live panels that re-measure as a slider moves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
from IPython.display import Markdown, display

__all__ = ["live_panel", "say"]


def say(text: str) -> Markdown:
    """Show `text` (Markdown, usually an f-string over figures measured in the same cell) as prose."""
    return Markdown(text)


def live_panel(
    render: Callable[[float], Any],
    *,
    description: str,
    min: float,  # noqa: A002 - mirrors ipywidgets' own argument names
    max: float,  # noqa: A002
    step: float = 1,
    value: float | None = None,
) -> widgets.VBox:
    """A slider over [min, max]; each move calls `render(value)` and shows what it returns (a table, a figure)."""
    start = min if value is None else value
    is_int = all(float(v).is_integer() for v in (min, max, step, start))
    slider_cls = widgets.IntSlider if is_int else widgets.FloatSlider
    slider = slider_cls(value=start, min=min, max=max, step=step, description=description,
                        continuous_update=False, style={"description_width": "initial"},
                        layout=widgets.Layout(width="60%"))
    output = widgets.Output()

    def show(value: float) -> None:
        with output:
            try:
                shown = render(value)
            except Exception as error:  # keep the panel alive and say what went wrong
                shown = f"could not measure at {value}: {type(error).__name__}: {error}"
            if isinstance(shown, str):
                print(shown)
            else:
                display(shown)

    def on_change(change: dict[str, Any]) -> None:
        output.clear_output(wait=True)
        show(change["new"])

    slider.observe(on_change, names="value")
    show(start)
    return widgets.VBox([slider, output])
