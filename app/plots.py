"""The dashboard's live HoloViews plots and the streams that feed them.

Curves read ``hv.streams.Buffer`` frames through DynamicMaps whose callback is the element
constructor, so Bokeh receives only the rows appended since the last push. Matrices (eigenvectors,
u₁ history, the NTK) and per-run summaries go through ``hv.streams.Pipe`` and are replaced whole,
after block-averaging to at most ``MAX_PIXELS`` per side. All values are the engine's; the only
arithmetic here is display scaling (λ/n, block means, row order).
"""

from __future__ import annotations

import math
from functools import partial

import holoviews as hv
import numpy as np
import pandas as pd

from ntk_core.buffer import RunBuffer

from .runs import KEPT_COLUMNS, MAX_KEPT, KeptRun, last_measured

K_SHOW = 10  # eigenvalue curves drawn in the spectrum plot
BUFFER_LENGTH = 20_000  # rows kept per curve stream (the most recent steps)
MAX_PIXELS = 256  # NTK heatmap side after block-averaging
MAX_VECTOR_COLUMNS = 512
MAX_HISTORY_ROWS = 128
PLOT_HEIGHT = 290
SIZE = {"responsive": True, "height": PLOT_HEIGHT}
LOG_TICKS = [1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]
THRESHOLD_COLOR = "#d62728"
RUN_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
              "#bcbd22", "#7f7f7f")
STEP_COLUMNS = ["step", "loss", "accuracy", "two_over_lr"]
MEASURE_COLUMNS = ["step", "two_over_lr", "sharpness", "gn_sharpness", "kta", "topk_mass", "a1",
                   "u1_residual"]
SPECTRUM_COLUMNS = ["step", "two_over_lr", *[f"lam{i + 1}" for i in range(K_SHOW)]]
EMPTY_KEPT = pd.DataFrame({c: np.array([], dtype=float) for c in KEPT_COLUMNS})
EMPTY_SPECTRUM = pd.DataFrame({"eigval_normalized": np.array([], float),
                               "alignment": np.array([], float)})


def empty_frame(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: np.array([], dtype=float) for c in columns})


def _finite(values: np.ndarray) -> np.ndarray:
    out = np.asarray(values, dtype=float)
    return np.where(np.isfinite(out), out, np.nan)


def step_frame(rows: dict[str, np.ndarray]) -> pd.DataFrame:
    """Every step: loss, accuracy, 2/η."""
    return pd.DataFrame({"step": rows["step"].astype(float), "loss": _finite(rows["loss"]),
                         "accuracy": rows["accuracy"], "two_over_lr": rows["two_over_lr"]})


def measure_frame(rows: dict[str, np.ndarray]) -> pd.DataFrame:
    """Measured steps only, so that measure_every > 1 still draws connected curves."""
    keep = rows["measured"] == 1
    data = {c: _finite(rows[c][keep]) for c in MEASURE_COLUMNS if c != "a1"}
    data["a1"] = _finite(rows["alignment"][keep, 0])
    return pd.DataFrame({c: data[c] for c in MEASURE_COLUMNS})


def spectrum_frame(rows: dict[str, np.ndarray], n: int) -> pd.DataFrame:
    """Measured steps: the top K_SHOW eigenvalues divided by n (comparable with 2/η)."""
    keep = rows["measured"] == 1
    eig = rows["eigenvalues"][keep, :K_SHOW] / n
    data = {"step": rows["step"][keep].astype(float), "two_over_lr": rows["two_over_lr"][keep]}
    for i in range(K_SHOW):
        data[f"lam{i + 1}"] = _finite(eig[:, i]) if i < eig.shape[1] else np.full(len(eig), np.nan)
    return pd.DataFrame(data)


# ---- matrices for display ----------------------------------------------------------------------
def display_order(row_data: dict[str, np.ndarray]) -> np.ndarray:
    """Kernel rows grouped by output, then by class (the engine sorts by class, sample-major)."""
    labels = np.asarray(row_data["label"])
    outputs = np.asarray(row_data.get("output_index", np.zeros_like(labels)))
    return np.lexsort((np.arange(len(labels)), labels, outputs))


