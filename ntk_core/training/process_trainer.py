"""Training in a child process, mirrored into a local ``RunBuffer``.

A server that streams a run to a browser runs Python of its own (websocket messages, plot
updates) while the run trains. In one process the two share the GIL, and the training thread
waits for it after every torch call, about a thousand times a step. ``ProcessTrainer`` moves the
``Trainer`` into a child process that has its own interpreter and keeps the parent's side to one
blocking pipe read per step.

Like ``Trainer`` it is a ``SteppableRun`` (``step()``, ``set_lr()``, ``buffer``, ``status``,
``finished``, ``size``, ``sync()``, ``close()``). The parent sends one request per step
(``messages``) and waits for the step's record, which it appends to its mirror buffer; so the
caller still decides when each step happens (training slots, pauses, speed caps stay in the
caller).
``step(ahead=2)`` leaves two more steps queued in the child, so that it starts the next step
while the parent is still waiting for its GIL to collect the last one; ``sync()`` collects them.

The NTK itself (m × m floats, 4 MB at m = 1024) does not travel with every record. The child
copies it into a shared memory map only when the parent asks: at most every
``KERNEL_INTERVAL_S`` while stepping, at the end of the run and on ``sync()`` (a pause or a
single step), so the mirror's kernel is at most a quarter of a second behind its last step.

Children start from a fork server that has imported torch and scikit-learn once, so a new
run has built the default preset 0.08 s after it was asked for. A child that dies (killed, out
of memory) ends the run as ``failed``; every step already mirrored is kept.
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing
import os
import signal
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing import spawn
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import torch

from ..config import ConfigError, RunConfig
from ..vocabulary import RunStatus
from .allocator import keep_freed_memory
from .buffer import RunBuffer, StepRecord
from .messages import (
    BuildFailed,
    FromChild,
    KernelReply,
    KernelRequest,
    KernelWritten,
    Ready,
    StepReply,
    StepRequest,
    Stop,
    ToChild,
)
from .optimizers import UpdateRule
from .protocol import LoggedRun
from .trainer import KERNEL_KEEP_MAX_ROWS, Trainer, checked_lr

# the dashboard redraws its matrices once a second: a fresher kernel would never be seen
KERNEL_INTERVAL_S = 0.25
PROCESS_PREFIX = "ntk-eos-trainer-"
POLL_S = 0.1  # how often a blocked wait checks ``cancelled``
FORK_SERVER_PRELOAD = [__name__, "sklearn.datasets"]


class TrainingProcessError(RuntimeError):
    """The child could not build the run, or died; the message says why."""


class TrainingCancelled(TrainingProcessError):
    """``cancelled()`` turned true while waiting for the child, which was then killed."""


def _context() -> multiprocessing.context.SpawnContext | multiprocessing.context.ForkServerContext:
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" not in methods:  # Windows
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # the fork server imports torch, the engine and scikit-learn's loaders (1.3 s on their own,
    # for the digits) once; each child is a fork of it. A missing module is skipped.
    context.set_forkserver_preload(FORK_SERVER_PRELOAD)
    return context


_start_lock = threading.Lock()


def _start_without_main(process: multiprocessing.process.BaseProcess) -> None:
    """Start ``process`` without running this program's main module again in it.

    multiprocessing re-imports ``__main__`` in a fork-server or spawned child, for targets
    defined there. This child's target lives in this module, and a script that serves the
    dashboard without a ``__main__`` guard (``pn.serve(...)`` at top level) would otherwise
    start a second server inside every training process, which would then never report ready.
    """
    original = spawn.get_preparation_data

    def without_main(name: str) -> dict[str, Any]:
        data = original(name)
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    with _start_lock:
        spawn.get_preparation_data = without_main
        try:
            process.start()
        finally:
            spawn.get_preparation_data = original


def prestart() -> None:
    """Start the fork server now (it imports torch, a few seconds) rather than at the first
    run; a no-op where there is none."""
    context = _context()
    if context.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def training_processes() -> list[multiprocessing.process.BaseProcess]:
    """The live training processes started by this process (tests and load figures count
    them)."""
    return [p for p in multiprocessing.active_children() if p.name.startswith(PROCESS_PREFIX)]


def _shared_dir(nbytes: int) -> str:
    """RAM-backed /dev/shm when it has room (a container's default is 64 MiB), else the
    temporary directory."""
    with contextlib.suppress(OSError):
        stats = os.statvfs("/dev/shm")
        if stats.f_bavail * stats.f_frsize > 2 * nbytes:
            return "/dev/shm"
    return tempfile.gettempdir()


class ProcessTrainer(LoggedRun):
    """A ``Trainer`` that trains ``config`` in a child process.

    Building happens in the child and the constructor waits for it: a ``ConfigError`` there is
    raised here as one, any other failure as ``TrainingProcessError``. ``cancelled()`` is
    polled while waiting, and a cancelled build kills the child and raises
    ``TrainingProcessError``. ``threads``: the child's torch threads. ``own_session``: the
    child starts a session of its own (its own share of the cores where the scheduler groups by
    session); ``nice``: added to its niceness (a server that must stay responsive while every
    core trains).
    """

    def __init__(self, config: RunConfig, threads: int = 1,
                 cancelled: Callable[[], bool] = lambda: False, name: str = "",
                 own_session: bool = True, nice: int = 0) -> None:
        self.config = config
        self.lr = config.lr
        self.rule = UpdateRule.from_config(config)  # its hyperparameters only: the child steps
        self._cancelled = cancelled
        context = _context()
        self._conn, child_conn = context.Pipe()
        self.process = context.Process(target=_child_main,
                                       args=(child_conn, config, threads, own_session, nice),
                                       name=PROCESS_PREFIX + (name or "run"), daemon=True)
        _start_without_main(self.process)
        child_conn.close()
        self._kernel: np.ndarray | None = None
        self._kernel_map: mmap.mmap | None = None
        self._kernel_sent = -1.0
        self._last_kernel_step = -1
        self._in_flight: deque[bool] = deque()  # queued steps: whether each asked for K
        try:
            ready = self._receive()
            if isinstance(ready, BuildFailed):
                raise ConfigError(ready.message) if ready.kind == ConfigError.__name__ else \
                    TrainingProcessError(f"{ready.kind}: {ready.message}")
            assert isinstance(ready, Ready), ready
            self._map_kernel(ready.kernel_path, ready.kernel_rows)
        except BaseException:
            self.close()
            raise
        self.size: tuple[int, int] = ready.size
        self.threads: int = ready.threads  # the child's torch threads
        self.buffer = RunBuffer(ready.k, ready.rows, ready.attrs, eigvec_every=ready.eigvec_every,
                                max_snapshots=ready.max_snapshots, capacity=ready.capacity)

    def _map_kernel(self, path: str | None, rows: int) -> None:
        if path is None:
            return
        try:
            with open(path, "rb") as f:
                self._kernel_map = mmap.mmap(f.fileno(), rows * rows * 4, access=mmap.ACCESS_READ)
        finally:
            with contextlib.suppress(OSError):  # both sides have mapped it: the name can go
                os.unlink(path)
        self._kernel = np.frombuffer(self._kernel_map, np.float32).reshape(rows, rows)

    # ---- the SteppableRun interface --------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        """η from the next step on (checked here, applied by the child with the next step)."""
        self.lr = checked_lr(lr)

    def set_hyper(self, momentum: float | None = None, beta1: float | None = None) -> None:
        """β or β₁ from the next step on (checked here, applied by the child with it)."""
        self.rule.set_hyper(momentum=momentum, beta1=beta1)

    def step(self, want_kernel: bool | None = None, ahead: int = 0) -> StepRecord:
        """One step in the child; its record is appended to ``buffer`` and returned.

        ``want_kernel``: send the NTK with it (default: when the last one is older than
        ``KERNEL_INTERVAL_S`` and none is on its way, or this is the budget's last step).
        ``ahead``: steps to leave queued in the child on return, so that it starts the next
        step while this process is still busy with this one (a playing run). Each queued step
        takes η as it was when queued; ``sync()`` collects them.
        """
        if self.finished:
            raise RuntimeError(f"the run has ended ({self.status}); reset to start again")
        try:
            if not self._in_flight:
                self._send_step(want_kernel)
            record = self._absorb(self._receive())
            while ahead > len(self._in_flight) and not self.finished:
                self._send_step(None)
        except TrainingProcessError as exc:
            self._in_flight.clear()
            if not isinstance(exc, TrainingCancelled):  # a cancelled run keeps its status
                self.buffer.set_status(RunStatus.FAILED, str(exc))
            return StepRecord(len(self.buffer), {})
        if self.finished and self.status != RunStatus.FAILED and record.kernel is None:
            self.sync()  # the end of the run keeps its last kernel
        return record

    def _send_step(self, want_kernel: bool | None) -> None:
        kernel_on_its_way = any(self._in_flight)
        if want_kernel is None:
            last_of_budget = len(self.buffer) + len(self._in_flight) + 1 >= self.config.steps
            want_kernel = not kernel_on_its_way and (
                time.monotonic() - self._kernel_sent >= KERNEL_INTERVAL_S or last_of_budget)
        # one kernel on its way at a time: the child writes the map only when asked, and it is
        # asked again only after this process has copied the last one out
        want_kernel = bool(want_kernel) and self._kernel is not None and not kernel_on_its_way
        self._send(StepRequest(self.lr, want_kernel, self.rule.momentum, self.rule.beta1))
        self._in_flight.append(want_kernel)

    def _absorb(self, reply: FromChild) -> StepRecord:
        """Mirror one step's reply into ``buffer``."""
        assert isinstance(reply, StepReply), reply
        self._in_flight.popleft()
        record = reply.record
        if record is not None:
            if reply.kernel is not None:
                record.kernel, record.kernel_outputs = self._take_kernel(reply.kernel)
            self.buffer.append(record)
        if reply.traceback:
            self.buffer.set_attr("traceback", reply.traceback)
        if reply.status.terminal and not self.finished:
            self.buffer.set_status(reply.status, reply.reason)
        return record if record is not None else StepRecord(len(self.buffer), {})

    def sync(self) -> None:
        """Collect the queued steps and bring the mirror's kernel up to the child's last step
        (on a pause, at the end)."""
        if self._conn.closed:
            return
        try:
            while self._in_flight:
                self._absorb(self._receive())
            if self._kernel is None:
                return
            self._send(KernelRequest())
            reply = self._receive()
        except TrainingProcessError as exc:
            self._in_flight.clear()
            if not self.finished and not isinstance(exc, TrainingCancelled):
                self.buffer.set_status(RunStatus.FAILED, str(exc))
            return
        assert isinstance(reply, KernelReply), reply
        if reply.kernel is not None and reply.kernel.step > self._last_kernel_step:
            self.buffer.set_kernel(reply.kernel.step, *self._take_kernel(reply.kernel))

    def _take_kernel(self, kernel: KernelWritten) -> tuple[np.ndarray, int]:
        """(K, its row order) copied out of the map, where the child wrote ``kernel``."""
        assert self._kernel is not None
        self._kernel_sent = time.monotonic()
        self._last_kernel_step = kernel.step
        return self._kernel.copy(), kernel.outputs  # the child overwrites the map when asked

    def close(self, timeout: float = 5.0) -> None:
        """Stop the child (after the step in progress, or killed after a second) and free
        the map. The mirrored buffer stays."""
        if not self._conn.closed:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(Stop())
            self._conn.close()
        self.process.join(min(timeout, 1.0))
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
        self._kernel = None
        if self._kernel_map is not None:
            with contextlib.suppress(BufferError):  # a reader still holds a view: GC frees it
                self._kernel_map.close()
            self._kernel_map = None

    def _send(self, message: ToChild) -> None:
        try:
            self._conn.send(message)
        except OSError:  # a broken pipe: the child is gone
            raise self._ended() from None

    def _ended(self) -> TrainingProcessError:
        self.process.join(1.0)
        return TrainingProcessError(
            f"the training process ended unexpectedly (exit code {self.process.exitcode})")

    def _receive(self) -> FromChild:
        """The child's next message; raises TrainingProcessError when it died or the wait
        was cancelled (the child is then killed)."""
        try:
            while True:
                if self._cancelled():
                    self.process.kill()
                    raise TrainingCancelled("cancelled")
                if self._conn.poll(POLL_S) or not self.process.is_alive():
                    break
            return self._conn.recv()
        except (EOFError, OSError):
            raise self._ended() from None


# ---- the child -----------------------------------------------------------------------------
def _child_main(conn: Connection, config: RunConfig, threads: int, own_session: bool,
                nice: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    if own_session and hasattr(os, "setsid"):  # not on Windows
        # Where Linux groups the scheduler by session (autogroup, the default on desktops), the
        # run gets its own share of the cores instead of splitting one with the server and the
        # browser, whose bursts preempt it less (0.91-0.93 of a core and 18-21 steps/s served,
        # against 0.83-0.85 and 15.8-16 without). A child whose server dies still ends: its
        # next read of the pipe fails.
        with contextlib.suppress(OSError):
            os.setsid()
    if nice and hasattr(os, "nice"):
        with contextlib.suppress(OSError):
            os.nice(nice)
    keep_freed_memory()
    torch.set_num_threads(threads)
    try:
        trainer = Trainer(config)
    except Exception as exc:  # ConfigError, a bad data folder, out of memory ...
        conn.send(BuildFailed(type(exc).__name__ if not isinstance(exc, ConfigError)
                              else ConfigError.__name__, str(exc)))
        return
    trainer.copy_kernels = False
    rows = trainer.buffer.m
    kernel_path, kernel = None, None
    try:
        if trainer.mode == "exact" and rows <= KERNEL_KEEP_MAX_ROWS:  # an explicit K is kept
            kernel_path, kernel = _kernel_map(rows)
        buffer = trainer.buffer
        conn.send(Ready(k=buffer.k, rows=buffer.row_data, attrs=buffer.attrs,
                        eigvec_every=buffer.eigvec_every, max_snapshots=buffer.max_snapshots,
                        capacity=buffer.capacity, size=trainer.size,
                        threads=torch.get_num_threads(), kernel_path=kernel_path,
                        kernel_rows=rows))
        _serve(conn, trainer, kernel)
    except (EOFError, OSError, KeyboardInterrupt):
        pass  # the parent went away
    finally:
        if kernel_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(kernel_path)


def _kernel_map(rows: int) -> tuple[str | None, torch.Tensor | None]:
    """A shared file of rows × rows float32 and the child's view of it; (None, None) when it
    cannot be made (a full disk): the run then trains without sending its kernel."""
    nbytes = rows * rows * 4
    try:
        fd, path = tempfile.mkstemp(prefix="ntk-eos-kernel-", dir=_shared_dir(nbytes))
    except OSError:
        return None, None
    try:
        os.ftruncate(fd, nbytes)
        view = np.frombuffer(mmap.mmap(fd, nbytes), np.float32).reshape(rows, rows)
    except OSError:
        os.unlink(path)
        return None, None
    finally:
        os.close(fd)
    return path, torch.from_numpy(view)


def _serve(conn: Connection, trainer: Trainer, kernel: torch.Tensor | None) -> None:
    def write_kernel() -> KernelWritten | None:
        latest = trainer.latest_kernel
        if kernel is None or latest is None or latest[1].shape != kernel.shape:
            return None
        kernel.copy_(latest[1])
        return KernelWritten(step=latest[0], outputs=latest[2])

    def reply(record: StepRecord | None, written: KernelWritten | None) -> StepReply:
        buffer = trainer.buffer
        failed = buffer.status == RunStatus.FAILED
        return StepReply(record, written, buffer.status, buffer.attrs.get("status_reason", ""),
                         buffer.attrs.get("traceback", "") if failed else "")

    while True:
        message: ToChild = conn.recv()
        match message:
            case Stop():
                return
            case KernelRequest():
                conn.send(KernelReply(write_kernel()))
            case StepRequest() if trainer.finished:  # queued before the parent saw the end
                conn.send(reply(None, None))
            case StepRequest(lr=lr, want_kernel=want_kernel, momentum=momentum, beta1=beta1):
                if lr != trainer.lr:
                    trainer.set_lr(lr)
                if (momentum, beta1) != (trainer.rule.momentum, trainer.rule.beta1):
                    trainer.set_hyper(momentum=momentum if not trainer.rule.adaptive else None,
                                      beta1=beta1 if trainer.config.optimizer == "adam" else None)
                before = len(trainer.buffer)
                record = trainer.step()
                appended = len(trainer.buffer) > before
                written = None
                if want_kernel and appended and trainer.latest_kernel is not None \
                        and trainer.latest_kernel[0] == record.step:
                    written = write_kernel()
                conn.send(reply(record if appended else None, written))
