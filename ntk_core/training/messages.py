"""The messages between a ``ProcessTrainer`` and its child process, one record type each.

Parent to child: ``StepRequest`` (one step at η and β or β₁, sending the kernel or not), ``KernelRequest``
(the latest kernel, on a pause or at the end) and ``Stop``. Child to parent: first ``Ready``
(the run is built; what the parent's mirror of its log needs) or ``BuildFailed``, then one
``StepReply`` per ``StepRequest`` and one ``KernelReply`` per ``KernelRequest``, in order.

The kernel itself never travels in a message: the child writes it into a shared memory map and
says which step's it is (``KernelWritten``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..vocabulary import RunStatus
from .buffer import StepRecord


@dataclass(frozen=True)
class StepRequest:
    lr: float  # η for this step
    want_kernel: bool  # write the step's kernel into the map
    momentum: float = 0.0  # β for this step (gd, sgd)
    beta1: float = 0.9  # β₁ for this step (adam)


@dataclass(frozen=True)
class KernelRequest:
    pass


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class KernelWritten:
    """The kernel now in the shared map: its step, and C when its rows are output-major."""

    step: int
    outputs: int


@dataclass(frozen=True)
class Ready:
    """The run is built: the shape of its log, and where the kernel will be shared."""

    k: int
    rows: dict[str, np.ndarray]
    attrs: dict[str, Any]
    eigvec_every: int
    max_snapshots: int
    capacity: int
    size: tuple[int, int]  # (training examples, trainable parameters)
    threads: int  # the child's torch threads
    kernel_path: str | None  # the shared map's file, None when the kernel is not shared
    kernel_rows: int


@dataclass(frozen=True)
class BuildFailed:
    kind: str  # the exception's class name
    message: str


@dataclass(frozen=True)
class StepReply:
    """One step's outcome. ``record`` is None for a step queued after the run ended."""

    record: StepRecord | None
    kernel: KernelWritten | None
    status: RunStatus
    reason: str
    traceback: str  # of a failed step, else ""


@dataclass(frozen=True)
class KernelReply:
    kernel: KernelWritten | None  # None when there is none to share


ToChild = StepRequest | KernelRequest | Stop
FromChild = Ready | BuildFailed | StepReply | KernelReply
