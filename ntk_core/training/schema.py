"""A run's file format, both ways: the variables of a run log, the xarray Dataset that
``RunBuffer.snapshot`` writes (and ``save_run`` saves), and the checks and the inverse that read
one back (``RunBuffer.from_dataset``).

Dims ``step``, ``eig``, ``sample`` and ``snapshot``:

* per step: the scalars in ``SCALARS`` (NaN on steps without a measurement);
* per step and eigen-index: the arrays in ``SPECTRUM``;
* ``eigenvectors`` (snapshot, eig, sample): the top-k eigenvectors, sign-fixed so u_iᵀy ≥ 0;
* ``kernel`` (sample, sample_col): the NTK at the last snapshot, when the kernel is explicit;
* per kernel row (dim ``sample``): the arrays in ``ROWS``; rows are samples (or sample × output
  for the full multi-output kernel), sorted by class.

Attributes: ``config`` (JSON), ``status``, ``status_reason``, ``lr``, ``versions`` (JSON) etc.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np
import xarray as xr

from ..config import MAX_K, MAX_N, MAX_STEPS, ConfigError, RunConfig
from ..numerics.stability import stability_threshold
from ..vocabulary import GD_PROCESS, FlowName, RunStatus

FLOW_NAMES: tuple[str, ...] = get_args(FlowName)

# name -> (long name, units)
SCALARS: dict[str, tuple[str, str]] = {
    "loss": ("training loss", "1"),
    "accuracy": ("training accuracy", "1"),
    "lr": ("learning rate η", "1"),
    # logged with its own label: xarray arithmetic keeps the operand's attributes, so a plot
    # of ``2 / ds.lr`` is labelled "learning rate η"
    "two_over_lr": ("stability threshold 2/η", "1"),
    # the optimiser's own threshold (numerics.stability): 2/η for plain GD, (2 + 2β)/η with
    # heavy-ball momentum, 2(1 + β₁)/((1 − β₁)η) for Adam on the preconditioned sharpness ...
    "stability_threshold": ("stability threshold of the optimiser", "1"),
    "grad_norm": ("gradient norm ‖∇L‖", "1"),
    "sharpness": ("Hessian sharpness λ_max(∇²L)", "1"),
    "preconditioned_sharpness": ("preconditioned sharpness λ_max(P⁻¹∇²L)", "1"),
    "batch_sharpness": ("batch sharpness E_B[g_Bᵀ H_B g_B / ‖g_B‖²]", "1"),
    "gn_sharpness": ("Gauss–Newton sharpness λ₁(K)/n", "1"),
    "kta": ("kernel–target alignment", "1"),
    "kta_centered": ("centred kernel–target alignment", "1"),
    "kta_stderr": ("standard error of the KTA estimate", "1"),
    "topk_mass": ("top-k target mass A_k", "1"),
    "kernel_fro": ("NTK Frobenius norm ‖K‖_F", "1"),
    "kernel_trace": ("NTK trace tr K", "1"),
    "kernel_distance": ("kernel distance to the initial NTK", "1"),
    "u1_residual": ("residual along the top NTK eigenvector u₁ᵀr", "1"),
    "ntk_products": ("NTK operator products used", "count"),
    "ntk_max_residual": ("largest relative eigen-residual", "1"),
    "hvp_products": ("Hessian-vector products used", "count"),
    "hessian_residual": ("relative residual of the Hessian eigenpair", "1"),
    "time_step": ("wall time of the step including measurement", "s"),
    "time_measure": ("wall time of the measurement", "s"),
    "measured": ("1 where this step was measured", "1"),
}
SPECTRUM: dict[str, tuple[str, str]] = {
    "eigenvalues": ("NTK eigenvalue λ_i", "1"),
    "eigval_normalized": ("normalised eigenvalue λ_i/‖K‖_F", "1"),
    "alignment": ("target alignment a_i = (u_iᵀy)²/‖y‖²", "1"),
    "residual_proj": ("residual along eigenvector u_iᵀr", "1"),
}
# With flows (``config.flows``) these are measured along every process, and the file indexes
# them (process, step), gd first; the SPECTRUM arrays become (process, step, eig).
PROCESS_SCALARS = ("loss", "accuracy", "grad_norm", "sharpness", "gn_sharpness", "kta",
                   "kta_centered", "kta_stderr", "topk_mass", "kernel_fro", "kernel_trace",
                   "kernel_distance", "u1_residual", "ntk_products", "ntk_max_residual",
                   "hvp_products", "hessian_residual", "measured")
# ... and these only exist with flows: the distance (process, step), the central flow's (step)
DISTANCE = ("distance_to_gd", "relative distance to gradient descent ‖w − w_gd‖/‖w_gd‖", "1")
CENTRAL_SCALARS: dict[str, tuple[str, str]] = {
    "predicted_loss": ("central flow's predicted time-averaged loss L + tr(Σ)/η", "1"),
    "sigma_sq_trace": ("central flow's tr Σ, GD's predicted oscillation variance", "1"),
    "critical_count": ("Hessian eigenvalues in the central flow's problem", "count"),
    "flow_kkt_residual": ("KKT residual of the central flow's complementarity solve", "1"),
}
SIGMA_SQ = ("sigma_sq", "central flow's σ_i², the eigenvalues of X", "1")
# name -> (long name, kind: "i" whole numbers, "f" floats)
ROWS: dict[str, tuple[str, str]] = {
    "label": ("class index of the sample", "i"),
    "target": ("training target of the kernel row", "f"),
    "sample_index": ("sample of the kernel row", "i"),
    "output_index": ("output of the kernel row", "i"),
}

# What a file must hold to be read back, and the most a run can have along each dim.
REQUIRED_VARIABLES = ("loss", "two_over_lr", "sharpness", "gn_sharpness", "kta", "topk_mass",
                      "u1_residual", "eigenvalues", "eigval_normalized", "alignment", "label")
DIM_CAPS = {"step": MAX_STEPS + 1, "eig": MAX_K, "sample": 20 * MAX_N, "snapshot": 100_000,
            "process": 1 + len(FLOW_NAMES), "critical": 16}
MAX_CLASS = 1000  # class indices and outputs (RunConfig allows classes below 1000)
MAX_REASON_CHARS = 2000
STATUS_VALUES = frozenset(status.value for status in RunStatus)


class RunSchemaError(ValueError):
    """A Dataset that is not an ntk-eos run; the message says what is wrong."""


def variables() -> dict[str, tuple[tuple[str, ...], str]]:
    """Every variable a run file may hold: name -> (dims, kind 'i' or 'f')."""
    return {
        "step": (("step",), "i"), "eig": (("eig",), "i"), "sample": (("sample",), "i"),
        "snapshot_step": (("snapshot",), "i"),
        **{name: (("step",), "f") for name in SCALARS},
        **{name: (("step", "eig"), "f") for name in SPECTRUM},
        "eigenvectors": (("snapshot", "eig", "sample"), "f"),
        "kernel": (("sample", "sample_col"), "f"),
        **{name: (("sample",), kind) for name, (_, kind) in ROWS.items()},
    }


def process_variables() -> dict[str, tuple[tuple[str, ...], str]]:
    """What a run with flows holds besides, or instead of, ``variables()``."""
    return {
        **{name: (("process", "step"), "f") for name in PROCESS_SCALARS},
        **{name: (("process", "step", "eig"), "f") for name in SPECTRUM},
        DISTANCE[0]: (("process", "step"), "f"),
        **{name: (("step",), "f") for name in CENTRAL_SCALARS},
        SIGMA_SQ[0]: (("step", "critical"), "f"),
    }


def run_flows(attrs: dict[str, Any]) -> tuple[str, ...]:
    """The flows a run's attributes name (its ``flows`` attribute, comma-separated)."""
    text = attrs.get("flows", "")
    return tuple(name for name in str(text).split(",") if name)


