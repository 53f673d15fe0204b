"""Sweeps on Dask: the hypercube, equality with the serial path, a lost worker, resuming, the CLI."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import xarray as xr

from ntk_core import RunConfig
from ntk_core.cli.sweep import main, parse_grid
from ntk_core.config import ConfigError
from ntk_core.experiments.sweep import run_name, sweep
from ntk_core.grid import grid_points

TINY = RunConfig(dataset="digits", classes=(0, 1, 2, 3), n=32, width=16, k=5, kernel="traced",
                 steps=40, sharpness=False)


def assert_same_numbers(a: xr.Dataset, b: xr.Dataset) -> None:
    """Every variable equal (NaN = NaN) except wall-clock timings."""
    assert set(a.data_vars) == set(b.data_vars)
    for name in a.data_vars:
        if name.startswith("time_"):
            continue
        x, y = a[name].values, b[name].values
        if x.dtype.kind == "f":
            np.testing.assert_array_equal(x, y, err_msg=name)
        else:
            assert (x == y).all(), name


def test_a_sweep_over_one_option_is_a_cube_over_it() -> None:
    """The eta-ladder preset sweeps η alone: a one-level index, which xarray cannot unstack."""
    cube = sweep(TINY, {"lr": [0.05, 0.1]}, scheduler="serial", progress=False)
    assert cube.status.dims == ("lr",) and list(cube.lr.values) == [0.05, 0.1]
    assert (cube.status.values == "completed").all()
    assert cube.kta.dims[0] == "lr" and "run" not in cube.dims


def test_parse_grid_and_points() -> None:
    grid = parse_grid(["lr=0.02,0.05", "seed=0,1,2", "classes=0,1;2,3"])
    assert grid == {"lr": [0.02, 0.05], "seed": [0, 1, 2], "classes": [(0, 1), (2, 3)]}
    points = grid_points(grid)
    assert len(points) == 12 and points[0] == {"lr": 0.02, "seed": 0, "classes": (0, 1)}
    with pytest.raises(ConfigError, match="lr"):
        parse_grid(["lr=fast"])
    with pytest.raises(ConfigError, match="NAME=V1"):
        parse_grid(["lr"])
    with pytest.raises(ConfigError, match="unknown option 'nosuch'"):
        parse_grid(["nosuch=1,2"])
    with pytest.raises(ConfigError, match="lists a value twice"):
        parse_grid(["classes=0,1;0,1"])
    a, b = TINY, TINY.replace(steps=41)
    assert run_name({"lr": 0.1}, a) != run_name({"lr": 0.1}, b)  # the hash covers the base config
    assert run_name({"lr": 0.1}, a).startswith("lr=0.1_")


def test_hypercube_pads_runs_that_stop_early() -> None:
    base = TINY.replace(target_loss=0.35, steps=60)
    cube = sweep(base, {"lr": [0.05, 0.3], "seed": [0]}, scheduler="serial", progress=False)
    assert cube.loss.dims == ("lr", "seed", "step") and cube.alignment.dims[:2] == ("lr", "seed")
    done = cube.steps_done.values[:, 0]
    assert done[0] > done[1], "the larger η reaches the target loss sooner"
    assert list(cube.status.values[:, 0]) == ["reached_target", "reached_target"]
    assert cube.sizes["step"] == done.max()
    short = cube.loss.sel(lr=0.3, seed=0).values
    assert np.isnan(short[done[1]:]).all() and np.isfinite(short[:done[1]]).all()
    final = cube.final_loss.values[:, 0]
    assert (final <= 0.35 + 0.05).all()


@pytest.fixture(scope="module")
def cluster():
    """One 2-worker LocalCluster for the Dask tests, its workers warmed up (imports take seconds)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None,
                      silence_logs=50) as local, Client(local) as client:
        client.run(lambda: __import__("ntk_core.training.trainer") and None)
        yield local, client


