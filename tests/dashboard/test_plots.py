"""The live plots' labels and empty states, without a server: what the figures say before and
after a run's rows arrive. A standalone page in Chromium checks that BokehJS can draw them."""

from __future__ import annotations

import numpy as np
import pytest
from bokeh.embed import file_html
from bokeh.layouts import column
from bokeh.models import ColumnDataSource, GlyphRenderer, HoverTool, Legend
from bokeh.plotting import figure
from bokeh.resources import INLINE
from playwright.sync_api import Page

from app.session.kept_runs import keep_run
from app.views.plot_data import kernel_name
from app.views.plots import LivePlots
from app.views.ranges import font_pixels, legend_size, spot_box, to_pixels
from ntk_core import RunConfig, Trainer
from ntk_core.presets import DEFAULT_PRESET, load_preset

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


# ---- the sharpness legend while η is lowered mid-run -----------------------------------------
REPLAY_STEPS, REPLAY_EVERY, LOWERED_AT = 600, 2, 30
FRAME = (263, 218)  # the sharpness figure's frame in Chromium in a 1600 px wide window


@pytest.fixture(scope="module")
def lowered_run() -> Trainer:
    """The default preset's network, smaller, with η lowered 0.1 → 0.05 early: 2/η jumps to
    the top of the figure while the sharpness climbs from the bottom left across the middle."""
    config = load_preset(DEFAULT_PRESET).config.replace(n=64, width=64, k=4, steps=2000)
    run = Trainer(config)
    for i in range(REPLAY_STEPS):
        if i == LOWERED_AT:
            run.set_lr(0.05)
        run.step()
    return run


def legend_pixels(fig: figure) -> tuple[float, float, float, float] | None:
    """(left, bottom, right, top) in frame pixels of the figure's legend as its model stands,
    or None when it is outside the frame."""
    (legend,) = fig.select(type=Legend)
    if legend not in fig.center:
        return None
    labels = [item.label.value for item in legend.items if item.visible]
    size = legend_size(labels, font_pixels(legend.label_text_font_size),
                       (legend.glyph_width, legend.glyph_height), legend.label_standoff,
                       legend.padding, legend.spacing)
    return spot_box(legend.location, (fig.inner_width, fig.inner_height), size, legend.margin)


def points_under_legend(plots: LivePlots) -> int:
    fig = plots.sharpness_fig
    box = legend_pixels(fig)
    if box is None:
        return 0
    data = plots.measures.data
    columns = ["sharpness", "gn_sharpness", "two_over_lr"]
    px, py = to_pixels(np.concatenate([data["step"]] * 3),
                       np.concatenate([data[c] for c in columns]),
                       (fig.x_range.start, fig.x_range.end), (fig.y_range.start, fig.y_range.end),
                       False, (fig.inner_width, fig.inner_height))
    left, bottom, right, top = box
    return int(((px > left) & (px < right) & (py > bottom) & (py < top)).sum())


def replay(run: Trainer, frame: tuple[int, int]) -> tuple[LivePlots, int]:
    """Stream the run's rows into new plots as the page's updates would, ``REPLAY_EVERY``
    steps at a time; the number of updates after which a curve point lay under the legend."""
    plots = LivePlots()
    fig = plots.sharpness_fig
    fig.set_from_json("inner_width", frame[0])  # as the browser reports its frame
    fig.set_from_json("inner_height", frame[1])
    rows = run.buffer.rows(0)
    covered = 0
    for start in range(0, REPLAY_STEPS, REPLAY_EVERY):
        plots.push_rows({k: v[start:start + REPLAY_EVERY] for k, v in rows.items()}, n=64)
        covered += points_under_legend(plots) > 0
    return plots, covered


def test_no_curve_lies_under_the_sharpness_legend_after_eta_is_lowered(
        lowered_run: Trainer) -> None:
    """The former placement assumed a legend covering 42 % × 38 % of the frame; the real one
    covered 61 % × 36 % and sat on the climbing sharpness in 43 of these 300 updates."""
    sharpness = lowered_run.buffer.rows(0)["sharpness"]
    assert sharpness[-1] > 1.8 * sharpness[0]  # it climbs across the figure
    plots, covered = replay(lowered_run, FRAME)
    assert covered == 0
    # the box placed is the real legend's: the model's location and the figure's frame
    placed = plots._legends[plots.followed[plots.sharpness_fig]]
    assert placed.box() == legend_pixels(plots.sharpness_fig)


def test_a_legend_no_spot_can_take_goes_above_the_frame(lowered_run: Trainer) -> None:
    """In a frame too small for any free spot the legend leaves the frame, in a row, and
    comes back when the browser reports a larger one."""
    plots, covered = replay(lowered_run, (220, 80))
    fig = plots.sharpness_fig
    (legend,) = fig.select(type=Legend)
    assert covered == 0 and legend in fig.above and legend.orientation == "horizontal"
    fig.set_from_json("inner_width", 900)  # the window was widened: a resize places it again
    fig.set_from_json("inner_height", 400)
    assert legend in fig.center and legend not in fig.above
    assert legend.orientation == "vertical" and points_under_legend(plots) == 0


@pytest.mark.browser
def test_the_sharpness_legend_chromium_draws_covers_no_curve(lowered_run: Trainer,
                                                               page: Page) -> None:
    """The legend's size estimated from its labels is what BokehJS draws, and no curve point is
    under the drawn legend."""
    plots, _ = replay(lowered_run, FRAME)
    fig = plots.sharpness_fig
    page.set_viewport_size({"width": 1600, "height": 900})
    # a container whose width gives the figure about the Live tab's frame
    page.set_content(file_html(fig, INLINE, "sharpness").replace(
        "<body>", '<body><div style="width: 343px">').replace("</body>", "</div></body>"))
    page.wait_for_function("() => window.Bokeh && Bokeh.index.roots.length > 0")
    page.wait_for_timeout(500)
    drawn = page.evaluate(DRAWN_BOXES_JS)
    fx, fy, fw, fh = drawn["frame"]
    assert abs(fw - FRAME[0]) < 15 and abs(fh - FRAME[1]) < 15, drawn
    (lx, ly, lw, lh), = drawn["legends"]
    left, bottom, right, top = legend_pixels(fig)
    assert abs((right - left) - lw) < 0.1 * lw and abs((top - bottom) - lh) < 0.1 * lh, drawn
    data = plots.measures.data
    columns = ["sharpness", "gn_sharpness", "two_over_lr"]
    x = np.concatenate([data["step"]] * 3)
    y = np.concatenate([data[c] for c in columns])
    sx = fx + (x - fig.x_range.start) / (fig.x_range.end - fig.x_range.start) * fw
    sy = fy + fh - (y - fig.y_range.start) / (fig.y_range.end - fig.y_range.start) * fh
    under = (sx > lx) & (sx < lx + lw) & (sy > ly) & (sy < ly + lh)
    assert under.sum() == 0


DRAWN_BOXES_JS = """() => {
  const view = [...Bokeh.index.roots][0];
  const box = (b) => [b.x0, b.y0, b.width, b.height];
  const legends = [...view.renderer_views.values()].filter((v) => v.model.type === 'Legend');
  return {frame: box(view.frame.bbox), legends: legends.map((v) => box(v.bbox))};
}"""
