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


def test_live_panel_renders_then_rerenders_on_change():
    calls = []
    panel = live_panel(lambda v: calls.append(v) or f"value {v}", description="ms", min=0, max=5, value=1)
    assert isinstance(panel, ipywidgets.VBox)
    slider = panel.children[0]
    assert isinstance(slider, ipywidgets.IntSlider) and slider.value == 1
    slider.value = 4
    assert calls == [1, 4]


def test_live_panel_survives_a_failing_measurement(capsys):
    def render(value):
        if value > 2:
            raise RuntimeError("boom")
        return "ok"

    panel = live_panel(render, description="x", min=0, max=5, step=0.5, value=1.0)
    assert isinstance(panel.children[0], ipywidgets.FloatSlider)
    panel.children[0].value = 3.0  # the error is shown in the panel, not raised into the widget machinery
    assert "RuntimeError: boom" in capsys.readouterr().out  # outside a kernel the panel's output is stdout


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
