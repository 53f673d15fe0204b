"""The dashboard's Sweep tab: open a learning-rate sweep (``ntk-eos sweep``) and compare its runs.

Shows final alignment against η with the runs' stop status, KTA and sharpness over steps per η,
the final alignment spectrum, and a table of runs. The example sweep in ``data/sweeps/`` opens by
default; a user can upload another ``.nc`` sweep or open one from the server's run folder
(``NTK_EOS_RUNS_DIR``, ``app.files.storage``). The plots are built in ``app.views.sweep_plots``.

Uploads and the folder are off in hosted mode (``app.session.limits``): a sweep holds text
variables (run status, config) that the isolated strict reader of ``app.files.runfile`` does not
read, so a sweep is opened by the netCDF library in this process, which suits files one trusts,
not a stranger's.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import panel as pn
import param
import xarray as xr

from ntk_core.experiments.sweep_summary import EXCLUDED, runs_table, series_label, series_points
from ntk_core.training.netcdf import load_run
from ntk_core.vocabulary import RunStatus

from ..files.runs import MAX_UPLOAD_MB
from ..files.storage import RunStore, StorageError
from ..session import limits
from .sweep_plots import (
    MEAN,
    METRICS,
    PLOT_HEIGHT,
    final_plot,
    kta_curves,
    sharpness_curves,
    spectrum_plot,
)
from .untrusted import NO_LINKS, file_name, plain
from .upload import UploadBox

EXAMPLE = "eta-ladder-small.nc"
EXAMPLE_COMMAND = ("ntk-eos sweep --preset eta-ladder --grid lr=0.05,0.1,0.15,0.2,0.4 "
                   "--grid seed=0,1,2 --n 128 --width 64 --kernel traced --target_loss 0.01 "
                   "--steps 1500 --measure_every 5 --serial --out data/sweeps/eta-ladder-small.nc")
REQUIRED = ("status", "steps_done", "final_loss", "final_kta", "final_topk_mass",
            "final_alignment", "final_eigval_normalized", "kta", "sharpness")
STATUS_LABEL = {RunStatus.REACHED_TARGET: "target loss", RunStatus.COMPLETED: "step budget",
                RunStatus.DIVERGED: "diverged", RunStatus.FAILED: "failed",
                RunStatus.STOPPED: "stopped"}
STATUS_TEXT = {RunStatus.REACHED_TARGET: "reached the target loss",
               RunStatus.COMPLETED: "hit the step budget", RunStatus.DIVERGED: "diverged",
               RunStatus.FAILED: "failed", RunStatus.STOPPED: "were stopped"}
TABLE_COLUMNS = {"lr": "η", "seed": "seed", "status": "stopped at", "steps": "steps",
                 "final_loss": "final loss", "final_kta": "final KTA", "a1": "a₁",
                 "topk_mass": "Aₖ", "edge_ratio": "S·η/2 (1: at 2/η)"}

EXPLANATION = """
Each run trains the same network with full-batch gradient descent at one learning rate η and
seed, until the training loss reaches the common target (*matched loss*) or the step budget runs
out. Colours go from dark (small η) to light (large η).

- **Final KTA against η**: the paper's claim is that at the same loss, larger η ends with an NTK
  more aligned with the labels. The line is the mean ± std over seeds; each run is a point.
  Runs that **diverged** (the sharpness ran far above 2/η and the loss blew up) are red ✕ and left
  out of the mean. The metric menu switches to A_k or a₁: KTA can fall while they rise (with C
  balanced classes, a₁ stays near 1/C: the top eigenvector is nearly constant).
- **Alignment spectrum**: each top eigenvector uᵢ of the final NTK as a point, aᵢ = ‖Yᵀuᵢ‖²/‖Y‖²
  against λᵢ/‖K‖_F. KTA = Σ (λᵢ/‖K‖_F)·aᵢ: points up and to the right make the KTA large.
