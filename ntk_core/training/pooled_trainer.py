"""A run trained in slices on a shared pool of workers, mirrored into a local ``RunBuffer``.

Between slices the run is only its state (``slices``): a few MB, not a process. ``advance``
sends the last checked-in state with the slice's budget to the pool, waits, appends the
slice's records to the log and checks the new state in. A slice lost with its worker runs
again from the same state (``MAX_RETRIES`` times), so every step already logged is kept and
none is logged twice; ``notice`` then says so once.

Like ``Trainer`` it is a ``SteppableRun``; ``step()`` is a slice of one step.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable

from ..config import ConfigError, RunConfig
from ..vocabulary import RunStatus
from .buffer import StepRecord
from .optimizers import UpdateRule
from .process_trainer import TrainingCancelled, TrainingProcessError
from .protocol import LoggedRun
from .slice_pool import SliceCancelled, SlicePool, WorkerLost
from .slices import SliceRequest, SliceResult
from .trainer import checked_lr

MAX_RETRIES = 3  # a slice whose worker keeps dying ends the run as failed
# attributes a slice may change in the log (the status travels on its own)
SLICE_ATTRS = ("flow_status", "traceback", "ntk_mode", "ntk_fallback")
_ids = itertools.count(1)


class PooledTrainer(LoggedRun):
    """``config`` trained in slices on ``pool``. The constructor builds the run on a worker
    and waits: a ``ConfigError`` there is raised here as one, any other failure as
    ``TrainingProcessError``; ``cancelled()`` is polled while waiting."""

    def __init__(self, config: RunConfig, pool: SlicePool, threads: int = 1,
                 cancelled: Callable[[], bool] = lambda: False, name: str = "") -> None:
        self.config = config
        self.pool = pool
        self.threads = threads
        self.lr = config.lr
        self.rule = UpdateRule.from_config(config)  # its hyperparameters only
        self.run_id = f"{os.getpid()}-{name or 'run'}-{next(_ids)}"
        self._cancelled = cancelled
        self._version = 0
        self.lost_slices = 0
        self.notice = ""  # set once when a slice had to run again
        self.workers_seen: set[str] = set()
        result = self._run(SliceRequest(self.run_id, config, None, 0, threads=threads))
        if result.build_error is not None:
            kind, message = result.build_error
            raise ConfigError(message) if kind == ConfigError.__name__ else \
                TrainingProcessError(f"{kind}: {message}")
        assert result.layout is not None
        self.buffer = result.layout
        self.size: tuple[int, int] = result.size
        self._state = result.state
        self._version = 1

    # ---- the SteppableRun interface --------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        self.lr = checked_lr(lr)

    def set_hyper(self, momentum: float | None = None, beta1: float | None = None) -> None:
        self.rule.set_hyper(momentum=momentum, beta1=beta1)

    def step(self, *, ahead: int = 0) -> StepRecord:
        """One step (a slice of one)."""
        records = self.advance(1)
        return records[-1] if records else StepRecord(len(self.buffer), {})

    def advance(self, max_steps: int, seconds: float = 0.0) -> list[StepRecord]:
        """A slice of at most ``max_steps`` steps and about ``seconds`` (0: no time limit);
        its records, already in ``buffer``."""
        if self.finished:
            raise RuntimeError(f"the run has ended ({self.status}); reset to start again")
        request = SliceRequest(
            self.run_id, self.config, self._state, self._version, max_steps=max(1, max_steps),
            seconds=seconds, lr=self.lr, momentum=self.rule.momentum, beta1=self.rule.beta1,
            eigvec_every=self.buffer.eigvec_every, threads=self.threads)
        try:
            result = self._run(request)
        except TrainingProcessError as exc:
            if not isinstance(exc, TrainingCancelled):
                self.buffer.set_status(RunStatus.FAILED, str(exc))
            return []
        self._absorb(result)
        return result.records

    def sync(self) -> None:
        """Nothing to collect: a slice is in the log when ``advance`` returns."""

    def close(self) -> None:
        """Drop the state; the log stays."""
        self._state = b""

    # ---- slices ---------------------------------------------------------------------------
    def _run(self, request: SliceRequest) -> SliceResult:
        for attempt in range(MAX_RETRIES + 1):
            try:
                result = self.pool.run(request, self._cancelled)
            except SliceCancelled:
                raise TrainingCancelled("cancelled") from None
            except WorkerLost as exc:
                self.lost_slices += 1
                if attempt == MAX_RETRIES:
                    raise TrainingProcessError(
                        f"{exc}; the slice failed {MAX_RETRIES + 1} times") from None
                step = self._next_step()
                self.notice = (f"A training worker was lost: the run goes on from step {step} "
                               "on another worker; no logged step was lost.")
                continue
            self.workers_seen.add(result.worker)
            return result
        raise AssertionError("unreachable")

    def _next_step(self) -> int:
        buffer = getattr(self, "buffer", None)
        return len(buffer) if buffer is not None else 0

    def _absorb(self, result: SliceResult) -> None:
        for record in result.records:
            self.buffer.append(record)
        if result.kernel is not None:
            self.buffer.set_kernel(*result.kernel)
        for name in SLICE_ATTRS:
            if name in result.attrs and result.attrs[name] != self.buffer.attrs.get(name):
                self.buffer.set_attr(name, result.attrs[name])
        if result.status.terminal:
            self.buffer.set_status(result.status, result.reason)
        self._state = result.state
        self._version += 1


def slice_steps(steps_per_second: float, seconds: float, cap: int = 10_000) -> int:
    """Steps in a slice of ``seconds`` at a speed cap (0: no cap)."""
    if steps_per_second <= 0:
        return cap
    return max(1, min(cap, math.floor(steps_per_second * seconds + 1e-9)))
