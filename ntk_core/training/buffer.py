"""The run log: a growing, thread-safe record of every step, exported as an xarray Dataset.

One writer (the trainer) appends; any number of readers (dashboard sessions, the CLI) pull new
rows with ``rows(start)`` or take a consistent ``snapshot()``, whose layout is ``schema``'s.
Storage is preallocated numpy, grown by doubling, so appends are O(1) and never allocate per
step. Eigenvector memory is bounded by *thinning*: at most ``max_snapshots`` are kept; when
full, every other snapshot is dropped and the cadence doubles, so snapshots always span the
whole run.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..numerics.central_flow import TRACKED
from ..vocabulary import RunStatus
from .netcdf import save_run
from .schema import (
    CENTRAL_SCALARS,
    DISTANCE,
    PROCESS_SCALARS,
    SCALARS,
    SIGMA_SQ,
    SPECTRUM,
    FlowContents,
    LogContents,
    from_dataset,
    run_flows,
    to_dataset,
)

SIGMA_SQ_WIDTH = TRACKED  # σ² values kept per step: the central flow's tracked eigenpairs


def flow_column(name: str, process: str) -> str:
    """The key of a flow's variable among ``RunBuffer.rows``: ``loss@central``."""
    return f"{name}@{process}"


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
    # with flows: per process its scalars (PROCESS_SCALARS, distance_to_gd, and the central
    # flow's CENTRAL_SCALARS) and, on measured steps, its spectrum and σ²
    flows: dict[str, FlowRecord] | None = None


@dataclass
class FlowRecord:
    """One flow's part of a step: scalars, and on measured steps its spectrum (and σ²)."""

    scalars: dict[str, float]
    spectrum: dict[str, np.ndarray] | None = None
    sigma_sq: np.ndarray | None = None


def sample_major(kernel: np.ndarray, outputs: int) -> np.ndarray:
    """An output-major (c·n + i) kernel reordered to the buffer's sample-major rows (i·C + c)."""
    if outputs <= 1:
        return kernel
    m = kernel.shape[0]
    n = m // outputs
    return np.ascontiguousarray(
        kernel.reshape(outputs, n, outputs, n).transpose(1, 0, 3, 2)).reshape(m, m)


