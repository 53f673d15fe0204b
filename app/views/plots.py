"""The dashboard's live plots: Bokeh figures fed from the engine's buffer through
``plot_data``, which prepares every row and matrix they draw.

Curves live in ``ColumnDataSource`` objects that only ever receive ``stream`` calls with the rows
appended since the last update, so the browser gets a few hundred bytes per update. Matrices
(eigenvectors, u₁ history, the NTK) are block-averaged to at most ``MAX_PIXELS`` per side and
replace one image source each. Everything is built once per page; an update touches data only.
That keeps a page update at a few milliseconds of server time: the equivalent HoloViews
DynamicMaps re-ran their element pipeline and walked the whole document per plot per update,
which at 4 Hz took most of a core and starved the training thread.

A run with flows (``RunConfig.flows``) adds its central flow and gradient flow to the loss,
sharpness and KTA figures, each process in a line style of its own (``FLOW_STYLES``), and a
figure of their distances from GD (``flow_figures``); without flows these stay hidden.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from bokeh.core.properties import value
from bokeh.models import (
    Axis,
    ColorBar,
    ColumnDataSource,
    FixedTicker,
    GlyphRenderer,
    HoverTool,
    Legend,
    LegendItem,
    LinearColorMapper,
    Range1d,
    Span,
)
from bokeh.palettes import RdBu, interp_palette
from bokeh.plotting import figure

from ntk_core.numerics.stability import threshold_label, tracked_sharpness
from ntk_core.training.buffer import RunBuffer
from ntk_core.vocabulary import OptimizerName

from ..session.kept_runs import KEPT_COLUMNS, MAX_KEPT, KeptRun
from ..session.theory_lines import TheoryCurve, TheoryTarget
from .plot_data import (
    ALIGNMENT_COLUMNS,
    COMPARE_COLUMNS,
    DISTANCE_COLUMNS,
    EIGENVALUE_COLUMNS,
    FLOW_SPECTRUM_COLUMNS,
    K_SHOW,
    LABEL_ALIGNMENT_COLUMNS,
    MEASURE_COLUMNS,
    SPECTRUM_COLUMNS,
    STEP_COLUMNS,
    buffer_kernel_name,
    column_data,
    comparison_frame,
    distance_frame,
    empty_data,
    last_alignment,
    matrix_payload,
    measure_frame,
    spectrum_frame,
    step_frame,
    theory_curve_data,
    theory_label,
)
from .ranges import FollowedRanges

BUFFER_LENGTH = 20_000  # rows kept per curve source (the most recent steps)
PLOT_HEIGHT = 290
LOG_TICKS = [1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]
THRESHOLD_COLOR = "#d62728"
TWO_OVER_LR_COLOR = "#7f7f7f"
# The sharpness figure's lines: column, legend label, style (the threshold's label is the run's
# formula, set by ``set_threshold``). Which ones a run shows depends on its optimiser.
SHARPNESS_LINES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("sharpness", "sharpness λ_max(H)", {"color": "#1f77b4", "line_width": 2.5}),
    ("preconditioned_sharpness", "preconditioned sharpness λ_max(P⁻¹H)",
     {"color": "#ff7f0e", "line_width": 2.5}),
    ("batch_sharpness", "batch sharpness", {"color": "#ff7f0e", "line_width": 2.5}),
    ("gn_sharpness", "GN sharpness λ₁(K)/n",
     {"color": "#2ca02c", "line_width": 2.5, "line_dash": "dotted"}),
    ("two_over_lr", "2/η", {"color": TWO_OVER_LR_COLOR, "line_width": 1.5, "line_dash": "dashed"}),
    ("stability_threshold", "2/η", {"color": THRESHOLD_COLOR, "line_width": 2.5,
                                    "line_dash": "dashed"}),
)
EIGENVALUES_TITLE = f"Top-{K_SHOW} NTK eigenvalues λᵢ/n"
EIGENVALUES_LINE = " vs 2/η (dashed)"
RUN_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
              "#bcbd22", "#7f7f7f")
DIVERGING = interp_palette(RdBu[11], 256)  # blue (negative) to red (positive)
# What the log-axis figures show while they have no data: λᵢ/‖K‖ lies in (0, 1], alignments in
# [0, 1], and η mostly within a decade of 0.1
SPECTRUM_FRAME = ([0.01, 1.0], [0.0, 1.0])
SPECTRUM_TITLE = "Alignment spectrum (top eigenpairs)"
COMPARISON_FRAME = ([0.01, 1.0], [0.0, 1.0])
KTA_COLOR = "#1f77b4"
# The two-layer linear network's predicted final KTA: black and dashed, drawn over the KTA
# curve, which ends on it
THEORY_STYLE = {"line_color": "black", "line_width": 1.5, "line_dash": "dashed"}
# The flows beside GD: the central flow dashed, gradient flow dotted, in colours no GD line has
# (the threshold is red and dashed: the central flow's sharpness lies on it, by design)
FLOW_NAMES = {"central": "central flow", "stable": "gradient flow"}
FLOW_STYLES: dict[str, dict[str, Any]] = {
    "central": {"color": "#9467bd", "line_dash": "dashed", "line_width": 2.5},
    "stable": {"color": "#8c564b", "line_dash": "dotted", "line_width": 2.5},
}
PREDICTED_STYLE = {"color": "#9467bd", "line_dash": "dashdot", "line_width": 1.5}
DISTANCE_TITLE = "Distance from GD to each flow"
ALIGNMENT_TITLE = "Label alignment: KTA, Aₖ, a₁"
ALIGNMENT_FLOWS_TITLE = "Label alignment: KTA along GD and each flow"
TOOLS = "pan,wheel_zoom,box_zoom,reset,save"
# A legend above the frame may be as wide as the frame: about 270 px for each figure of the
# three-column Live tab at 1600 px, so the wider legends wrap after ``ncols`` entries. Its labels
# are the size of the tick labels (11 px). The Live tab lines up the frames of a row, which
# leaves spare room above a shorter legend: "top_left" put it on the title there.
LEGEND_STYLE = {
    "above": {"location": "bottom_left", "label_text_font_size": "8pt", "margin": 0, "padding": 2,
              "spacing": 6, "glyph_width": 16, "glyph_height": 12, "label_standoff": 4,
              "border_line_color": None, "background_fill_alpha": 0},
    "right": {"label_text_font_size": "9pt", "padding": 4, "spacing": 0,
              "background_fill_alpha": 0.7},
}


# ---- element builders --------------------------------------------------------------------------


def _symmetric(values: np.ndarray) -> tuple[float, float]:
    finite = np.abs(values[np.isfinite(values)])
    a = float(np.percentile(finite, 99)) if finite.size else 1.0
    return (-a, a) if a > 0 else (-1.0, 1.0)


def _shade(i: int) -> str:
    """Dark blue for λ₁ fading to light for λ_K."""
    t = i / max(1, K_SHOW - 1)
    r, g, b = (int(31 + t * (190 - 31)), int(119 + t * (210 - 119)), int(180 + t * (235 - 180)))
    return f"#{r:02x}{g:02x}{b:02x}"


# ---- figures -----------------------------------------------------------------------------------
def _figure(title: str, ylabel: str, xlabel: str = "step", **kwargs: Any) -> figure:
    fig = figure(title=title, x_axis_label=xlabel, y_axis_label=ylabel, tools=TOOLS,
                 sizing_mode="stretch_width", height=PLOT_HEIGHT,
                 **kwargs)
    fig.toolbar.logo = None
    return fig


def _legend(fig: figure, items: list[LegendItem], side: str = "above",
            ncols: int | str = "auto") -> Legend:
    """A legend outside the frame, so no curve can run under it whatever the data do (the
    sharpness climbing to a new 2/η after η is lowered crossed one placed inside): rows of
    ``ncols`` entries between the title and the frame, or a column to the right of it."""
    legend = Legend(items=items, click_policy="hide", ncols=ncols,
                    orientation="horizontal" if side == "above" else "vertical",
                    **LEGEND_STYLE[side])
    fig.add_layout(legend, side)
    return legend


def _streamed_entry(fig: figure, label: str, line: GlyphRenderer) -> LegendItem:
    """A legend entry for a streamed line, drawn from a data-less twin of it.

    BokehJS rebuilds a legend's items (DOM elements and a canvas per item) whenever any model
    its items reference changes, and streaming rows into a line's source changes that line's
    view: at 4 Hz that was a rebuild, and the style recalculations it forces, per legend per
    update. The twin shares the line's glyph style, never changes, and passes its visibility on
    to the line, so clicking the entry still hides the line."""
    # one NaN point: nothing drawn, but BokehJS draws no legend sample for an empty source
    twin = fig.add_glyph(ColumnDataSource({"step": [math.nan], "y": [math.nan]}),
                         line.glyph.clone(x="step", y="y"))
    twin.js_link("visible", line, "visible")
    return LegendItem(label=label, renderers=[twin])


class EmptyFrame:
    """An invisible glyph spanning what a figure shows while it has no data. BokehJS cannot fit
    a log axis to no data at all and then draws the figure blank, without axes; with this
    glyph the empty figure has axes, and once data arrives the glyph is emptied so that the
    ranges fit the data alone."""

    def __init__(self, fig: figure, frame: tuple[list[float], list[float]]) -> None:
        self.frame = {"x": list(frame[0]), "y": list(frame[1])}
        self.source = ColumnDataSource(self.frame)
        fig.scatter("x", "y", source=self.source, visible=False)

    def show(self, empty: bool) -> None:
        wanted = self.frame if empty else {"x": [], "y": []}
        if self.source.data["x"] != wanted["x"]:
            self.source.data = dict(wanted)


def _step_hover() -> HoverTool:
    return HoverTool(tooltips=[("step", "@step{0}"), ("value", "$y{0.0000}")])


class HeatMap:
    """One diverging image with class / output boundaries and class tick labels."""

    def __init__(self, title: str, xlabel: str, ylabel: str, square: bool = False) -> None:
        self.base_title = title
        self.fig = _figure(title + " (waiting for a measurement)", ylabel, xlabel,
                           x_range=Range1d(start=0, end=1), y_range=Range1d(start=1, end=0))
        self.source = ColumnDataSource({"image": [np.zeros((1, 1), np.float32)], "x": [0.0],
                                        "y": [0.0], "dw": [1.0], "dh": [1.0]})
        self.mapper = LinearColorMapper(palette=DIVERGING, low=-1.0, high=1.0, nan_color="white")
        image = self.fig.image("image", x="x", y="y", dw="dw", dh="dh", source=self.source,
                               color_mapper=self.mapper)
        self.fig.add_tools(HoverTool(renderers=[image], tooltips=[
            ("row", "$x{0}"), (ylabel, "$y{0.0}"), ("value", "@image{0.000}")]))
        self.fig.add_layout(ColorBar(color_mapper=self.mapper, width=10), "right")
        self.edges = ColumnDataSource({"x0": [], "y0": [], "x1": [], "y1": [], "w": []})
        self.fig.segment("x0", "y0", "x1", "y1", line_width="w", color="black", alpha=0.6,
                         source=self.edges)
        self.square = square
        self.fig.xgrid.visible = self.fig.ygrid.visible = False
        self.xticker, self.yticker = FixedTicker(ticks=[]), FixedTicker(ticks=[])
        self.fig.xaxis[0].ticker = self.xticker
        if square:
            self.fig.yaxis[0].ticker = self.yticker

    def show(self, values: np.ndarray, x_extent: tuple[float, float],
             y_extent: tuple[float, float], data: dict, title: str,
             yticks: list[float] | None = None) -> None:
        x0, x1 = x_extent
        y0, y1 = y_extent
        self.source.data = {"image": [np.asarray(values, np.float32)], "x": [x0], "y": [y0],
                            "dw": [x1 - x0], "dh": [y1 - y0]}
        self.mapper.update(**dict(zip(("low", "high"), _symmetric(values), strict=True)))
        self.fig.x_range.update(start=x0, end=x1)
        self.fig.y_range.update(start=y1, end=y0)  # row 0 at the top
        self.fig.title.text = title
        ticks = data.get("ticks", [])
        self._ticks(self.xticker, self.fig.xaxis[0], ticks)
        if self.square:
            self._ticks(self.yticker, self.fig.yaxis[0], ticks)
        elif yticks is not None:
            self.yticker.ticks = [float(t) for t in yticks]
            self.fig.yaxis[0].ticker = self.yticker
        segments: dict[str, list[float]] = {"x0": [], "y0": [], "x1": [], "y1": [], "w": []}
        for edges, width in ((data.get("class_edges", []), 1.0),
                             (data.get("output_edges", []), 2.5)):
            for e in edges:
                self._segment(segments, e, e, y0, y1, width)
                if self.square:
                    self._segment(segments, x0, x1, e, e, width)
        self.edges.data = segments

    def clear(self) -> None:
        self.source.data = {"image": [np.zeros((1, 1), np.float32)], "x": [0.0], "y": [0.0],
                            "dw": [1.0], "dh": [1.0]}
        self.edges.data = {"x0": [], "y0": [], "x1": [], "y1": [], "w": []}
        self.fig.title.text = self.base_title + " (waiting for a measurement)"

    @staticmethod
    def _segment(out: dict[str, list[float]], x0: float, x1: float, y0: float, y1: float,
                 width: float) -> None:
        for key, v in zip(("x0", "x1", "y0", "y1", "w"), (x0, x1, y0, y1, width), strict=True):
            out[key].append(float(v))

    @staticmethod
    def _ticks(ticker: FixedTicker, axis: Axis, ticks: list) -> None:
        # Tickers are edited in place: assigning new models would make Bokeh re-walk the
        # document's model graph on every update.
        if ticks:
            ticker.ticks = [float(t) for t, _ in ticks]
            labels = {float(t): str(label) for t, label in ticks}
            if axis.major_label_overrides != labels:
                axis.major_label_overrides = labels


class LivePlots:
    """All dashboard plots. ``push_rows`` streams new rows, ``push_matrices`` replaces the
    matrices and the alignment spectrum, ``set_kept`` redraws the kept runs, ``clear`` starts
    a new run. The ``figures`` are built once; updates only change data."""

    def __init__(self) -> None:
        self.steps = ColumnDataSource(empty_data(STEP_COLUMNS))
        self.measures = ColumnDataSource(empty_data(MEASURE_COLUMNS))
        self.spectrum = ColumnDataSource(empty_data(SPECTRUM_COLUMNS))
        self.current_alignment = ColumnDataSource(empty_data(ALIGNMENT_COLUMNS))
        self.comparison = ColumnDataSource(empty_data(COMPARE_COLUMNS))
        self.distances = ColumnDataSource(empty_data(DISTANCE_COLUMNS))  # flows' distances
        self.flows: tuple[str, ...] = ()  # the flows of the run on screen
        # Aₖ and a₁ (lines, legend entries) and the columns the alignment figure follows: with
        # flows it shows KTA alone, whose three processes differ by a few hundredths, on a scale
        # of its own (Aₖ near 0.6 squeezed them into one line)
        self._alignment_extras: list[GlyphRenderer | LegendItem] = []
        self._alignment_columns = [*LABEL_ALIGNMENT_COLUMNS, *FLOW_SPECTRUM_COLUMNS]
        self._flows_shown: tuple[str, ...] | None = None
        # (process, renderer or legend entry) of every flow overlay: shown with that process
        self._flow_drawn: list[tuple[str, GlyphRenderer | LegendItem]] = []
        # the theory's predictions: the level at the run's η (not drawn: one NaN step, for the
        # alignment figure's followed range) and the curve against η
        self.theory_level = ColumnDataSource({"step": [math.nan], "kta": [math.nan]})
        self.theory_curve = ColumnDataSource(empty_data(("lr", "kta")))
        self.theory: tuple[TheoryTarget | None, TheoryCurve | None] = (None, None)
        # Kept-run overlays are built when a run is first kept: eight runs' renderers on five
        # figures would be most of the page's models, and building a page is what twenty tabs
        # opened at once wait for.
        self.kept_sources: list[ColumnDataSource] = []
        self.kept_spectra: list[ColumnDataSource] = []
        self._kept_renderers: list[list[GlyphRenderer]] = []
        self._kept_legend_items: list[list[LegendItem]] = []
        self._pending_spectrum: list[pd.DataFrame] = []
        self._kept_runs: list[KeptRun] = []
        # (source, the ranges of a figure drawing it, the source's columns on that figure)
        self._followers: list[tuple[ColumnDataSource, FollowedRanges, list[str]]] = []
        self._spectrum_frames: list[EmptyFrame] = []
        # (axis, its label, hover tool) of the figures showing alignments: they name the kernel
        self._kernel_labelled: list[tuple[Axis, str, HoverTool]] = []
        self.kernel_label = ""  # kernel_name of the run on screen; "" before one
        # (optimizer, formula) of the run on screen, and the sharpness lines it shows in order
        self.threshold: tuple[str, str] = ("", "")
        self._sharpness_order: list[str] = []
        self._build()
        self.set_threshold("gd", threshold_label("gd"))

    # ---- construction --------------------------------------------------------------------
    def _line(self, fig: figure, source: ColumnDataSource, y: str, **style: Any) -> GlyphRenderer:
        return fig.line("step", y, source=source, **style)

    def _flow_line(self, fig: figure, source: ColumnDataSource, y: str, process: str,
                   label: str, style: dict[str, Any] | None = None) -> LegendItem:
        """A flow's line and its legend entry, both shown only while the run on screen has
        that flow (``set_flows``)."""
        line = self._line(fig, source, y, **(style or FLOW_STYLES[process]))
        entry = _streamed_entry(fig, label, line)
        self._flow_drawn += [(process, line), (process, entry)]
        return entry

    def _build(self) -> None:
        # 1. loss
        f = _figure("Training loss", "loss L (log)", y_axis_type="log")
        live = self._line(f, self.steps, "loss", color="black", line_width=2)
        flows = [self._flow_line(f, self.measures, "loss_central", "central", "central flow"),
                 self._flow_line(f, self.measures, "predicted_loss", "central",
                                 "predicted time-averaged loss", PREDICTED_STYLE),
                 self._flow_line(f, self.measures, "loss_stable", "stable", "gradient flow")]
        # kept runs add entries: "current" and up to two kept runs a row
        self._loss_legend = _legend(f, [_streamed_entry(f, "current", live), *flows], ncols=3)
        f.add_tools(_step_hover())
        self.loss_fig = f
        # 2. sharpness against the optimiser's stability threshold
        f = _figure("Sharpness vs the stability threshold", "sharpness")
        self.sharpness_lines: dict[str, GlyphRenderer] = {}
        self._sharpness_entries: dict[str, LegendItem] = {}
        for col, label, style in SHARPNESS_LINES:
            line = self._line(f, self.measures, col, **style)
            self.sharpness_lines[col] = line
            self._sharpness_entries[col] = _streamed_entry(f, label, line)
        self._sharpness_flows = [
            self._flow_line(f, self.measures, f"sharpness_{p}", p, FLOW_NAMES[p])
            for p in FLOW_NAMES]
        # rows of two: the tracked sharpness beside its threshold, the other sharpness below
        self._sharpness_legend = _legend(f, [], ncols=2)
        f.add_tools(_step_hover())
        self.sharpness_fig = f
        # 3. top NTK eigenvalues / n: λ₁/n is the Gauss–Newton sharpness, whose edge under plain
        # GD is 2/η; the adaptive methods' edge is in their own metric, so they get no line here
        f = _figure(EIGENVALUES_TITLE + EIGENVALUES_LINE, "λᵢ / n")
        for i in reversed(range(K_SHOW)):
            self._line(f, self.spectrum, f"lam{i + 1}", color=_shade(i),
                       line_width=2.5 if i == 0 else 1.2)
        self._eigen_two_over_lr = self._line(f, self.spectrum, "two_over_lr",
                                             color=THRESHOLD_COLOR, line_width=2.5,
                                             line_dash="dashed")
        f.add_tools(_step_hover())
        self.eigenvalues_fig = f
        # 4. KTA, Aₖ, a₁; with flows, KTA along each process
        f = _figure(ALIGNMENT_TITLE, "alignment")
        items = []
        for col, label, color in (("kta", "KTA", KTA_COLOR), ("topk_mass", "Aₖ", "#ff7f0e"),
                                  ("a1", "a₁", "#2ca02c")):
            line = self._line(f, self.spectrum, col, color=color, line_width=2)
            items.append(_streamed_entry(f, label, line))
            if col != "kta":  # they step aside for the flows' KTA (``set_flows``)
                self._alignment_extras += [line, items[-1]]
        items += [self._flow_line(f, self.spectrum, f"kta_{p}", p, f"KTA, {FLOW_NAMES[p]}")
                  for p in FLOW_NAMES]
        items.append(self._theory_target_entry(f))
        _legend(f, items, ncols=3)
        hover = _step_hover()
        f.add_tools(hover)
        self._kernel_labelled.append((f.yaxis[0], "alignment", hover))
        self.alignment_fig = f
        # 5. u₁ᵀr
        f = _figure("Residual along u₁: u₁ᵀr (the EoS oscillation)", "u₁ᵀr")
        self._line(f, self.measures, "u1_residual", color="#9467bd", line_width=1.5)
        f.add_tools(_step_hover())
        self.residual_fig = f
        # 5b. (flows only) the distances from GD
        f = _figure(DISTANCE_TITLE, "‖w − w_gd‖ / ‖w_gd‖")
        _legend(f, [self._flow_line(f, self.distances, f"distance_{p}", p,
                                    f"to the {FLOW_NAMES[p]}") for p in FLOW_NAMES])
        f.add_tools(_step_hover())
        self.distance_fig = f
        self.followed = {fig: FollowedRanges(fig, log_y=fig is self.loss_fig)
                         for fig in (self.loss_fig, self.sharpness_fig, self.eigenvalues_fig,
                                     self.alignment_fig, self.residual_fig, self.distance_fig)}
        self._eigen_columns = ["two_over_lr", *EIGENVALUE_COLUMNS]  # set_threshold edits it
        for fig, source, columns in (
                (self.loss_fig, self.steps, ["loss"]),
                (self.loss_fig, self.measures,
                 ["predicted_loss", *(f"loss_{p}" for p in FLOW_NAMES)]),
                (self.sharpness_fig, self.measures, [*(col for col, _, _ in SHARPNESS_LINES),
                                                     *(f"sharpness_{p}" for p in FLOW_NAMES)]),
                (self.eigenvalues_fig, self.spectrum, self._eigen_columns),
                (self.alignment_fig, self.spectrum, self._alignment_columns),
                (self.alignment_fig, self.theory_level, ["kta"]),
                (self.residual_fig, self.measures, ["u1_residual"]),
                (self.distance_fig, self.distances, DISTANCE_COLUMNS[1:])):
            self._followers.append((source, self.followed[fig], columns))
        self.set_flows(())
        # 6.–8. heatmaps
        self.vectors = HeatMap("Top NTK eigenvectors", "kernel rows by class", "eigenvector i")
        self.history = HeatMap("u₁ over training", "kernel rows by class", "step")
        self.kernel = HeatMap("NTK sorted by class", "kernel rows by class",
                              "kernel columns, same order", square=True)
        # 9. alignment spectrum (live tab) and its legended twin (compare tab)
        self.spectrum_fig = self._spectrum_figure(legend=False)
        self.spectrum_legend_fig = self._spectrum_figure(legend=True)
        # 10. final alignment against η
        f = _figure("Final alignment against η (kept runs)", "final value",
                    "learning rate η (log)", x_axis_type="log")
        self._comparison_frame = EmptyFrame(f, COMPARISON_FRAME)
        items = []
        for col, label, color in (("kta", "KTA", KTA_COLOR), ("a1", "a₁", "#2ca02c"),
                                  ("topk_mass", "Aₖ", "#ff7f0e")):
            line = f.line("lr", col, source=self.comparison, color=color, line_width=2)
            dots = f.scatter("lr", col, source=self.comparison, color=color, size=8)
            items.append(LegendItem(label=label, renderers=[line, dots]))
        line = f.line("lr", "kta", source=self.theory_curve, **THEORY_STYLE)
        self._theory_curve_entry = LegendItem(label="theory: final KTA", renderers=[line],
                                              visible=False)
        items.append(self._theory_curve_entry)
        _legend(f, items, "right")
        hover = HoverTool(tooltips=[("η", "@lr"), ("value", "$y{0.0000}")])
        f.add_tools(hover)
        self._kernel_labelled.append((f.yaxis[0], "final value", hover))
        self.comparison_fig = f

    def _theory_target_entry(self, fig: figure) -> LegendItem:
        """The dashed level of the predicted final KTA across ``fig``, and its legend entry
        (hidden until a linear2 run has a prediction). The level spans the figure's width; its
        entry is drawn from a data-less line in its style, as for the streamed lines."""
        self.theory_target = Span(dimension="width", location=0.0, visible=False,
                                  **THEORY_STYLE)
        fig.add_layout(self.theory_target)
        twin = fig.line("step", "y", source=ColumnDataSource({"step": [math.nan], "y": [math.nan]}),
                        **THEORY_STYLE)
        twin.js_link("visible", self.theory_target, "visible")
        self._theory_twin = twin
        self._theory_target_item = LegendItem(label="theory: final KTA at η", renderers=[twin],
                                              visible=False)
        return self._theory_target_item

    def _spectrum_figure(self, legend: bool) -> figure:
        f = _figure(SPECTRUM_TITLE, "aᵢ = (uᵢᵀy)²/‖y‖²",
                    "λᵢ / ‖K‖, Frobenius norm (log)", x_axis_type="log")
        f.xaxis.ticker = FixedTicker(ticks=LOG_TICKS)
        self._spectrum_frames.append(EmptyFrame(f, SPECTRUM_FRAME))
        line = f.line("eigval_normalized", "alignment", source=self.current_alignment,
                      color="black", alpha=0.5)
        dots = f.scatter("eigval_normalized", "alignment", source=self.current_alignment,
                         color="black", size=8)
        hover = HoverTool(renderers=[dots], tooltips=[("λ/‖K‖", "@eigval_normalized{0.0000}"),
                                                      ("a", "@alignment{0.0000}")])
        f.add_tools(hover)
        self._kernel_labelled.append((f.yaxis[0], "aᵢ = (uᵢᵀy)²/‖y‖²", hover))
        if legend:
            self._spectrum_legend = _legend(
                f, [LegendItem(label="current", renderers=[line, dots])], "right")
        return f

    def _add_kept_slot(self) -> None:
        """The sources, renderers and legend entries of one more kept run, drawn beneath the
        current run's curves."""
        color = RUN_COLORS[len(self.kept_sources) % len(RUN_COLORS)]
        source = ColumnDataSource(empty_data(KEPT_COLUMNS))
        spectrum = ColumnDataSource(empty_data(ALIGNMENT_COLUMNS))
        drawn: dict[figure, list[GlyphRenderer]] = {}
        for fig, column, dash in ((self.loss_fig, "loss", "solid"),
                                  (self.sharpness_fig, "sharpness", "solid"),
                                  (self.alignment_fig, "kta", "dotted")):
            drawn[fig] = [fig.line("step", column, source=source, color=color, line_dash=dash,
                                   alpha=0.8)]
            self._followers.append((source, self.followed[fig], [column]))
        for fig in (self.spectrum_fig, self.spectrum_legend_fig):
            drawn[fig] = [fig.line("eigval_normalized", "alignment", source=spectrum,
                                   color=color, alpha=0.5),
                          fig.scatter("eigval_normalized", "alignment", source=spectrum,
                                      color=color, size=6)]
        for fig, mine in drawn.items():  # beneath: earlier renderers are drawn first
            fig.renderers = [*mine, *[r for r in fig.renderers if r not in mine]]
        items = [LegendItem(label="", renderers=drawn[self.loss_fig]),
                 LegendItem(label="", renderers=drawn[self.spectrum_legend_fig])]
        self._loss_legend.items.append(items[0])
        self._spectrum_legend.items.append(items[1])
        self.kept_sources.append(source)
        self.kept_spectra.append(spectrum)
        self._kept_renderers.append([r for mine in drawn.values() for r in mine])
        self._kept_legend_items.append(items)

    # ---- pushes --------------------------------------------------------------------------
    def push_rows(self, rows: dict[str, np.ndarray], n: int, spectrum: bool = True) -> None:
        """Append new engine rows. With ``spectrum=False`` the slow curves (eigenvalues,
        alignment) wait for the next ``flush_spectrum``."""
        if len(rows["step"]) == 0:
            return
        self._stream(self.steps, column_data(step_frame(rows), STEP_COLUMNS))
        if self.flows:
            self._stream(self.distances, column_data(distance_frame(rows), DISTANCE_COLUMNS))
        measured = measure_frame(rows)
        if len(measured):
            self._stream(self.measures, column_data(measured, MEASURE_COLUMNS))
            self._pending_spectrum.append(spectrum_frame(rows, n))
        if spectrum:
            self.flush_spectrum()

    def flush_spectrum(self) -> None:
        if self._pending_spectrum:
            frame = pd.concat(self._pending_spectrum, ignore_index=True)
            self._stream(self.spectrum, column_data(frame, SPECTRUM_COLUMNS))
            self._pending_spectrum = []

    def _stream(self, source: ColumnDataSource, data: dict[str, np.ndarray]) -> None:
        """Append rows, and widen the ranges of the figures that draw them."""
        source.stream(data, rollover=BUFFER_LENGTH)
        touched = {ranges for drawn, ranges, _ in self._followers if drawn is source}
        if len(source.data["step"]) >= BUFFER_LENGTH:  # the oldest rows rolled off: shrink
            self._refit_ranges(touched)
            return
        for drawn, ranges, columns in self._followers:
            if drawn is source:
                ranges.include(data["step"], *(data[c] for c in columns))
        for ranges in touched:
            ranges.apply()

    def _refit_ranges(self, which: set[FollowedRanges] | None = None) -> None:
        """Recompute followed extents (all, or ``which``) from what the sources hold now: after
        a new run, kept runs added or dropped, or rows rolled off."""
        which = set(self.followed.values()) if which is None else which
        for ranges in which:
            ranges.clear()
        for source, ranges, columns in self._followers:
            data = source.data
            if ranges in which and len(data["step"]):
                ranges.include(data["step"], *(data[c] for c in columns))
        for ranges in which:
            ranges.apply()

    @property
    def ranges_stale(self) -> bool:
        """A figure's reset tool was used since the last update."""
        return any(ranges.stale for ranges in self.followed.values())

    def apply_stale_ranges(self) -> None:
        for ranges in self.followed.values():
            if ranges.stale:
                ranges.apply()

    def push_matrices(self, buffer: RunBuffer, history: bool = True) -> None:
        self.set_kernel(buffer_kernel_name(buffer))
        self.show_matrices(matrix_payload(buffer, history))
        # the last measurement is recent
        latest = last_alignment(buffer.rows(max(0, len(buffer) - 64)))
        if latest is not None:
            step, frame = latest
            self.current_alignment.data = column_data(frame, ALIGNMENT_COLUMNS)
            for fig in (self.spectrum_fig, self.spectrum_legend_fig):
                fig.title.text = f"Alignment spectrum at step {step}"
            self._show_empty_frames()

    def set_threshold(self, optimizer: OptimizerName, label: str) -> None:
        """Draw the run's tracked sharpness against its threshold line, labelled ``label``
        (``threshold_label``). The Hessian and Gauss–Newton sharpness stay; with momentum the
        plain 2/η is drawn too (grey), since the sharpness climbs through it on the way to
        (2+2β)/η. Only a change touches the figures."""
        if (optimizer, label) == self.threshold:
            return
        old_optimizer, old_label = self.threshold
        self.threshold = (optimizer, label)
        entries = self._sharpness_entries
        if label != old_label:
            entries["stability_threshold"].label = value(label)
        tracked = tracked_sharpness(optimizer)
        adaptive = optimizer in ("adam", "rmsprop")
        grey = not adaptive and label != threshold_label("gd")
        order = [tracked, "stability_threshold",
                 *[c for c in ("sharpness", "gn_sharpness") if c != tracked],
                 *(["two_over_lr"] if grey else [])]
        if order != self._sharpness_order:  # a line the user hid stays hidden otherwise
            self._sharpness_order = order
            # 2/η is red where it is the run's threshold, grey beside another one
            self._eigen_two_over_lr.glyph.line_color = TWO_OVER_LR_COLOR if grey else THRESHOLD_COLOR
            for col, line in self.sharpness_lines.items():
                line.visible = col in order
            self._sharpness_legend.items = self._sharpness_items()
        if optimizer != old_optimizer:
            self._eigen_two_over_lr.visible = not adaptive
            self._eigen_columns[:] = (["two_over_lr"] if not adaptive else []) + EIGENVALUE_COLUMNS
            self.eigenvalues_fig.title.text = EIGENVALUES_TITLE + ("" if adaptive
                                                                   else EIGENVALUES_LINE)
            self._refit_ranges({self.followed[self.eigenvalues_fig]})

    def set_flows(self, flows: tuple[str, ...]) -> None:
        """Show the overlays of the run's ``flows`` (``RunBuffer.flows``) and hide the others
        (their columns hold NaN then); the distances stream only with flows. Only a change
        touches the figures."""
        flows = tuple(flows)
        if flows == self._flows_shown:
            return
        self.flows = self._flows_shown = flows
        for process, model in self._flow_drawn:
            model.visible = process in flows
        self._sharpness_legend.items = self._sharpness_items()
        for model in self._alignment_extras:
            model.visible = not flows
        self._alignment_columns[:] = ["kta", *FLOW_SPECTRUM_COLUMNS] if flows else [
            *LABEL_ALIGNMENT_COLUMNS, *FLOW_SPECTRUM_COLUMNS]
        self.alignment_fig.title.text = ALIGNMENT_FLOWS_TITLE if flows else ALIGNMENT_TITLE
        self._refit_ranges({self.followed[self.alignment_fig]})

    def _sharpness_items(self) -> list[LegendItem]:
        """The sharpness legend: the lines of the optimiser (``set_threshold``), then the
        flows' (``set_flows``)."""
        entries = self._sharpness_entries
        return [*(entries[col] for col in self._sharpness_order),
                *(item for process, item in zip(FLOW_NAMES, self._sharpness_flows, strict=True)
                  if process in self.flows)]

    def set_theory(self, target: TheoryTarget | None, curve: TheoryCurve | None) -> None:
        """Draw the two-layer linear network's predicted final KTA (``app.session.theory_lines``):
        ``target`` as a dashed level on the alignment plot, labelled with its η, and ``curve``
        against η on the comparison plot; None hides either. Only a change touches the figures."""
        if (target, curve) == self.theory:
            return
        old_target, old_curve = self.theory
        self.theory = (target, curve)
        if target != old_target:
            level = target.kta if target is not None else math.nan
            shown = bool(np.isfinite(level))
            self.theory_level.data = {"step": [math.nan], "kta": [level]}
            self.theory_target.update(location=level if shown else 0.0,
                                      visible=shown and self._theory_twin.visible)
            self._theory_target_item.update(label=value(theory_label(target)),
                                            visible=target is not None)
            self._refit_ranges({self.followed[self.alignment_fig]})
        if curve is not old_curve:
            self.theory_curve.data = theory_curve_data(curve)
            self._theory_curve_entry.visible = curve is not None

    def set_kernel(self, name: str) -> None:
        """Name the kernel (``kernel_name``) on the axes and in the tooltips of the alignment
        figures; the kept runs' final values are labelled with the current run's kernel."""
        if name == self.kernel_label:
            return
        self.kernel_label = name
        for axis, label, hover in self._kernel_labelled:
            axis.axis_label = f"{label}, {name}"
            tooltips = [row for row in hover.tooltips if row[0] != "kernel"]
            hover.tooltips = [*tooltips, ("kernel", name)]

    def show_matrices(self, data: dict) -> None:
        """Draw a ``matrix_payload``; matrices it lacks keep their previous picture."""
        if "vectors" in data:
            step, vectors, f = data["vectors"]
            k, cols = vectors.shape
            self.vectors.show(vectors, (0.0, float(cols * f)), (0.5, k + 0.5), data,
                              f"Top-{k} NTK eigenvectors at step {step}",
                              yticks=[1, *range(5, k + 1, 5)] if k > 10 else list(range(1, k + 1)))
        if "history" in data:
            steps, values, f = data["history"]
            half = (steps[-1] - steps[0]) / max(1, len(steps) - 1) / 2
            self.history.show(values, (0.0, float(values.shape[1] * f)),
                              (float(steps[0] - half), float(steps[-1] + half)), data,
                              "u₁ over training (one row per step)")
        if "kernel" in data:
            step, k, f = data["kernel"]
            side = float(k.shape[0] * f)
            self.kernel.show(k, (0.0, side), (0.0, side), data,
                             f"NTK at step {step}, sorted by class")

    def set_kept(self, kept: list[KeptRun]) -> None:
        self._kept_runs = kept[:MAX_KEPT]
        while len(self.kept_sources) < len(self._kept_runs):
            self._add_kept_slot()
        for i, source in enumerate(self.kept_sources):
            run = self._kept_runs[i] if i < len(self._kept_runs) else None
            source.data = (column_data(run.frame, KEPT_COLUMNS) if run is not None
                           else empty_data(KEPT_COLUMNS))
            spectrum = run.spectrum if run is not None else None
            self.kept_spectra[i].data = (column_data(spectrum, ALIGNMENT_COLUMNS)
                                         if spectrum is not None else empty_data(ALIGNMENT_COLUMNS))
            for renderer in self._kept_renderers[i]:
                renderer.visible = run is not None
            for item in self._kept_legend_items[i]:
                item.update(label=value(run.label if run is not None else ""),
                            visible=run is not None)
        self.comparison.data = column_data(comparison_frame(self._kept_runs), COMPARE_COLUMNS)
        self._show_empty_frames()
        self._refit_ranges()

    def clear(self) -> None:
        for source, columns in ((self.steps, STEP_COLUMNS), (self.measures, MEASURE_COLUMNS),
                                (self.spectrum, SPECTRUM_COLUMNS),
                                (self.current_alignment, ALIGNMENT_COLUMNS),
                                (self.distances, DISTANCE_COLUMNS)):
            source.data = empty_data(columns)
        self._pending_spectrum = []
        for heat in (self.vectors, self.history, self.kernel):
            heat.clear()
        for fig in (self.spectrum_fig, self.spectrum_legend_fig):
            fig.title.text = SPECTRUM_TITLE
        self._show_empty_frames()
        self._refit_ranges()

    def _show_empty_frames(self) -> None:
        """Axes for the log-axis figures while they have nothing to draw (``EmptyFrame``)."""
        spectra = [self.current_alignment, *self.kept_spectra]
        empty = not any(len(source.data["alignment"]) for source in spectra)
        for frame in self._spectrum_frames:
            frame.show(empty)
        self._comparison_frame.show(not len(self.comparison.data["lr"]))

    # ---- the figures, in the order the Live tab shows them -----------------------------------
    def live_figures(self) -> list[figure]:
        return [self.loss_fig, self.sharpness_fig, self.eigenvalues_fig, self.alignment_fig,
                self.residual_fig, self.spectrum_fig, self.vectors.fig, self.history.fig,
                self.kernel.fig]

    def flow_figures(self) -> list[figure]:
        """The figures a run with flows adds to the Live tab (the page shows them only then)."""
        return [self.distance_fig]