def block_mean(a: np.ndarray, axis: int, max_size: int) -> tuple[np.ndarray, int]:
    """Average runs of f consecutive entries along ``axis`` so at most ``max_size`` remain."""
    size = a.shape[axis]
    f = max(1, math.ceil(size / max_size))
    if f == 1:
        return a, 1
    pad = (-size) % f
    a = np.moveaxis(a, axis, -1).astype(np.float32)
    if pad:
        a = np.concatenate([a, np.full((*a.shape[:-1], pad), np.nan, np.float32)], -1)
    out = np.nanmean(a.reshape(*a.shape[:-1], -1, f), axis=-1)
    return np.moveaxis(out, -1, axis), f


def block_boundaries(row_data: dict[str, np.ndarray], order: np.ndarray) -> tuple[list, list]:
    """Row positions where the class changes, where the output changes, and class tick marks."""
    labels = np.asarray(row_data["label"])[order]
    outputs = np.asarray(row_data.get("output_index", np.zeros_like(labels)))[order]
    key = outputs * (labels.max() + 1) + labels
    edges = list(np.flatnonzero(np.diff(key)) + 1)
    out_edges = [e for e in edges if outputs[e] != outputs[e - 1]]
    starts = [0, *edges]
    ends = [*edges, len(labels)]
    ticks = [((s + e) / 2, str(labels[s])) for s, e in zip(starts, ends, strict=True)]
    return [e for e in edges if e not in out_edges], out_edges, ticks


def matrix_payload(buffer: RunBuffer, history: bool) -> dict:
    """What the matrix pipes need, block-averaged for the browser."""
    order = display_order(buffer.row_data)
    class_edges, output_edges, ticks = block_boundaries(buffer.row_data, order)
    out: dict = {"m": buffer.m, "class_edges": class_edges, "output_edges": output_edges,
                 "ticks": ticks}
    latest = buffer.latest_eigenvectors()
    if latest is not None:
        vectors, f = block_mean(latest[1][:, order], 1, MAX_VECTOR_COLUMNS)
        out["vectors"] = (latest[0], vectors, f)
    if history:
        steps, u1 = buffer.eigenvector_history(0)
        if len(steps) >= 2:
            grid = np.linspace(steps[0], steps[-1], min(MAX_HISTORY_ROWS, len(steps)))
            nearest = np.clip(np.searchsorted(steps, grid), 0, len(steps) - 1)
            values, f = block_mean(u1[nearest][:, order], 1, MAX_VECTOR_COLUMNS)
            out["history"] = (grid, values, f)
    kernel = buffer.latest_kernel()
    if kernel is not None:
        k, f = block_mean(kernel[1][np.ix_(order, order)], 0, MAX_PIXELS)
        k, _ = block_mean(k, 1, MAX_PIXELS)
        out["kernel"] = (kernel[0], k, f)
    return out


# ---- element builders --------------------------------------------------------------------------
def _edges(class_edges: list, output_edges: list, horizontal: bool = False) -> hv.Overlay:
    lines = hv.HLines if horizontal else hv.VLines
    return (lines(np.asarray(class_edges, float), group="NtkClassEdge")
            * lines(np.asarray(output_edges, float), group="NtkOutputEdge"))


def _centers(count: int, f: int) -> np.ndarray:
    return np.arange(count) * f + f / 2


def _symmetric(values: np.ndarray) -> tuple[float, float]:
    finite = np.abs(values[np.isfinite(values)])
    a = float(np.percentile(finite, 99)) if finite.size else 1.0
    return (-a, a) if a > 0 else (-1.0, 1.0)