class RunBuffer:
    """The log of one run: the per-step scalars and spectra, eigenvector snapshots, the last
    kernel, the per-row data and the attributes (``status`` among them). Thread-safe for one
    writer and many readers; ``version`` bumps on every change."""

    def __init__(self, k: int, rows: dict[str, np.ndarray], attrs: dict[str, Any],
                 eigvec_every: int = 1, max_snapshots: int = 256, capacity: int = 256) -> None:
        self.k = k
        self.row_data = rows  # per kernel-row arrays: label, target, sample_index, output_index
        self.m = len(next(iter(rows.values())))
        self.attrs = dict(attrs)
        self.attrs.setdefault("status", RunStatus.READY.value)
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
        # flows (``attrs["flows"]``): their scalars and spectra under ``flow_column`` keys
        self.flows = run_flows(self.attrs)
        self._flow_scalars = {flow_column(name, p): np.full(capacity, np.nan)
                              for p in self.flows for name in (*PROCESS_SCALARS, DISTANCE[0])}
        if "central" in self.flows:
            self._flow_scalars.update({name: np.full(capacity, np.nan) for name in CENTRAL_SCALARS})
        self._flow_spectrum = {flow_column(name, p): np.full((capacity, k), np.nan)
                               for p in self.flows for name in SPECTRUM}
        if "central" in self.flows:
            self._flow_spectrum[SIGMA_SQ[0]] = np.full((capacity, SIGMA_SQ_WIDTH), np.nan)
        self.version = 0  # bumps on every change; readers compare it to skip redraws

    def empty_like(self, capacity: int = 16) -> RunBuffer:
        """A log with this one's layout, attributes and eigenvector cadence but no steps (what
        a run's state carries in place of its log)."""
        return RunBuffer(self.k, self.row_data, self.attrs, eigvec_every=self.eigvec_every,
                         max_snapshots=self.max_snapshots, capacity=capacity)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

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
            for process, row in (record.flows or {}).items():
                self._append_flow(i, process, row)
            self._len += 1
            self.version += 1

    def _append_flow(self, i: int, process: str, row: FlowRecord) -> None:
        if process not in self.flows:
            return
        for name, value in row.scalars.items():
            key = name if name in CENTRAL_SCALARS else flow_column(name, process)
            if key in self._flow_scalars:
                self._flow_scalars[key][i] = value
        for name, values in (row.spectrum or {}).items():
            key = flow_column(name, process)
            if key in self._flow_spectrum:
                self._flow_spectrum[key][i, : len(values)] = values
        if row.sigma_sq is not None and SIGMA_SQ[0] in self._flow_spectrum:
            self._flow_spectrum[SIGMA_SQ[0]][i, : len(row.sigma_sq)] = row.sigma_sq[
                :SIGMA_SQ_WIDTH]

    def _grow(self) -> None:
        cap = 2 * len(self._steps)
        self._steps = np.resize(self._steps, cap)
        for table in (self._scalars, self._flow_scalars, self._spectrum, self._flow_spectrum):
            for name, arr in table.items():
                new = np.full((cap, *arr.shape[1:]), np.nan)
                new[: len(arr)] = arr
                table[name] = new

    def set_kernel(self, step: int, kernel: np.ndarray, outputs: int = 0) -> None:
        """Replace the kept kernel with step ``step``'s (a mirror catching up with its source)."""
        with self._lock:
            self._kernel = (step, kernel, outputs)
            self.version += 1

    def set_status(self, status: RunStatus, reason: str = "") -> None:
        status = RunStatus(status)  # ValueError for an unknown one
        with self._lock:
            self.attrs["status"] = status.value  # plain text, as in the files
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
    def status(self) -> RunStatus:
        return RunStatus(self.attrs["status"])

    def rows(self, start: int = 0) -> dict[str, np.ndarray]:
        """Copies of the rows ``start:`` — scalars (r,), spectrum arrays (r, k), and ``step``."""
        with self._lock:
            end = self._len
            out = {"step": self._steps[start:end].copy()}
            out.update({n: a[start:end].copy() for n, a in self._scalars.items()})
            out.update({n: a[start:end].copy() for n, a in self._spectrum.items()})
            out.update({n: a[start:end].copy() for n, a in self._flow_scalars.items()})
            out.update({n: a[start:end].copy() for n, a in self._flow_spectrum.items()})
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
        """A consistent copy of everything so far as an xarray Dataset (``schema.to_dataset``)."""
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
            flows = self._flow_contents(n)
        return to_dataset(LogContents(steps, scalars, spectrum, snap_steps, snaps,
                                      self._reordered(kept_kernel), self.row_data, attrs, flows))

    def _flow_contents(self, n: int) -> FlowContents | None:
        if not self.flows:
            return None
        tables = {**self._flow_scalars, **self._flow_spectrum}
        processes = {p: {name: tables[flow_column(name, p)][:n].copy()
                         for name in (*PROCESS_SCALARS, *SPECTRUM, DISTANCE[0])}
                     for p in self.flows}
        central = {name: (tables[name][:n].copy() if name in tables
                          else np.full((n, SIGMA_SQ_WIDTH) if name == SIGMA_SQ[0] else n, np.nan))
                   for name in (*CENTRAL_SCALARS, SIGMA_SQ[0])}
        return FlowContents(processes, central)

    @classmethod
    def from_dataset(cls, ds: xr.Dataset) -> RunBuffer:
        """The log of a saved run, checked (``schema.check_run_dataset``; RunSchemaError), for
        readers that show it as they would a live one. It takes no further steps."""
        log = from_dataset(ds)
        steps = len(log.steps)
        buffer = cls(log.k, log.rows, log.attrs, max_snapshots=max(2, len(log.snapshot_steps) + 1),
                     capacity=max(1, steps))
        with buffer._lock:
            buffer._len = steps
            buffer._steps[:steps] = log.steps
            for name, values in log.scalars.items():
                buffer._scalars[name][:steps] = values
            for name, values in log.spectrum.items():
                buffer._spectrum[name][:steps] = values
            buffer._snap_steps = [int(s) for s in log.snapshot_steps]
            buffer._snaps = list(log.eigenvectors)
            if log.kernel is not None:
                buffer._kernel = (log.kernel[0], log.kernel[1], 0)
            if log.flows is not None:
                for p, table in log.flows.processes.items():
                    for name, values in table.items():
                        key = flow_column(name, p)
                        if key in buffer._flow_scalars:
                            buffer._flow_scalars[key][:steps] = values
                        elif key in buffer._flow_spectrum:
                            buffer._flow_spectrum[key][:steps] = values
                for name, values in log.flows.central.items():
                    if name in buffer._flow_scalars:
                        buffer._flow_scalars[name][:steps] = values
                    elif name in buffer._flow_spectrum:
                        width = min(values.shape[1], SIGMA_SQ_WIDTH)
                        buffer._flow_spectrum[name][:steps, :width] = values[:, :width]
            buffer.version += 1
        return buffer

    def save(self, path: str | os.PathLike) -> Path:
        return save_run(self.snapshot(), path)