@dataclass
class FlowContents:
    """A run's flows: per process its PROCESS_SCALARS, SPECTRUM and distance_to_gd arrays,
    and the central flow's own (CENTRAL_SCALARS and sigma_sq)."""

    processes: dict[str, dict[str, np.ndarray]]
    central: dict[str, np.ndarray]


def measured_rows(measured: np.ndarray) -> np.ndarray:
    """Indices of the measured steps of a log (its ``measured`` flag is 1 there)."""
    return np.flatnonzero(np.asarray(measured) == 1)


def last_measured(measured: np.ndarray) -> int | None:
    """Index of the last measured step of a log, or None when no step was measured."""
    rows = measured_rows(measured)
    return int(rows[-1]) if len(rows) else None


@dataclass
class LogContents:
    """A run log's arrays and attributes in the file's layout: what a Dataset is written from and
    read back into. ``k`` eigenpairs per step, ``m`` kernel rows."""

    steps: np.ndarray  # (r,) int64
    scalars: dict[str, np.ndarray]  # every name of SCALARS: (r,)
    spectrum: dict[str, np.ndarray]  # every name of SPECTRUM: (r, k)
    snapshot_steps: np.ndarray  # (s,) int64
    eigenvectors: np.ndarray  # (s, k, m) float32
    kernel: tuple[int, np.ndarray] | None  # (its step, (m, m) with sample-major rows)
    rows: dict[str, np.ndarray]  # names of ROWS: (m,)
    attrs: dict[str, Any]
    flows: FlowContents | None = None

    @property
    def k(self) -> int:
        return next(iter(self.spectrum.values())).shape[1]


