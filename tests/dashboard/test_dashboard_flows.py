"""The Flows control and the flows on the live plots, without a browser: the control sets
RunConfig.flows and is off, greyed out, with a line that says why, for any optimiser but plain
GD; a run with flows streams their loss, sharpness and KTA beside GD's, the central flow's
predicted loss and the distances from GD, and the distance plot shows only then; an η change
mid-run continues every process in the same run."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from panel.io.location import Location
from support import steps_done

from app.dashboard import Dashboard
from app.session.limits import ServerLimits, TrainingSlots
from app.session.runner import TrainingRun, training_threads
from app.session.settings import FLOW_CHOICES, RunSettings
from app.views.controls import FLOWS_ONLY_GD, FlowsControl
from app.views.plot_data import (
    DISTANCE_COLUMNS,
    FLOW_MEASURE_COLUMNS,
    FLOW_SPECTRUM_COLUMNS,
    measure_frame,
)
from ntk_core import RunConfig
from ntk_core.config import ConfigError
from ntk_core.training.buffer import flow_column
from ntk_core.training.process_trainer import ProcessTrainer

pytestmark = pytest.mark.timeout(300)

SMALL = {"n": 32, "classes": "0,1", "width": 16, "k": 4, "steps": 200}
BOTH = "central,stable"


@pytest.fixture
def dash() -> Iterator[Dashboard]:
    board = Dashboard(settings=RunSettings(**SMALL, flows=BOTH))
    yield board
    board.close()
    for thread in training_threads():
        thread.join(30)


def flow_lines(board: Dashboard) -> dict[str, bool]:
    """Column drawn -> visible, for every flow overlay of the live figures."""
    plots = board.plots
    columns = {*DISTANCE_COLUMNS[1:], *FLOW_MEASURE_COLUMNS, *FLOW_SPECTRUM_COLUMNS}
    return {renderer.glyph.y: renderer.visible
            for fig in (plots.loss_fig, plots.sharpness_fig, plots.alignment_fig,
                        plots.distance_fig)
            for renderer in fig.renderers
            if getattr(renderer.glyph, "y", None) in columns}


def buffer_key(column: str) -> str:
    """The buffer's name of a flow source's column: loss_central -> loss@central."""
    if column == "predicted_loss":
        return column
    name, process = column.rsplit("_", 1)
    return flow_column("distance_to_gd" if name == "distance" else name, process)


# ---- the control ---------------------------------------------------------------------------
def test_the_control_offers_off_central_and_both_and_sets_the_runs_flows() -> None:
    settings = RunSettings(**SMALL)
    control = FlowsControl(settings)
    assert list(control.select.options) == ["Off", "Central flow", "Central flow + gradient flow"]
    assert settings.to_config().flows == () and control.select.value == ""
    for value, flows in (("central", ("central",)), (BOTH, ("central", "stable")), ("", ())):
        control.select.value = value  # as the browser sets it
        assert settings.flows == value and settings.to_config().flows == flows
        assert not control.select.disabled
    control.select.value = "central"
    assert "measured as GD is" in control.note.object


@pytest.mark.parametrize(("changes", "named"), [
    ({"momentum": 0.9}, "momentum β = 0.9"),
    ({"optimizer": "adam"}, "Adam"),
    ({"optimizer": "sgd", "batch_size": 8}, "SGD (mini-batch)"),
])
def test_the_control_is_off_and_says_so_with_momentum_or_another_optimizer(
        changes: dict, named: str) -> None:
    settings = RunSettings(**SMALL, flows=BOTH)
    control = FlowsControl(settings)
    settings.param.update(**changes)
    assert control.select.disabled and control.select.value == ""
    assert FLOWS_ONLY_GD in control.note.object and named in control.note.object
    assert settings.validate() == "" and settings.to_config().flows == ()
    control.select.value = "central"  # a greyed-out control takes no choice
    assert settings.flows == BOTH and settings.to_config().flows == ()
    assert "flows" not in settings.overrides()
    settings.param.update(optimizer="gd", momentum=0.0)  # plain GD again: the choice is back
    assert not control.select.disabled and control.select.value == BOTH
    assert settings.to_config().flows == ("central", "stable")


def test_the_engine_refuses_what_the_control_never_sends() -> None:
    """The control keeps the flows away from the engine's refusal: the same values, passed to
    RunConfig directly, are a ConfigError."""
    with pytest.raises(ConfigError, match="^flows:"):
        RunConfig(flows=("central",), momentum=0.9)
    settings = RunSettings(**SMALL, flows="central", momentum=0.9)
    assert settings.validate() == "" and settings.to_config().flows == ()


def test_a_link_with_flows_and_adam_opens_without_an_error() -> None:
    board = Dashboard(settings=RunSettings(**SMALL))
    try:
        board.apply_url(Location(search="?flows=central&optimizer=adam&lr=0.01"))
        assert board.settings.flows == "central" and board.settings.optimizer == "adam"
        assert not board.config_alert.visible and board._url_message == ""
        assert board.controller.run.config.flows == ()
        assert board.flows_control.select.disabled
        assert "Adam" in board.flows_control.note.object
    finally:
        board.close()


def test_a_link_names_the_flows_and_the_header_says_so() -> None:
    settings = RunSettings(**SMALL)
    location = Location(search="?flows=central")
    location.sync(settings, settings.url_parameters())
    assert settings.to_config().flows == ("central",)
    board = Dashboard(settings=settings)
    try:
        assert "flows off → central flow" in board._about()
    finally:
        board.close()
    assert set(FLOW_CHOICES.values()) == set(RunSettings.param.flows.objects)


# ---- a run with flows on the plots ---------------------------------------------------------
def test_overlays_fill_after_steps_and_the_distance_plot_shows(dash: Dashboard) -> None:
    assert dash.controller.run.config.flows == ("central", "stable")
    steps_done(dash, 4)
    # the served default: the steps run in a child process, the page reads its mirror log
    assert isinstance(dash.controller.run.trainer, ProcessTrainer)
    dash.tick()
    plots = dash.plots
    assert plots.flows == ("central", "stable")
    assert all(pane.visible for pane in dash._flow_panes)
    rows = dash.controller.buffer.rows(0)
    for source, columns in ((plots.distances, DISTANCE_COLUMNS[1:]),
                            (plots.measures, FLOW_MEASURE_COLUMNS),
                            (plots.spectrum, FLOW_SPECTRUM_COLUMNS)):
        for column in columns:
            drawn = source.data[column]
            assert len(drawn) == 4 and np.all(np.isfinite(drawn)), column
            np.testing.assert_allclose(drawn, rows[buffer_key(column)], err_msg=column)
    steps = plots.distances.data
    assert steps["distance_central"][0] == 0 and steps["distance_central"][-1] > 0
    assert all(flow_lines(dash).values()) and len(flow_lines(dash)) == 9
    legend = {item.label.value: item.visible for item in plots._loss_legend.items}
    assert legend == {"current": True, "central flow": True,
                      "predicted time-averaged loss": True, "gradient flow": True}
    labels = [item.label.value for item in plots._sharpness_legend.items if item.visible]
    assert labels[-2:] == ["central flow", "gradient flow"]
    # KTA alone on the alignment plot, on its own scale: Aₖ (near 0.6 here) steps aside
    shown = [item.label.value for item in plots.alignment_fig.legend[0].items if item.visible]
    assert shown == ["KTA", "KTA, central flow", "KTA, gradient flow"]
    assert plots.alignment_fig.title.text == "Label alignment: KTA along GD and each flow"
    kta = np.concatenate([plots.spectrum.data[c] for c in ("kta", *FLOW_SPECTRUM_COLUMNS)])
    low, high = plots.alignment_fig.y_range.start, plots.alignment_fig.y_range.end
    assert low <= kta.min() and kta.max() <= high and high < kta.max() + np.ptp(kta)
    assert high < np.nanmax(plots.spectrum.data["topk_mass"])


def test_the_central_flow_alone_draws_no_gradient_flow() -> None:
    board = Dashboard(settings=RunSettings(**SMALL, flows="central"))
    try:
        steps_done(board, 2)
        board.tick()
        lines = flow_lines(board)
        assert lines["loss_central"] and lines["predicted_loss"] and lines["distance_central"]
        assert not lines["loss_stable"] and not lines["distance_stable"]
        assert np.isnan(board.plots.measures.data["loss_stable"]).all()
        assert np.isnan(board.plots.spectrum.data["kta_stable"]).all()
        assert np.isfinite(board.plots.spectrum.data["kta_central"]).all()
    finally:
        board.close()


def test_without_flows_the_overlays_and_distance_plot_stay_hidden() -> None:
    board = Dashboard(settings=RunSettings(**SMALL))
    try:
        steps_done(board, 2)
        board.tick()
        assert not any(pane.visible for pane in board._flow_panes)
        assert not any(flow_lines(board).values())
        shown = [item.label.value for item in board.plots.alignment_fig.legend[0].items
                 if item.visible]
        assert shown == ["KTA", "Aₖ", "a₁"]
        assert len(board.plots.steps.data["step"]) == 2
        assert len(board.plots.distances.data["step"]) == 0
        assert np.isnan(board.plots.measures.data["loss_central"]).all()
        board.settings.flows = "central"  # a new run, from the same initial weights
        steps_done(board, 2)
        board.tick()
        assert all(pane.visible for pane in board._flow_panes)
        assert np.isfinite(board.plots.distances.data["distance_central"]).all()
        assert len(board.plots.distances.data["step"]) == 2
        rows = board.controller.buffer.rows(0)
        np.testing.assert_allclose(rows["loss@central"][0], rows["loss"][0])
    finally:
        board.close()


def test_flow_curves_use_the_measured_steps_only() -> None:
    board = Dashboard(settings=RunSettings(**SMALL, flows=BOTH, measure_every=2))
    try:
        steps_done(board, 5)
        board.tick()
        rows = board.controller.buffer.rows(0)
        assert np.isnan(rows["kta@central"][1]), "the flows are measured when GD is"
        data = board.plots.measures.data
        np.testing.assert_array_equal(data["step"], [0, 2, 4])
        for column in FLOW_MEASURE_COLUMNS:
            assert np.all(np.isfinite(data[column])), column
        for column in FLOW_SPECTRUM_COLUMNS:
            assert np.all(np.isfinite(board.plots.spectrum.data[column])), column
        every = board.plots.distances.data  # the distances: every step
        assert len(every["step"]) == 5 and np.all(np.isfinite(every["distance_stable"]))
    finally:
        board.close()
    rows = {name: np.zeros(3) for name in ("step", "two_over_lr", "stability_threshold",
                                           "sharpness", "gn_sharpness", "u1_residual",
                                           "preconditioned_sharpness", "batch_sharpness")}
    frame = measure_frame({**rows, "measured": np.array([1.0, 0.0, 1.0])})  # no flows: NaN
    assert len(frame) == 2 and frame["loss_central"].isna().all()


def test_an_eta_change_mid_run_continues_every_process(dash: Dashboard) -> None:
    steps_done(dash, 3)
    run = dash.controller.run
    dash.settings.lr = 0.05
    assert dash.controller.run is run, "η changes keep the run, its flows included"
    steps_done(dash, 3)
    dash.tick()
    rows = run.buffer.rows(0)
    np.testing.assert_allclose(rows["lr"], [0.1] * 3 + [0.05] * 3)
    for process in ("central", "stable"):
        assert np.all(np.isfinite(rows[flow_column("loss", process)])), process
        distance = rows[flow_column("distance_to_gd", process)]
        assert np.all(np.isfinite(distance)) and np.all(distance[1:] > 0), process
    assert np.all(np.isfinite(rows["predicted_loss"]))
    assert len(dash.plots.measures.data["step"]) == 6
    np.testing.assert_allclose(dash.plots.measures.data["sharpness_stable"],
                               rows["sharpness@stable"])
    assert run.buffer.attrs["flow_status"] == ""


def test_momentum_turned_on_mid_run_starts_a_run_without_flows(dash: Dashboard) -> None:
    steps_done(dash, 2)
    run = dash.controller.run
    dash.settings.momentum = 0.5  # live for GD, but it ends the plain-GD flows
    assert dash.controller.run is not run and dash.controller.run.config.flows == ()
    assert not dash.config_alert.visible
    steps_done(dash, 1)
    dash.tick()
    assert not any(pane.visible for pane in dash._flow_panes)


# ---- a server's cap ------------------------------------------------------------------------
def test_a_hosted_server_caps_the_size_of_runs_with_flows() -> None:
    limits = ServerLimits.defaults("hosted", cores=2)
    assert limits.max_flow_np and limits.max_flow_np < limits.max_np
    limits.check_size(256, 25_000)  # the default preset, flows or not
    limits.check_size(1000, limits.max_flow_np // 1000 + 1)  # without flows
    with pytest.raises(ConfigError, match="with flows on this server"):
        limits.check_size(1000, limits.max_flow_np // 1000 + 1, flows=True)
    assert ServerLimits.from_env({"NTK_EOS_MODE": "hosted",
                                  "NTK_EOS_MAX_FLOW_NP": "5"}).max_flow_np == 5
    settings = RunSettings(**SMALL, flows="central")
    assert f"{limits.max_flow_np:,}" in FlowsControl(settings, limits).note.object
    assert "n·p" not in FlowsControl(settings, ServerLimits()).note.object


def test_a_run_with_flows_over_the_cap_says_so() -> None:
    config = RunSettings(**SMALL, flows="central").to_config()
    run = TrainingRun(config, slots=TrainingSlots(1), limits=ServerLimits(max_flow_np=1000))
    try:
        run.play()
        run.thread.join(60)
        assert run.error.startswith("n·p: at most 1,000 with flows") and run.trainer is None
    finally:
        run.stop()
