"""Run files with flows on the dashboard: the isolated reader takes their ``process`` dimension
(whose text labels it does not read: they are gd and the run's ``flows`` attribute), the page
shows GD's curves and the flows' overlays and distances, the downloads carry the flows, and a
flows file that does not add up is a message on the page, never an error."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
import xarray as xr

from app.dashboard import Dashboard
from app.files.runs import RunFileError, csv_bytes, read_run_bytes
from app.session.runner import training_threads
from app.session.settings import RunSettings
from ntk_core import RunConfig, Trainer
from ntk_core.training.buffer import RunBuffer
from ntk_core.training.netcdf import run_bytes

pytestmark = pytest.mark.timeout(300)

FLOWS_CONFIG = RunConfig(dataset="digits", n=16, classes=(0, 1), width=8, k=3, steps=5,
                         flows=("central", "stable"))
STEPS = 5


@pytest.fixture(scope="module")
def saved() -> xr.Dataset:
    """A finished run with both flows, as the engine saves it."""
    trainer = Trainer(FLOWS_CONFIG)
    while not trainer.finished:
        trainer.step()
    return trainer.buffer.snapshot()


@pytest.fixture
def board() -> Iterator[Dashboard]:
    dash = Dashboard(settings=RunSettings(n=16, classes="0,1", width=8, k=3, steps=50))
    yield dash
    dash.close()
    for thread in training_threads():
        thread.join(30)


def test_the_isolated_reader_takes_the_process_dimension(saved: xr.Dataset) -> None:
    ds = read_run_bytes(run_bytes(saved))
    assert list(ds["process"].values) == ["gd", "central", "stable"]
    for name in ("loss", "sharpness", "kta", "distance_to_gd"):
        assert ds[name].dims == ("process", "step"), name
        np.testing.assert_array_equal(ds[name].values, saved[name].values)
    assert ds["eigenvalues"].dims == ("process", "step", "eig")
    np.testing.assert_array_equal(ds["predicted_loss"].values, saved["predicted_loss"].values)
    assert ds["sigma_sq"].dims == ("step", "critical")
    buffer = RunBuffer.from_dataset(ds)
    assert buffer.flows == ("central", "stable") and len(buffer) == STEPS
    np.testing.assert_array_equal(buffer.rows(0)["kta@stable"],
                                  saved["kta"].sel(process="stable").values)


def test_a_flows_file_opens_with_gd_the_overlays_and_the_distances(
        board: Dashboard, saved: xr.Dataset) -> None:
    board.open_bytes("flows.nc", run_bytes(saved))
    board.tick()
    assert board.controller.viewed is not None and board.controller.run is None
    assert "Viewing the saved run" in board.run_alert.object
    plots = board.plots
    np.testing.assert_array_equal(plots.steps.data["loss"], saved["loss"].sel(process="gd"))
    assert plots.flows == ("central", "stable")
    assert all(pane.visible for pane in board._flow_panes)
    np.testing.assert_array_equal(plots.distances.data["distance_stable"],
                                  saved["distance_to_gd"].sel(process="stable"))
    np.testing.assert_array_equal(plots.measures.data["predicted_loss"],
                                  saved["predicted_loss"])
    np.testing.assert_array_equal(plots.measures.data["sharpness_central"],
                                  saved["sharpness"].sel(process="central"))
    board.reset()  # training again: a run without flows hides them
    board.tick()
    assert plots.flows == () and not any(pane.visible for pane in board._flow_panes)


def test_a_run_with_flows_downloads_and_opens_again(board: Dashboard) -> None:
    board.settings.flows = "central"
    for _ in range(3):
        board.step()
    assert board.controller.run.wait_idle(120)
    buffer = board.controller.buffer
    table = csv_bytes(buffer).getvalue().decode()
    header = table.splitlines()[0].split(",")
    assert {"loss", "loss@central", "kta@central", "distance_to_gd@central",
            "predicted_loss"} <= set(header)
    assert not any(name.endswith("@stable") for name in header)
    board.open_bytes("again.nc", board._download_netcdf().getvalue())
    board.tick()
    assert board.controller.viewed is not None and board.plots.flows == ("central",)
    np.testing.assert_array_equal(board.plots.measures.data["loss_central"],
                                  buffer.rows(0)["loss@central"])


def _without_flows(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.copy()
    ds.attrs["flows"] = ""
    return ds


def _one_flow_named(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.copy()
    ds.attrs["flows"] = "central"
    return ds


def _flows_swapped(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.copy()
    ds.attrs["flows"] = "stable,central"  # labels in the file: gd, central, stable
    return ds


def _stacked_lr(ds: xr.Dataset) -> xr.Dataset:
    return ds.assign(lr=ds["lr"].expand_dims(process=ds["process"]))


def _distance_without_process(ds: xr.Dataset) -> xr.Dataset:
    return ds.assign(distance_to_gd=ds["distance_to_gd"].isel(process=0, drop=True)
                     .expand_dims(eig=ds["eig"]).transpose("step", "eig"))


def _unnamed_processes(ds: xr.Dataset) -> xr.Dataset:
    return ds.drop_vars("process")


def _numbered_processes(ds: xr.Dataset) -> xr.Dataset:
    return ds.assign_coords(process=[0, 1, 2])


@pytest.mark.parametrize(("damage", "message"), [
    (_without_flows, "process labels"),
    (_one_flow_named, "process labels"),
    (_flows_swapped, "process labels"),
    (_stacked_lr, "lr has 2 dimensions, expected 1"),
    (_distance_without_process, "distance_to_gd: dimension process"),
    (_unnamed_processes, "stacks processes but does not name them"),
    (_numbered_processes, "process must hold text labels"),
])
def test_flows_files_that_do_not_add_up_are_a_message(
        board: Dashboard, saved: xr.Dataset, damage: Callable[[xr.Dataset], xr.Dataset],
        message: str) -> None:
    data = run_bytes(damage(saved))
    with pytest.raises((RunFileError, ValueError), match=message):
        RunBuffer.from_dataset(read_run_bytes(data))
    run = board.controller.run
    board.open_bytes("damaged.nc", data)
    board.tick()
    assert board.run_alert.visible and board.run_alert.alert_type == "danger"
    assert "Could not open <code>damaged.nc</code>" in board.run_alert.object
    assert board.controller.run is run and board.controller.viewed is None


def test_anything_else_a_file_trips_in_the_engine_is_a_message(
        board: Dashboard, saved: xr.Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    def trips(ds: xr.Dataset) -> RunBuffer:
        raise IndexError("index 3 is out of bounds for axis 1 with size 3")

    monkeypatch.setattr(RunBuffer, "from_dataset", staticmethod(trips))
    board.open_bytes("odd.nc", run_bytes(saved))
    assert board.run_alert.alert_type == "danger" and board.controller.viewed is None
    assert "IndexError: index 3 is out of bounds" in board.run_alert.object