def test_local_cluster_equals_serial(cluster, monkeypatch) -> None:
    """The default scheduler (a LocalCluster of single-threaded processes) gives bit-identical runs;
    the module's cluster stands in for the one the sweep would start, to save its start-up."""
    import distributed

    local, _ = cluster
    made: list[dict] = []

    class Shared:  # what LocalCluster(...) returns inside the sweep: the shared cluster, kept open
        status = local.status

        def __init__(self, **kwargs) -> None:
            made.append(kwargs)
            self.scheduler_address = local.scheduler_address

        def close(self) -> None:
            pass

    monkeypatch.setattr(distributed, "LocalCluster", Shared)
    grid = {"lr": [0.05, 0.2], "seed": [0, 1]}
    serial = sweep(TINY, grid, scheduler="serial", progress=False)
    parallel = sweep(TINY, grid, workers=2, progress=False)
    assert made == [dict(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                         silence_logs=40)]
    assert parallel.attrs["scheduler"].startswith("LocalCluster(2")
    assert (parallel.status == "completed").all()
    assert_same_numbers(serial, parallel)


def test_lost_worker_still_completes(cluster, tmp_path) -> None:
    local, client = cluster
    base = TINY.replace(steps=200)
    grid = {"lr": [0.05, 0.2], "seed": [0, 1]}
    killed: list[int] = []

    def kill_a_busy_worker(point, ds) -> None:
        if killed:
            return
        busy = [addr for addr, keys in client.processing().items() if keys]
        if busy:
            pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    # the fixture's own client drives the sweep: a second client in the same process can see
    # distributed's "Event bound to a different event loop" when a worker dies under it
    cube = sweep(base, grid, scheduler=client, resume_dir=tmp_path,
                 progress=False, callback=kill_a_busy_worker)
    assert killed, "no worker was busy after the first run arrived"
    reasons = [str(r) for r in cube.status_reason.values.ravel()] if "status_reason" in cube else []
    assert (cube.status == "completed").all() and (cube.steps_done == 200).all(), reasons
    assert len(list(tmp_path.glob("*.nc"))) == 4
    assert not list(tmp_path.glob(".tmp-*")), "a temporary file was left behind"


def test_resume_skips_finished_runs(tmp_path) -> None:
    first = sweep(TINY, {"lr": [0.1], "seed": [0, 1]}, scheduler="serial", resume_dir=tmp_path,
                  progress=False)
    assert first.attrs["runs_resumed"] == 0
    ran: list[dict] = []
    second = sweep(TINY, {"lr": [0.1, 0.2], "seed": [0, 1]}, scheduler="serial",
                   resume_dir=tmp_path, progress=False, callback=lambda p, ds: ran.append(p))
    assert second.attrs["runs_resumed"] == 2
    assert sorted(p["seed"] for p in ran) == [0, 1] and all(p["lr"] == 0.2 for p in ran)
    assert_same_numbers(first.sel(lr=[0.1]), second.sel(lr=[0.1]))
    # a different base configuration never reuses those files
    third = sweep(TINY.replace(steps=20), {"lr": [0.1], "seed": [0]}, scheduler="serial",
                  resume_dir=tmp_path, progress=False)
    assert third.attrs["runs_resumed"] == 0


def test_cli_sweep(tmp_path, capsys) -> None:
    out = tmp_path / "cube.nc"
    code = main(["--preset", "eta-ladder", "--grid", "lr=0.05,0.1", "--grid", "seed=0",
                 "--n", "32", "--width", "16", "--k", "4", "--steps", "15", "--serial", "--quiet",
                 "--out", str(out)])
    assert code == 0
    cube = xr.open_dataset(out, engine="h5netcdf")
    assert dict(cube.sizes)["lr"] == 2 and cube.status.values.shape == (2, 1)
    cube.close()
    assert "completed" in capsys.readouterr().out
    assert main(["--grid", "lr=0.1,-1", "--serial"]) == 2
