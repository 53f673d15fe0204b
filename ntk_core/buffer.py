"""The run log: a growing, thread-safe record of every step, exported as an xarray Dataset.

One writer (the trainer) appends; any number of readers (dashboard sessions, the CLI) pull new
rows with ``rows(start)`` or take a consistent ``snapshot()``. Storage is preallocated numpy,
grown by doubling, so appends are O(1) and never allocate per step.

Schema (dims ``step``, ``eig``, ``sample``, ``snapshot``):

* per step: the scalars in ``SCALARS`` (NaN on steps without a measurement);
* per step and eigen-index: the arrays in ``SPECTRUM``;
* ``eigenvectors`` (snapshot, eig, sample): the top-k eigenvectors, sign-fixed so u_iᵀy ≥ 0.
  Memory is bounded by *thinning*: at most ``eigvec_max_snapshots`` are kept; when full, every
  other snapshot is dropped and the cadence doubles, so snapshots always span the whole run;
* ``kernel`` (sample, sample_col): the NTK at the last snapshot, when the kernel is explicit;
* per kernel row (dim ``sample``): ``label``, ``target``, ``sample_index``, ``output_index`` —
  rows are samples (or sample × output for the full multi-output kernel), sorted by class.

Attributes: ``config`` (JSON), ``status``, ``status_reason``, ``lr``, ``versions`` (JSON) etc.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

SCALARS: dict[str, tuple[str, str]] = {
    "loss": ("training loss", "1"),
    "accuracy": ("training accuracy", "1"),
    "lr": ("learning rate η", "1"),
    # logged with its own label: xarray arithmetic keeps the operand's attributes, so a plot
    # of ``2 / ds.lr`` is labelled "learning rate η"
    "two_over_lr": ("stability threshold 2/η", "1"),
    "grad_norm": ("gradient norm ‖∇L‖", "1"),
    "sharpness": ("Hessian sharpness λ_max(∇²L)", "1"),
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
STATUSES = ("ready", "running", "paused", "completed", "reached_target", "diverged", "stopped",
            "failed")


@dataclass
class StepRecord:
    """What one step produced: scalars, the top-k spectrum, and optionally eigenvectors / K."""

    step: int
    scalars: dict[str, float]
    spectrum: dict[str, np.ndarray] | None = None
    eigenvectors: np.ndarray | None = None  # (k, m) float32
    kernel: np.ndarray | None = None  # (m, m) float32
    # C when ``kernel`` is in the engine's output-major row order (c·n + i): the buffer turns it
    # sample-major only when it is read, which is far rarer than it is replaced.
    kernel_outputs: int = 0


def sample_major(kernel: np.ndarray, outputs: int) -> np.ndarray:
    """An output-major (c·n + i) kernel reordered to the buffer's sample-major rows (i·C + c)."""
    if outputs <= 1:
        return kernel
    m = kernel.shape[0]
    n = m // outputs
    return np.ascontiguousarray(
        kernel.reshape(outputs, n, outputs, n).transpose(1, 0, 3, 2)).reshape(m, m)


