"""The optimiser controls and each optimiser's threshold line, without a browser: the settings
and the URL carry the optimiser's options to the RunConfig and back, the sharpness figure draws
the tracked sharpness against the run's own threshold, labelled with its formula, and a change
of β mid-run moves the threshold from the next step on without a reset."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import numpy as np
import pytest
import xarray as xr
from bokeh.models import GlyphRenderer
from panel.io.location import Location
from support import steps_done, wait_for

from app.dashboard import Dashboard
from app.files.runs import netcdf_bytes
from app.session.runner import training_threads
from app.session.settings import ALL_OPTIMIZER_FIELDS, DEFAULT_BATCH_SIZE, RunSettings
from app.views.controls import optimizer_controls, threshold_text
from app.views.plots import THRESHOLD_COLOR, TWO_OVER_LR_COLOR, LivePlots
from ntk_core import RunConfig, Trainer
from ntk_core.presets import load_preset
from ntk_core.vocabulary import OptimizerName

pytestmark = pytest.mark.timeout(120)

SMALL = {"n": 32, "classes": "0,1", "width": 16, "k": 4, "steps": 200}
ADAM = RunConfig(dataset="digits", n=32, classes=(0, 1), width=16, k=4, steps=50,
                 optimizer="adam", lr=0.002)


@pytest.fixture
def dash(thread_training: None) -> Iterator[Dashboard]:
    board = Dashboard(settings=RunSettings(**SMALL, momentum=0.5))
    yield board
    board.close()
    for thread in training_threads():
        thread.join(30)


def legend_labels(plots: LivePlots) -> list[str]:
    return [item.label.value for item in plots._sharpness_legend.items]


def line(plots: LivePlots, column: str) -> GlyphRenderer:
    return plots.sharpness_lines[column]


# ---- settings ------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["momentum-edge", "adam-edge", "sgd-edge"])
def test_the_optimizer_presets_round_trip_through_the_settings(preset: str) -> None:
    settings = RunSettings(preset=preset)
    assert settings.to_config() == load_preset(preset).config
    assert settings.overrides() == {}


def test_url_parameters_set_the_optimizer_and_its_options_and_follow_them() -> None:
    settings = RunSettings()
    location = Location(search="?optimizer=adam&lr=0.002&beta1=0.8&beta2=0.99&eps=1e-6")
    location.sync(settings, settings.url_parameters())
    config = settings.to_config()
    assert (config.optimizer, config.lr, config.beta1, config.beta2, config.eps) == (
        "adam", 0.002, 0.8, 0.99, 1e-6)
    settings.param.update(optimizer="sgd", batch_size=16, momentum=0.3, nesterov=True)
    query = location.query_params
    assert (query["optimizer"], query["batch_size"], query["momentum"], query["nesterov"]) == (
        "sgd", 16, 0.3, True)
    config = settings.to_config()
    assert (config.batch_size, config.momentum, config.nesterov) == (16, 0.3, True)
    assert (config.beta1, config.beta2) == (0.9, 0.999), "Adam's options stay out of an SGD run"


def test_options_the_optimizer_does_not_read_stay_out_of_the_run() -> None:
    """Momentum typed for GD is kept through a switch to Adam (which refuses a momentum) and
    back; a batch size reaches only SGD."""
    settings = RunSettings(**SMALL, momentum=0.5)
    settings.optimizer = "adam"
    assert settings.validate() == ""
    assert settings.to_config().momentum == 0.0 and settings.momentum == 0.5
    assert "momentum" not in settings.overrides()
    settings.optimizer = "gd"
    assert settings.to_config().momentum == 0.5 and settings.to_config().batch_size is None
    settings.optimizer = "sgd"
    assert settings.batch_size == DEFAULT_BATCH_SIZE
    assert "batch_size: must be between 1 and n = 32, got 64" in settings.validate()
    settings.batch_size = 8
    assert settings.to_config().batch_size == 8


@pytest.mark.parametrize(("optimizer", "shown"), [
    ("gd", {"momentum", "nesterov"}),
    ("sgd", {"momentum", "nesterov", "batch_size"}),
    ("adam", {"beta1", "beta2", "eps"}),
    ("rmsprop", {"beta2", "eps"}),
])
def test_the_sidebar_shows_the_options_of_the_chosen_optimizer(optimizer: str,
                                                               shown: set[str]) -> None:
    settings = RunSettings()
    select, column = optimizer_controls(settings)
    assert select.value == "gd" and select.options == {
        "GD (full batch)": "gd", "SGD (mini-batch)": "sgd", "Adam": "adam", "RMSProp": "rmsprop"}
    select.value = optimizer
    assert settings.optimizer == optimizer
    visible = {name for name, widget in zip(ALL_OPTIMIZER_FIELDS, column, strict=True)
               if widget.visible}
    assert visible == shown


@pytest.mark.parametrize(("values", "text"), [
    ({}, "**2/η = 20**"),
    ({"momentum": 0.5}, "**(2+2β)/η = 30**, β = 0.5"),
    ({"momentum": 0.5, "nesterov": True}, "**(2+2β)/(η(1+2β)) = 15**, β = 0.5 (Nesterov)"),
    ({"optimizer": "sgd", "batch_size": 16}, "**2/η = 20**"),
    ({"optimizer": "adam", "lr": 0.002}, "**38/η = 19,000** (Adam, β₁ = 0.9)"),
    ({"optimizer": "adam", "beta1": 0.8}, "**18/η = 180** (Adam, β₁ = 0.8)"),
    ({"optimizer": "rmsprop", "momentum": 0.5}, "**2/η = 20** (RMSProp)"),
])
def test_the_sidebar_names_the_threshold_of_each_optimizer(values: dict, text: str) -> None:
    assert threshold_text(RunSettings(**SMALL, **values)) == text


# ---- plots ---------------------------------------------------------------------------------
def test_an_adam_run_draws_its_preconditioned_sharpness_against_38_over_eta() -> None:
    trainer = Trainer(ADAM)
    for _ in range(3):
        trainer.step()
    plots = LivePlots()
    plots.push_rows(trainer.buffer.rows(0), n=32)
    plots.set_threshold("adam", "38/η (Adam, β₁ = 0.9)")
    data = plots.measures.data
    np.testing.assert_allclose(data["stability_threshold"], 38 / 0.002)
    np.testing.assert_allclose(data["two_over_lr"], 2 / 0.002)
    rows = trainer.buffer.rows(0)
    np.testing.assert_allclose(data["preconditioned_sharpness"], rows["preconditioned_sharpness"])
    assert np.isfinite(data["preconditioned_sharpness"]).all()
    assert legend_labels(plots) == ["preconditioned sharpness λ_max(P⁻¹H)",
                                    "38/η (Adam, β₁ = 0.9)", "sharpness λ_max(H)",
                                    "GN sharpness λ₁(K)/n"]
    assert line(plots, "preconditioned_sharpness").visible
    assert line(plots, "stability_threshold").visible
    assert not line(plots, "two_over_lr").visible and not line(plots, "batch_sharpness").visible
    # λ₁(K)/n is the Gauss–Newton sharpness: Adam's edge is not on its scale
    assert plots.eigenvalues_fig.title.text == "Top-10 NTK eigenvalues λᵢ/n"
    assert plots.sharpness_fig.title.text == "Sharpness vs the stability threshold"


@pytest.mark.parametrize(("optimizer", "label", "legend"), [
    ("gd", "2/η", ["sharpness λ_max(H)", "2/η", "GN sharpness λ₁(K)/n"]),
    ("gd", "(2+2β)/η, β = 0.5", ["sharpness λ_max(H)", "(2+2β)/η, β = 0.5",
                                 "GN sharpness λ₁(K)/n", "2/η"]),
    ("sgd", "2/η", ["batch sharpness", "2/η", "sharpness λ_max(H)", "GN sharpness λ₁(K)/n"]),
    ("rmsprop", "2/η (RMSProp)", ["preconditioned sharpness λ_max(P⁻¹H)", "2/η (RMSProp)",
                                  "sharpness λ_max(H)", "GN sharpness λ₁(K)/n"]),
])
def test_each_optimizer_labels_its_threshold_and_tracked_sharpness(
        optimizer: OptimizerName, label: str, legend: list[str]) -> None:
    plots = LivePlots()
    plots.set_threshold(optimizer, label)
    assert legend_labels(plots) == legend
    drawn = {col for col, renderer in plots.sharpness_lines.items() if renderer.visible}
    assert len(drawn) == len(legend)
    momentum = label.startswith("(2+2β)")
    assert ("two_over_lr" in drawn) == momentum
    # the eigenvalue figure's 2/η is red where it is the run's threshold, grey beside another
    eigen_line = [r for r in plots.eigenvalues_fig.renderers if r.glyph.y == "two_over_lr"]
    assert [r.glyph.line_color for r in eigen_line] == [TWO_OVER_LR_COLOR if momentum
                                                        else THRESHOLD_COLOR]
    title = "Top-10 NTK eigenvalues λᵢ/n" + ("" if optimizer == "rmsprop" else " vs 2/η (dashed)")
    assert plots.eigenvalues_fig.title.text == title


# ---- the run -------------------------------------------------------------------------------
def test_a_momentum_change_mid_run_moves_the_streamed_threshold(dash: Dashboard) -> None:
    steps_done(dash, 3)
    run = dash.controller.run
    dash.settings.momentum = 0.8
    assert dash.controller.run is run, "β is a live option: no reset"
    assert dash.lr_control.threshold.object.startswith("**(2+2β)/η = 36**")
    steps_done(dash, 2)
    np.testing.assert_allclose(run.buffer.rows(0)["stability_threshold"], [30, 30, 30, 36, 36])

    def streamed() -> bool:
        dash.tick()
        return len(dash.plots.measures.data["step"]) == 5
    wait_for(streamed, timeout=10)
    np.testing.assert_allclose(dash.plots.measures.data["stability_threshold"],
                               [30, 30, 30, 36, 36])
    assert "(2+2β)/η, β = 0.8" in legend_labels(dash.plots)
    dash.settings.nesterov = True  # not a live option: a new run from initialisation
    assert dash.controller.run is not run and dash.controller.run.config.nesterov


def test_adams_beta1_mid_run_moves_its_threshold(thread_training: None) -> None:
    board = Dashboard(settings=RunSettings(**SMALL, optimizer="adam", lr=0.002))
    try:
        steps_done(board, 2)
        run = board.controller.run
        board.settings.beta1 = 0.8
        steps_done(board, 1)
        assert board.controller.run is run
        np.testing.assert_allclose(run.buffer.rows(0)["stability_threshold"],
                                   [19_000, 19_000, 9_000])
        board.tick()
        assert "18/η (Adam, β₁ = 0.8)" in legend_labels(board.plots)
    finally:
        board.close()


def test_a_run_saved_before_thresholds_were_logged_opens_with_2_over_eta(dash: Dashboard) -> None:
    dash.settings.momentum = 0.0
    steps_done(dash, 3)
    with xr.open_dataset(io.BytesIO(dash._download_netcdf().getvalue()),
                         engine="h5netcdf") as ds:
        old = ds.load().drop_vars(["stability_threshold", "preconditioned_sharpness",
                                   "batch_sharpness"])
    for name in ("optimizer", "tracked_sharpness"):
        old.attrs.pop(name)
    config = json.loads(old.attrs["config"])
    for name in ("optimizer", *ALL_OPTIMIZER_FIELDS):
        config.pop(name)
    old.attrs["config"] = json.dumps(config)
    data = io.BytesIO()
    old.to_netcdf(data, engine="h5netcdf")
    dash.open_bytes("old.nc", data.getvalue())
    assert dash.controller.viewed is not None, dash.run_alert.object
    np.testing.assert_allclose(dash.plots.measures.data["stability_threshold"], 20)
    assert legend_labels(dash.plots) == ["sharpness λ_max(H)", "2/η", "GN sharpness λ₁(K)/n"]


def test_netcdf_bytes_of_a_momentum_run_keep_each_steps_threshold(dash: Dashboard) -> None:
    steps_done(dash, 2)
    dash.settings.momentum = 0.8
    steps_done(dash, 1)
    with xr.open_dataset(netcdf_bytes(dash.controller.buffer), engine="h5netcdf") as ds:
        np.testing.assert_allclose(ds.stability_threshold.values, [30, 30, 36])