- **KTA over steps** and **sharpness**: the sharpness of each η rises to its own dashed 2/η line
  and hovers there (the *Edge of Stability*); an η that never reaches its line behaves like
  gradient flow.
"""


class SweepFileError(ValueError):
    """A file that is not a readable ntk-eos sweep; the message says why."""


def example_sweep_path() -> Path | None:
    """The shipped example sweep (in the source tree, or installed under share/ntk-eos)."""
    for folder in (Path(__file__).resolve().parents[2] / "data" / "sweeps",
                   Path(sys.prefix) / "share" / "ntk-eos" / "sweeps"):
        if (folder / EXAMPLE).is_file():
            return folder / EXAMPLE
    return None


def check_sweep(ds: xr.Dataset) -> xr.Dataset:
    """The Dataset if it is an ntk-eos sweep over η, else a SweepFileError saying what is wrong."""
    if "lr" not in ds.dims:
        if "sample" in ds.dims and "status" not in ds.variables:
            raise SweepFileError("this is a single run, not a sweep: open it under Files in the "
                                 "Live tab, or make a sweep with: ntk-eos sweep --grid lr=...")
        raise SweepFileError("not a learning-rate sweep: it has no lr dimension (make one with "
                             "ntk-eos sweep --grid lr=0.05,0.1,0.2)")
    missing = [v for v in REQUIRED if v not in ds.variables]
    missing += [d for d in ("step", "eig") if d not in ds.dims]
    if missing:
        raise SweepFileError("not an ntk-eos sweep: missing " + ", ".join(missing))
    if "lr" not in ds.status.dims:
        raise SweepFileError("the sweep's status has no lr dimension")
    return ds


def read_sweep_bytes(data: bytes, max_mb: float = MAX_UPLOAD_MB) -> xr.Dataset:
    """Open uploaded NetCDF bytes as a sweep, checking the size and the schema."""
    if len(data) > max_mb * 2**20:
        raise SweepFileError(f"the file is {len(data) / 2**20:.0f} MB; the limit is {max_mb:g} MB")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload.nc"
        path.write_bytes(data)
        return open_sweep(path)


def open_sweep(path: str | Path) -> xr.Dataset:
    try:
        ds = load_run(path)
    except Exception as exc:  # any reader error means the same to the user
        raise SweepFileError(f"not a readable NetCDF file ({type(exc).__name__})") from exc
    return check_sweep(ds)


def describe(cube: xr.Dataset) -> str:
    """One line: runs, grid, and the base configuration that matters for reading the plots."""
    grid = ", ".join(f"{d} ({cube.sizes[d]})" for d in cube.status.dims)
    try:
        c = json.loads(cube.attrs.get("base_config", "{}"))
    except ValueError:
        c = {}
    model = (f"{c.get('arch', '?').upper()} {c.get('depth', '?')}×{c.get('width', '?')} "
             f"{c.get('activation', '')}").strip()
    target = c.get("target_loss")
    parts = [f"{int(np.prod([cube.sizes[d] for d in cube.status.dims]))} runs over {grid}",
             f"{c.get('dataset', '?')}, n = {c.get('n', '?')}", model,
             f"{c.get('kernel', '?')} NTK, top {cube.sizes['eig']}",
             f"stop at loss {target:g}" if target else "no target loss (step budget only)"]
    return " · ".join(parts)


def status_summary(cube: xr.Dataset) -> str:
    """How the runs stopped, naming the η of the runs that diverged or failed."""
    table = runs_table(cube)
    parts = []
    for status, text in STATUS_TEXT.items():
        rows = table[table.status == status]
        if len(rows):
            where = (f" (η = {', '.join(f'{x:g}' for x in sorted(set(rows.lr)))})"
                     if status in EXCLUDED or status == RunStatus.COMPLETED else "")
            parts.append(f"{len(rows)} {text}{where}")
    return "Runs: " + "; ".join(parts) + "." if parts else "No runs."


def table_frame(cube: xr.Dataset) -> pd.DataFrame:
    """The runs table as display strings, in the order of TABLE_COLUMNS."""
    table = runs_table(cube)
    table["status"] = [STATUS_LABEL.get(s, s) for s in table.status]
    out = pd.DataFrame({TABLE_COLUMNS.get(c, c): table[c] for c in table.columns})
    fmt = {"η": "{:g}", "final loss": "{:.4f}", "final KTA": "{:.4f}", "a₁": "{:.3f}",
           "Aₖ": "{:.3f}", TABLE_COLUMNS["edge_ratio"]: "{:.2f}"}
    for column, spec in fmt.items():
        if column in out:  # a diverged run's loss is huge: scientific notation there
            out[column] = ["—" if not np.isfinite(v) else
                           f"{v:.2e}" if abs(v) >= 1000 else spec.format(v) for v in out[column]]
    k = str(cube.sizes["eig"]).translate(str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉"))
    return out.rename(columns={"Aₖ": f"A{k}"})


class SweepView(pn.viewable.Viewer):
    """A learning-rate sweep: final alignment against η, per-η curves and the runs table."""

    source = param.String(default="", doc="Name of the sweep on screen.")

    def __init__(self, path: str | Path | None = None, **params: Any) -> None:
        super().__init__(**params)
        self.cube: xr.Dataset | None = None
        self._series: dict[str, dict] = {}  # series label -> its point of the sweep
        self._quiet = False
        self._make_widgets()
        self._layout = self._make_layout()
        path = path if path is not None else example_sweep_path()
        if path is not None:
            self.load_path(path)
        else:
            self._alert("The example sweep is missing; upload a sweep file.", "warning")

    # ---- loading ---------------------------------------------------------------------------
    def load_path(self, path: str | Path) -> bool:
        try:
            cube = open_sweep(path)
        except SweepFileError as exc:
            return self._fail(Path(path).name, exc)
        self.show(cube, Path(path).name)
        return True

    def load_bytes(self, data: bytes, name: str) -> bool:
        try:
            cube = read_sweep_bytes(data)
        except SweepFileError as exc:
            return self._fail(name, exc)
        self.show(cube, name)
        return True

    # replaces Viewer.show (serve the view in a new browser tab), which an embedded view never needs
    def show(self, cube: xr.Dataset, name: str) -> None:  # type: ignore[override]
        """Put ``cube`` on screen: selectors for its seeds and series, then every plot."""
        self.cube, self.source = cube, name
        self._quiet = True  # one refresh below, not one per selector change
        seeds = cube.seed.values.tolist() if "seed" in cube.dims else []
        self.seed_select.options = {"mean over seeds": MEAN, **{f"seed {s}": s for s in seeds}}
        self.seed_select.value, self.seed_select.visible = MEAN, len(seeds) > 1
        points = series_points(cube)
        self._series = {series_label(p): p for p in points}
        self.series_select.options = list(self._series)
        self.series_select.value = self.series_select.options[0]
        self.series_select.visible = len(points) > 1
        self.header.object = (f"**{file_name(name)}** · {plain(describe(cube), 400)}\n\n"
                              f"{status_summary(cube)}")
        self._alert("", "info")
        self._quiet = False
        self.refresh()

    def _fail(self, name: str, exc: Exception) -> bool:
        still = f" Still showing {file_name(self.source)}." if self.source else ""
        self._alert(f"**Could not open {file_name(name)}:** {plain(exc, 300)}.{still}", "danger")
        return False

    def _open_from_server(self, *_: Any) -> None:
        name = self.server_select.value
        if self.store is None or not name:
            return
        try:
            data = self.store.read_bytes(name)
        except StorageError as exc:
            self._fail(name, exc)
            return
        self.load_bytes(data, f"{name}.nc")

    def _alert(self, text: str, kind: str) -> None:
        self.alert.param.update(object=text, alert_type=kind, visible=bool(text))

    # ---- plots -----------------------------------------------------------------------------
    def refresh(self, *_: Any) -> None:
        if self.cube is None or self._quiet:
            return
        seed, series = self.seed_select.value, self._series.get(self.series_select.value)
        with pn.io.hold():
            self.final_pane.object = final_plot(self.cube, self.metric_select.value)
            self.spectrum_pane.object = spectrum_plot(self.cube, seed, series)
            self.kta_pane.object = kta_curves(self.cube, seed, series)
            self.sharpness_pane.object = sharpness_curves(self.cube, seed, series)
            self.table.object = table_frame(self.cube)

    # ---- widgets and layout ----------------------------------------------------------------
    def _make_widgets(self) -> None:
        self.upload = UploadBox(lambda name, data: self.load_bytes(data, name),
                                lambda name, why: self._fail(name, ValueError(why)),
                                max_mb=MAX_UPLOAD_MB, width=260)
        self.metric_select = pn.widgets.Select(label="Metric against η", options=METRICS,
                                               value="final_kta", width=200)
        self.seed_select = pn.widgets.Select(label="Seed (curves, spectrum)", options={}, width=180)
        self.series_select = pn.widgets.Select(label="Series", options=[], width=220,
                                               visible=False)
        for widget in (self.metric_select, self.seed_select, self.series_select):
            widget.param.watch(self.refresh, "value")
        self.header = pn.pane.Markdown("", renderer_options=NO_LINKS, sizing_mode="stretch_width")
        self.alert = pn.pane.Alert("", alert_type="info", visible=False, renderer_options=NO_LINKS,
                                   sizing_mode="stretch_width")
        self.final_pane, self.spectrum_pane, self.kta_pane, self.sharpness_pane = (
            pn.pane.HoloViews(sizing_mode="stretch_width", height=PLOT_HEIGHT + 10,
                              linked_axes=False) for _ in range(4))
        self.table = pn.pane.DataFrame(pd.DataFrame(), index=False, sizing_mode="stretch_width")
        # the server's run folder (NTK_EOS_RUNS_DIR), listed once per view
        self.store = RunStore.from_env() if uploads_allowed() else None
        self.server_select = pn.widgets.Select(
            label="Open from the server folder", width=220,
            options=self.store.list() if self.store is not None else [])
        self.server_button = pn.widgets.Button(label="Open", width=70, align="end")
        self.server_button.on_click(self._open_from_server)

    def _make_layout(self) -> pn.Column:
        opener: pn.viewable.Viewable
        if uploads_allowed():
            opener = pn.Column(pn.pane.Markdown(f"Open a sweep (.nc, up to {MAX_UPLOAD_MB} MB):",
                                                margin=(5, 10, 0, 10)), self.upload)
        else:
            opener = pn.pane.Markdown("Opening your own sweep files needs a local server "
                                      "(`ntk-eos serve`); this one shows the example.", width=260)
        controls = pn.Row(opener, self.metric_select, self.seed_select, self.series_select)
        if self.store is not None:
            controls.insert(1, pn.Row(self.server_select, self.server_button))
        grid = pn.GridBox(self.final_pane, self.spectrum_pane, self.kta_pane, self.sharpness_pane,
                          ncols=2, sizing_mode="stretch_width")
        return pn.Column(
            "### Learning-rate sweep", self.header, self.alert, controls,
            pn.pane.Markdown(EXPLANATION, sizing_mode="stretch_width"), grid,
            "#### Runs (final figures: loss at the last step, the rest at the last measured step)",
            pn.Column(self.table, max_height=400, scroll=True, sizing_mode="stretch_width"),
            sizing_mode="stretch_width")

    def __panel__(self) -> pn.Column:
        return self._layout




def uploads_allowed() -> bool:
    """Sweep uploads only off hosted servers (see the module docstring)."""
    return limits.current().mode != "hosted"


def sweep_tab() -> pn.viewable.Viewable:
    """The Sweep view, built only when its tab is first shown (``pn.Tabs(dynamic=True)``)."""
    return pn.param.ParamFunction(lambda: SweepView(), lazy=True, sizing_mode="stretch_width")
