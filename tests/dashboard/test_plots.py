"""The live plots' labels, legends and empty states, without a server: what the figures say
before and after a run's rows arrive. Standalone pages in Chromium check that BokehJS can draw
them and where it puts the legends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import panel as pn
import pytest
from bokeh.embed import file_html
from bokeh.layouts import column
from bokeh.models import ColumnDataSource, GlyphRenderer, HoverTool, Legend
from bokeh.plotting import figure
from bokeh.resources import INLINE
from playwright.sync_api import Page

from app.dashboard import SIDEBAR_WIDTH
from app.session.kept_runs import keep_run
from app.views.plot_data import kernel_name
from app.views.plots import PLOT_HEIGHT, LivePlots
from ntk_core import RunConfig, Trainer

pytestmark = pytest.mark.timeout(120)

SMALL_CONFIG = RunConfig(dataset="digits", n=32, classes=(0, 1, 2, 3), width=16, k=4, steps=50)


@pytest.fixture(scope="module")
def trainer() -> Trainer:
    run = Trainer(SMALL_CONFIG)
    for _ in range(4):
        run.step()
    return run


def log_x_figures(plots: LivePlots) -> list[figure]:
    return [plots.spectrum_fig, plots.spectrum_legend_fig, plots.comparison_fig]


def drawn_x(fig: figure) -> np.ndarray:
    """Every x value the figure's glyphs hold (what BokehJS fits its x range to)."""
    values = []
    for renderer in fig.renderers:
        if isinstance(renderer, GlyphRenderer):
            source = renderer.data_source
            column = renderer.glyph.x if isinstance(renderer.glyph.x, str) else None
            if isinstance(source, ColumnDataSource) and column in source.data:
                values.append(np.asarray(source.data[column], dtype=float))
    return np.concatenate(values) if values else np.zeros(0)


def texts(fig: figure) -> list[str]:
    out = [fig.title.text, *(axis.axis_label or "" for axis in (*fig.xaxis, *fig.yaxis))]
    for legend in fig.select(type=Legend):
        out += [item.label.value for item in legend.items if item.label is not None
                and getattr(item.label, "value", None)]
    return out


def test_alignment_labels_have_no_literal_underscores() -> None:
    """Bokeh draws labels as plain text: TeX-style subscripts (‖K‖_F, A_k) showed as typed."""
    plots = LivePlots()
    figures = [plots.alignment_fig, plots.comparison_fig, *log_x_figures(plots)]
    shown = [text for fig in figures for text in texts(fig)]
    assert len(shown) > 15
    assert [text for text in shown if "_" in text] == []
    assert "λᵢ / ‖K‖, Frobenius norm (log)" in shown


def test_log_axis_figures_have_ranges_before_the_first_measurement(trainer: Trainer) -> None:
    """A log axis cannot be fitted to no data: the empty figures hold an invisible frame of
    positive x values, which gives way to the data once it arrives and returns on reset."""
    plots = LivePlots()
    for fig in log_x_figures(plots):
        x = drawn_x(fig)
        assert np.isfinite(x).all() and (x > 0).all() and len(np.unique(x)) >= 2, fig.title.text
    plots.push_rows(trainer.buffer.rows(0), n=32)
    plots.push_matrices(trainer.buffer)
    measured = np.sort(trainer.buffer.rows(0)["eigval_normalized"][-1])
    for fig in (plots.spectrum_fig, plots.spectrum_legend_fig):
        np.testing.assert_allclose(np.unique(drawn_x(fig)), measured)  # the data alone
    assert plots.spectrum_fig.title.text == "Alignment spectrum at step 3"
    plots.set_kept([keep_run(trainer.buffer, "η=0.1", 0.1)])
    assert np.unique(drawn_x(plots.comparison_fig)).tolist() == [0.1]
    plots.set_kept([])
    plots.clear()
    for fig in log_x_figures(plots):
        assert len(np.unique(drawn_x(fig))) >= 2, fig.title.text
    assert plots.spectrum_fig.title.text == "Alignment spectrum (top eigenpairs)"