def _image(xs: np.ndarray, ys: np.ndarray, values: np.ndarray, kdims: list[str], vdim: str,
           title: str, data: dict, ticks: str = "x", yticks: list | None = None) -> hv.Overlay:
    """A diverging heatmap (symmetric colour range) with the class / output boundaries."""
    order = "rows by output, then class" if data.get("output_edges") else "rows by class"
    labels = {"xlabel": f"kernel {order}"}
    if "y" in ticks:
        labels["ylabel"] = "kernel columns, same order"
    img = hv.Image((xs, ys, values), kdims=kdims, vdims=[vdim], group="NtkHeatmap").opts(
        clim=_symmetric(values), invert_yaxis=True, title=title, **labels,
        xticks=data.get("ticks") if "x" in ticks else None,
        yticks=data.get("ticks") if "y" in ticks else yticks)
    layers = img * _edges(data.get("class_edges", []), data.get("output_edges", []))
    if "y" in ticks:
        layers = layers * _edges(data.get("class_edges", []), data.get("output_edges", []),
                                 horizontal=True)
    return layers


def _empty(kdims: list[str], vdim: str, title: str, ticks: str = "x") -> hv.Overlay:
    return _image(np.array([0.5]), np.array([0.5]), np.zeros((1, 1)), kdims, vdim,
                  title + " (waiting for a measurement)", {}, ticks)


def eigenvector_image(data: dict) -> hv.Overlay:
    kdims = ["kernel row", "eigenvector i"]
    if "vectors" not in data:
        return _empty(kdims, "u_i entry", "Top NTK eigenvectors")
    step, vectors, f = data["vectors"]
    k = vectors.shape[0]
    return _image(_centers(vectors.shape[1], f), np.arange(1, k + 1), vectors, kdims,
                  "u_i entry", f"Top-{k} NTK eigenvectors at step {step}", data,
                  yticks=[1, *range(5, k + 1, 5)] if k > 10 else list(range(1, k + 1)))


def history_image(data: dict) -> hv.Overlay:
    kdims = ["kernel row", "step"]
    if "history" not in data:
        return _empty(kdims, "u₁ entry", "u₁ over training")
    steps, values, f = data["history"]
    return _image(_centers(values.shape[1], f), steps, values, kdims, "u₁ entry",
                  "u₁ over training (one row per step)", data)


def kernel_image(data: dict) -> hv.Overlay:
    kdims = ["kernel row", "kernel column"]
    if "kernel" not in data:
        return _empty(kdims, "K", "NTK sorted by class", ticks="xy")
    step, k, f = data["kernel"]
    c = _centers(k.shape[0], f)
    return _image(c, c, k, kdims, "K", f"NTK at step {step}, sorted by class", data, ticks="xy")


def _slots(runs: list) -> list:
    """Kept runs padded to MAX_KEPT entries: overlays keep a fixed set of layers (HoloViews
    cannot add layers to a live overlay), empty and unlabelled where no run is kept."""
    return list(runs[:MAX_KEPT]) + [("", RUN_COLORS[0], None)] * (MAX_KEPT - len(runs))


def alignment_spectrum(data: dict) -> hv.Overlay:
    """a_i against λ_i/‖K‖_F (paper Fig. 1b): the final spectra of the kept runs and the current
    run's latest one, one marker per eigenpair."""
    current = data.get("current")
    title = "Alignment spectrum (top eigenpairs)"
    runs = _slots(data.get("runs", []))
    if current is not None:
        title = f"Alignment spectrum at step {current[0]}"
    runs.append(("current", "black", current[1] if current is not None else None))
    layers = []
    for label, color, frame in runs:
        frame = frame if frame is not None else EMPTY_SPECTRUM
        curve = hv.Curve(frame, "eigval_normalized", "alignment", label=label)
        layers += [curve.opts(color=color, line_width=1, alpha=0.5),
                   hv.Scatter(curve).opts(color=color, size=8 if label == "current" else 6)]
    return hv.Overlay(layers).opts(title=title)


