"""Server limits: how many tabs, how many trainings at once, and how big a run may be.

One copy of the dashboard may serve a whole class from a small machine. ``ServerLimits`` reads
its settings from ``NTK_EOS_*`` environment variables (``ntk-eos serve`` and the Docker image
set them); ``hosted`` mode caps the size of each run, ``local`` mode (one lecturer's laptop)
only bounds what runs at once.

- ``TrainingSlots``: at most ``max_trainings`` runs step at the same time; the others wait in a
  FIFO queue and can ask for their position. A run that has held a slot for a slice while
  others wait goes to the back of the queue, so every run keeps moving. A slice is
  ``slice_seconds``, shortened as the queue grows so that a full turn of the queue stays
  within ``ROTATION_S`` (down to ``MIN_SLICE_S``).
- ``SessionRegistry``: the cap on live browser sessions (beyond it the page says "busy").
- ``OpenedRuns``: the memory that runs opened from files (uploads, the runs folder) may hold,
  all sessions together; each session holds at most one opened run and one upload in flight.
- ``torch_threads``: intra-op threads for each training thread. PyTorch's OpenMP setting is
  per thread (a new thread takes the value of the last ``torch.set_num_threads`` call when it
  first runs a parallel op), so each training thread sets it for itself.

Nothing here imports panel.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, cast

from ntk_core.config import ConfigError, RunConfig
from ntk_core.training.slice_pool import DaskSlicePool, LocalSlicePool, SlicePool

Mode = Literal["hosted", "local"]
Training = Literal["pool", "process", "thread"]
ENV_PREFIX = "NTK_EOS_"
# Per-run caps of hosted mode (0: no cap). The default preset has n = 256, p ≈ 25k: n·p ≈ 6.5M.
# A run with flows measures three processes per step and solves the central flow's Hessian
# eigenpairs four times a step: on the default preset one step took 3.4× a GD step at first and
# up to 20× once at the edge. A step holds its training slot until it ends, so flows get a
# smaller n·p: the default preset's size, about the time of the largest GD step allowed.
HOSTED_CAPS: dict[str, Any] = {"max_n": 1024, "max_width": 512, "max_depth": 6, "max_steps": 5000,
                               "max_np": 20_000_000, "max_flow_np": 8_000_000}
# Niceness of a hosted server's training processes and workers: at 5 the kernel gives the
# server's threads three times their weight, so pages open and answer while every core trains
HOSTED_TRAINING_NICE = 5
# Runs opened from files, all sessions together (0: no cap). One opened run may take a quarter.
HOSTED_OPEN_RUNS_MB = 1024.0


def cpu_count() -> int:
    """Cores this process may use (the affinity mask of a container, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ServerLimits:
    """The limits one server process applies. ``0`` means no cap (for the per-run caps and
    ``idle_minutes``)."""

    mode: Mode = "local"
    # "pool": runs train in fair slices on ``max_trainings`` shared workers
    # (``ntk_core.training.pooled_trainer``): a waiting run is its state, not a process (the
    # hosted default); "process": each run trains in a child process of its own
    # (``process_trainer``), the fastest for one lecturer's tabs; "thread": in this process (a
    # test or a notebook that reaches into the live trainer)
    training: Training = "process"
    # a Dask scheduler (tcp://host:8786): the pool's slices run on its workers
    scheduler: str = ""
    max_sessions: int = 100
    max_trainings: int = 2
    torch_threads: int = 1
    slice_seconds: float = 2.0
    idle_minutes: float = 0.0
    max_n: int = 0
    max_width: int = 0
    max_depth: int = 0
    max_steps: int = 0
    max_np: int = 0
    max_flow_np: int = 0  # n·p of a run with flows (RunConfig.flows)
    open_runs_mb: float = 0.0
    # how often each tab pulls new rows into its curves: 9 Hz for one lecturer's tabs; a
    # hosted class at 5 Hz, for half the server's plotting work per session
    pull_ms: int = 110

    def __post_init__(self) -> None:
        if self.mode not in ("hosted", "local"):
            raise ConfigError(f"{ENV_PREFIX}MODE: expected hosted or local, got {self.mode!r}")
        if self.training not in ("pool", "process", "thread"):
            raise ConfigError(f"{ENV_PREFIX}TRAINING: expected pool, process or thread, "
                              f"got {self.training!r}")
        if self.scheduler and self.training != "pool":
            raise ConfigError(f"{ENV_PREFIX}SCHEDULER: a Dask scheduler runs the pool's "
                              f"slices; it needs {ENV_PREFIX}TRAINING=pool, got "
                              f"{self.training!r}")
        if self.scheduler and not self.scheduler.startswith(("tcp://", "tls://", "inproc://")):
            raise ConfigError(f"{ENV_PREFIX}SCHEDULER: expected an address like "
                              f"tcp://host:8786, got {self.scheduler!r}")
        for name in ("max_sessions", "max_trainings", "torch_threads", "pull_ms"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{ENV_PREFIX}{name.upper()}: must be ≥ 1, "
                                  f"got {getattr(self, name)}")
        for f in fields(self):
            if f.name not in ("mode", "training", "scheduler") and getattr(self, f.name) < 0:
                raise ConfigError(f"{ENV_PREFIX}{f.name.upper()}: must be ≥ 0, "
                                  f"got {getattr(self, f.name)}")
        if self.slice_seconds <= 0:
            raise ConfigError(f"{ENV_PREFIX}SLICE_SECONDS: must be > 0, got {self.slice_seconds}")

    @classmethod
    def defaults(cls, mode: Mode = "local", cores: int | None = None) -> ServerLimits:
        """Defaults for ``mode`` on a machine with ``cores`` cores: one single-threaded
        training per core when hosted; locally two trainings sharing the cores."""
        cores = cores or cpu_count()
        if mode == "hosted":
            return cls(mode="hosted", training="pool", max_sessions=40, max_trainings=cores,
                       torch_threads=1, pull_ms=200,
                       idle_minutes=15.0, open_runs_mb=HOSTED_OPEN_RUNS_MB, **HOSTED_CAPS)
        trainings = min(2, cores)
        return cls(mode="local", max_sessions=100, max_trainings=trainings,
                   torch_threads=max(1, cores // trainings))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerLimits:
        """``NTK_EOS_MODE`` picks the defaults; ``NTK_EOS_<FIELD>`` (e.g. ``NTK_EOS_MAX_N``)
        overrides one field. ``NTK_EOS_MAX_TRAININGS`` alone also rescales the threads."""
        env = os.environ if environ is None else environ
        mode = env.get(ENV_PREFIX + "MODE", "local").strip().lower() or "local"
        if mode not in ("hosted", "local"):
            raise ConfigError(f"{ENV_PREFIX}MODE: expected hosted or local, got {mode!r}")
        base = cls.defaults(cast(Mode, mode))
        values: dict[str, Any] = {}
        for f in fields(cls):
            text = env.get(ENV_PREFIX + f.name.upper(), "").strip()
            if f.name == "mode" or not text:
                continue
            if f.name in ("training", "scheduler"):
                values[f.name] = text.lower() if f.name == "training" else text
                continue
            kind = float if f.type in ("float", float) else int
            try:
                values[f.name] = kind(text)
            except ValueError:
                raise ConfigError(f"{ENV_PREFIX}{f.name.upper()}: expected "
                                  f"{'a number' if kind is float else 'an integer'}, "
                                  f"got {text!r}") from None
        if values.get("scheduler") and "training" not in values:
            values["training"] = "pool"  # a scheduler is where the pool's slices run
        if "max_trainings" in values and "torch_threads" not in values:
            values["torch_threads"] = max(1, cpu_count() // max(1, int(values["max_trainings"])))
        return replace(base, **values)

    # ---- per-run caps ----------------------------------------------------------------------
    def check(self, config: RunConfig) -> None:
        """Raise ConfigError when ``config`` exceeds a cap that is known before building."""
        for name in ("n", "width", "depth", "steps"):
            cap = getattr(self, f"max_{name}")
            value = getattr(config, name)
            if cap and value > cap:
                raise ConfigError(f"{name}: at most {cap} on this server ({self.mode} mode), "
                                  f"got {value}")

    def check_size(self, n: int, num_params: int, flows: bool = False) -> None:
        """Raise ConfigError when n·p (examples × parameters, the size of the Jacobian per
        output) exceeds the cap, or the cap for runs with flows (``flows``)."""
        if self.max_np and n * num_params > self.max_np:
            raise ConfigError(f"n·p: at most {self.max_np:,} on this server ({self.mode} mode), "
                              f"got {n} × {num_params:,} parameters = {n * num_params:,}; "
                              "lower n, width or depth")
        if flows and self.max_flow_np and n * num_params > self.max_flow_np:
            raise ConfigError(f"n·p: at most {self.max_flow_np:,} with flows on this server "
                              f"({self.mode} mode), got {n} × {num_params:,} parameters = "
                              f"{n * num_params:,}; lower n, width or depth, or turn the flows "
                              "off")

    def summary(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# A waiting run steps again within about this long: slices shorten as the queue grows (50 tabs
# on 2 slots: 1.2 s slices). A slice costs about 30 ms of checking a pool run's state out and
# in, so it never goes below MIN_SLICE_S.
ROTATION_S = 30.0
MIN_SLICE_S = 0.5


class TrainingSlots:
    """A FIFO queue in front of ``capacity`` training slots, with time slices.

    ``acquire`` blocks until the ticket is at the head of the queue and a slot is free, or until
    ``wanted()`` turns false (the run was paused or stopped; call ``wake`` after changing what
    ``wanted`` reads). ``should_yield`` tells a holder that its slice is over and others wait.
    """

    def __init__(self, capacity: int, slice_seconds: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if capacity < 1:
            raise ValueError(f"capacity: must be ≥ 1, got {capacity}")
        self.capacity = capacity
        self.slice_seconds = slice_seconds
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: deque[Hashable] = deque()
        self._holders: dict[Hashable, float] = {}  # ticket -> when it got the slot

    def acquire(self, ticket: Hashable, wanted: Callable[[], bool] = lambda: True,
                timeout: float | None = None) -> bool:
        """Wait for a slot; False when ``wanted()`` turned false or on timeout (the ticket then
        leaves the queue). ``wanted`` must not take locks that callers of ``wake`` hold."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            if ticket in self._holders:
                return True
            if ticket not in self._queue:
                self._queue.append(ticket)
            try:
                while wanted():
                    if self._queue[0] == ticket and len(self._holders) < self.capacity:
                        self._queue.popleft()
                        self._holders[ticket] = self._clock()
                        return True
                    left = None if deadline is None else deadline - self._clock()
                    if left is not None and left <= 0:
                        return False
                    self._cond.wait(left)
                return False
            finally:
                if ticket not in self._holders and ticket in self._queue:
                    self._queue.remove(ticket)
                self._cond.notify_all()  # the next in line may take a free slot

    def release(self, ticket: Hashable) -> None:
        """Give the slot back, or leave the queue; harmless when the ticket has neither."""
        with self._cond:
            self._holders.pop(ticket, None)
            if ticket in self._queue:
                self._queue.remove(ticket)
            self._cond.notify_all()

    def wake(self) -> None:
        """Make waiting ``acquire`` calls re-check their ``wanted``."""
        with self._cond:
            self._cond.notify_all()

    def should_yield(self, ticket: Hashable) -> bool:
        """True when ``ticket`` has held its slot for a full slice and someone is waiting."""
        with self._cond:
            since = self._holders.get(ticket)
            return (since is not None and bool(self._queue)
                    and self._clock() - since >= self._slice())

    @property
    def slice(self) -> float:
        """Seconds a run steps per turn now: ``slice_seconds``, or less when the queue is so
        long that a full turn would take more than ``ROTATION_S``."""
        with self._cond:
            return self._slice()

    def _slice(self) -> float:
        turns = max(1, len(self._queue) + len(self._holders))
        fair = ROTATION_S * self.capacity / turns
        return min(self.slice_seconds, max(MIN_SLICE_S, fair))

    def holds(self, ticket: Hashable) -> bool:
        with self._cond:
            return ticket in self._holders

    def position(self, ticket: Hashable) -> tuple[int, int] | None:
        """(1-based place, queue length) while ``ticket`` waits, else None."""
        with self._cond:
            try:
                return self._queue.index(ticket) + 1, len(self._queue)
            except ValueError:
                return None

    @property
    def running(self) -> int:
        with self._cond:
            return len(self._holders)

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._queue)


class SessionRegistry:
    """Counts live sessions against ``capacity``: ``enter`` returns False when full."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._live: set[Hashable] = set()

    def enter(self, key: Hashable) -> bool:
        with self._lock:
            if key in self._live:
                return True
            if len(self._live) >= self.capacity:
                return False
            self._live.add(key)
            return True

    def leave(self, key: Hashable) -> None:
        with self._lock:
            self._live.discard(key)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._live)


def has_viewers(doc: Any) -> bool:
    """False when ``doc`` is a served page that no browser is connected to (a closed tab that
    bokeh will cull); True otherwise, also outside a server. A page with no viewer should not
    draw: bokeh culls a session only between its document callbacks."""
    context = getattr(doc, "session_context", None)
    if context is None:
        return True
    return any(session.id == context.id and session.connection_count > 0
               for session in context.server_context.sessions)


class OpenedRuns:
    """A server-wide budget, in bytes, for what runs opened from files hold: each holder (a
    session's opened run, its upload in flight) holds one amount, replaced by its next
    ``hold``. ``total_mb`` 0 means no budget."""

    def __init__(self, total_mb: float) -> None:
        self.total = int(total_mb * 2**20)
        self._held: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def room(self, holder: Hashable) -> int | None:
        """Bytes ``holder`` may hold now (what it holds counts as free); None: no budget."""
        if not self.total:
            return None
        with self._lock:
            others = sum(v for k, v in self._held.items() if k != holder)
        return max(0, self.total - others)

    def hold(self, holder: Hashable, nbytes: int) -> bool:
        """Let ``holder`` hold ``nbytes`` instead of what it held; False (and nothing changes)
        when that would pass the budget."""
        with self._lock:
            others = sum(v for k, v in self._held.items() if k != holder)
            if self.total and others + nbytes > self.total:
                return False
            self._held[holder] = nbytes
            return True

    def release(self, holder: Hashable) -> None:
        with self._lock:
            self._held.pop(holder, None)

    @property
    def held(self) -> int:
        with self._lock:
            return sum(self._held.values())


# ---- the process-wide instances ----------------------------------------------------------------
_lock = threading.Lock()
_limits: ServerLimits | None = None
_slots: TrainingSlots | None = None
_sessions: SessionRegistry | None = None
_opened: OpenedRuns | None = None
_pool: SlicePool | None = None


def configure(limits: ServerLimits | None = None) -> ServerLimits:
    """Set this process's limits (None: read the environment again); new slots and a new
    session registry follow. Runs started before keep the slots they had."""
    global _limits, _slots, _sessions, _opened
    with _lock:
        previous = _limits
        _limits = limits if limits is not None else ServerLimits.from_env()
        if previous is not None and _pool_settings(previous) != _pool_settings(_limits):
            _drop_pool()
        _slots = TrainingSlots(_limits.max_trainings, _limits.slice_seconds)
        _sessions = SessionRegistry(_limits.max_sessions)
        _opened = OpenedRuns(_limits.open_runs_mb)
        return _limits


def current() -> ServerLimits:
    """This process's limits (read from the environment on first use)."""
    return _limits if _limits is not None else configure()


def training_slots() -> TrainingSlots:
    current()
    assert _slots is not None
    return _slots


def live_sessions() -> SessionRegistry:
    current()
    assert _sessions is not None
    return _sessions


def slice_pool() -> SlicePool:
    """This process's pool of training workers (``training = "pool"``), started on first use:
    ``max_trainings`` local worker processes, or the Dask cluster at ``scheduler``."""
    global _pool
    limits = current()
    with _lock:
        if _pool is None:
            if limits.scheduler:
                _pool = DaskSlicePool(limits.scheduler)
            else:
                _pool = LocalSlicePool(limits.max_trainings,
                                       nice=HOSTED_TRAINING_NICE if limits.mode == "hosted" else 0)
        return _pool


def pool_workers() -> int:
    """Live worker processes of this process's local pool (0 before its first slice, or when
    the slices run on a Dask cluster)."""
    with _lock:
        pool = _pool
    return len(pool.pids()) if isinstance(pool, LocalSlicePool) else 0


def _pool_settings(limits: ServerLimits) -> tuple[object, ...]:
    return limits.max_trainings, limits.scheduler, limits.mode


def _drop_pool() -> None:
    """Close the pool (call with ``_lock`` held); runs on it start a new one on their next
    slice."""
    global _pool
    pool, _pool = _pool, None
    if pool is not None:
        pool.close()


def close_slice_pool() -> None:
    with _lock:
        _drop_pool()


def opened_runs() -> OpenedRuns:
    current()
    assert _opened is not None
    return _opened