@pytest.mark.browser
def test_empty_log_axis_figures_are_drawn_with_axes(page: Page) -> None:
    """BokehJS says "could not set initial ranges" and draws a figure blank, without axes, when
    it cannot fit a range; the empty figures of a new page must not."""
    messages: list[str] = []
    page.on("console", lambda message: messages.append(message.text))
    page.set_content(file_html(column(log_x_figures(LivePlots())), INLINE, "figures"))
    page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0")
    page.wait_for_timeout(500)
    assert any("document idle" in m for m in messages), messages  # it was drawn
    assert not [m for m in messages if "could not set initial ranges" in m]


def test_kernel_names() -> None:
    assert kernel_name("full", 4) == "full NTK (nC × nC)"
    assert kernel_name("traced", 4) == "traced NTK (n × n)"
    assert kernel_name("full", 1) == "NTK (n × n)"  # one output: full and traced agree


@pytest.mark.parametrize("kernel", ["full", "traced"])
def test_alignment_figures_name_the_kernel_a1_reads(kernel: str) -> None:
    """a₁ of the same run reads differently on the two kernels (four balanced classes: near 1/C
    on the traced one, 1/C² at the start and then near 0 on the full one), so every figure that
    shows it says which kernel it is."""
    run = Trainer(SMALL_CONFIG.replace(kernel=kernel))
    for _ in range(30):
        run.step()
    a1 = run.buffer.rows(0)["alignment"][:, 0]
    C = len(SMALL_CONFIG.classes)
    if kernel == "traced":
        assert abs(a1[0] * C - 1) < 0.05 and abs(a1[-1] * C - 1) < 0.05
    else:
        assert abs(a1[0] * C**2 - 1) < 0.1 and a1[-1] < 0.1 / C**2
    plots = LivePlots()
    plots.push_rows(run.buffer.rows(0), n=32)
    plots.push_matrices(run.buffer)
    name = kernel_name(kernel, C)
    assert plots.alignment_fig.yaxis[0].axis_label == f"alignment, {name}"
    assert plots.comparison_fig.yaxis[0].axis_label == f"final value, {name}"
    for fig in (plots.alignment_fig, plots.spectrum_fig, plots.spectrum_legend_fig,
                plots.comparison_fig):
        assert fig.yaxis[0].axis_label.endswith(name), fig.title.text
        (hover,) = fig.select(type=HoverTool)
        assert ("kernel", name) in hover.tooltips
        assert sum(row[0] == "kernel" for row in hover.tooltips) == 1


def all_figures(plots: LivePlots) -> list[figure]:
    return [*plots.live_figures(), plots.comparison_fig, plots.spectrum_legend_fig]


def test_every_legend_lies_outside_the_plot_frame() -> None:
    """A legend inside the frame sits on the curves whenever they pass under it: after η is
    lowered mid-run the sharpness climbs to the new, higher 2/η and crossed the sharpness
    legend wherever it had been put. Beside the frame no curve can reach it."""
    plots = LivePlots()
    placed = {fig.title.text: [side for side in ("above", "right", "center", "below", "left")
                               for legend in fig.select(type=Legend)
                               if legend in getattr(fig, side)]
              for fig in all_figures(plots)}
    assert {title: sides for title, sides in placed.items() if sides} == {
        "Training loss": ["above"],
        "Sharpness vs the stability threshold": ["above"],
        "Label alignment: KTA, Aₖ, a₁": ["above"],
        "Final alignment against η (kept runs)": ["right"],
        "Alignment spectrum (top eigenpairs)": ["right"],  # the Compare tab's twin
    }