def compare_overlay(data: dict) -> hv.Overlay:
    """Final KTA, a₁ and A_k against η over the kept runs."""
    frame = data.get("frame")
    if frame is None or frame.empty:
        frame = pd.DataFrame({"lr": [], "kta": [], "a1": [], "topk_mass": []})
    frame = frame.sort_values("lr")
    layers = []
    for column, label, color in (("kta", "KTA", "#1f77b4"), ("a1", "a₁", "#2ca02c"),
                                 ("topk_mass", "A_k", "#ff7f0e")):
        curve = hv.Curve(frame, "lr", (column, "final value"), label=label).opts(color=color)
        layers += [curve, hv.Scatter(curve).opts(color=color, size=8)]
    return hv.Overlay(layers)


def kept_curves(data: list, column: str, dash: str = "solid", legend: bool = True) -> hv.Overlay:
    """The kept runs' ``column`` against step, one colour per run (the same in every plot, so
    one legend, on the loss plot, names them)."""
    return hv.Overlay([
        hv.Curve(frame if frame is not None else EMPTY_KEPT, "step", column,
                 label=label if legend else "").opts(
            color=color, line_dash=dash, alpha=0.8, tools=["hover"])
        for label, color, frame in _slots(data)])


# ---- the plot set ------------------------------------------------------------------------------
CURVE_STYLES: dict[str, dict] = {
    "NtkLoss": {"color": "black", "line_width": 2},
    "NtkSharpness": {"color": "#1f77b4", "line_width": 2.5},
    "NtkGNSharpness": {"color": "#2ca02c", "line_width": 2.5, "line_dash": "dotted"},
    "NtkThreshold": {"color": THRESHOLD_COLOR, "line_dash": "dashed", "line_width": 2.5},
    "NtkKTA": {"color": "#1f77b4", "line_width": 2},
    "NtkMass": {"color": "#ff7f0e", "line_width": 2},
    "NtkAlign": {"color": "#2ca02c", "line_width": 2},
    "NtkResidual": {"color": "#9467bd", "line_width": 1.5},
}
_styles_registered = False


def register_styles() -> None:
    """Curve styles by group, set once for the session: elements rebuilt on every frame pick
    them up without a per-frame ``.opts`` call (the costliest part of a HoloViews update)."""
    global _styles_registered
    if _styles_registered:
        return
    styles = {**CURVE_STYLES, **{f"NtkEig{i + 1}": {"color": _shade(i),
                                                      "line_width": 2.5 if i == 0 else 1.2}
                                 for i in range(K_SHOW)}}
    hv.opts.defaults(
        *[hv.opts.Curve(group, show_grid=True, tools=["hover"], **style)
          for group, style in styles.items()],
        hv.opts.Image("NtkHeatmap", cmap="RdBu_r", colorbar=True, tools=["hover"],
                      framewise=True, responsive=True, height=PLOT_HEIGHT),
        hv.opts.VLines("NtkClassEdge", color="black", line_width=1, alpha=0.5),
        hv.opts.VLines("NtkOutputEdge", color="black", line_width=2.5),
        hv.opts.HLines("NtkClassEdge", color="black", line_width=1, alpha=0.5),
        hv.opts.HLines("NtkOutputEdge", color="black", line_width=2.5))
    _styles_registered = True


def _live_overlay(data: pd.DataFrame, layers: tuple[tuple[str, str, str], ...]) -> hv.Overlay:
    """Curves (column, group, label) over the buffer's frame: each keeps ``data`` itself, so
    Bokeh streams only the new rows."""
    return hv.Overlay([hv.Curve(data, "step", column, group=group, label=label)
                       for column, group, label in layers])


