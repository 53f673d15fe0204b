"""Parameter sweeps: a grid over learning rate, seed and any RunConfig field, run on Dask.

One task is one run (``run(config)``); its log comes back as an xarray Dataset, or, with a resume
folder, is written there atomically as one NetCDF file per run and its path comes back. Runs
already in the folder are skipped, so an interrupted sweep resumes where it stopped, and a task
lost with a worker is simply run again (``retries``; the scheduler also reschedules work held by
a dead worker). With ``target_loss`` set, every run stops at the same loss or at the step budget
(the matched-loss protocol) and its ``status`` says which.

The runs are combined into one hypercube with the grid's dims (``lr``, ``seed``, ...) plus the
per-run dims ``step`` and ``eig``: runs that stop early are padded with NaN along ``step``. Per-run
variables: ``status``, ``status_reason``, ``steps_done``, ``config`` (JSON) and the ``final_*``
figures: loss and accuracy of the last step, everything else of the last measured step.
Eigenvector snapshots and kernels stay in the per-run files.

Schedulers: a LocalCluster of ``workers`` processes with one thread each (the default), an
existing cluster by address (``tcp://host:8786``; a resume folder must then be on a filesystem the
workers share), a ``distributed.Client``, or ``"serial"`` (in-process, one run after another).
Every run uses one torch thread, so results are bit-identical across schedulers on the CPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..config import ConfigError, RunConfig
from ..grid import Point, grid_points, point_config
from ..training.netcdf import load_run, save_run
from ..training.schema import last_measured
from ..vocabulary import RunStatus

PER_RUN_DIMS = ("step", "eig")
EVERY_STEP = ("loss", "accuracy")  # logged at every step: their final value is the last step's
FINAL_SCALARS = ("loss", "accuracy", "kta", "kta_centered", "topk_mass", "sharpness", "gn_sharpness",
                 "kernel_fro", "kernel_distance")
FINAL_SPECTRUM = ("alignment", "eigval_normalized", "eigenvalues")


# ---- one run's file ---------------------------------------------------------------------------


def run_name(point: Point, config: RunConfig) -> str:
    """A readable, unique file stem: the grid values and a hash of the whole configuration, so a
    resumed sweep never mistakes a run of another base configuration for its own."""
    label = "_".join(f"{k}={value_label(v)}" for k, v in point.items())
    digest = hashlib.sha1(config.to_json().encode()).hexdigest()[:10]
    return f"{label}_{digest}" if label else digest


def value_label(value: Any) -> str:
    """A grid value as a file name and a coordinate show it: 0.1, 3, or 0-1-2 for a tuple."""
    if isinstance(value, (list, tuple)):
        return "-".join(map(str, value))
    return format(value, "g") if isinstance(value, float) else str(value)


# ---- one task -----------------------------------------------------------------------------------


def run_task(config_json: str, path: str | None = None) -> xr.Dataset | str:
    """Run one configuration with a single torch thread; write it to ``path`` when given."""
    import torch

    from ..training.trainer import run

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ds = run(RunConfig.from_json(config_json))
    finally:
        torch.set_num_threads(previous)
    if path is None:
        return ds
    return str(save_run(ds, path))


def _failed_run(config: RunConfig, reason: str) -> xr.Dataset:
    """A stand-in log for a run whose task raised even after its retries."""
    return xr.Dataset(attrs={"config": config.to_json(), "status": RunStatus.FAILED.value,
                             "status_reason": reason, "steps_done": 0})


# ---- the sweep ----------------------------------------------------------------------------------


def sweep(base: RunConfig, grid: Mapping[str, Sequence[Any]], *, scheduler: Any = None,
          workers: int = 2, resume_dir: str | Path | None = None, retries: int = 3,
          progress: bool = True, out: str | Path | None = None,
          callback: Callable[[Point, xr.Dataset], object] | None = None) -> xr.Dataset:
    """Run ``base`` at every point of ``grid`` and return the combined hypercube.

    ``scheduler``: None or ``"local"`` (a LocalCluster of ``workers`` single-threaded processes),
    ``"serial"``, a scheduler address, or a ``distributed.Client``. ``resume_dir``: one NetCDF per
    run; runs found there are loaded instead of rerun. ``callback(point, ds)`` is called in this
    process as each run arrives. ``out``: also save the hypercube there (NetCDF, atomically).
    """
    points = grid_points(grid)
    if not points:
        raise ConfigError("sweep: the grid is empty")
    configs = [point_config(base, p) for p in points]
    folder = Path(resume_dir) if resume_dir is not None else None
    paths = [str(folder / f"{run_name(p, c)}.nc") if folder else None
             for p, c in zip(points, configs, strict=True)]
    results: dict[int, xr.Dataset] = {}
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        results = {i: ds for i, path in enumerate(paths) if (ds := _load_done(path, configs[i]))}
    todo = [i for i in range(len(points)) if i not in results]
    started = time.perf_counter()

    def arrived(i: int, result: xr.Dataset | str) -> None:
        ds = load_run(result) if isinstance(result, str) else result
        results[i] = ds
        if callback is not None:
            callback(points[i], ds)

    label = "serial" if scheduler == "serial" else _schedulervalue_label(scheduler, workers)
    if todo and scheduler == "serial":
        _run_serial(todo, configs, paths, arrived, progress)
    elif todo:
        _run_dask(todo, configs, paths, arrived, progress, scheduler, workers, retries)
    combined = combine(points, [results[i] for i in range(len(points))], grid)
    combined.attrs.update(
        base_config=base.to_json(), grid=json.dumps({k: list(v) for k, v in grid.items()},
                                                   default=_json_default),
        scheduler=label, runs=len(points), runs_resumed=len(points) - len(todo),
        wall_time=time.perf_counter() - started,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    if out is not None:
        save_run(combined, out)
    return combined


def _json_default(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else str(value)


def _schedulervalue_label(scheduler: Any, workers: int) -> str:
    if scheduler is None or scheduler == "local":
        return f"LocalCluster({workers} workers × 1 thread)"
    info = getattr(scheduler, "scheduler_info", None)  # a dask Client; else an address
    return str(info().get("address", scheduler) if info is not None else scheduler)


def _load_done(path: str | None, config: RunConfig) -> xr.Dataset | None:
    if path is None or not Path(path).is_file():
        return None
    try:
        ds = load_run(path)
    except (OSError, ValueError, KeyError):
        return None  # unreadable: run it again (save_run never leaves a partial file)
    return ds if ds.attrs.get("config") == config.to_json() else None


def _run_serial(todo: list[int], configs: list[RunConfig], paths: list[str | None],
                arrived: Callable[[int, Any], None], progress: bool) -> None:
    from tqdm import tqdm

    for i in tqdm(todo, desc="sweep", unit="run", disable=not progress, file=sys.stderr):
        try:
            result = run_task(configs[i].to_json(), paths[i])
        except Exception as exc:  # a crashed run is recorded, the sweep goes on
            result = _failed_run(configs[i], f"{type(exc).__name__}: {exc}")
        arrived(i, result)


def _run_dask(todo: list[int], configs: list[RunConfig], paths: list[str | None],
              arrived: Callable[[int, Any], None], progress: bool, scheduler: Any, workers: int,
              retries: int) -> None:
    from distributed import Client, LocalCluster, as_completed
    from tqdm import tqdm

    owned: list[Any] = []
    if scheduler is None or scheduler == "local":
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=40)
        client = Client(cluster)
        owned = [client, cluster]
    elif isinstance(scheduler, str):
        client = Client(scheduler)
        owned = [client]
    else:
        client = scheduler
    try:
        futures = {}
        for i in todo:
            key = f"ntk-eos-run-{i}-{hashlib.sha1(configs[i].to_json().encode()).hexdigest()[:12]}"
            fut = client.submit(run_task, configs[i].to_json(), paths[i], key=key, retries=retries,
                                pure=False)
            futures[fut] = i
        bar = tqdm(total=len(futures), desc="sweep", unit="run", disable=not progress,
                   file=sys.stderr)
        for fut in as_completed(list(futures)):
            i = futures[fut]
            try:
                result = fut.result()
            except Exception as exc:  # retries exhausted, or the task's worker kept dying
                result = _failed_run(configs[i], f"{type(exc).__name__}: {exc}")
            arrived(i, result)
            bar.update(1)
        bar.close()
    finally:
        for obj in owned:
            obj.close()


# ---- combining --------------------------------------------------------------------------------


def final_measurement(ds: xr.Dataset) -> xr.Dataset:
    """The last measured step of a run log (the ``final_*`` figures); empty if none was measured."""
    i = last_measured(ds.measured.values) if "measured" in ds else None
    return ds.isel(step=i) if i is not None else xr.Dataset()


def _per_run(ds: xr.Dataset) -> xr.Dataset:
    keep = [n for n, v in ds.data_vars.items() if set(v.dims) <= set(PER_RUN_DIMS) and v.dims]
    out = ds[keep].drop_vars([c for c in ds[keep].coords if c not in PER_RUN_DIMS])
    out.attrs = {}
    last = final_measurement(ds)
    for name in FINAL_SCALARS:
        if name in EVERY_STEP and ds.sizes.get("step", 0):
            value, where = float(ds[name][-1]), "the last step"
        else:
            value, where = (float(last[name]) if name in last else math.nan), "the last measured step"
        out[f"final_{name}"] = ((), value, {"long_name": f"{name} at {where}"})
    for name in FINAL_SPECTRUM:
        if name in last:
            out[f"final_{name}"] = (("eig",), last[name].values,
                                    {"long_name": f"{name} at the last measured step"})
    out["final_step"] = ((), int(last.step) if "step" in last.coords else -1,
                         {"long_name": "step of the last measurement"})
    out["status"] = ((), str(ds.attrs.get("status", "")))
    out["status_reason"] = ((), str(ds.attrs.get("status_reason", "")))
    out["steps_done"] = ((), int(ds.attrs.get("steps_done", ds.sizes.get("step", 0))))
    out["config"] = ((), str(ds.attrs.get("config", "")))
    return out


def combine(points: Sequence[Point], runs: Sequence[xr.Dataset],
            grid: Mapping[str, Sequence[Any]]) -> xr.Dataset:
    """Stack per-run logs into one Dataset with the grid's dims first; NaN pads shorter runs."""
    parts = [_per_run(ds) for ds in runs]
    stacked = xr.concat(parts, dim="run", join="outer", data_vars="all", coords="minimal",
                        fill_value=np.nan, combine_attrs="drop")
    keys = list(grid)
    coords = {k: ("run", _coord_values([p[k] for p in points])) for k in keys}
    stacked = stacked.assign_coords(coords)
    if not keys:
        cube = stacked
    elif len(keys) == 1:  # a one-level index cannot be unstacked: the grid's dim replaces run
        cube = stacked.swap_dims(run=keys[0])
    else:
        cube = stacked.set_index(run=keys).unstack("run")
    cube = cube.transpose(*keys, *[d for d in cube.dims if d not in keys])
    for name in ("status", "status_reason", "config"):
        cube[name] = cube[name].fillna("").astype(str)
    for k in keys:
        if cube[k].dtype == object:
            cube[k] = cube[k].astype(str)
    return cube


def _coord_values(values: list[Any]) -> np.ndarray:
    if any(isinstance(v, (list, tuple)) for v in values):
        return np.array([value_label(v) for v in values])
    if any(v is None for v in values):
        return np.array([str(v) for v in values])
    return np.asarray(values)
