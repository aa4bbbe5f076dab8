"""Display helpers: plots return closed figures with what they were given; live panels re-measure on change."""

from __future__ import annotations

import ipywidgets
from IPython.display import Markdown
from matplotlib.figure import Figure

from course_lib import live_panel, plot_bars, plot_curve, plot_timings, say
from course_lib.timing import Comparison, Timing


def test_plot_timings_one_box_per_variant_from_a_comparison():
    comparison = Comparison({"slow": Timing("slow", [0.010, 0.012, 0.011]), "fast": Timing("fast", [0.001] * 3)})
    fig = plot_timings(comparison, title="t")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["slow", "fast"]
    assert ax.get_xscale() == "log" and ax.get_title() == "t"


def test_plot_curve_draws_series_and_dashed_reference():
    fig = plot_curve([1, 2, 3], {"measured": [1, 1.9, 2.1]}, xlabel="workers", ylabel="req/s",
                     reference={"ideal": [1, 2, 3]})
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["measured", "ideal"]
    assert lines[1].get_linestyle() == "--"
    assert list(lines[0].get_ydata()) == [1, 1.9, 2.1]


def test_plot_bars_labels_each_value():
    fig = plot_bars({"lazy": 101, "selectin": 2}, ylabel="queries", logy=True)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["101", "2"] and fig.axes[0].get_yscale() == "log"


def _slider(panel: ipywidgets.VBox) -> ipywidgets.widget.Widget:
    return panel.children[0].children[0]


def _status(panel: ipywidgets.VBox) -> str:
    return panel.children[0].children[1].value


def test_live_panel_renders_then_rerenders_on_change():
    calls = []
    panel = live_panel(lambda v: calls.append(v) or f"value {v}", description="ms", min=0, max=5, value=1)
    assert isinstance(panel, ipywidgets.VBox)
    slider = _slider(panel)
    assert isinstance(slider, ipywidgets.IntSlider) and slider.value == 1
    slider.value = 4
    assert calls == [1, 4]


def test_live_panel_survives_a_failing_measurement(capsys):
    def render(value):
        if value > 2:
            raise RuntimeError("boom")
        return "ok"

    panel = live_panel(render, description="x", min=0, max=5, step=0.5, value=1.0)
    assert isinstance(_slider(panel), ipywidgets.FloatSlider)
    _slider(panel).value = 3.0  # the error is shown in the panel, not raised into the widget machinery
    assert "RuntimeError: boom" in capsys.readouterr().out  # outside a kernel the panel's output is stdout
    assert not _slider(panel).disabled and "measured at x 3" in _status(panel)


def test_live_panel_says_it_is_measuring_and_holds_the_slider_while_it_does():
    """A redraw takes seconds: while it runs the slider is disabled and the panel says so; then both are undone."""
    seen = []
    panel = None

    def render(value):
        if panel is not None:
            seen.append((value, _slider(panel).disabled, _status(panel)))
        return f"value {value}"

    panel = live_panel(render, description="rows", min=0, max=10, value=2)
    _slider(panel).value = 7
    assert seen == [(7, True, "<i>measuring at rows 7 …</i>")]
    assert not _slider(panel).disabled
    assert _status(panel).startswith("measured at rows 7 in ")


def test_live_panel_measures_only_the_last_value_set_during_a_redraw():
    """Moves made while a redraw measures are not each measured in turn (seconds apiece): only the latest is."""
    calls = []
    panel = None

    def render(value):
        calls.append(value)
        if value == 4:  # the learner drags on while this redraw measures
            for later in (5, 6, 9):
                _slider(panel).value = later
        return f"value {value}"

    panel = live_panel(render, description="n", min=0, max=10, value=1)
    _slider(panel).value = 4
    assert calls == [1, 4, 9]
    assert not _slider(panel).disabled and "measured at n 9" in _status(panel)


def test_say_is_markdown():
    text = say(f"measured **{2 * 3}×**")
    assert isinstance(text, Markdown) and text.data == "measured **6×**"


def test_plot_numbers_read_as_plain_numbers_never_e_notation():
    fig = plot_bars({"lazy\n(101 queries)": 2060.4, "joined": 12.3, "selectin": 0.42}, ylabel="ms", logy=True)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["2,060", "12.3", "0.42"]
    fig.canvas.draw()
    ticks = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert ticks and not any("e+" in t or "10^" in t or "times" in t for t in ticks), ticks


def test_plot_bar_labels_wrap_at_words_and_integer_axes_tick_whole_numbers():
    names = ["baseline slow bookshop", "+ eager loading", "+ indexes", "+ keyset pagination", "+ cache", "+ gzip"]
    fig = plot_bars({n: float(i) for i, n in enumerate(names)}, ylabel="requests / s")
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert "pagination" in labels[3].split("\n"), labels  # wrapped between words, not inside one
    fig = plot_curve([1, 2, 3, 4], {"measured": [1, 1.8, 1.9, 1.9]}, xlabel="workers", ylabel="x")
    fig.canvas.draw()
    ticks = [t for t in fig.axes[0].get_xticks() if 1 <= t <= 4]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