# ---- writing -----------------------------------------------------------------------------------
def to_dataset(log: LogContents) -> xr.Dataset:
    """The run's Dataset, with CF ``long_name`` and ``units`` on every variable."""
    k, m = log.k, len(next(iter(log.rows.values())))
    data_vars: dict[str, Any] = {}
    for name, (long_name, units) in SCALARS.items():
        data_vars[name] = ("step", log.scalars[name], {"long_name": long_name, "units": units})
    for name, (long_name, units) in SPECTRUM.items():
        data_vars[name] = (("step", "eig"), log.spectrum[name],
                           {"long_name": long_name, "units": units})
    data_vars["eigenvectors"] = (("snapshot", "eig", "sample"), log.eigenvectors[:, :k],
                                 {"long_name": "top-k NTK eigenvectors (u_iᵀy ≥ 0)",
                                  "units": "1"})
    if log.kernel is not None:
        step, K = log.kernel
        data_vars["kernel"] = (("sample", "sample_col"), K,
                               {"long_name": f"empirical NTK at step {step}", "units": "1",
                                "step": int(step)})
    for name, values in log.rows.items():
        long_name = ROWS[name][0] if name in ROWS else name
        data_vars[name] = ("sample", values, {"long_name": long_name, "units": "1"})
    coords = {
        "step": ("step", log.steps, {"long_name": "gradient-descent step", "units": "1"}),
        "eig": ("eig", np.arange(k), {"long_name": "eigen-index (0 = top)", "units": "1"}),
        "sample": ("sample", np.arange(m), {"long_name": "kernel row", "units": "1"}),
        "snapshot_step": ("snapshot", log.snapshot_steps,
                          {"long_name": "step of the eigenvector snapshot", "units": "1"}),
    }
    if log.flows is not None:
        _add_flows(data_vars, coords, log)
    attrs = {**log.attrs, "steps_done": len(log.steps)}
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def _add_flows(data_vars: dict[str, Any], coords: dict[str, Any], log: LogContents) -> None:
    """Stack gd and every flow along ``process``, and add the central flow's own variables."""
    assert log.flows is not None
    names = list(log.flows.processes)
    r = len(log.steps)
    coords["process"] = ("process", np.array([GD_PROCESS, *names], dtype=object),
                         {"long_name": "gradient descent and the flows beside it"})
    for name in PROCESS_SCALARS:
        long_name, units = SCALARS[name]
        stacked = np.stack([log.scalars[name], *(log.flows.processes[p][name] for p in names)])
        data_vars[name] = (("process", "step"), stacked, {"long_name": long_name, "units": units})
    for name, (long_name, units) in SPECTRUM.items():
        stacked = np.stack([log.spectrum[name], *(log.flows.processes[p][name] for p in names)])
        data_vars[name] = (("process", "step", "eig"), stacked,
                           {"long_name": long_name, "units": units})
    distance = np.stack([np.zeros(r), *(log.flows.processes[p][DISTANCE[0]] for p in names)])
    data_vars[DISTANCE[0]] = (("process", "step"), distance,
                              {"long_name": DISTANCE[1], "units": DISTANCE[2]})
    for name, (long_name, units) in CENTRAL_SCALARS.items():
        data_vars[name] = ("step", log.flows.central[name],
                           {"long_name": long_name, "units": units})
    data_vars[SIGMA_SQ[0]] = (("step", "critical"), log.flows.central[SIGMA_SQ[0]],
                              {"long_name": SIGMA_SQ[1], "units": SIGMA_SQ[2]})


