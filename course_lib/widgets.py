"""Notebook display helpers: measured prose (`say`) and live panels that re-measure as a slider moves."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
from IPython.display import Markdown, display

__all__ = ["live_panel", "say"]


def say(text: str) -> Markdown:
    """Show `text` (Markdown, usually an f-string over figures measured in the same cell) as prose."""
    return Markdown(text)


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def live_panel(
    render: Callable[[float], Any],
    *,
    description: str,
    min: float,  # noqa: A002 - mirrors ipywidgets' own argument names
    max: float,  # noqa: A002
    step: float = 1,
    value: float | None = None,
) -> widgets.VBox:
    """A slider over [min, max]; each move calls `render(value)` and shows what it returns (a table, a figure).

    A redraw can take seconds: meanwhile the slider is disabled and the panel says it is measuring; a value set
    while it measures is not measured on its own, only the last one is, once the redraw ends."""
    start = min if value is None else value
    is_int = all(float(v).is_integer() for v in (min, max, step, start))
    slider_cls = widgets.IntSlider if is_int else widgets.FloatSlider
    slider = slider_cls(value=start, min=min, max=max, step=step, description=description,
                        continuous_update=False, style={"description_width": "initial"},
                        layout=widgets.Layout(width="60%"))
    status = widgets.HTML(value="", layout=widgets.Layout(margin="0 0 0 1em"))
    output = widgets.Output()
    state: dict[str, Any] = {"busy": False, "pending": None, "drawn": False}

    def measure(value: float) -> None:
        slider.disabled = True
        status.value = f"<i>measuring at {description} {_number(value)} …</i>"
        began = time.perf_counter()
        if state["drawn"]:
            output.clear_output(wait=True)  # the old result stays until the new one replaces it
        state["drawn"] = True
        with output:
            try:
                shown = render(value)
            except Exception as error:  # keep the panel alive and say what went wrong
                shown = f"could not measure at {value}: {type(error).__name__}: {error}"
            if isinstance(shown, str):
                print(shown)
            else:
                display(shown)
        status.value = f"measured at {description} {_number(value)} in {time.perf_counter() - began:.1f} s"

    def show(value: float) -> None:
        if state["busy"]:  # a move during a redraw: remember the latest, measure it once this one ends
            state["pending"] = value
            return
        state["busy"] = True
        try:
            measure(value)
            while state["pending"] is not None:
                latest, state["pending"] = state["pending"], None
                measure(latest)
        finally:
            state["busy"], state["pending"] = False, None
            slider.disabled = False

    def on_change(change: dict[str, Any]) -> None:
        show(change["new"])

    slider.observe(on_change, names="value")
    show(start)
    return widgets.VBox([widgets.HBox([slider, status]), output])