class LivePlots:
    """All dashboard plots. ``push_rows`` sends new rows, ``push_matrices`` replaces the
    matrices, ``set_kept`` redraws the comparison overlays, ``clear`` starts a new run."""

    def __init__(self) -> None:
        register_styles()
        self.steps = hv.streams.Buffer(empty_frame(STEP_COLUMNS), length=BUFFER_LENGTH,
                                       index=False, following=True)
        self.measures = hv.streams.Buffer(empty_frame(MEASURE_COLUMNS), length=BUFFER_LENGTH,
                                          index=False, following=True)
        self.spectrum = hv.streams.Buffer(empty_frame(SPECTRUM_COLUMNS), length=BUFFER_LENGTH,
                                          index=False, following=True)
        self.matrices = hv.streams.Pipe(data={})
        self.kept = hv.streams.Pipe(data=[])
        self.alignment = hv.streams.Pipe(data={})
        self.comparison = hv.streams.Pipe(data={})
        self._pending_spectrum: list[pd.DataFrame] = []
        self._kept_runs: list[KeptRun] = []

    def _live(self, buffer: hv.streams.Buffer, *layers: tuple[str, str, str]) -> hv.DynamicMap:
        return hv.DynamicMap(partial(_live_overlay, layers=layers), streams=[buffer])

    def _kept(self, column: str, dash: str = "solid", legend: bool = False) -> hv.DynamicMap:
        return hv.DynamicMap(partial(kept_curves, column=column, dash=dash, legend=legend),
                             streams=[self.kept])

    # ---- pushes --------------------------------------------------------------------------
    def push_rows(self, rows: dict[str, np.ndarray], n: int, spectrum: bool = True) -> None:
        """Append new engine rows. The eigenvalue plot (many curves) costs the most per push,
        so with ``spectrum=False`` its rows wait for the next ``flush_spectrum``."""
        if len(rows["step"]) == 0:
            return
        self.steps.send(step_frame(rows))
        measured = measure_frame(rows)
        if len(measured):
            self.measures.send(measured)
            self._pending_spectrum.append(spectrum_frame(rows, n))
        if spectrum:
            self.flush_spectrum()

    def flush_spectrum(self) -> None:
        if self._pending_spectrum:
            self.spectrum.send(pd.concat(self._pending_spectrum, ignore_index=True))
            self._pending_spectrum = []

    def push_matrices(self, buffer: RunBuffer, history: bool = True) -> None:
        self.matrices.send(matrix_payload(buffer, history))
        rows = buffer.rows(max(0, len(buffer) - 64))  # the last measurement is recent
        i = last_measured(rows)
        if i is not None:
            frame = pd.DataFrame({"eigval_normalized": rows["eigval_normalized"][i],
                                  "alignment": rows["alignment"][i]}).dropna()
            self.alignment.send({**self._kept_spectra(),
                                 "current": (int(rows["step"][i]), frame)})

    def set_kept(self, kept: list[KeptRun]) -> None:
        runs = [(k.label, RUN_COLORS[i % len(RUN_COLORS)], k.frame) for i, k in enumerate(kept)]
        self.kept.send(runs)
        self._kept_runs = kept
        self.alignment.send({**self._kept_spectra(), "current": self.alignment.data.get("current")})
        frame = pd.DataFrame([{"lr": k.lr, "kta": k.final.get("kta", np.nan),
                               "a1": k.final.get("a1", np.nan),
                               "topk_mass": k.final.get("topk_mass", np.nan)} for k in kept])
        self.comparison.send({"frame": frame})

    def _kept_spectra(self) -> dict:
        kept = self._kept_runs
        return {"runs": [(k.label, RUN_COLORS[i % len(RUN_COLORS)], k.spectrum)
                         for i, k in enumerate(kept) if k.spectrum is not None]}

    def clear(self) -> None:
        for buffer in (self.steps, self.measures, self.spectrum):
            buffer.clear()
        self._pending_spectrum = []
        self.matrices.send({})
        self.alignment.send(self._kept_spectra())

    # ---- plots ---------------------------------------------------------------------------
    def loss(self) -> hv.DynamicMap:
        live = self._live(self.steps, ("loss", "NtkLoss", "current"))
        return (self._kept("loss", legend=True) * live).opts(hv.opts.Overlay(
            title="Training loss", logy=True, ylabel="loss L (log)", legend_position="top_right",
            **SIZE))

    def sharpness(self) -> hv.DynamicMap:
        live = self._live(self.measures, ("sharpness", "NtkSharpness", "sharpness λ_max(H)"),
                          ("gn_sharpness", "NtkGNSharpness", "GN sharpness λ₁(K)/n"),
                          ("two_over_lr", "NtkThreshold", "2/η"))
        return (self._kept("sharpness") * live).opts(hv.opts.Overlay(
            title="Sharpness vs the stability threshold 2/η", ylabel="sharpness",
            legend_position="bottom_right", **SIZE))

    def eigenvalues(self) -> hv.DynamicMap:
        layers = [(f"lam{i + 1}", f"NtkEig{i + 1}", f"λ{i + 1}/n") for i in range(K_SHOW)]
        return self._live(self.spectrum, *layers, ("two_over_lr", "NtkThreshold", "2/η")).opts(
            hv.opts.Overlay(title=f"Top-{K_SHOW} NTK eigenvalues λᵢ/n vs 2/η (dashed)",
                            ylabel="λᵢ / n", show_legend=False, **SIZE))

    def alignment_curves(self) -> hv.DynamicMap:
        live = self._live(self.measures, ("kta", "NtkKTA", "KTA"),
                          ("topk_mass", "NtkMass", "A_k"), ("a1", "NtkAlign", "a₁"))
        return (self._kept("kta", "dotted") * live).opts(hv.opts.Overlay(
            title="Label alignment: KTA, A_k, a₁", ylabel="alignment",
            legend_position="bottom_right", **SIZE))

    def residual(self) -> hv.DynamicMap:
        return self._live(self.measures, ("u1_residual", "NtkResidual", "u₁ᵀr")).opts(
            hv.opts.Overlay(title="Residual along u₁: u₁ᵀr (the EoS oscillation)",
                            ylabel="u₁ᵀr", show_legend=False, **SIZE))

    def eigenvector_heatmap(self) -> hv.DynamicMap:
        return hv.DynamicMap(eigenvector_image, streams=[self.matrices])

    def u1_heatmap(self) -> hv.DynamicMap:
        return hv.DynamicMap(history_image, streams=[self.matrices])

    def kernel_heatmap(self) -> hv.DynamicMap:
        return hv.DynamicMap(kernel_image, streams=[self.matrices])

    def alignment_spectrum(self, legend: bool = False) -> hv.DynamicMap:
        """Legend outside on the right when ``legend``; else the colours of the loss legend."""
        where = {"legend_position": "right"} if legend else {"show_legend": False}
        return hv.DynamicMap(alignment_spectrum, streams=[self.alignment]).opts(
            hv.opts.Scatter(framewise=True, tools=["hover"]), hv.opts.Curve(framewise=True),
            hv.opts.Overlay(logx=True, xlabel="λᵢ / ‖K‖_F (log)", ylabel="aᵢ = (uᵢᵀy)²/‖y‖²",
                            xticks=LOG_TICKS, padding=0.05, **where, **SIZE))

    def comparison_plot(self) -> hv.DynamicMap:
        return hv.DynamicMap(compare_overlay, streams=[self.comparison]).opts(
            hv.opts.Curve(framewise=True), hv.opts.Scatter(framewise=True, tools=["hover"]),
            hv.opts.Overlay(logx=True, title="Final alignment against η (kept runs)",
                            xlabel="learning rate η (log)", legend_position="right",
                            xticks=LOG_TICKS, padding=0.1,
                            **SIZE))


def _shade(i: int) -> str:
    """Dark blue for λ₁ fading to light for λ_K."""
    t = i / max(1, K_SHOW - 1)
    r, g, b = (int(31 + t * (190 - 31)), int(119 + t * (210 - 119)), int(180 + t * (235 - 180)))
    return f"#{r:02x}{g:02x}{b:02x}"