# ---- reading -----------------------------------------------------------------------------------
def from_dataset(ds: xr.Dataset) -> LogContents:
    """The contents of a run Dataset, checked by ``check_run_dataset``. A run saved while it
    was running reads back as ``stopped``: nothing steps it any more."""
    check_run_dataset(ds)
    flows = _read_flows(ds)
    if flows is not None:
        ds = ds.sel(process=GD_PROCESS).drop_vars("process")
    r, k = ds.sizes["step"], ds.sizes["eig"]
    kernel = None
    if "kernel" in ds.variables:
        kernel = (int(ds["kernel"].attrs.get("step", ds["step"].values[-1])), ds["kernel"].values)
    snapshot_steps = (ds["snapshot_step"].values if "snapshot_step" in ds.variables
                      else np.zeros(0, np.int64))
    m = ds.sizes["sample"]
    eigenvectors = (ds["eigenvectors"].values.astype(np.float32, copy=False)
                    if "eigenvectors" in ds.variables else np.zeros((0, k, m), np.float32))
    attrs = dict(ds.attrs)
    status = str(attrs.get("status", RunStatus.COMPLETED))
    attrs["status"] = (RunStatus.STOPPED if status == RunStatus.RUNNING else RunStatus(status)).value
    attrs["status_reason"] = str(attrs.get("status_reason", ""))
    return LogContents(
        steps=ds["step"].values.astype(np.int64),
        scalars={name: _values(ds, name, (r,)) for name in SCALARS} | _derived(ds, attrs),
        spectrum={name: _values(ds, name, (r, k)) for name in SPECTRUM},
        snapshot_steps=np.asarray(snapshot_steps, np.int64), eigenvectors=eigenvectors,
        kernel=kernel, rows={name: ds[name].values for name in ROWS if name in ds.variables},
        attrs=attrs, flows=flows)


def _read_flows(ds: xr.Dataset) -> FlowContents | None:
    if "process" not in ds.dims:
        return None
    labels = [str(p) for p in ds["process"].values] if "process" in ds.variables else []
    names = run_flows(ds.attrs)
    if labels != [GD_PROCESS, *names]:
        raise RunSchemaError(f"the process labels {labels[:5]} do not match the run's flows "
                             f"({', '.join(names) or 'none'})")
    r, k = ds.sizes["step"], ds.sizes["eig"]
    processes = {}
    for p in names:
        one = ds.sel(process=p)
        processes[p] = ({name: _values(one, name, (r,)) for name in PROCESS_SCALARS}
                        | {name: _values(one, name, (r, k)) for name in SPECTRUM}
                        | {DISTANCE[0]: _values(one, DISTANCE[0], (r,))})
    width = ds.sizes.get("critical", 0)
    central = ({name: _values(ds, name, (r,)) for name in CENTRAL_SCALARS}
               | {SIGMA_SQ[0]: _values(ds, SIGMA_SQ[0], (r, width))})
    return FlowContents(processes, central)


def _derived(ds: xr.Dataset, attrs: dict[str, Any]) -> dict[str, np.ndarray]:
    """What a file from before a variable existed implies for it: runs saved before
    ``stability_threshold`` were gradient descent, with heavy-ball momentum at most."""
    if "stability_threshold" in ds.variables or "lr" not in ds.variables:
        return {}
    try:
        momentum = float(json.loads(str(attrs.get("config", "{}"))).get("momentum", 0.0))
    except (ValueError, TypeError, AttributeError):
        return {}
    if not (math.isfinite(momentum) and 0 <= momentum < 1):
        return {}
    lr = ds["lr"].values.astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        # every threshold is a constant over η
        return {"stability_threshold": np.where(
            lr > 0, stability_threshold("gd", 1.0, momentum) / lr, np.nan)}