LEGEND_BOXES_JS = """() => {
  const out = [];
  const walk = (view) => {
    if (view.frame !== undefined && view.canvas_view !== undefined) {
      const canvas = view.canvas_view.el.getBoundingClientRect();
      const on_page = (b) => [canvas.left + b.left, canvas.top + b.top, canvas.left + b.right,
                              canvas.top + b.bottom];
      const drawn = [...view.renderer_views.values()];
      const title = drawn.find((r) => r.model.type === 'Title');
      for (const r of drawn) {
        if (r.model.type !== 'Legend') continue;
        const box = r.el.getBoundingClientRect();
        out.push({title: view.model.title.text, canvas: [canvas.left, canvas.right],
                  frame: on_page(view.frame.bbox), title_box: on_page(title.bbox),
                  legend: [box.left, box.top, box.right, box.bottom]});
      }
    }
    for (const child of view.child_views ?? []) walk(child);
  };
  for (const view of Object.values(Bokeh.index)) walk(view);
  return out;
}"""


def overlap(a: list[float], b: list[float]) -> bool:
    """Whether two boxes (left, top, right, bottom) share more than a pixel's width (the DOM's
    boxes and BokehJS's are rounded differently)."""
    return a[0] + 1 < b[2] and b[0] + 1 < a[2] and a[1] + 1 < b[3] and b[1] + 1 < a[3]


@pytest.mark.browser
@pytest.mark.parametrize(("changes", "label"), [
    ({}, "2/η"),
    # the longest labels: the preconditioned sharpness beside Adam's threshold
    ({"optimizer": "adam", "lr": 0.002}, "38/η (Adam, β₁ = 0.9)"),
])
def test_no_legend_covers_the_frame_or_title_after_eta_is_lowered(
        page: Page, tmp_path: Path, changes: dict, label: str) -> None:
    """A run with η halved halfway, its figures laid out as the Live and Compare tabs lay them
    out at 1600 px (three figures a row, their frames lined up): every legend BokehJS draws is
    clear of its frame and its title, and is not cut off at the figure's edges."""
    config = SMALL_CONFIG.replace(**changes)
    run = Trainer(config)
    for step in range(40):
        if step == 20:
            run.set_lr(config.lr / 2)
        run.step()
    plots = LivePlots()
    plots.set_threshold(config.optimizer, label)
    plots.push_rows(run.buffer.rows(0), n=32)
    plots.push_matrices(run.buffer)
    plots.set_kept([keep_run(run.buffer, f"η={config.lr:g}→{config.lr / 2:g}", config.lr / 2)])
    threshold = plots.measures.data["stability_threshold"]
    assert threshold[-1] == pytest.approx(2 * threshold[0])
    assert label in [item.label.value for item in plots._sharpness_legend.items]
    pane = {"sizing_mode": "stretch_width", "height": PLOT_HEIGHT + 10}
    tabs = pn.Column(
        pn.GridBox(*(pn.pane.Bokeh(fig, **pane) for fig in plots.live_figures()), ncols=3,
                   sizing_mode="stretch_width"),
        pn.Row(pn.pane.Bokeh(plots.comparison_fig, **pane),
               pn.pane.Bokeh(plots.spectrum_legend_fig, **pane), sizing_mode="stretch_width"),
        sizing_mode="stretch_width")
    tabs.save(tmp_path / "plots.html", resources=INLINE)
    page.set_viewport_size({"width": 1600 - SIDEBAR_WIDTH, "height": 1200})
    page.goto((tmp_path / "plots.html").as_uri())
    page.wait_for_function("() => window.Bokeh && Object.keys(Bokeh.index).length > 0")
    page.wait_for_timeout(1000)
    boxes = page.evaluate(LEGEND_BOXES_JS)
    assert sorted(box["title"] for box in boxes) == sorted(
        fig.title.text for fig in all_figures(plots) if fig.select(type=Legend))
    for box in boxes:
        (left, top, right, bottom) = box["legend"]
        assert right - left > 30 and bottom - top > 10, box  # drawn
        assert not overlap(box["legend"], box["frame"]), box
        assert not overlap(box["legend"], box["title_box"]), box
        assert box["canvas"][0] <= left and right <= box["canvas"][1], box  # nothing cut off
