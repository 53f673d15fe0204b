"""What a driver (the CLI, the dashboard's training thread) needs of a run: step it, change η,
read its log. ``Trainer`` trains in this process and ``ProcessTrainer`` in a child process;
both are ``SteppableRun``s, so a driver never asks which one it holds."""

from __future__ import annotations

from typing import Protocol

from ..vocabulary import RunStatus
from .buffer import RunBuffer, StepRecord


class LoggedRun:
    """The reading half both trainers share: where the run stands, read from its log."""

    buffer: RunBuffer

    @property
    def status(self) -> RunStatus:
        return self.buffer.status

    @property
    def finished(self) -> bool:
        """The run has ended (``TERMINAL``): ``step`` raises."""
        return self.status.terminal


class SteppableRun(Protocol):
    """A run that a driver steps and reads.

    ``buffer`` is its log, complete up to the last step collected. ``step(ahead=n)`` takes one
    step and returns its record; a run in another process may keep ``n`` more queued, which
    ``sync`` collects (a run in this process has no queue and ignores it). ``set_lr`` changes η,
    and ``set_hyper`` the momentum β or Adam's β₁, from the next step on; ``close`` frees
    what the run holds besides its log, which stays.
    """

    buffer: RunBuffer

    @property
    def status(self) -> RunStatus: ...

    @property
    def finished(self) -> bool: ...

    @property
    def size(self) -> tuple[int, int]:
        """(training examples, trainable parameters)."""
        ...

    def set_lr(self, lr: float) -> None: ...

    def set_hyper(self, momentum: float | None = None, beta1: float | None = None) -> None: ...

    def step(self, *, ahead: int = 0) -> StepRecord: ...

    def sync(self) -> None: ...

    def close(self) -> None: ...
