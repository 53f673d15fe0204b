"""Runs saved on the server: one folder, named runs, nothing outside it.

The folder comes from ``NTK_EOS_RUNS_DIR``; unset (the default), the dashboard has no server-side
files at all and offers only browser downloads and uploads. A visitor chooses a run *name*,
never a path: names are short words of letters, digits, ``-``, ``_`` and ``.`` (no separators,
no ``..``, no leading dot, no NUL), get the ``.nc`` suffix, and must resolve to a regular file
directly inside the folder. Symbolic links are never followed, so a link placed in the folder
cannot point a visitor at another file.

Saving is atomic (``ntk_core.training.netcdf.save_run``), never replaces an existing run, and stops at
``MAX_RUNS`` files. Opening reads at most ``MAX_UPLOAD_MB`` and goes through the same isolated,
schema-checked reader as an upload.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import threading
from pathlib import Path

import xarray as xr

from ntk_core.training.buffer import RunBuffer
from ntk_core.training.netcdf import SaveError, save_error, save_run

from .runs import MAX_UPLOAD_MB, RunFileError, read_run_bytes

ENV_VAR = "NTK_EOS_RUNS_DIR"
MAX_RUNS = 500
MAX_NAME = 64
SUFFIX = ".nc"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_save_lock = threading.Lock()  # "never replace" holds between the sessions of one process


class StorageError(RunFileError):
    """A run could not be saved to or opened from the server's folder; the message says why."""


class RunStore:
    """The server's run folder. Every name from a visitor goes through ``path_for``."""

    def __init__(self, root: str | os.PathLike, max_mb: float = MAX_UPLOAD_MB,
                 max_runs: int = MAX_RUNS) -> None:
        self.root = Path(root).resolve()
        self.max_mb = max_mb
        self.max_runs = max_runs

    @classmethod
    def from_env(cls) -> RunStore | None:
        """The store of ``NTK_EOS_RUNS_DIR``, or None when it is unset or empty (the default)."""
        folder = os.environ.get(ENV_VAR, "").strip()
        return cls(folder) if folder else None

    # ---- names ---------------------------------------------------------------------------
    def path_for(self, name: str) -> Path:
        """The file of run ``name`` inside the folder. Raises StorageError for anything that is
        not a plain name, or that would leave the folder."""
        if not isinstance(name, str):
            raise StorageError("a run name must be text")
        stem = name.strip()
        stem = stem[: -len(SUFFIX)] if stem.endswith(SUFFIX) else stem
        if not stem:
            raise StorageError("give the run a name")
        if len(stem) > MAX_NAME:
            raise StorageError(f"a run name has at most {MAX_NAME} characters")
        if not NAME_PATTERN.fullmatch(stem) or ".." in stem:
            raise StorageError("a run name may use letters, digits, '-', '_' and '.' only "
                               "(no folders)")
        path = self.root / f"{stem}{SUFFIX}"
        if path.parent != self.root or not path.resolve().is_relative_to(self.root):
            raise StorageError("a run name may not point outside the runs folder")
        return path

    # ---- operations ----------------------------------------------------------------------
    def list(self) -> list[str]:
        """Names of the runs in the folder (regular files only, links skipped), sorted."""
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            return []
        names = [e.name[: -len(SUFFIX)] for e in entries
                 if e.name.endswith(SUFFIX) and not e.name.startswith(".")
                 and e.is_file(follow_symlinks=False)]
        return sorted(n for n in names if NAME_PATTERN.fullmatch(n) and len(n) <= MAX_NAME)

    def save(self, buffer: RunBuffer | xr.Dataset, name: str) -> str:
        """Save a run under a new ``name`` (atomic, mode 0600); returns the name. An existing run
        is never replaced."""
        path = self.path_for(name)
        ds = buffer.snapshot() if isinstance(buffer, RunBuffer) else buffer
        with _save_lock:
            if os.path.lexists(path):
                raise StorageError(f"a run named {path.stem!r} exists already; choose another "
                                   "name")
            if len(self.list()) >= self.max_runs:
                raise StorageError(f"the runs folder holds its limit of {self.max_runs} runs")
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                save_run(ds, path, mode=0o600)
            except OSError as exc:
                raise StorageError(str(exc if isinstance(exc, SaveError)
                                       else save_error(path, exc))) from exc
        return path.stem

    def load(self, name: str) -> xr.Dataset:
        """Open run ``name``: a regular file, not a link, at most ``max_mb``, checked like an
        upload. Raises StorageError or RunFileError."""
        return read_run_bytes(self.read_bytes(name), self.max_mb)

    def read_bytes(self, name: str) -> bytes:
        """The bytes of file ``name``: a regular file, not a link, at most ``max_mb``. Raises
        StorageError."""
        path = self.path_for(name)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise StorageError(_open_message(path.stem, exc)) from None
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise StorageError(f"{path.stem!r} is not a run file")
            if info.st_size > self.max_mb * 2**20:
                raise StorageError(f"{path.stem!r} is {info.st_size / 2**20:.0f} MB; the limit "
                                   f"is {self.max_mb:g} MB")
            return f.read(int(self.max_mb * 2**20) + 1)


def _open_message(stem: str, exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return f"no run named {stem!r}"
    if exc.errno == errno.ELOOP:
        return f"{stem!r} is a link; links are not opened"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to read {stem!r}"
    return f"could not open {stem!r} ({os.strerror(exc.errno or 0)})"
