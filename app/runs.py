"""Run data the dashboard keeps beside the live buffer: kept runs for overlays, saved runs opened
from a file, and the NetCDF / CSV exports.

Everything here reads or rebuilds ``ntk_core.buffer.RunBuffer``; no measurement is recomputed.
"""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ntk_core.buffer import SCALARS, SPECTRUM, STATUSES, RunBuffer, StepRecord, load_run, save_run

MAX_UPLOAD_MB = 200
MAX_KEPT = 8  # runs kept for comparison (the oldest is dropped)
REQUIRED_VARIABLES = ("loss", "two_over_lr", "sharpness", "gn_sharpness", "kta", "topk_mass",
                      "u1_residual", "eigenvalues", "eigval_normalized", "alignment", "label")
KEPT_COLUMNS = ("step", "loss", "sharpness", "two_over_lr", "kta", "topk_mass", "a1")


class RunFileError(ValueError):
    """A file that is not a readable ntk-eos run; the message says why."""


@dataclass
class KeptRun:
    """A finished or paused run kept for comparison: its curves and its final measurements."""

    label: str
    lr: float
    frame: pd.DataFrame  # KEPT_COLUMNS, measured steps for the measured columns
    final: dict[str, float] = field(default_factory=dict)  # kta, a1, topk_mass, sharpness, loss
    spectrum: pd.DataFrame | None = None  # eigval_normalized, alignment of the last measurement
    status: str = ""


def last_measured(rows: dict[str, np.ndarray]) -> int | None:
    """Index of the last measured row, or None."""
    idx = np.flatnonzero(rows["measured"] == 1)
    return int(idx[-1]) if len(idx) else None


def keep_run(buffer: RunBuffer, label: str, lr: float) -> KeptRun:
    """Copy what the overlays need from ``buffer`` (a few columns, not the eigenvectors)."""
    rows = buffer.rows(0)
    frame = pd.DataFrame({
        "step": rows["step"].astype(float), "loss": rows["loss"],
        "sharpness": rows["sharpness"], "two_over_lr": rows["two_over_lr"],
        "kta": rows["kta"], "topk_mass": rows["topk_mass"], "a1": rows["alignment"][:, 0],
    })
    final: dict[str, float] = {"loss": float(rows["loss"][-1]) if len(frame) else np.nan}
    spectrum = None
    i = last_measured(rows)
    if i is not None:
        final.update(kta=float(rows["kta"][i]), a1=float(rows["alignment"][i, 0]),
                     topk_mass=float(rows["topk_mass"][i]), sharpness=float(rows["sharpness"][i]))
        spectrum = pd.DataFrame({"eigval_normalized": rows["eigval_normalized"][i],
                                 "alignment": rows["alignment"][i]}).dropna()
    return KeptRun(label, lr, frame, final, spectrum, buffer.status)


# ---- export ------------------------------------------------------------------------------------
def netcdf_bytes(buffer: RunBuffer) -> io.BytesIO:
    """The whole run (what ``ntk-eos`` saves) as NetCDF bytes, via the engine's save_run."""
    with tempfile.TemporaryDirectory() as tmp:
        path = save_run(buffer.snapshot(), Path(tmp) / "run.nc")
        return io.BytesIO(path.read_bytes())


def csv_bytes(buffer: RunBuffer) -> io.BytesIO:
    """The per-step scalars (one row per step) as CSV."""
    rows = buffer.rows(0)
    frame = pd.DataFrame({"step": rows["step"], **{name: rows[name] for name in SCALARS}})
    return io.BytesIO(frame.to_csv(index=False).encode())


# ---- import ------------------------------------------------------------------------------------
def read_run_bytes(data: bytes, max_mb: float = MAX_UPLOAD_MB) -> xr.Dataset:
    """Open uploaded NetCDF bytes as a run Dataset, checking size and schema."""
    if len(data) > max_mb * 2**20:
        raise RunFileError(f"the file is {len(data) / 2**20:.0f} MB; the limit is {max_mb:g} MB")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload.nc"
        path.write_bytes(data)
        try:
            ds = load_run(path)
        except Exception as exc:
            raise RunFileError(f"not a readable NetCDF file ({type(exc).__name__})") from exc
    check_run_dataset(ds)
    return ds


def check_run_dataset(ds: xr.Dataset) -> None:
    missing = [name for name in REQUIRED_VARIABLES if name not in ds.variables]
    if "step" not in ds.dims or "eig" not in ds.dims or "sample" not in ds.dims:
        missing += [d for d in ("step", "eig", "sample") if d not in ds.dims]
    if missing:
        raise RunFileError("not an ntk-eos run: missing " + ", ".join(missing))
    if ds.sizes["step"] == 0:
        raise RunFileError("the run has no steps")


def buffer_from_dataset(ds: xr.Dataset) -> RunBuffer:
    """Rebuild a RunBuffer from a saved run so the live plots can show it unchanged."""
    check_run_dataset(ds)
    steps = ds["step"].values.astype(np.int64)
    row_names = ("label", "target", "sample_index", "output_index")
    row_data = {name: ds[name].values for name in row_names if name in ds.variables}
    snap_steps = ds["snapshot_step"].values if "snapshot_step" in ds.variables else []
    snap_of = {int(s): i for i, s in enumerate(snap_steps)}
    vectors = ds["eigenvectors"].values if "eigenvectors" in ds.variables else None
    kernel = ds["kernel"].values if "kernel" in ds.variables else None
    kernel_step = int(ds["kernel"].attrs.get("step", steps[-1])) if kernel is not None else None
    buffer = RunBuffer(ds.sizes["eig"], row_data, dict(ds.attrs), eigvec_every=1,
                       max_snapshots=max(2, len(snap_steps) + 1), capacity=max(1, len(steps)))
    scalars = {name: ds[name].values for name in SCALARS if name in ds.variables}
    spectrum = {name: ds[name].values for name in SPECTRUM if name in ds.variables}
    for i, step in enumerate(steps):
        j = snap_of.get(int(step))
        buffer.append(StepRecord(
            int(step), {name: float(values[i]) for name, values in scalars.items()},
            {name: values[i] for name, values in spectrum.items()},
            vectors[j] if vectors is not None and j is not None else None,
            kernel if kernel is not None and int(step) == kernel_step else None))
    status = str(ds.attrs.get("status", "completed"))
    buffer.set_status(status if status in STATUSES and status != "running" else "stopped",
                      str(ds.attrs.get("status_reason", "")))
    return buffer


def run_config_dict(attrs: dict) -> dict:
    """The run's config from its attributes ({} when absent or unreadable)."""
    try:
        return json.loads(attrs.get("config", "{}"))
    except (TypeError, ValueError):
        return {}
