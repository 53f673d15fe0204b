"""Trainings as slices: a run checked out of its state, stepped for a slice, checked back in.

A server that holds many runs trains them on a fixed pool of workers (``slice_pool``). The unit
of work is ``run_slice``: its input is the run's last checked-in state and its output the
slice's step records with the new state. Nothing else carries over, so any worker may run any
slice, a slice lost with its worker runs again from the same state, and no step is logged twice:
the records of a slice reach the log only when the whole slice has come back.

The state is the pickled ``Trainer`` (weights, optimiser state, warm starts, flows, the batch
order's generator, the step counter, the training data), with an empty log in place of its
rows: ``Trainer.__getstate__``. Its scratch space (``NTKWorkspace``) never travels. A worker
keeps the trainers of its last few slices (``CACHED_RUNS``), so a run whose next slice lands on
the same worker goes on from the live trainer instead of unpickling.
"""

from __future__ import annotations

import os
import pickle
import socket
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import ConfigError, RunConfig
from ..vocabulary import RunStatus
from .buffer import RunBuffer, StepRecord
from .trainer import Trainer

CACHED_RUNS = 4  # live trainers a worker keeps between slices
PICKLE_PROTOCOL = 5


@dataclass(frozen=True)
class SliceRequest:
    """One slice of one run. ``state`` None builds the run from ``config`` and steps nothing
    (the server checks the built size against its caps first)."""

    run: str  # the run's id, unique within the server
    config: RunConfig
    state: bytes | None
    version: int  # slices checked in so far; a cached trainer must be at this version
    max_steps: int = 0
    seconds: float = 0.0  # stop after the step that passes this wall time (0: no limit)
    lr: float = 0.0
    momentum: float = 0.0
    beta1: float = 0.9
    eigvec_every: int = 1  # the log's snapshot cadence (it doubles as the log thins)
    want_kernel: bool = True
    threads: int = 1


@dataclass
class SliceResult:
    """What came back: the records to log, the state to check in, and the run's status."""

    records: list[StepRecord]
    state: bytes
    status: RunStatus
    reason: str
    attrs: dict[str, Any]  # the log attributes after the slice (flow_status, traceback ...)
    kernel: tuple[int, np.ndarray, int] | None = None  # (step, K float32, its outputs)
    worker: str = ""
    restored: bool = False  # the state was unpickled (not continued from the worker's cache)
    layout: RunBuffer | None = None  # on a build: an empty log with the run's layout
    size: tuple[int, int] = (0, 0)  # on a build: (training examples, trainable parameters)
    build_error: tuple[str, str] | None = None  # (exception class, message)
    seconds: float = 0.0  # the slice's wall time in the worker


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


_cache: OrderedDict[str, tuple[int, Trainer]] = OrderedDict()
_cache_lock = threading.Lock()


def _cached(run: str, version: int) -> Trainer | None:
    with _cache_lock:
        entry = _cache.pop(run, None)  # a slice owns its trainer until it checks it back in
    return entry[1] if entry is not None and entry[0] == version else None


def _keep(run: str, version: int, trainer: Trainer) -> None:
    with _cache_lock:
        _cache[run] = (version, trainer)
        while len(_cache) > CACHED_RUNS:
            _cache.popitem(last=False)


def forget(run: str) -> None:
    """Drop ``run``'s cached trainer from this worker."""
    with _cache_lock:
        _cache.pop(run, None)


def run_slice(request: SliceRequest) -> SliceResult:
    """Build the run, or step it from its state for at most ``max_steps`` steps and
    ``seconds``; runs in a worker. Failures inside a step end the run as ``failed`` in its
    log (``Trainer.step``); a run that cannot be built comes back with ``build_error``."""
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, request.threads))
    if request.state is None:
        return _build(request, t0)
    trainer = _cached(request.run, request.version)
    restored = trainer is None
    if trainer is None:
        trainer = pickle.loads(request.state)
    trainer.copy_kernels = False  # the slice sends the last kernel once, below
    trainer.buffer = trainer.buffer.empty_like()
    trainer.buffer.eigvec_every = request.eigvec_every
    _apply_hyper(trainer, request)
    records: list[StepRecord] = []
    while not trainer.finished and len(records) < request.max_steps:
        before = len(trainer.buffer)
        record = trainer.step()
        if len(trainer.buffer) > before:
            records.append(record)
        if request.seconds and time.perf_counter() - t0 >= request.seconds:
            break
    kernel = None
    latest = trainer.latest_kernel
    if request.want_kernel and latest is not None and records and latest[0] >= records[0].step:
        kernel = (latest[0], latest[1].detach().to("cpu", torch.float32, copy=True).numpy(),
                  latest[2])
    state = pickle.dumps(trainer, protocol=PICKLE_PROTOCOL)
    if not trainer.finished:
        _keep(request.run, request.version + 1, trainer)
    buffer = trainer.buffer
    return SliceResult(records, state, buffer.status, str(buffer.attrs.get("status_reason", "")),
                       dict(buffer.attrs), kernel, worker_name(), restored,
                       seconds=time.perf_counter() - t0)


def _apply_hyper(trainer: Trainer, request: SliceRequest) -> None:
    if request.lr and request.lr != trainer.lr:
        trainer.set_lr(request.lr)
    optimizer = trainer.config.optimizer
    if optimizer in ("gd", "sgd") and request.momentum != trainer.rule.momentum:
        trainer.set_hyper(momentum=request.momentum)
    if optimizer == "adam" and request.beta1 != trainer.rule.beta1:
        trainer.set_hyper(beta1=request.beta1)


def _build(request: SliceRequest, t0: float) -> SliceResult:
    try:
        trainer = Trainer(request.config)
    except Exception as exc:  # ConfigError, a bad data folder, out of memory ...
        kind = ConfigError.__name__ if isinstance(exc, ConfigError) else type(exc).__name__
        message = str(exc) if isinstance(exc, ConfigError) else \
            f"{exc}\n{traceback.format_exc(limit=4)}"
        return SliceResult([], b"", RunStatus.FAILED, message, {}, worker=worker_name(),
                           build_error=(kind, str(exc) if isinstance(exc, ConfigError)
                                        else message.splitlines()[0]))
    layout = trainer.buffer.empty_like(capacity=min(trainer.config.steps, 4096))
    state = pickle.dumps(trainer, protocol=PICKLE_PROTOCOL)
    _keep(request.run, request.version + 1, trainer)
    return SliceResult([], state, trainer.status, "", dict(trainer.buffer.attrs),
                       worker=worker_name(), layout=layout, size=trainer.size,
                       seconds=time.perf_counter() - t0)
