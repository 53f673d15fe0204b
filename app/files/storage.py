"""Runs saved on the server: one folder, named runs, nothing outside it.

The folder comes from ``NTK_EOS_RUNS_DIR``; unset (the default), the dashboard has no server-side
files at all and offers only browser downloads and uploads. A visitor chooses a run *name*,
never a path: names are short words of letters, digits, ``-``, ``_`` and ``.`` (no separators,
no ``..``, no leading dot, no NUL), get the ``.nc`` suffix, and must resolve to a regular file
directly inside the folder. Symbolic links are never followed, so a link placed in the folder
cannot point a visitor at another file.

Saving is atomic (``ntk_core.training.netcdf.save_run``), never replaces an existing run, and stops
at ``MAX_RUNS`` files. One visitor (one client address) may hold at most ``runs_per_visitor`` of
them and save at most ``saves_per_minute`` a minute, so that no one visitor can fill the folder
for the others; the ledger of who saved what (hashed addresses) is ``.owners.json`` in the
folder. Every visitor can list and open every run in the folder. Opening reads at most
``MAX_UPLOAD_MB`` and goes through the same isolated, schema-checked reader as an upload.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import xarray as xr

from ntk_core.training.buffer import RunBuffer
from ntk_core.training.netcdf import SaveError, save_error, save_run

from .runs import MAX_UPLOAD_MB, RunFileError, read_run_bytes

ENV_VAR = "NTK_EOS_RUNS_DIR"
MAX_RUNS = 500
RUNS_PER_VISITOR = 20
SAVES_PER_MINUTE = 6
LEDGER = ".owners.json"  # name -> hashed visitor; a dot name is never listed nor opened
MAX_NAME = 64
SUFFIX = ".nc"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_save_lock = threading.Lock()  # "never replace" holds between the sessions of one process


class StorageError(RunFileError):
    """A run could not be saved to or opened from the server's folder; the message says why."""


class RunStore:
    """The server's run folder. Every name from a visitor goes through ``path_for``."""

    def __init__(self, root: str | os.PathLike, max_mb: float = MAX_UPLOAD_MB,
                 max_runs: int = MAX_RUNS, runs_per_visitor: int = RUNS_PER_VISITOR,
                 saves_per_minute: int = SAVES_PER_MINUTE) -> None:
        self.root = Path(root).resolve()
        self.max_mb = max_mb
        self.max_runs = max_runs
        self.runs_per_visitor = runs_per_visitor
        self.saves_per_minute = saves_per_minute
        self._recent: dict[str, deque[float]] = {}  # visitor -> times of their last saves

    @classmethod
    def from_env(cls) -> RunStore | None:
        """The store of ``NTK_EOS_RUNS_DIR``, or None when it is unset or empty (the default).
        ``NTK_EOS_RUNS_PER_VISITOR`` and ``NTK_EOS_SAVES_PER_MINUTE`` set the per-visitor caps."""
        folder = os.environ.get(ENV_VAR, "").strip()
        if not folder:
            return None
        caps = {"runs_per_visitor": RUNS_PER_VISITOR, "saves_per_minute": SAVES_PER_MINUTE}
        for field in caps:
            text = os.environ.get(f"NTK_EOS_{field.upper()}", "").strip()
            if text:
                try:
                    caps[field] = int(text)
                except ValueError:
                    raise StorageError(f"NTK_EOS_{field.upper()}: expected an integer, "
                                       f"got {text!r}") from None
                if caps[field] < 1:
                    raise StorageError(f"NTK_EOS_{field.upper()}: must be ≥ 1")
        return cls(folder, **caps)

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
        if not _plain_stem(stem):
            raise StorageError("a run name may use letters, digits, '-', '_' and '.' only "
                               "(no folders, and not ending in .nc twice)")
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
        return sorted(n for n in names if _plain_stem(n))

    def save(self, buffer: RunBuffer | xr.Dataset, name: str, visitor: str = "") -> str:
        """Save a run under a new ``name`` (atomic, mode 0600) for ``visitor`` (the client's
        address; "" for the operator's own scripts, which have no per-visitor caps); returns
        the name. An existing run is never replaced."""
        path = self.path_for(name)
        ds = buffer.snapshot() if isinstance(buffer, RunBuffer) else buffer
        owner = _owner(visitor)
        with _save_lock:
            if os.path.lexists(path):
                raise StorageError(f"a run named {path.stem!r} exists already; choose another "
                                   "name")
            names = self.list()
            if len(names) >= self.max_runs:
                raise StorageError(f"the runs folder holds its limit of {self.max_runs} runs")
            ledger = {k: v for k, v in self._ledger().items() if k in names}
            if owner:
                self._check_visitor(owner, sum(v == owner for v in ledger.values()))
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                save_run(ds, path, mode=0o600)
            except OSError as exc:
                raise StorageError(str(exc if isinstance(exc, SaveError)
                                       else save_error(path, exc))) from exc
            if owner:
                ledger[path.stem] = owner
                self._recent.setdefault(owner, deque()).append(time.monotonic())
                self._write_ledger(ledger)
        return path.stem

    def _check_visitor(self, owner: str, held: int) -> None:
        """The per-visitor caps: runs held in the folder, saves in the last minute."""
        if held >= self.runs_per_visitor:
            raise StorageError(f"you have saved {held} runs on this server, its limit per "
                               "visitor; ask its operator to remove some")
        recent = self._recent.setdefault(owner, deque())
        now = time.monotonic()
        while recent and now - recent[0] > 60:
            recent.popleft()
        if len(recent) >= self.saves_per_minute:
            wait = 60 - (now - recent[0])
            raise StorageError(f"at most {self.saves_per_minute} saves a minute; try again in "
                               f"{max(1, round(wait))} s")

    def _ledger(self) -> dict[str, str]:
        try:
            with open(self.root / LEDGER, encoding="utf-8") as f:
                data: Any = json.load(f)
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}

    def _write_ledger(self, ledger: dict[str, str]) -> None:
        temp = self.root / f"{LEDGER}.tmp"
        try:
            with open(temp, "w", encoding="utf-8") as f:
                json.dump(ledger, f)
            os.chmod(temp, 0o600)
            os.replace(temp, self.root / LEDGER)
        except OSError as exc:  # the run is saved; only the quota bookkeeping is behind
            raise StorageError(f"saved, but the folder's ledger could not be written "
                               f"({os.strerror(exc.errno or 0)})") from exc

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


def _plain_stem(stem: str) -> bool:
    """A name ``path_for`` accepts and ``list`` shows: one rule for both, so that every listed
    run opens (``x.nc.nc`` would list as ``x.nc`` and then open ``x.nc``'s file)."""
    return (len(stem) <= MAX_NAME and NAME_PATTERN.fullmatch(stem) is not None
            and ".." not in stem and not stem.endswith(SUFFIX))


def _owner(visitor: str) -> str:
    """The ledger's key for a visitor: a hash, so that the folder holds no client addresses."""
    return hashlib.sha256(visitor.encode()).hexdigest()[:16] if visitor else ""


def visitor_of(request: Any) -> str:
    """The client address of a session's request (behind a proxy, ``panel serve
    --use-xheaders`` makes it the proxy's ``X-Real-IP``); "" when there is none."""
    inner = getattr(request, "_request", request)
    return str(getattr(inner, "remote_ip", "") or "")


def _open_message(stem: str, exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return f"no run named {stem!r}"
    if exc.errno == errno.ELOOP:
        return f"{stem!r} is a link; links are not opened"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to read {stem!r}"
    return f"could not open {stem!r} ({os.strerror(exc.errno or 0)})"
