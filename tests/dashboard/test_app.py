"""The dashboard without a browser: settings from RunConfig, validation messages, URL sync, the
background run (lr changes keep the weights, other changes reset), exports and uploads, and the
plots' Bokeh data sources after the streams send rows."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import pytest
import torch
import xarray as xr
from bokeh.document import Document
from panel.io.location import Location
from support import send_upload, wait_for

from app.dashboard import Dashboard
from app.files.runs import RunFileError, csv_bytes, read_run_bytes
from app.server.launch import serve, serve_command
from app.session.kept_runs import keep_run, lr_history_label
from app.session.runner import TrainingRun, status_line, training_threads
from app.session.settings import BOUNDS, CONTROL_FIELDS, RunSettings, round_lr
from app.views.plot_data import (
    MAX_PIXELS,
    block_boundaries,
    block_mean,
    display_order,
    matrix_payload,
    spectrum_frame,
)
from app.views.plots import LivePlots
from ntk_core import RunConfig, Trainer
from ntk_core.presets import DEFAULT_PRESET, load_preset
from ntk_core.training.buffer import RunBuffer, StepRecord
from ntk_core.training.schema import SCALARS

pytestmark = pytest.mark.timeout(120)
hv.extension("bokeh")

SMALL = {"n": 32, "classes": "0,1", "width": 16, "k": 4, "steps": 200}
SMALL_CONFIG = RunConfig(dataset="digits", n=32, classes=(0, 1), width=16, k=4, steps=200)


def steps_done(dash: Dashboard, count: int) -> None:
    """Request ``count`` single steps and wait for them."""
    for _ in range(count):
        dash.step()
    assert dash.controller.run.wait_idle(60)


@pytest.fixture
def dash() -> Iterator[Dashboard]:
    board = Dashboard(settings=RunSettings(**SMALL))
    yield board
    board.close()
    for thread in training_threads():
        thread.join(30)


# ---- settings ------------------------------------------------------------------------------
def test_controls_are_generated_from_runconfig() -> None:
    defaults = RunConfig()
    for name in CONTROL_FIELDS:
        p = RunSettings.param[name]
        expected = getattr(defaults, name)
        if name == "classes":
            expected = "" if expected is None else ",".join(map(str, expected))
        assert p.default == expected, name
        if name in BOUNDS:
            assert tuple(p.bounds) == BOUNDS[name], name
    assert RunSettings.param.arch.objects == ["mlp", "cnn", "vit", "linear2"]
    assert RunSettings.param.target.objects == ["binary", "onehot"]


def test_settings_start_from_the_default_preset() -> None:
    settings = RunSettings()
    assert settings.preset == DEFAULT_PRESET
    assert settings.to_config() == load_preset(DEFAULT_PRESET).config


def test_preset_values_yield_to_fields_set_with_it() -> None:
    settings = RunSettings()
    settings.param.update(preset="catapult", lr=0.3)
    config = settings.to_config()
    assert config.lr == 0.3 and config.steps == load_preset("catapult").config.steps
    assert "lr" in settings.last_changed and "preset" in settings.last_changed
    settings.preset = "linear2-theory"  # hidden options (init_scale) come from the preset
    assert settings.to_config().init_scale == 0.1 and settings.lr == 0.15


def test_ladder_preset_gives_one_config_per_lr() -> None:
    settings = RunSettings(preset="eta-ladder", n=64)
    configs = settings.to_configs()
    assert [c.lr for c in configs] == [0.02, 0.05, 0.1, 0.15]
    assert all(c.n == 64 and c.target_loss == 0.01 for c in configs)


def test_invalid_combination_gives_the_engine_message() -> None:
    settings = RunSettings()
    settings.target = "binary"  # four classes in the default preset
    assert "binary targets need exactly two classes" in settings.validate()
    settings.classes = "3,x"
    assert "classes: cannot read" in settings.validate()
    with pytest.raises(ValueError):
        settings.n = 10**6  # outside the widget bounds


def test_url_sync_applies_and_writes_the_query() -> None:
    settings = RunSettings()
    location = Location(search="?preset=catapult&lr=0.25&n=128")
    location.sync(settings, settings.url_parameters())
    assert (settings.preset, settings.lr, settings.n) == ("catapult", 0.25, 128)
    assert settings.width == load_preset("catapult").config.width
    settings.width = 64
    query = location.query_params
    assert query["width"] == 64 and query["preset"] == "catapult" and query["lr"] == 0.25


def test_speed_cap_syncs_from_the_url(dash: Dashboard) -> None:
    Location(search="?speed=5").sync(dash, {"speed": "speed"})
    assert dash.speed == 5 and dash.controller.steps_per_second == 5
    assert dash.controller.run.steps_per_second == 5


def test_round_lr_gives_readable_values() -> None:
    assert round_lr(10**-0.7) == 0.2 and round_lr(0.123456) == 0.123 and round_lr(12.34) == 12.3


def test_status_line_words() -> None:
    assert status_line(120, "running") == "step 120 · running"
    assert status_line(40, "paused") == "step 40 · paused"
    assert status_line(1500, "completed") == "step 1500 · completed"
    assert status_line(37, "diverged") == "diverged at step 37"


# ---- the run ---------------------------------------------------------------------------------
def test_lr_change_continues_from_the_current_weights(thread_training: None) -> None:
    dash = Dashboard(settings=RunSettings(**SMALL))
    try:
        check_lr_change_keeps_weights(dash)
    finally:
        dash.close()


def check_lr_change_keeps_weights(dash: Dashboard) -> None:
    steps_done(dash, 3)
    run, trainer = dash.controller.run, dash.controller.run.trainer
    weights = [p.detach().clone() for p in trainer.params]
    dash.settings.lr = 0.05
    assert dash.controller.run is run and trainer.lr == 0.05 and trainer.step_index == 3
    assert all(torch.equal(a, b) for a, b in zip(weights, trainer.params, strict=True))
    steps_done(dash, 1)
    rows = trainer.buffer.rows(0)
    np.testing.assert_allclose(rows["two_over_lr"], [20, 20, 20, 40])
    dash.tick()
    assert dash.status == "step 4 · paused"


def test_architecture_or_data_change_resets(dash: Dashboard) -> None:
    steps_done(dash, 2)
    before = dash.controller.run
    dash.settings.width = 24
    assert dash.controller.run is not before and dash.controller.run.config.width == 24
    before.thread.join(30)
    assert not before.thread.is_alive()
    assert dash.controller.run.wait_idle(60)
    dash.tick()
    assert dash.status == "step 0 · ready"
    dash.settings.dataset = "mnist1d"
    assert dash.controller.run.config.dataset == "mnist1d"


def test_invalid_settings_show_an_alert_and_keep_the_run(dash: Dashboard) -> None:
    dash.settings.classes = "0,1,2"
    run = dash.controller.run
    dash.settings.target = "binary"
    assert dash.config_alert.visible
    assert "binary targets need exactly two classes" in dash.config_alert.object
    assert dash.controller.run is run
    dash.settings.classes = "0,2"
    assert not dash.config_alert.visible and dash.controller.run is not run
    assert dash.controller.run.config.target == "binary"


def test_play_pause_and_step(dash: Dashboard) -> None:
    dash.play()
    run = dash.controller.run
    wait_for(lambda: run.buffer is not None and len(run.buffer) >= 3)
    dash.tick()
    assert dash.status.endswith("· running")
    dash.pause()
    assert run.wait_idle(60)
    dash.tick()
    n = len(run.buffer)
    assert dash.status == f"step {n} · paused"
    steps_done(dash, 1)
    dash.tick()
    assert dash.status == f"step {n + 1} · paused"
    dash.reset()
    assert dash.controller.run.wait_idle(60)
    dash.tick()
    assert dash.status == "step 0 · ready"


def test_speed_cap_slows_the_thread() -> None:
    run = TrainingRun(SMALL_CONFIG.replace(measure_every=50), steps_per_second=5)
    try:
        run.play()
        wait_for(lambda: run.buffer is not None and len(run.buffer) >= 1)
        t0, n0 = time.monotonic(), len(run.buffer)
        wait_for(lambda: len(run.buffer) >= n0 + 4)
        assert (len(run.buffer) - n0) / (time.monotonic() - t0) < 5 * 1.5
    finally:
        run.stop()
        run.thread.join(30)


def test_divergence_is_a_result_with_an_alert() -> None:
    board = Dashboard(settings=RunSettings(**SMALL, lr=10.0))
    try:
        board.play()
        run = board.controller.run
        wait_for(lambda: run.status == "diverged")
        board.tick()
        assert board.status.startswith("diverged at step ")
        assert board.run_alert.visible and board.run_alert.alert_type == "warning"
        assert "lower η" in board.run_alert.object
    finally:
        board.close()


def test_training_threads_are_named_and_end_on_close() -> None:
    board = Dashboard(settings=RunSettings(**SMALL))
    thread = board.controller.run.thread
    assert thread.name.startswith("ntk-eos-train-") and thread in training_threads()
    board.close()
    thread.join(30)
    assert not thread.is_alive()


def test_ladder_runs_each_point_and_keeps_it() -> None:
    board = Dashboard(settings=RunSettings(preset="eta-ladder", **{**SMALL, "steps": 3}))
    try:
        board.play()
        # every run of the ladder is kept as it finishes, the last one too
        wait_for(lambda: (board.tick() or True) and len(board.controller.kept) == 4
                 and board.controller.run.finished, timeout=90)
        board.tick()
        kept = board.controller.kept
        assert [k.lr for k in kept] == [0.02, 0.05, 0.1, 0.15]
        assert board.settings.lr == 0.15, "the η control shows the ladder run on screen"
        data = board.plots.comparison.data
        assert list(data["lr"]) == [0.02, 0.05, 0.1, 0.15] and np.isfinite(data["kta"]).all()
        np.testing.assert_allclose(data["kta"], [k.final["kta"] for k in kept])
    finally:
        board.close()


# ---- files -----------------------------------------------------------------------------------
def test_netcdf_and_csv_exports_round_trip(dash: Dashboard) -> None:
    steps_done(dash, 3)
    buffer = dash.controller.buffer
    ds = read_run_bytes(dash._download_netcdf().getvalue())
    assert {"loss", "sharpness", "eigenvectors", "kernel", "label"} <= set(ds.variables)
    assert ds.sizes["step"] == 3
    rebuilt = RunBuffer.from_dataset(ds)
    for name, values in buffer.rows(0).items():
        np.testing.assert_array_equal(rebuilt.rows(0)[name], values, err_msg=name)
    assert rebuilt.latest_kernel()[0] == buffer.latest_kernel()[0]
    frame = pd.read_csv(io.BytesIO(csv_bytes(buffer).getvalue()))
    assert list(frame.columns) == ["step", *SCALARS] and len(frame) == 3


def test_uploads_are_validated() -> None:
    with pytest.raises(RunFileError, match="not a readable NetCDF"):
        read_run_bytes(b"not a netcdf file")
    with pytest.raises(RunFileError, match="limit is 1 MB"):
        read_run_bytes(b"x" * (2 * 2**20), max_mb=1)
    data = io.BytesIO()
    xr.Dataset({"loss": ("step", np.ones(3))}).to_netcdf(data, engine="h5netcdf")
    with pytest.raises(RunFileError, match="missing two_over_lr, sharpness"):
        read_run_bytes(data.getvalue())


def test_opening_a_saved_run_views_it_without_training(dash: Dashboard) -> None:
    steps_done(dash, 3)
    data = dash._download_netcdf().getvalue()
    send_upload(dash.upload, "bad.nc", b"garbage")
    assert dash.run_alert.visible and dash.run_alert.alert_type == "danger"
    assert "Could not open <code>bad.nc</code>" in dash.run_alert.object
    send_upload(dash.upload, "saved.nc", data)
    assert dash.controller.run is None and dash.controller.viewed is not None
    assert dash.status == "step 3 · paused · saved.nc"
    assert len(dash.plots.steps.data["step"]) == 3


# ---- plots -----------------------------------------------------------------------------------
def test_curves_stream_only_the_new_rows() -> None:
    trainer = Trainer(SMALL_CONFIG)
    plots = LivePlots()
    doc = Document()
    doc.add_root(plots.sharpness_fig)
    streamed: list[tuple[str, int]] = []
    doc.on_change(lambda event: streamed.append((event.model.id, len(event.data["step"])))
                  if type(event).__name__ == "ColumnsStreamedEvent" else None)
    cursor, pushes = 0, []
    for chunk in (3, 2):
        for _ in range(chunk):
            trainer.step()
        rows = trainer.buffer.rows(cursor)
        cursor += chunk
        streamed.clear()
        plots.push_rows(rows, n=32)
        pushes.append(sorted({n for model, n in streamed if model == plots.measures.id}))
    data = plots.measures.data
    np.testing.assert_allclose(data["sharpness"], trainer.buffer.rows(0)["sharpness"])
    np.testing.assert_allclose(data["two_over_lr"], 2 / SMALL_CONFIG.lr)
    assert len(plots.steps.data["step"]) == 5
    assert pushes == [[3], [2]], "each push streams only its new rows"
    drawn = {r.glyph.y for r in plots.sharpness_fig.renderers if r.data_source is plots.measures}
    assert {"sharpness", "gn_sharpness", "two_over_lr"} <= drawn


def test_eigenvalues_are_divided_by_n_for_display() -> None:
    trainer = Trainer(SMALL_CONFIG)
    trainer.step()
    rows = trainer.buffer.rows(0)
    frame = spectrum_frame(rows, 32)
    np.testing.assert_allclose(frame.lam1, rows["eigenvalues"][:, 0] / 32)
    np.testing.assert_allclose(frame.lam1, rows["gn_sharpness"], rtol=1e-6)
    assert frame.lam10.isna().all()  # k = 4 < 10 curves


def test_display_order_groups_outputs_then_classes() -> None:
    labels = np.repeat([0, 0, 1, 1], 2)  # 4 samples x 2 outputs, sample-major
    rows = {"label": labels, "output_index": np.tile([0, 1], 4)}
    order = display_order(rows)
    np.testing.assert_array_equal(rows["output_index"][order], [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(labels[order], [0, 0, 1, 1, 0, 0, 1, 1])
    class_edges, output_edges, ticks = block_boundaries(rows, order)
    assert class_edges == [2, 6] and output_edges == [4] and len(ticks) == 4


def test_block_mean() -> None:
    a = np.arange(10, dtype=float)[None, :]
    out, f = block_mean(a, 1, 4)
    assert f == 3
    np.testing.assert_allclose(out, [[1, 4, 7, 9]])


def test_block_mean_matches_nanmean_on_any_axis() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((12, 40)).astype(np.float32)
    for axis in (0, 1):
        out, f = block_mean(a, axis, 10)  # 40 → 10 exactly, 12 → 6 exactly
        ref = np.moveaxis(a, axis, -1)
        ref = np.moveaxis(ref.reshape(*ref.shape[:-1], -1, f).mean(-1), -1, axis)
        np.testing.assert_allclose(out, ref, rtol=1e-6)
    a[3, 5] = np.nan  # a diverged entry is left out of its block, not spread over it
    out, f = block_mean(a, 1, 10)
    np.testing.assert_allclose(out[3, 1], np.mean(a[3, [4, 6, 7]]), rtol=1e-6)
    assert np.isfinite(out).all()


def test_kernel_picture_of_a_multi_output_run_matches_the_sample_major_kernel() -> None:
    """The engine stores the multi-output K output-major; the page reorders it by class in one
    gather from the stored order. Reference: the sample-major K, sorted and averaged here."""
    trainer = Trainer(SMALL_CONFIG.replace(classes=(0, 1, 2), target="onehot", n=96))
    trainer.step()
    buffer = trainer.buffer
    _, stored, rows = buffer.latest_kernel_stored()
    assert stored.shape == (288, 288) and rows[1] == 96, "stored output-major (c·n + i)"
    payload = matrix_payload(buffer, history=False)
    order = display_order(buffer.row_data)
    K = buffer.latest_kernel()[1][np.ix_(order, order)]  # now reordered sample-major
    f = payload["kernel"][2]
    assert f == 2, "288 rows are averaged in pairs"
    ref = K.reshape(288 // f, f, 288 // f, f).mean(axis=(1, 3))
    np.testing.assert_allclose(payload["kernel"][1], ref, rtol=1e-5, atol=1e-6)


def test_kernel_heatmap_is_block_averaged() -> None:
    m = 600
    rows = {"label": np.repeat([0, 1, 2], 200), "target": np.zeros(m),
            "sample_index": np.arange(m), "output_index": np.zeros(m, np.int64)}
    buffer = RunBuffer(2, rows, {})
    kernel = np.eye(m, dtype=np.float32)
    buffer.append(StepRecord(0, {"loss": 1.0, "measured": 1.0}, None,
                             np.ones((2, m), np.float32), kernel))
    payload = matrix_payload(buffer, history=True)
    assert payload["kernel"][1].shape == (200, 200) and max(payload["kernel"][1].shape) <= MAX_PIXELS
    plots = LivePlots()
    plots.show_matrices(payload)
    image = plots.kernel.source.data["image"][0]
    assert image.shape == (200, 200)
    np.testing.assert_allclose(image, payload["kernel"][1])
    assert plots.kernel.source.data["dw"] == [600.0], "the image spans every kernel row"
    edges = plots.kernel.edges.data
    vertical = sorted(x0 for x0, x1 in zip(edges["x0"], edges["x1"], strict=True) if x0 == x1)
    assert vertical == [200.0, 400.0], "a boundary line between each pair of classes"


def test_legends_of_streamed_lines_use_static_twins() -> None:
    """Streamed lines get legend entries from data-less twins (BokehJS rebuilds a legend each
    time a model its items reference changes): same look, visibility passed on to the line."""
    plots = LivePlots()
    streamed = {plots.steps, plots.measures, plots.spectrum}
    for fig in (plots.loss_fig, plots.sharpness_fig, plots.alignment_fig):
        for item in fig.legend[0].items:
            (twin,) = item.renderers
            assert twin.data_source not in streamed and np.isnan(twin.data_source.data["y"]).all()
            (link,) = twin.js_property_callbacks["change:visible"]
            line = link.args["other"]
            if line is plots.theory_target:  # the theory's level spans the figure: not streamed
                continue
            assert line.data_source in streamed and line in fig.renderers
            for prop in ("line_color", "line_width", "line_dash"):
                assert getattr(twin.glyph, prop) == getattr(line.glyph, prop)
    trainer = Trainer(SMALL_CONFIG)
    for _ in range(3):
        trainer.step()
    plots.push_rows(trainer.buffer.rows(0), n=32)
    assert len(plots.measures.data["step"]) == 3
    assert all(len(item.renderers[0].data_source.data["step"]) == 1
               for item in plots.sharpness_fig.legend[0].items)


def test_the_header_says_what_the_controls_changed_from_the_preset() -> None:
    board = Dashboard(settings=RunSettings(preset="eos-mlp-digits"))
    try:
        assert "Changed from the preset" not in board._about()
        board.settings.param.update(lr=0.05, n=128, classes="0, 1, 2, 3")
        assert board._about().endswith("*Changed from the preset:* n 256 → 128, η 0.1 → 0.05.")
        board.settings.preset = "catapult"  # a new preset: its own values, nothing changed
        assert "Changed from the preset" not in board._about()
    finally:
        board.close()
    ladder = RunSettings(preset="eta-ladder")
    ladder.lr = ladder.to_configs()[-1].lr  # the ladder shows each run's η: not a change
    assert ladder.overrides() == {}


def test_model_fields_the_architecture_ignores_are_greyed_out() -> None:
    from app.views.controls import settings_sections

    settings = RunSettings()
    model = dict(settings_sections(settings))["Model"]  # arch, width, depth, activation
    assert [w.disabled for w in model] == [False, False, False, False]
    settings.arch = "linear2"  # f(x) = vᵀWx: no depth, no activation
    assert [w.disabled for w in model] == [False, False, True, True]
    settings.arch = "cnn"
    assert not any(w.disabled for w in model)


def test_a_kept_run_whose_eta_changed_is_labelled_with_each_eta(dash: Dashboard) -> None:
    steps_done(dash, 2)
    dash.settings.lr = 0.05
    steps_done(dash, 2)
    kept = dash.controller.keep()
    assert kept is not None and kept.label == "η=0.1→0.05" and kept.lr == 0.05
    assert lr_history_label(np.array([0.1, 0.1])) == "η=0.1"
    assert lr_history_label(np.array([0.1, 0.2, 0.3, 0.2, 0.4])) == "η=0.1→…→0.4"


def test_kept_runs_feed_the_overlays() -> None:
    trainer = Trainer(SMALL_CONFIG)
    for _ in range(3):
        trainer.step()
    plots = LivePlots()
    kept = keep_run(trainer.buffer, "η=0.1", 0.1)
    plots.set_kept([kept])
    def legend_labels() -> list[str]:
        return [item.label.value for item in plots.loss_fig.legend[0].items if item.visible]

    legend = legend_labels()
    assert legend == ["current", "η=0.1"]
    assert list(plots.comparison.data["lr"]) == [0.1]
    np.testing.assert_allclose(plots.kept_sources[0].data["loss"], kept.frame["loss"])
    plots.set_kept([])
    assert legend_labels() == ["current"]


# ---- app surface -----------------------------------------------------------------------------
def test_dashboard_renders_with_the_run_buttons(dash: Dashboard) -> None:
    root = pn.panel(dash).get_root(Document())
    labels = {model.label for model in root.references() if type(model).__name__ == "Button"}
    assert {"Play", "Pause", "Step", "Reset", "Keep run"} <= labels
    assert dash.status.startswith("step 0")


def test_main_module_is_importable_without_serving() -> None:
    import app.main as main

    assert callable(main.create_app)


def test_serve_command_and_exit_code() -> None:
    cmd = serve_command(port=5099, address="0.0.0.0", allow_websocket_origin=["example.org"])
    assert cmd[cmd.index("--port") + 1] == "5099" and "--liveness" in cmd
    assert cmd[cmd.index("--allow-websocket-origin") + 1] == "example.org"
    assert cmd[cmd.index("--address") + 1] == "0.0.0.0"
    assert serve_command()[serve_command().index("--allow-websocket-origin") + 1] in (
        "127.0.0.1:5006", "localhost:5006")
    with pytest.raises(ValueError):
        serve_command(port=70000)
    assert serve(extra_args=["--help"]) == 0


def test_streamed_figures_follow_their_data_until_the_user_moves_the_view() -> None:
    """The server sets the curve figures' ranges from what it streams (the browser sends no
    range patches back); a pan or zoom stops that, the reset tool resumes it."""
    from bokeh.events import RangesUpdate, Reset

    trainer = Trainer(SMALL_CONFIG)
    plots = LivePlots()
    for _ in range(4):
        trainer.step()
    rows = trainer.buffer.rows(0)
    plots.push_rows(rows, n=32)
    sharp = plots.sharpness_fig
    values = np.concatenate([rows["sharpness"], rows["gn_sharpness"], rows["two_over_lr"]])
    assert sharp.x_range.start < 0 < 3 < sharp.x_range.end
    assert sharp.y_range.start < values.min() and values.max() < sharp.y_range.end
    loss = plots.loss_fig.y_range
    assert 0 < loss.start < rows["loss"].min() and rows["loss"].max() < loss.end  # log axis
    ticks = plots.loss_fig.yaxis[0].ticker.ticks  # the server labels the log axis itself
    assert len(ticks) >= 2 and all(loss.start <= t <= loss.end for t in ticks)
    sharp._trigger_event(RangesUpdate(sharp, x0=1.0, x1=2.0, y0=0.0, y1=1.0))
    sharp.x_range.update(start=1.0, end=2.0)  # what the browser's pan sends
    for _ in range(3):
        trainer.step()
    plots.push_rows(trainer.buffer.rows(4), n=32)
    assert (sharp.x_range.start, sharp.x_range.end) == (1.0, 2.0), "the user's view is kept"
    assert plots.residual_fig.x_range.end > 6, "other figures still follow"
    sharp._trigger_event(Reset(sharp))
    assert plots.ranges_stale
    plots.apply_stale_ranges()
    assert sharp.x_range.start < 0 and sharp.x_range.end > 6 and not plots.ranges_stale


def test_followed_ranges_shrink_when_old_rows_roll_off(monkeypatch: pytest.MonkeyPatch) -> None:
    import app.views.plots as plots_module

    monkeypatch.setattr(plots_module, "BUFFER_LENGTH", 5)
    plots = LivePlots()
    rows = {"step": np.arange(8.0), "loss": np.linspace(1.0, 0.1, 8),
            "accuracy": np.zeros(8), "two_over_lr": np.full(8, 20.0)}
    plots._stream(plots.steps, {k: v[:4] for k, v in rows.items()})
    assert plots.loss_fig.x_range.start < 0
    plots._stream(plots.steps, {k: v[4:] for k, v in rows.items()})
    assert list(plots.steps.data["step"]) == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert 2.5 < plots.loss_fig.x_range.start < 3.0 and plots.loss_fig.x_range.end > 7.0
