"""Run data the dashboard keeps beside the live buffer: kept runs for overlays, saved runs opened
from a file, and the NetCDF / CSV exports.

Everything here reads or rebuilds ``ntk_core.buffer.RunBuffer``; no measurement is recomputed.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ntk_core.buffer import (
    SCALARS,
    SPECTRUM,
    STATUSES,
    RunBuffer,
    StepRecord,
    run_bytes,
)
from ntk_core.config import MAX_K, MAX_N, MAX_STEPS, ConfigError, RunConfig

from .runfile import RunFileError, Schema, read_isolated

MAX_UPLOAD_MB = 200
MAX_DATA_MB = 1024  # a run's arrays once read (files are compressed: this bounds memory)
# A file's NTK over this many rows is left out, unread: the heatmap shows 256 × 256 blocks, and
# an 11,000-row kernel of zeros (1.1 MB gzipped) took 17 s and 1.8 GB of server memory to open.
MAX_KERNEL_ROWS = 4096
LEFT_OUT = "left_out"  # the attribute that says what the reader left out
MAX_KEPT = 8  # runs kept for comparison (the oldest is dropped)
MAX_REASON_CHARS = 2000
MAX_CLASS = 1000  # class indices and outputs (RunConfig allows classes below 1000)
REQUIRED_VARIABLES = ("loss", "two_over_lr", "sharpness", "gn_sharpness", "kta", "topk_mass",
                      "u1_residual", "eigenvalues", "eigval_normalized", "alignment", "label")
ROW_VARIABLES = {"label": "i", "target": "f", "sample_index": "i", "output_index": "i"}
DIM_CAPS = {"step": MAX_STEPS + 1, "eig": MAX_K, "sample": 20 * MAX_N, "snapshot": 100_000}
KEPT_COLUMNS = ("step", "loss", "sharpness", "two_over_lr", "kta", "topk_mass", "a1")

__all__ = ["LEFT_OUT", "MAX_DATA_MB", "MAX_KEPT", "MAX_KERNEL_ROWS", "MAX_UPLOAD_MB", "KeptRun",
           "RunFileError", "buffer_from_dataset",
           "check_run_dataset", "config_from_attrs", "csv_bytes", "keep_run", "last_measured",
           "netcdf_bytes", "read_run_bytes", "run_config_dict", "run_schema"]


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


def lr_history_label(lrs: np.ndarray) -> str:
    """"η=0.1", or "η=0.1→0.05" for a run whose η was changed on the way (first → … → last)."""
    finite = np.asarray(lrs, dtype=float)
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return "η=?"
    changes = finite[np.r_[True, finite[1:] != finite[:-1]]]
    shown = [f"{v:g}" for v in changes]
    if len(shown) > 3:
        shown = [shown[0], "…", shown[-1]]
    return "η=" + "→".join(shown)


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
    """The whole run (what ``ntk-eos`` saves) as NetCDF bytes, built in memory."""
    return io.BytesIO(run_bytes(buffer.snapshot()))


def csv_bytes(buffer: RunBuffer) -> io.BytesIO:
    """The per-step scalars (one row per step) as CSV."""
    rows = buffer.rows(0)
    frame = pd.DataFrame({"step": rows["step"], **{name: rows[name] for name in SCALARS}})
    return io.BytesIO(frame.to_csv(index=False).encode())


# ---- import ------------------------------------------------------------------------------------
def run_schema(max_data_mb: float = MAX_DATA_MB) -> Schema:
    """The variables a run file may hold (``RunBuffer.snapshot``'s), with their dims."""
    variables: dict[str, tuple[tuple[str, ...], str]] = {
        "step": (("step",), "i"), "eig": (("eig",), "i"), "sample": (("sample",), "i"),
        "snapshot_step": (("snapshot",), "i"),
        **{name: (("step",), "f") for name in SCALARS},
        **{name: (("step", "eig"), "f") for name in SPECTRUM},
        "eigenvectors": (("snapshot", "eig", "sample"), "f"),
        "kernel": (("sample", "sample_col"), "f"),
        **{name: (("sample",), kind) for name, kind in ROW_VARIABLES.items()},
    }
    return Schema(variables, (*REQUIRED_VARIABLES, "step", "eig", "sample"), DIM_CAPS,
                  int(max_data_mb * 2**20), inf_ok=frozenset(SCALARS),
                  var_attrs={"kernel": ("step",)},
                  leave_out_over={"kernel": MAX_KERNEL_ROWS**2})


def read_run_bytes(data: bytes, max_mb: float = MAX_UPLOAD_MB,
                   max_data_mb: float = MAX_DATA_MB) -> xr.Dataset:
    """Open NetCDF bytes from outside (an upload, the server's run folder) as a run Dataset:
    size limit, then the isolated strict reader, then the checks of ``check_run_dataset``.
    A kernel over ``MAX_KERNEL_ROWS`` rows is left out, and the ``left_out`` attribute says so.
    Raises RunFileError."""
    if len(data) > max_mb * 2**20:
        raise RunFileError(f"the file is {len(data) / 2**20:.0f} MB; the limit is {max_mb:g} MB")
    schema = run_schema(max_data_mb)
    contents = read_isolated(bytes(data), schema)
    contents.attrs.pop(LEFT_OUT, None)  # only the reader says what it left out
    ds = _dataset(contents.arrays, contents.attrs, contents.var_attrs, schema)
    check_run_dataset(ds)
    if contents.left_out:
        ds.attrs[LEFT_OUT] = "; ".join(
            f"its {name} ({' × '.join(f'{n:,}' for n in shape)}, over the viewer's "
            f"{MAX_KERNEL_ROWS:,} rows)" for name, shape in contents.left_out.items())
    return ds


def _dataset(arrays: dict[str, np.ndarray], attrs: dict[str, Any],
             var_attrs: dict[str, dict[str, Any]], schema: Schema) -> xr.Dataset:
    coords = {name: arrays.pop(name) for name in ("step", "eig", "sample") if name in arrays}
    if "snapshot_step" in arrays:
        coords["snapshot_step"] = ("snapshot", arrays.pop("snapshot_step"))
    data_vars = {name: (schema.variables[name][0], values, var_attrs.get(name, {}))
                 for name, values in arrays.items()}
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def check_run_dataset(ds: xr.Dataset) -> None:
    """A run's structure and meaning: variables, dims within caps, steps increasing, row indices
    in range, and attributes of the right types (the config one that RunConfig accepts)."""
    missing = [name for name in REQUIRED_VARIABLES if name not in ds.variables]
    missing += [d for d in ("step", "eig", "sample") if d not in ds.dims]
    if missing:
        raise RunFileError("not an ntk-eos run: missing " + ", ".join(missing))
    for dim, size in ds.sizes.items():
        if size > DIM_CAPS.get("sample" if dim == "sample_col" else str(dim), 0):
            raise RunFileError(f"dimension {dim} has {size} entries, more than a run may have")
    if ds.sizes["step"] == 0:
        raise RunFileError("the run has no steps")
    steps = _integers(ds, "step")
    if steps[0] < 0 or np.any(np.diff(steps) <= 0):
        raise RunFileError("the steps must be increasing numbers from 0 up")
    m = ds.sizes["sample"]
    for name, low, high in (("label", 0, MAX_CLASS), ("sample_index", 0, m),
                            ("output_index", 0, MAX_CLASS), ("snapshot_step", 0, steps[-1] + 1)):
        if name in ds.variables:
            values = _integers(ds, name)
            if values.size and (values.min() < low or values.max() >= high):
                raise RunFileError(f"{name} holds values outside [{low}, {high})")
    if "kernel" in ds.variables:
        if ds["kernel"].ndim != 2 or ds["kernel"].shape[0] != ds["kernel"].shape[1]:
            raise RunFileError("the kernel must be a square matrix")
        if not isinstance(ds["kernel"].attrs.get("step", 0), (int, np.integer)):
            raise RunFileError("the kernel's step attribute must be a whole number")
    for name in ds.data_vars:
        if ds[name].dtype.kind not in "iuf":
            raise RunFileError(f"{name} has type {ds[name].dtype}; a run holds numbers only")
    _check_attributes(ds.attrs)


def _integers(ds: xr.Dataset, name: str) -> np.ndarray:
    values = ds[name].values
    if values.dtype.kind not in "iu":
        raise RunFileError(f"{name} must hold whole numbers")
    return values.astype(np.int64)


def _check_attributes(attrs: dict[str, Any]) -> None:
    status = attrs.get("status", "completed")
    if status not in STATUSES:
        raise RunFileError(f"unknown run status {str(status)[:40]!r}")
    reason = attrs.get("status_reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS:
        raise RunFileError(f"the status reason must be text of at most {MAX_REASON_CHARS} "
                           "characters")
    lr = attrs.get("lr", 1.0)
    if isinstance(lr, bool) or not isinstance(lr, (int, float, np.number)) \
            or not (math.isfinite(lr) and lr > 0):
        raise RunFileError("the lr attribute must be a positive number")
    if "config" not in attrs:
        raise RunFileError("not an ntk-eos run: missing the config attribute")
    config_from_attrs(attrs)


def config_from_attrs(attrs: dict[str, Any]) -> RunConfig:
    """The run's RunConfig, validated by the engine. Raises RunFileError."""
    text = attrs.get("config")
    try:
        values = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError):
        values = None
    if not isinstance(values, dict):
        raise RunFileError("the config attribute is not a JSON object")
    try:
        return RunConfig.from_dict(values)
    except ConfigError as exc:
        raise RunFileError(f"the run's config is not valid: {exc}") from None


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
        return config_from_attrs(attrs).to_dict()
    except RunFileError:
        return {}
