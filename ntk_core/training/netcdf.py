"""A run log as a NetCDF-4 file (h5netcdf): saved atomically, loaded whole.

The Dataset comes from ``RunBuffer.snapshot`` (its layout: ``schema``); sweeps save their
hypercube the same way.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Hashable
from pathlib import Path

import xarray as xr


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


def _compression(ds: xr.Dataset) -> dict[Hashable, dict]:
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
    (the CLI, sweeps); the dashboard reads files from visitors in an isolated reader."""
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
