"""The ntk-eos dashboard: controls, run buttons and the live plots of one training session.

``Dashboard`` is a ``pn.viewable.Viewer``: ``Dashboard()`` shows in a notebook cell, and
``app/main.py`` serves one per browser tab. Each instance owns a ``RunController`` (a background
training thread) and pulls new rows from the engine's buffer every ``ServerLimits.pull_ms``;
the eigenvalue and alignment curves, the matrices and the comparison views refresh about once a
second. ``Dashboard(model=..., data=(X, y))`` trains the user's own module and arrays in place of
the preset's (``app.session.own_inputs``); the controls they replace are greyed out. With the
Flows control on, each run also trains GD's central flow and gradient flow from the same initial
weights; their curves join the loss, sharpness and KTA plots, and their distances from GD get a
plot of their own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import holoviews as hv
import numpy as np
import panel as pn
import param

from ntk_core.config import ConfigError
from ntk_core.numerics.stability import threshold_label
from ntk_core.training.buffer import RunBuffer
from ntk_core.vocabulary import OptimizerName, RunStatus

from .files.runs import (
    LEFT_OUT,
    MAX_DATA_MB,
    MAX_UPLOAD_MB,
    RunFileError,
    csv_bytes,
    netcdf_bytes,
    read_run_bytes,
    run_config_dict,
)
from .files.storage import RunStore
from .session import limits as server_limits
from .session.limits import has_viewers
from .session.own_inputs import Data, Model, OwnInputs
from .session.runner import RunController
from .session.settings import FLOW_CHOICES, LIVE_FIELDS, RunSettings
from .session.theory_lines import TheoryLines
from .views.controls import (
    SPEEDS,
    FlowsControl,
    LearningRateControl,
    optimizer_controls,
    settings_sections,
)
from .views.plot_data import buffer_threshold
from .views.plots import PLOT_HEIGHT, LivePlots
from .views.server_files import ServerFiles
from .views.sweep_view import sweep_tab
from .views.untrusted import NO_LINKS, clean_query, file_name, html_text, install_location, plain
from .views.upload import UploadBox

pn.extension("filedropper", notifications=False)
# Canvas, not WebGL: the curves are small, and WebGL draws line joins with specks and is slow
# where the browser has no GPU (projector laptops in software mode, headless tests).
hv.renderer("bokeh").webgl = False

MATRIX_SECONDS = 1.0  # matrices, the eigenvalue and alignment curves, the alignment spectrum
BACKOFF = 2.0  # a push that took t seconds waits ≥ BACKOFF·t: plots take ≤ 1/3 of a core
SIDEBAR_WIDTH = 330
# Names of the control fields in the header's "changed from the preset" line
FIELD_NAMES = {"lr": "η", "measure_every": "measure every", "target_loss": "target loss",
               "momentum": "β", "beta1": "β₁", "beta2": "β₂", "eps": "ε",
               "batch_size": "batch size", "flows": "flows"}

RESULT_ALERTS = {
    RunStatus.DIVERGED: ("warning", "**{reason}.** The sharpness rose so far above its stability "
                 "threshold that the optimiser could not stabilise itself: lower η and press "
                 "Reset."),
    RunStatus.COMPLETED: ("success", "**Finished:** {reason}."),
    RunStatus.REACHED_TARGET: ("success", "**Target reached:** {reason}."),
    RunStatus.FAILED: ("danger", "**The run failed:** {reason}"),
}


FLOW_SHOWN = {value: label.lower() for label, value in FLOW_CHOICES.items()}


def _shown(value: object, name: str = "") -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if name == "flows":
        return FLOW_SHOWN.get(str(value), str(value))
    return "all" if value == "" else str(value)  # no classes given: all of them


def _set_if_changed(obj: param.Parameterized, **values: object) -> None:
    """Assign only the parameters whose value differs (each assignment costs a re-render)."""
    changed = {k: v for k, v in values.items() if getattr(obj, k) != v}
    if changed:
        obj.param.update(**changed)


class Dashboard(pn.viewable.Viewer):
    """Train a RunConfig live and watch sharpness, the NTK spectrum and label alignment."""

    speed: param.Selector[float] = param.Selector(
        default=0.0, objects=list(SPEEDS.values()),
        doc="Steps per second cap (0: as fast as the engine goes).")
    status = param.String(default="step 0 · loading data and model")
    columns = param.Integer(default=3, bounds=(1, 9), constant=True,
                            doc="Plots per row on the Live tab (2 suits a notebook's width).")

    def __init__(self, *, settings: RunSettings | None = None, staged: bool = False,
                 model: Model | None = None, data: Data | None = None, **params: Any) -> None:
        """``settings``: what the next run trains (the default preset when None). ``staged``:
        the Live tab's plots start out of the page and join it one by one through
        ``add_plots`` (see ``app.server.page_loading``). ``model``: your own ``nn.Module``
        (each run starts from a copy of its weights as given) or a ``package.module:factory``
        name; ``data``: your ``(X, y)`` arrays, a ``Dataset`` or a ``.npz`` file. Either
        replaces the preset's and trains in this process."""
        super().__init__(**params)
        self.settings = settings if settings is not None else RunSettings()
        self.own = OwnInputs.of(model, data)
        self.controller = RunController(own=self.own)
        self.theory = TheoryLines(enabled=self.own is None)  # linear2's predicted final KTA
        self.plots = LivePlots()
        self._source: RunBuffer | None = None  # the buffer on screen
        self._cursor = 0
        self._seen_version = -1
        self._matrix_version = -1
        self._next_curves = self._next_slow = 0.0
        self._tick_lock = threading.Lock()
        self._kept_pending = False  # kept runs changed: the next tick redraws them
        self._started = False
        self._callback: Any = None
        self._url_message = ""
        self._url_bad: dict = {}  # the link's fields that could not be applied
        self._file_message: tuple[str, str] = ("", "info")  # shown until the next reset
        self._viewed_note = ""
        self._file_threshold: tuple[OptimizerName, str] | None = None  # a viewed run's
        self.param.watch(lambda e: self.controller.set_speed(e.new), "speed")
        self._sync_url()
        self.settings.param.watch(self._on_settings, "changed")
        self._make_widgets()
        figures = self.plots.live_figures()
        after = figures.index(self.plots.alignment_fig) + 1  # the distances beside KTA
        figures[after:after] = self.plots.flow_figures()
        # the flow figures come in a box, shown only while the run on screen has flows (a
        # Bokeh pane's own visibility follows its figure's and did not come back once hidden)
        flow_figures = self.plots.flow_figures()
        self._plot_panes: list[pn.viewable.Viewable] = [
            pn.Column(self._pane(fig), sizing_mode="stretch_width", margin=0, visible=False)
            if fig in flow_figures else self._pane(fig) for fig in figures]
        self._flow_panes = [self._plot_panes[figures.index(fig)] for fig in flow_figures]
        self._grid = pn.GridBox(*([] if staged else self._plot_panes), ncols=self.columns,
                                sizing_mode="stretch_width")
        self._layout = self._make_layout()
        self.reset()

    # ---- actions -------------------------------------------------------------------------
    def play(self, *_: Any) -> None:
        if self.controller.run is None or self.controller.run.finished:
            self.reset(play=True)
        else:
            self.controller.play()

    def pause(self, *_: Any) -> None:
        self.controller.pause()

    def step(self, *_: Any) -> None:
        if self.controller.run is None:
            self.reset()
        self.controller.step()

    def reset(self, *_: Any, play: bool = False) -> None:
        """Start the settings' run (or ladder) from initialisation."""
        message = (self.settings.validate()
                   or self.controller.cap_error(self.settings.to_configs()))
        self._show_config_error(message)
        if message:
            return
        self._file_message = ("", "info")
        server_limits.opened_runs().release(self)  # the viewed run, if any, goes
        self.controller.reset(self.settings.to_configs(), play=play)
        self.tick()

    def keep(self, *_: Any) -> None:
        if self.controller.keep() is not None:
            self._redraw_kept()

    def clear_kept(self, *_: Any) -> None:
        self.controller.clear_kept()
        self._redraw_kept()

    def _redraw_kept(self) -> None:
        # Button callbacks run on the server's thread pool; the plots change in the next tick,
        # which holds the document lock (changing Bokeh models here raised in the server).
        self._kept_pending = True
        self.tick()

    def close(self, *_: Any) -> None:
        """Stop training (called when the browser session ends)."""
        self.controller.close()
        for holder in (self, (self, "upload")):
            server_limits.opened_runs().release(holder)
        if self._callback is not None:
            self._callback.stop()
            self._callback = None

    # ---- settings ------------------------------------------------------------------------
    def _on_settings(self, _: param.parameterized.Event) -> None:
        message = self.settings.validate()
        self._show_config_error(message)
        if message:
            return
        run = self.controller.run
        settings = self.settings
        # a hidden option of another optimiser (a link's batch_size for GD) changes no run
        changed = {name for name in settings.last_changed if settings.used(name)}
        # momentum turned on under a run with flows ends its flows: that is another run
        same_flows = run is not None and settings.to_config().flows == run.config.flows
        if changed <= LIVE_FIELDS and same_flows and run is not None and not run.finished:
            if "lr" in changed:
                self.controller.set_lr(settings.lr)
            if changed & {"momentum", "beta1"}:
                self.controller.set_hyper(momentum=settings.momentum, beta1=settings.beta1)
            return
        self.reset(play=run is not None and run.playing)

    def _show_config_error(self, message: str) -> None:
        self.config_alert.object = (f"**These settings cannot run:** {plain(message, 300)}. "
                                    "The last valid "
                                    "run is still shown." if message else "")
        self.config_alert.visible = bool(message)

    def _sync_url(self) -> None:
        """Keep the settings in the page URL so that a shared link reproduces the setup."""
        location = install_location(pn.state.curdoc)
        if location is not None:
            self.apply_url(location)

    def apply_url(self, location: Any) -> None:
        """Sync the settings with ``location`` (a panel Location). A value that cannot be
        applied leaves a message, never an error: the query comes from whoever wrote the link."""
        self._url_bad = {}
        search, dropped = clean_query(location.search)
        if dropped:
            location.search = search
            self._url_error(dict.fromkeys(dropped, "(unreadable)"))
        try:
            location.sync(self.settings, self.settings.url_parameters(),
                          on_error=self._url_error)
            location.sync(self, {"speed": "speed"}, on_error=self._url_error)
        except Exception as exc:  # a page with defaults beats no page
            self._url_message = (f"**The link's settings could not be read** "
                                 f"({plain(type(exc).__name__)}); the defaults are shown.")

    def _url_error(self, values: dict) -> None:
        """Name the link's bad fields; Panel reports them in several calls (one per synced
        object), and each adds to the list."""
        self._url_bad.update(values)
        shown = ", ".join(f"{str(k)[:40]}={str(v)[:40]}" for k, v in self._url_bad.items())
        self._url_message = ("**The link's settings could not all be applied:** "
                             + plain(shown, 600)
                             + ". Check the values against the bounds of each control.")

    # ---- files ---------------------------------------------------------------------------
    def _download_netcdf(self) -> Any:
        buffer = self.controller.buffer
        return netcdf_bytes(buffer) if buffer is not None else None

    def _download_csv(self) -> Any:
        buffer = self.controller.buffer
        return csv_bytes(buffer) if buffer is not None else None

    def _upload_room(self, nbytes: int) -> bool:
        """Whether an upload in flight may grow to ``nbytes`` (the server-wide budget)."""
        return server_limits.opened_runs().hold((self, "upload"), nbytes)

    def _upload_refused(self, name: str, why: str) -> None:
        server_limits.opened_runs().release((self, "upload"))
        self._report(f"**Could not open {file_name(name)}:** {plain(why, 300)}.", "danger")

    def open_bytes(self, name: str, data: bytes) -> None:
        """Open run file bytes from outside (an upload, the server's folder) in place of the
        run, within this session's share of the server's budget for opened runs."""
        budget = server_limits.opened_runs()
        budget.release((self, "upload"))
        room = budget.room(self)
        most = MAX_DATA_MB * 2**20 if room is None else min(MAX_DATA_MB * 2**20, budget.total // 4,
                                                           room)
        if most < 2**20:
            self._report(f"**Could not open {file_name(name)}:** the server holds as many opened "
                         "runs as it has memory for; try again in a few minutes.", "danger")
            return
        try:
            ds = read_run_bytes(data, max_data_mb=most / 2**20)
        except RunFileError as exc:
            self._report(f"**Could not open {file_name(name)}:** {plain(exc, 300)}.", "danger")
            return
        self._view_dataset(ds, name)

    def _view_dataset(self, ds: Any, name: str) -> None:
        """Show a checked run Dataset (an upload, a server file) instead of training."""
        try:
            buffer = RunBuffer.from_dataset(ds)
        except Exception as exc:  # a file from outside: whatever it trips is a message
            if not isinstance(exc, (RunFileError, ConfigError, ValueError, KeyError)):
                exc = RunFileError(f"{type(exc).__name__}: {exc}")  # named: not one of ours
            self._report(f"**Could not open {file_name(name)}:** {plain(exc, 300)}.", "danger")
            return
        if not server_limits.opened_runs().hold(self, int(ds.nbytes)):
            self._report(f"**Could not open {file_name(name)}:** the server holds as many opened "
                         "runs as it has memory for; try again in a few minutes.", "danger")
            return
        self._file_message = ("", "info")
        self.controller.view(buffer, name)
        lr = run_config_dict(buffer.attrs).get("lr", buffer.attrs.get("lr"))
        left_out = ds.attrs.get(LEFT_OUT, "")
        self._viewed_note = (f"Viewing the saved run **{file_name(name)}** (η = {plain(lr)}); "
                             + (f"left out: {plain(left_out, 200)}; " if left_out else "")
                             + "Reset trains again.")
        self.tick()

    def _report(self, text: str, kind: str) -> None:
        """A file message (Markdown, untrusted parts escaped) that stays until the next reset."""
        self._file_message = (text, kind)
        self.run_alert.param.update(object=text, alert_type=kind, visible=True)

    # ---- the pull loop -------------------------------------------------------------------
    def tick(self) -> None:
        """Move new engine rows into the plots; called every ``pull_ms`` by the page."""
        if not has_viewers(pn.state.curdoc):
            return  # a closed tab: nothing to send, and bokeh may cull the session in between
        if not pn.state.loaded:
            # Panel drops the model changes made after the browser took the document and before
            # it reported the page drawn: a threshold label set then never reached the page
            return
        if not self._has_news():
            return  # no document work on the event loop: twenty idle tabs would add up
        if not self._tick_lock.acquire(blocking=False):
            return  # the previous tick is still sending
        doc = pn.state.curdoc
        if doc is not None and doc.session_context is not None and not pn.state._unblocked(doc):
            # Called from the server's thread pool: Bokeh models may only change under the
            # document lock, so the update runs as the document's next-tick callback.
            try:
                doc.add_next_tick_callback(self._locked_tick)
            except Exception:  # the session is closing
                self._tick_lock.release()
            return
        self._locked_tick()

    def _has_news(self) -> bool:
        """Whether a tick would change the page: another run, new rows, another status line,
        or an idle pause now. Cheap, from any thread; a race only delays a tick by one."""
        controller = self.controller
        if controller.pause_if_idle() or self._kept_pending or self.plots.ranges_stale \
                or self.theory.stale(controller):
            return True
        buffer = controller.buffer
        if buffer is not self._source or controller.status_line != self.status:
            return True
        return buffer is not None and (buffer.version != self._seen_version
                                       or buffer.version != self._matrix_version)

    def _locked_tick(self) -> None:
        try:
            self._tick()
        finally:
            self._tick_lock.release()

    def _tick(self) -> None:
        controller = self.controller
        controller.pause_if_idle()
        if controller.advance_ladder() or self._kept_pending:
            self._kept_pending = False
            self.plots.set_kept(controller.kept)
        buffer = controller.buffer
        now = time.monotonic()
        with pn.io.hold():
            if buffer is not self._source:
                self._source, self._cursor = buffer, 0
                self._seen_version = self._matrix_version = -1
                self._next_curves = self._next_slow = now
                self._file_threshold = buffer_threshold(buffer) if buffer is not None else None
                self.plots.clear()
                self._show_flows(buffer.flows if buffer is not None else ())
                self._show_ladder_lr()
            self.plots.set_threshold(*self._threshold())
            self.plots.set_theory(*self.theory.lines(controller))
            if buffer is not None and now >= self._next_curves \
                    and buffer.version != self._seen_version:
                started = time.perf_counter()
                self._seen_version = buffer.version
                rows = buffer.rows(self._cursor)
                self._cursor += len(rows["step"])
                n = len(np.unique(buffer.row_data["sample_index"]))
                self.plots.push_rows(rows, n, spectrum=False)
                # the page's callback sets the pace; this gate only backs off a slow push (a
                # gate of a whole period would skip every tick that fires a little early)
                self._next_curves = now + max(controller.limits.pull_ms / 2000,
                                              BACKOFF * (time.perf_counter() - started))
            if now >= self._next_slow:
                started = time.perf_counter()
                self.plots.flush_spectrum()
                if buffer is not None and buffer.version != self._matrix_version:
                    self._matrix_version = buffer.version
                    self.plots.push_matrices(buffer)
                self._next_slow = now + max(MATRIX_SECONDS,
                                            BACKOFF * (time.perf_counter() - started))
            self.plots.apply_stale_ranges()  # the reset tool was used
            self._update_text()

    def _show_flows(self, flows: tuple[str, ...]) -> None:
        """The overlays and the distance plot of the run on screen's flows, or none."""
        self.plots.set_flows(flows)
        for pane in self._flow_panes:
            _set_if_changed(pane, visible=bool(flows))

    def _update_text(self) -> None:
        controller = self.controller
        status = controller.status_line
        if controller.viewed is not None:
            status += f" · {controller.viewed_name}"
        if status != self.status:
            self.status = status
        # Panel re-renders a pane on every assignment, equal or not; at 4 Hz that is most of
        # a tick, and the event loop shares the GIL with the training thread.
        _set_if_changed(self.status_pane, object=html_text(self.status, 200))
        buffer = controller.buffer
        alert = ("", "info")
        if controller.run is not None and controller.run.error:
            alert = (f"**Could not start the run:** {plain(controller.run.error, 400)}", "danger")
        elif buffer is not None and buffer.status in RESULT_ALERTS:
            kind, text = RESULT_ALERTS[buffer.status]
            reason = plain(buffer.attrs.get("status_reason", ""), 400).rstrip(".")
            reason = reason[:1].upper() + reason[1:]
            alert = (text.format(line=controller.status_line, reason=reason), kind)
        flow_status = buffer.attrs.get("flow_status", "") if buffer is not None else ""
        if flow_status and not alert[0]:
            alert = (f"**A flow ended, gradient descent goes on:** {plain(flow_status, 400)}",
                     "warning")
        if controller.idle_note and not alert[0]:
            alert = (controller.idle_note, "warning")
        if controller.worker_note and not alert[0]:
            alert = (controller.worker_note, "info")
        if self._file_message[0]:
            alert = self._file_message
        elif controller.viewed is not None:
            alert = (self._viewed_note + (" " + alert[0] if alert[0] else ""), "info")
        elif self._url_message:
            alert = (self._url_message, "warning")
        _set_if_changed(self.run_alert, object=alert[0], alert_type=alert[1],
                        visible=bool(alert[0]))
        _set_if_changed(self.ladder_pane, object=self._ladder_text())
        lr = controller.run.lr if controller.run is not None else self.settings.lr
        _set_if_changed(self.netcdf, filename=f"ntk-eos_{self.settings.preset}_lr{lr:g}.nc")
        _set_if_changed(self.csv, filename=f"ntk-eos_{self.settings.preset}_lr{lr:g}.csv")

    def _threshold(self) -> tuple[OptimizerName, str]:
        """(optimizer, threshold formula) of the run on screen: a live run's with its current
        β, a viewed one's from its config, else the settings'."""
        run = self.controller.run
        if self.controller.viewed is None and run is not None:
            return run.config.optimizer, run.threshold_label
        if self._file_threshold is not None:
            return self._file_threshold
        return "gd", threshold_label("gd")

    def _show_ladder_lr(self) -> None:
        """Within a ladder the η control shows the η of the run on screen."""
        run = self.controller.run
        if self.controller.ladder_size > 1 and run is not None and self.settings.lr != run.lr:
            self.settings.lr = run.lr

    def _ladder_text(self) -> str:
        c = self.controller
        if c.ladder_size <= 1 or c.run is None:
            return ""
        return (f"Ladder run {c.ladder_position} of {c.ladder_size}: η = {c.run.lr:g}. "
                "Finished runs are kept for comparison.")

    # ---- widgets and layout --------------------------------------------------------------
    def _make_widgets(self) -> None:
        buttons = {"Play": ("success", self.play), "Pause": ("warning", self.pause),
                   "Step": ("primary", self.step), "Reset": ("danger", self.reset)}
        self.buttons = {}
        for label, (kind, action) in buttons.items():
            button = pn.widgets.Button(label=label, color=kind, width=68, margin=(5, 3))
            button.on_click(action)
            self.buttons[label] = button
        self.speed_slider = pn.widgets.DiscreteSlider(
            label="Speed cap (steps/s)", options=SPEEDS, value=self.speed,
            sizing_mode="stretch_width")
        self.speed_slider.link(self, value="speed")
        self.keep_button = pn.widgets.Button(label="Keep run", color="primary",
                                             variant="outline", width=120)
        self.keep_button.on_click(self.keep)
        self.clear_button = pn.widgets.Button(label="Clear kept", variant="outline",
                                              width=120)
        self.clear_button.on_click(self.clear_kept)
        self.lr_control = LearningRateControl(self.settings)
        self.optimizer_select, self.optimizer_options = optimizer_controls(self.settings)
        self.flows_control = FlowsControl(self.settings, self.controller.limits)
        self.preset_select = pn.widgets.Select.from_param(self.settings.param.preset,
                                                          sizing_mode="stretch_width")
        self.netcdf = pn.widgets.FileDownload(callback=self._download_netcdf, filename="run.nc",
                                              label="Download run (NetCDF)",
                                              color="primary", sizing_mode="stretch_width")
        self.csv = pn.widgets.FileDownload(callback=self._download_csv, filename="run.csv",
                                           label="Download scalars (CSV)",
                                           sizing_mode="stretch_width")
        self.upload = UploadBox(self.open_bytes, self._upload_refused, max_mb=MAX_UPLOAD_MB,
                                room=self._upload_room, sizing_mode="stretch_width")
        store = RunStore.from_env()  # None: the server keeps no run files
        self.server_files = (ServerFiles(store, lambda: self.controller.buffer,
                                         self.open_bytes, self._report)
                             if store is not None else None)
        self.status_pane = pn.pane.HTML(html_text(self.status, 200), css_classes=["ntk-status"],
                                        styles={"font-size": "1.4em", "font-weight": "600",
                                                "white-space": "nowrap"})
        self.config_alert = pn.pane.Alert("", alert_type="danger", visible=False,
                                          renderer_options=NO_LINKS, sizing_mode="stretch_width")
        self.run_alert = pn.pane.Alert("", alert_type="info", visible=False,
                                       renderer_options=NO_LINKS, sizing_mode="stretch_width")
        self.ladder_pane = pn.pane.Markdown("", margin=(0, 10))

    def _sidebar(self) -> pn.Column:
        run_box = pn.Column(
            "### Run", pn.Row(*self.buttons.values()), self.speed_slider,
            pn.Row(self.keep_button, self.clear_button), self.optimizer_select, self.lr_control,
            self.optimizer_options, self.flows_control)
        sections = [pn.Card(*widgets, title=title, collapsed=title == "Run",
                            sizing_mode="stretch_width")
                    for title, widgets in settings_sections(self.settings, self._ignored)]
        files = pn.Card(self.netcdf, self.csv, pn.pane.Markdown(
            f"Open a saved run (.nc, up to {MAX_UPLOAD_MB} MB):", margin=(5, 10, 0, 10)),
            self.upload, *([self.server_files] if self.server_files is not None else []),
            title="Files", collapsed=True, sizing_mode="stretch_width")
        return pn.Column("## ntk-eos", self.preset_select, run_box, *sections, files,
                         width=SIDEBAR_WIDTH, scroll=True)

    def _header(self) -> pn.Column:
        about = pn.bind(self._about, self.settings.param.preset, self.settings.param.changed)
        return pn.Column(
            pn.Row(pn.pane.Markdown(about, sizing_mode="stretch_width"), self.status_pane,
                   sizing_mode="stretch_width"),
            self.ladder_pane, self.config_alert, self.run_alert, sizing_mode="stretch_width")

    @property
    def _ignored(self) -> frozenset[str]:
        """The settings the runs do not read: those your own model and data replace."""
        return self.own.ignored if self.own is not None else frozenset()

    def _about(self, *_: object) -> str:
        """The preset's title and paragraph, and what the controls changed from it (the
        paragraph's numbers are the preset's); first, your own model and data when given."""
        info = self.settings.preset_info
        text = f"### {info.title}\n\n{info.description}"
        if self.own is not None:
            text = (f"### Training {self.own.describe()}\n\nWith the *{info.title}* preset's "
                    f"other settings; the greyed-out controls are not used.\n\n"
                    f"{info.description}")
        changes = [f"{FIELD_NAMES.get(name, name)} {_shown(old, name)} → {_shown(new, name)}"
                   for name, (old, new) in self.settings.overrides().items()
                   if name not in self._ignored]
        if changes:
            text += f"\n\n*Changed from the preset:* {', '.join(changes)}."
        return text

    def _make_layout(self) -> pn.Row:
        p = self.plots
        compare = pn.Column(
            pn.pane.Markdown(
                "Press **Keep run** to keep a run; the *eta-ladder* preset keeps each run of its "
                "ladder. KTA can fall while a₁ and Aₖ rise: the top eigenvectors can align "
                "with the labels better even as the whole kernel aligns less."),
            pn.Row(self._pane(p.comparison_fig), self._pane(p.spectrum_legend_fig),
                   sizing_mode="stretch_width"),
            sizing_mode="stretch_width")
        tabs = pn.Tabs(("Live", self._grid), ("Compare runs", compare), ("Sweep", sweep_tab()),
                       dynamic=True, sizing_mode="stretch_width")
        main = pn.Column(self._header(), tabs, sizing_mode="stretch_width")
        return pn.Row(self._sidebar(), main, sizing_mode="stretch_width")

    def add_plots(self) -> Iterator[None]:
        """Put the Live tab's plots missing from the page into it, one per iteration."""
        for pane in self._plot_panes[len(self._grid):]:
            self._grid.append(pane)
            yield

    @staticmethod
    def _pane(fig: Any) -> pn.pane.Bokeh:
        return pn.pane.Bokeh(fig, sizing_mode="stretch_width", height=PLOT_HEIGHT + 10)

    # ---- Viewer --------------------------------------------------------------------------
    def __panel__(self) -> pn.Row:
        if not self._started:
            self._started = True
            # background: the pull loop is no "busy" event (Panel's busy counter is not
            # thread-safe when many tabs tick on --num-threads workers)
            self._callback = pn.io.PeriodicCallback(callback=self.tick,
                                                    period=self.controller.limits.pull_ms,
                                                    background=True)
            self._callback.start()
            if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
                pn.state.on_session_destroyed(lambda _: self.close())
        return self._layout