class RunBuffer:
    def __init__(self, k: int, rows: dict[str, np.ndarray], attrs: dict[str, Any],
                 eigvec_every: int = 1, max_snapshots: int = 256, capacity: int = 256) -> None:
        self.k = k
        self.row_data = rows  # per kernel-row arrays: label, target, sample_index, output_index
        self.m = len(next(iter(rows.values())))
        self.attrs = dict(attrs)
        self.attrs.setdefault("status", "ready")
        self.attrs.setdefault("status_reason", "")
        self.eigvec_every = eigvec_every
        self.max_snapshots = max_snapshots
        self._lock = threading.Lock()
        self._len = 0
        self._steps = np.zeros(capacity, np.int64)
        self._scalars = {name: np.full(capacity, np.nan) for name in SCALARS}
        self._spectrum = {name: np.full((capacity, k), np.nan) for name in SPECTRUM}
        self._snap_steps: list[int] = []
        self._snaps: list[np.ndarray] = []
        self._kernel: tuple[int, np.ndarray, int] | None = None  # step, K, its kernel_outputs
        self.version = 0  # bumps on every change; readers compare it to skip redraws

    # ---- writer --------------------------------------------------------------------------
    def wants_eigenvectors(self, step: int) -> bool:
        return step % self.eigvec_every == 0

    def append(self, record: StepRecord) -> None:
        with self._lock:
            if self._len == len(self._steps):
                self._grow()
            i = self._len
            self._steps[i] = record.step
            for name, value in record.scalars.items():
                if name in self._scalars:
                    self._scalars[name][i] = value
            if record.spectrum is not None:
                for name, values in record.spectrum.items():
                    self._spectrum[name][i, : len(values)] = values
            if record.eigenvectors is not None:
                self._snap_steps.append(record.step)
                self._snaps.append(record.eigenvectors.astype(np.float32, copy=False))
                if len(self._snaps) > self.max_snapshots:
                    self._snap_steps = self._snap_steps[::2]
                    self._snaps = self._snaps[::2]
                    self.eigvec_every *= 2
            if record.kernel is not None:
                self._kernel = (record.step, record.kernel, record.kernel_outputs)
            self._len += 1
            self.version += 1

    def _grow(self) -> None:
        cap = 2 * len(self._steps)
        self._steps = np.resize(self._steps, cap)
        for name, arr in self._scalars.items():
            new = np.full(cap, np.nan)
            new[: len(arr)] = arr
            self._scalars[name] = new
        for name, arr in self._spectrum.items():
            new = np.full((cap, self.k), np.nan)
            new[: len(arr)] = arr
            self._spectrum[name] = new

    def set_kernel(self, step: int, kernel: np.ndarray, outputs: int = 0) -> None:
        """Replace the kept kernel with step ``step``'s (a mirror catching up with its source)."""
        with self._lock:
            self._kernel = (step, kernel, outputs)
            self.version += 1

    def set_status(self, status: str, reason: str = "") -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        with self._lock:
            self.attrs["status"] = status
            self.attrs["status_reason"] = reason
            self.version += 1

    def set_attr(self, name: str, value: Any) -> None:
        with self._lock:
            self.attrs[name] = value
            self.version += 1

    # ---- readers -------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._len

    @property
    def capacity(self) -> int:
        """Rows allocated so far (grows by doubling)."""
        return len(self._steps)

    @property
    def status(self) -> str:
        return self.attrs["status"]

    def rows(self, start: int = 0) -> dict[str, np.ndarray]:
        """Copies of the rows ``start:`` — scalars (r,), spectrum arrays (r, k), and ``step``."""
        with self._lock:
            end = self._len
            out = {"step": self._steps[start:end].copy()}
            out.update({n: a[start:end].copy() for n, a in self._scalars.items()})
            out.update({n: a[start:end].copy() for n, a in self._spectrum.items()})
        return out

    def latest_eigenvectors(self) -> tuple[int, np.ndarray] | None:
        with self._lock:
            return (self._snap_steps[-1], self._snaps[-1]) if self._snaps else None

    def eigenvector_history(self, eig: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(snapshot steps, (snapshots, m) array of eigenvector ``eig``) — e.g. u₁ over time."""
        with self._lock:
            steps = np.array(self._snap_steps, np.int64)
            if not self._snaps:
                return steps, np.zeros((0, self.m), np.float32)
            return steps, np.stack([s[eig] for s in self._snaps])

    def latest_kernel(self) -> tuple[int, np.ndarray] | None:
        """(step, K) of the last kernel snapshot, rows sample-major."""
        with self._lock:
            kept = self._kernel
        return self._reordered(kept)

    def latest_kernel_stored(self) -> tuple[int, np.ndarray, np.ndarray] | None:
        """(step, K, rows) with K in the order the engine stored it and ``rows[j]`` the row of K
        that holds sample-major row j: for readers that reorder K anyway (the dashboard's
        class-sorted picture), one gather instead of two."""
        with self._lock:
            kept = self._kernel
        if kept is None:
            return None
        step, K, outputs = kept
        j = np.arange(self.m)
        rows = (j % outputs) * (self.m // outputs) + j // outputs if outputs > 1 else j
        return step, K, rows

    def _reordered(self, kept: tuple[int, np.ndarray, int] | None) -> tuple[int, np.ndarray] | None:
        if kept is None:
            return None
        step, K, outputs = kept
        if outputs > 1:  # reorder outside the lock, then keep the result for the next reader
            K = sample_major(K, outputs)
            with self._lock:
                if self._kernel is kept:
                    self._kernel = (step, K, 0)
        return step, K

    def snapshot(self) -> xr.Dataset:
        """A consistent copy of everything so far as an xarray Dataset (CF attributes)."""
        with self._lock:
            n = self._len
            steps = self._steps[:n].copy()
            scalars = {k: v[:n].copy() for k, v in self._scalars.items()}
            spectrum = {k: v[:n].copy() for k, v in self._spectrum.items()}
            snap_steps = np.array(self._snap_steps, np.int64)
            snaps = np.stack(self._snaps) if self._snaps else np.zeros((0, self.k, self.m),
                                                                      np.float32)
            kept_kernel = self._kernel
            attrs = dict(self.attrs)
        kernel = self._reordered(kept_kernel)
        data_vars: dict[str, Any] = {}
        for name, (long_name, units) in SCALARS.items():
            data_vars[name] = ("step", scalars[name], {"long_name": long_name, "units": units})
        for name, (long_name, units) in SPECTRUM.items():
            data_vars[name] = (("step", "eig"), spectrum[name],
                               {"long_name": long_name, "units": units})
        data_vars["eigenvectors"] = (("snapshot", "eig", "sample"), snaps[:, : self.k],
                                     {"long_name": "top-k NTK eigenvectors (u_iᵀy ≥ 0)",
                                      "units": "1"})
        if kernel is not None:
            data_vars["kernel"] = (("sample", "sample_col"), kernel[1],
                                   {"long_name": f"empirical NTK at step {kernel[0]}",
                                    "units": "1", "step": int(kernel[0])})
        row_attrs = {
            "label": ("class index of the sample", "1"),
            "target": ("training target of the kernel row", "1"),
            "sample_index": ("sample of the kernel row", "1"),
            "output_index": ("output of the kernel row", "1"),
        }
        for name, values in self.row_data.items():
            long_name, units = row_attrs.get(name, (name, "1"))
            data_vars[name] = ("sample", values, {"long_name": long_name, "units": units})
        coords = {
            "step": ("step", steps, {"long_name": "gradient-descent step", "units": "1"}),
            "eig": ("eig", np.arange(self.k), {"long_name": "eigen-index (0 = top)", "units": "1"}),
            "sample": ("sample", np.arange(self.m), {"long_name": "kernel row", "units": "1"}),
            "snapshot_step": ("snapshot", snap_steps,
                              {"long_name": "step of the eigenvector snapshot", "units": "1"}),
        }
        attrs["steps_done"] = int(n)
        return xr.Dataset(data_vars, coords=coords, attrs=attrs)

    def save(self, path: str | os.PathLike) -> Path:
        return save_run(self.snapshot(), path)


class SaveError(OSError):
    """A run could not be written (disk full, read-only folder, no permission ...). Nothing was
    replaced: an earlier file at that path is unchanged, and the run is still in memory."""

    def __str__(self) -> str:
        return str(self.strerror)


_SAVE_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the folder is on a read-only file system",
    errno.EACCES: "no permission to write in the folder",
    errno.EPERM: "no permission to write in the folder",
    errno.ENOENT: "the folder does not exist",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.EISDIR: "the path is a folder",
}


def save_reason(exc: OSError) -> str:
    """Why a write failed, in words ("the disk is full")."""
    return _SAVE_REASONS.get(exc.errno or 0, f"{type(exc).__name__}: {exc}")


def save_error(path: Path, exc: OSError) -> SaveError:
    """A SaveError that names the file and the cause of ``exc`` in words."""
    return SaveError(exc.errno or 0, f"could not save {path.name}: {save_reason(exc)}; nothing "
                     "was overwritten and the run is still in memory")


def run_bytes(ds: xr.Dataset) -> bytes:
    """The run as NetCDF-4 bytes (h5netcdf), built in memory."""
    ready = _netcdf_ready(ds)
    with _local_write_lock():
        return bytes(ready.to_netcdf(engine="h5netcdf", encoding=_compression(ready)))


def _local_write_lock() -> contextlib.AbstractContextManager:
    """Inside a Dask worker xarray would guard the write with a cluster-wide lock named after
    the target, which fails for an in-memory buffer; the data here is all in memory, so the
    synchronous scheduler's process-local lock is the right one."""
    try:
        import dask
    except ImportError:
        return contextlib.nullcontext()
    return dask.config.set(scheduler="synchronous")


def _compression(ds: xr.Dataset) -> dict[str, dict]:
    """zlib for the per-step arrays: their NaN on unmeasured steps, and the NaN padding of sweep
    runs that stop early, shrink about tenfold at the fastest level. Dense matrices (kernel,
    eigenvectors) barely compress and stay raw, so saving them stays fast."""
    return {name: {"zlib": True, "complevel": 1, "shuffle": True}
            for name, var in ds.variables.items()
            if "step" in var.dims and var.dtype.kind in "fiu" and var.size >= 256}


def save_run(ds: xr.Dataset, path: str | os.PathLike, mode: int = 0o644) -> Path:
    """Write NetCDF atomically: the file is built in memory, written to a temporary file in the
    same folder, flushed to disk, then renamed over ``path``; a crash or a full disk never
    leaves a half-written run where a good one was. HDF5 itself never writes to the disk here:
    an HDF5 file whose close failed on a full disk can crash the process later, when it is
    garbage-collected. ``mode`` is the file's permission bits. Raises SaveError."""
    path = Path(path)
    data = run_bytes(ds)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".nc", dir=path.parent)
    except OSError as exc:
        raise save_error(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise save_error(path, exc) from exc
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable; some file systems cannot fsync a folder, which is harmless."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_run(path: str | os.PathLike) -> xr.Dataset:
    """Open a saved run fully into memory (the file is closed on return). For trusted files
    (the CLI, sweeps); the dashboard reads files from visitors through ``app.runfile``."""
    with xr.open_dataset(path, engine="h5netcdf", decode_times=False,
                         decode_timedelta=False) as ds:
        return ds.load()


def _netcdf_ready(ds: xr.Dataset) -> xr.Dataset:
    """NetCDF attributes must be strings or numbers."""
    out = ds.copy()
    for key, value in list(out.attrs.items()):
        if isinstance(value, bool):
            out.attrs[key] = int(value)
        elif isinstance(value, (dict, list, tuple)):
            out.attrs[key] = json.dumps(value)
        elif value is None:
            out.attrs[key] = ""
    return out