def _values(ds: xr.Dataset, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float copy of ``name``, or NaN where the file does not hold it."""
    return ds[name].values.astype(float) if name in ds.variables else np.full(shape, np.nan)


def check_run_dataset(ds: xr.Dataset) -> None:
    """A run's structure and meaning: variables, dims within caps, steps increasing, row indices
    in range, and attributes of the right types (the config one that RunConfig accepts).
    Raises RunSchemaError."""
    missing = [name for name in REQUIRED_VARIABLES if name not in ds.variables]
    missing += [d for d in ("step", "eig", "sample") if d not in ds.dims]
    if missing:
        raise RunSchemaError("not an ntk-eos run: missing " + ", ".join(missing))
    for dim, size in ds.sizes.items():
        if size > DIM_CAPS.get("sample" if dim == "sample_col" else str(dim), 0):
            raise RunSchemaError(f"dimension {dim} has {size} entries, more than a run may have")
    if ds.sizes["step"] == 0:
        raise RunSchemaError("the run has no steps")
    steps = _integers(ds, "step")
    if steps[0] < 0 or np.any(np.diff(steps) <= 0):
        raise RunSchemaError("the steps must be increasing numbers from 0 up")
    m = ds.sizes["sample"]
    for name, low, high in (("label", 0, MAX_CLASS), ("sample_index", 0, m),
                            ("output_index", 0, MAX_CLASS), ("snapshot_step", 0, steps[-1] + 1)):
        if name in ds.variables:
            values = _integers(ds, name)
            if values.size and (values.min() < low or values.max() >= high):
                raise RunSchemaError(f"{name} holds values outside [{low}, {high})")
    if "kernel" in ds.variables:
        if ds["kernel"].ndim != 2 or ds["kernel"].shape[0] != ds["kernel"].shape[1]:
            raise RunSchemaError("the kernel must be a square matrix")
        if not isinstance(ds["kernel"].attrs.get("step", 0), (int, np.integer)):
            raise RunSchemaError("the kernel's step attribute must be a whole number")
    for var in ds.data_vars:
        if ds[var].dtype.kind not in "iuf":
            raise RunSchemaError(f"{var} has type {ds[var].dtype}; a run holds numbers only")
    _check_attributes(ds.attrs)


def _integers(ds: xr.Dataset, name: str) -> np.ndarray:
    values = ds[name].values
    if values.dtype.kind not in "iu":
        raise RunSchemaError(f"{name} must hold whole numbers")
    return values.astype(np.int64)


def _check_attributes(attrs: dict[str, Any]) -> None:
    status = attrs.get("status", RunStatus.COMPLETED)
    if not isinstance(status, str) or status not in STATUS_VALUES:
        raise RunSchemaError(f"unknown run status {str(status)[:40]!r}")
    reason = attrs.get("status_reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS:
        raise RunSchemaError(f"the status reason must be text of at most {MAX_REASON_CHARS} "
                             "characters")
    lr = attrs.get("lr", 1.0)
    if isinstance(lr, bool) or not isinstance(lr, (int, float, np.number)) \
            or not (math.isfinite(lr) and lr > 0):
        raise RunSchemaError("the lr attribute must be a positive number")
    if "config" not in attrs:
        raise RunSchemaError("not an ntk-eos run: missing the config attribute")
    config_from_attrs(attrs)


def config_from_attrs(attrs: dict[str, Any]) -> RunConfig:
    """The run's RunConfig, validated by the engine. Raises RunSchemaError."""
    text = attrs.get("config")
    try:
        values = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError):
        values = None
    if not isinstance(values, dict):
        raise RunSchemaError("the config attribute is not a JSON object")
    try:
        return RunConfig.from_dict(values)
    except ConfigError as exc:
        raise RunSchemaError(f"the run's config is not valid: {exc}") from None
