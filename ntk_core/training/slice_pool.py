"""Where slices run: a fixed pool of local worker processes, or the workers of a Dask cluster.

Both take a ``SliceRequest`` and give back a future of its ``SliceResult``
(``slices.run_slice``). A pool never decides which run goes next (the server's fair queue
does); it only runs what it is given on one of its workers.

- ``LocalSlicePool``: ``workers`` processes forked from a server that has imported torch once
  (the same fork server as ``process_trainer``). A worker that dies breaks the executor: it is
  replaced, and every slice that was in it fails with ``WorkerLost``; its run goes on from its
  last checked-in state.
- ``DaskSlicePool``: ``distributed`` futures on the cluster at ``address``. The web tier stays
  light and workers can be added on other machines; each needs this package installed. A
  slice whose worker died is run again by the scheduler, or fails with ``WorkerLost``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

from .slices import SliceRequest, SliceResult, run_slice

POLL_S = 0.1  # how often a wait checks ``cancelled``
# what a Dask future raises when the worker, not the slice, failed: the scheduler gave up on a
# task whose workers kept dying, the connection closed, or the task was dropped
LOST_ON_DASK = frozenset({"KilledWorker", "CommClosedError", "CancelledError",
                          "FutureCancelledError", "StreamClosedError"})


class WorkerLost(RuntimeError):
    """The worker running a slice went away; the slice can run again from the same state."""


class SliceCancelled(RuntimeError):
    """``cancelled()`` turned true while waiting; the slice's result will be ignored."""


class SlicePool(Protocol):
    """Runs slices on its workers."""

    @property
    def workers(self) -> int:
        """How many slices run at once."""
        ...

    def run(self, request: SliceRequest, cancelled: Callable[[], bool] = lambda: False
            ) -> SliceResult:
        """Run ``request`` on a worker and wait for it; ``WorkerLost`` when its worker died,
        ``SliceCancelled`` when ``cancelled()`` turned true first."""
        ...

    def close(self) -> None: ...


def _worker_init(nice: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    if nice and hasattr(os, "nice"):
        with contextlib.suppress(OSError):
            os.nice(nice)
    from .allocator import keep_freed_memory

    keep_freed_memory()


def _wait(done: Callable[[float], bool], cancelled: Callable[[], bool]) -> None:
    while not done(POLL_S):
        if cancelled():
            raise SliceCancelled("cancelled")


class LocalSlicePool:
    """``workers`` local processes; ``nice`` is added to their niceness (a server that must
    stay responsive while every core trains)."""

    def __init__(self, workers: int, nice: int = 0) -> None:
        if workers < 1:
            raise ValueError(f"workers: must be ≥ 1, got {workers}")
        self._workers = workers
        self._nice = nice
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        self.replaced = 0  # executors replaced after a worker died

    @property
    def workers(self) -> int:
        return self._workers

    def _current(self) -> concurrent.futures.ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                from .process_trainer import _context

                self._executor = concurrent.futures.ProcessPoolExecutor(
                    self._workers, mp_context=_context(), initializer=_worker_init,
                    initargs=(self._nice,))
            return self._executor

    def _replace(self, broken: concurrent.futures.ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is broken:  # the first run to notice replaces it
                self._executor = None
                self.replaced += 1
        broken.shutdown(wait=False, cancel_futures=True)

    def run(self, request: SliceRequest, cancelled: Callable[[], bool] = lambda: False
            ) -> SliceResult:
        executor = self._current()
        try:
            future = executor.submit(run_slice, request)
        except (BrokenProcessPool, RuntimeError) as exc:  # broken, or shut down meanwhile
            self._replace(executor)
            raise WorkerLost(f"a training worker ended ({exc})") from None
        try:
            _wait(lambda timeout: bool(concurrent.futures.wait([future], timeout).done),
                  cancelled)
            return future.result()
        except BrokenProcessPool as exc:
            self._replace(executor)
            raise WorkerLost(f"a training worker ended ({exc})") from None

    def pids(self) -> list[int]:
        """The live workers' process ids (tests kill one)."""
        with self._lock:
            executor = self._executor
        processes = getattr(executor, "_processes", None) or {}
        return [pid for pid, p in list(processes.items()) if p.is_alive()]

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


class DaskSlicePool:
    """Slices on the Dask cluster at ``address`` (``tcp://host:8786``), or on ``client``."""

    def __init__(self, address: str | None = None, client: Any = None,
                 timeout: float = 30.0) -> None:
        from distributed import Client

        if client is None and not address:
            raise ValueError("DaskSlicePool: give a scheduler address or a client")
        self._owned = client is None
        self.client = client if client is not None else Client(address, timeout=timeout,
                                                              set_as_default=False)
        self.lost = 0  # slices that failed with their worker

    @property
    def workers(self) -> int:
        """Worker threads on the cluster now (at least 1)."""
        with contextlib.suppress(Exception):
            return max(1, sum(self.client.nthreads().values()))
        return 1

    def run(self, request: SliceRequest, cancelled: Callable[[], bool] = lambda: False
            ) -> SliceResult:
        future = self.client.submit(run_slice, request, pure=False)
        finished = threading.Event()
        future.add_done_callback(lambda _: finished.set())

        def done(timeout: float) -> bool:
            return finished.wait(timeout) or bool(future.done())

        try:
            _wait(done, cancelled)
        except SliceCancelled:
            future.cancel()
            raise
        try:
            return future.result()
        except Exception as exc:
            if type(exc).__name__ not in LOST_ON_DASK:
                raise  # the slice's own error: running it again would fail again
            self.lost += 1
            raise WorkerLost(f"the slice's Dask worker was lost ({type(exc).__name__}: "
                             f"{exc})") from None

    def close(self) -> None:
        if self._owned:
            with contextlib.suppress(Exception):
                self.client.close()


def wait_for_workers(pool: SlicePool, count: int, timeout: float = 60.0) -> int:
    """Block until ``pool`` has ``count`` workers or ``timeout`` passed; the count then."""
    deadline = time.monotonic() + timeout
    while pool.workers < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return pool.workers
