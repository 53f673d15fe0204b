"""The run file's schema, both ways: a saved run read back into a buffer writes the same
Dataset again, the checks name what is wrong, and "the last measured step" has one meaning."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from ntk_core import RunBuffer, RunConfig, RunStatus, Trainer
from ntk_core.training.netcdf import load_run, save_run
from ntk_core.training.schema import (
    SCALARS,
    SPECTRUM,
    RunSchemaError,
    check_run_dataset,
    last_measured,
    measured_rows,
)

CONFIG = RunConfig(dataset="digits", classes=(0, 1, 2), n=24, width=8, steps=5, k=3,
                   measure_every=2, eigvec_max_snapshots=2, seed=1)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> xr.Dataset:
    trainer = Trainer(CONFIG)
    trainer.run()
    return load_run(save_run(trainer.dataset, tmp_path_factory.mktemp("schema") / "run.nc"))


def test_a_saved_run_read_back_writes_the_same_dataset(saved) -> None:
    again = RunBuffer.from_dataset(saved).snapshot()
    assert sorted(again.variables) == sorted(saved.variables)
    for name in saved.variables:
        np.testing.assert_array_equal(again[name].values, saved[name].values, err_msg=name)
        assert again[name].dims == saved[name].dims and again[name].attrs == saved[name].attrs
    assert again.attrs == saved.attrs
    assert {*SCALARS, *SPECTRUM, "eigenvectors", "kernel", "label"} <= set(again.variables)


def test_a_run_saved_while_running_reads_back_stopped(saved) -> None:
    running = saved.assign_attrs(status=RunStatus.RUNNING.value)
    buffer = RunBuffer.from_dataset(running)
    assert buffer.status is RunStatus.STOPPED
    assert RunBuffer.from_dataset(saved).status is RunStatus.COMPLETED


@pytest.mark.parametrize("change,message", [
    (lambda ds: ds.drop_vars("kta"), "missing kta"),
    (lambda ds: ds.assign_attrs(status="exploded"), "unknown run status 'exploded'"),
    (lambda ds: ds.assign_attrs(status=["completed"]), "unknown run status"),
    (lambda ds: ds.assign_attrs(lr=-1.0), "lr attribute must be a positive number"),
    (lambda ds: ds.assign_attrs(config='{"n": 1}'), "config is not valid: n"),
    (lambda ds: ds.assign_coords(step=ds.step.values[::-1]), "steps must be increasing"),
    (lambda ds: ds.assign(label=("sample", np.full(ds.sizes["sample"], 5000))),
     "label holds values outside"),
])
def test_a_dataset_that_is_not_a_run_is_refused_with_the_reason(saved, change, message) -> None:
    with pytest.raises(RunSchemaError, match=message):
        check_run_dataset(change(saved))
    with pytest.raises(RunSchemaError, match=message):
        RunBuffer.from_dataset(change(saved))


def test_the_last_measured_step_is_the_last_row_whose_flag_is_set(saved) -> None:
    measured = saved.measured.values
    assert measured.tolist() == [1, 0, 1, 0, 1]
    assert measured_rows(measured).tolist() == [0, 2, 4] and last_measured(measured) == 4
    assert last_measured(np.array([1.0, 0.0, 0.0])) == 0
    assert last_measured(np.zeros(3)) is None and last_measured(np.zeros(0)) is None
