"""Run files in and out of the dashboard: the NetCDF and CSV exports of a run, and the reading
of a run file from outside (an upload, the server's run folder) into a checked Dataset.

The file's layout and its checks are the engine's (``ntk_core.training.schema``); this module adds
the size limits of a server and the isolated reader (``runfile``).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ntk_core.training.buffer import RunBuffer, flow_column
from ntk_core.training.netcdf import run_bytes
from ntk_core.training.schema import (
    CENTRAL_SCALARS,
    DIM_CAPS,
    DISTANCE,
    PROCESS_SCALARS,
    REQUIRED_VARIABLES,
    SCALARS,
    RunSchemaError,
    check_run_dataset,
    config_from_attrs,
    process_variables,
    variables,
)

from .runfile import RunFileError, Schema, read_isolated

MAX_UPLOAD_MB = 200
MAX_DATA_MB = 1024  # a run's arrays once read (files are compressed: this bounds memory)
# A file's NTK over this many rows is left out, unread: the heatmap shows 256 × 256 blocks, and
# an 11,000-row kernel of zeros (1.1 MB gzipped) took 17 s and 1.8 GB of server memory to open.
MAX_KERNEL_ROWS = 4096
LEFT_OUT = "left_out"  # the attribute that says what the reader left out

__all__ = ["LEFT_OUT", "MAX_DATA_MB", "MAX_KERNEL_ROWS", "MAX_UPLOAD_MB", "RunFileError",
           "csv_bytes", "netcdf_bytes", "read_run_bytes", "run_config_dict", "run_schema"]


# ---- export ------------------------------------------------------------------------------------
def netcdf_bytes(buffer: RunBuffer) -> io.BytesIO:
    """The whole run (what ``ntk-eos`` saves) as NetCDF bytes, built in memory."""
    return io.BytesIO(run_bytes(buffer.snapshot()))


def csv_bytes(buffer: RunBuffer) -> io.BytesIO:
    """The per-step scalars (one row per step) as CSV; with flows, each flow's beside GD's
    (``loss@central``: ``flow_column``) and the central flow's own."""
    rows = buffer.rows(0)
    names = [*SCALARS, *(flow_column(name, p) for p in buffer.flows
                         for name in (*PROCESS_SCALARS, DISTANCE[0]))]
    if "central" in buffer.flows:
        names += list(CENTRAL_SCALARS)
    frame = pd.DataFrame({"step": rows["step"], **{name: rows[name] for name in names}})
    return io.BytesIO(frame.to_csv(index=False).encode())


# ---- import ------------------------------------------------------------------------------------
def run_schema(max_data_mb: float = MAX_DATA_MB) -> Schema:
    """What the isolated reader accepts: the engine's run variables with their dims, and a run
    with flows: the variables it stacks along ``process`` and those only it has."""
    plain = variables()
    flows = process_variables()
    return Schema({**plain, **{name: spec for name, spec in flows.items() if name not in plain}},
                  (*REQUIRED_VARIABLES, "step", "eig", "sample"), DIM_CAPS,
                  int(max_data_mb * 2**20),
                  inf_ok=frozenset({*SCALARS, *CENTRAL_SCALARS, DISTANCE[0]}),
                  var_attrs={"kernel": ("step",)},
                  leave_out_over={"kernel": MAX_KERNEL_ROWS**2},
                  alternatives={name: dims for name, (dims, _) in flows.items() if name in plain},
                  labels=("process",))


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
    ds = _dataset(contents.arrays, contents.attrs, contents.var_attrs, schema, contents.labels)
    try:
        check_run_dataset(ds)
    except RunSchemaError as exc:
        raise RunFileError(str(exc)) from None
    if contents.left_out:
        ds.attrs[LEFT_OUT] = "; ".join(
            f"its {name} ({' × '.join(f'{n:,}' for n in shape)}, over the viewer's "
            f"{MAX_KERNEL_ROWS:,} rows)" for name, shape in contents.left_out.items())
    return ds


def _dataset(arrays: dict[str, np.ndarray], attrs: dict[str, Any],
             var_attrs: dict[str, dict[str, Any]], schema: Schema,
             labels: dict[str, list[str]]) -> xr.Dataset:
    coords: dict[str, Any] = {name: arrays.pop(name) for name in ("step", "eig", "sample")
                              if name in arrays}
    if "snapshot_step" in arrays:
        coords["snapshot_step"] = ("snapshot", arrays.pop("snapshot_step"))
    data_vars = {name: (schema.dims(name, values.ndim), values, var_attrs.get(name, {}))
                 for name, values in arrays.items()}
    processes = {values.shape[0] for name, values in arrays.items()
                 if (schema.dims(name, values.ndim) or ("",))[0] == "process"}
    if processes:  # a run with flows: gd and each flow (the engine checks the labels' order)
        names = labels.get("process")
        if names is None:
            raise RunFileError("the file stacks processes but does not name them")
        if processes != {len(names)}:
            raise RunFileError(f"the file stacks {max(processes)} processes and names "
                               f"{len(names)}")
        coords["process"] = np.array(names, dtype=object)
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def run_config_dict(attrs: dict) -> dict:
    """The run's config from its attributes ({} when absent or unreadable)."""
    try:
        return config_from_attrs(attrs).to_dict()
    except RunSchemaError:
        return {}
