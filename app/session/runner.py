"""Background training for one dashboard session.

``TrainingRun`` owns one trainer and the daemon thread that steps it; the page never waits on
it. The thread builds the trainer (data and model loading happen off the UI thread), then steps
while playing or while single steps are pending, sleeping between steps to respect the speed cap.
The trainer is a ``ProcessTrainer`` (the local default, ``ServerLimits.training = "process"``):
the steps run in a child process and this thread only mirrors their records, so the page's
Python and the training never compete for one GIL. With ``"pool"`` (the hosted default) it is a
``PooledTrainer``: the run is its state between slices, stepped in turns on the server's shared
workers (local processes or a Dask cluster). With ``"thread"``, and for the user's own model or
data (``app.session.own_inputs``: a notebook's module cannot be pickled into a child), it is a
``Trainer`` in this process.
``RunController`` is the session's view: the current run, the preset's ladder of runs still to go,
the runs kept for comparison, and a saved run opened for viewing. Nothing here imports panel: the
page polls ``buffer`` / ``status_line`` from its periodic callback.

Server limits (``app.session.limits``): a run builds and steps only while it holds one of the process's
training slots, waiting its turn in the queue otherwise; each training thread sets its own torch
thread count; hosted caps are checked before a run starts (n, width, depth, steps) and once the
model is built (n·p, smaller with flows); a session left untouched past the idle limit is paused.
"""

from __future__ import annotations

import atexit
import itertools
import math
import threading
import time
import weakref
from collections.abc import Callable

import torch

from ntk_core.config import ConfigError, RunConfig
from ntk_core.numerics import stability
from ntk_core.training.buffer import RunBuffer
from ntk_core.training.pooled_trainer import PooledTrainer, slice_steps
from ntk_core.training.process_trainer import ProcessTrainer, TrainingProcessError
from ntk_core.training.protocol import SteppableRun
from ntk_core.training.trainer import Trainer
from ntk_core.vocabulary import TERMINAL, RunStatus

from . import limits as server_limits
from .kept_runs import MAX_KEPT, KeptRun, keep_run, lr_history_label
from .limits import HOSTED_TRAINING_NICE, ServerLimits, TrainingSlots
from .own_inputs import HOSTED_REFUSAL, OwnInputs

THREAD_PREFIX = "ntk-eos-train-"
LOADING = "loading"  # a session's run before its trainer exists (never a logged status)
# Steps queued in a training process beyond the one being collected: with two, the child has
# its next step in hand while this process copies out the last one, however busy its GIL is
STEPS_AHEAD = 2
# A pool's slice while no other run waits: short, so the page gets rows five times a second
STREAM_SLICE_S = 0.2
_ids = itertools.count(1)
_live_runs: weakref.WeakSet[TrainingRun] = weakref.WeakSet()


def training_threads() -> list[threading.Thread]:
    """The live training threads of this process (tests count them)."""
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX) and t.is_alive()]


@atexit.register
def stop_all(timeout: float = 5.0) -> None:
    """Stop every run and wait for its thread: a thread killed inside a torch call at
    interpreter exit aborts the process."""
    runs = list(_live_runs)
    for run in runs:
        run.stop()
    deadline = time.monotonic() + timeout
    for run in runs:
        run.thread.join(max(0.0, deadline - time.monotonic()))


class TrainingRun:
    """One trainer stepped by one daemon thread; ``play``/``pause``/``step``/``stop`` are
    thread-safe and return at once. The thread builds and steps only while it holds a slot of
    ``slots`` (the process's training slots unless given)."""

    def __init__(self, config: RunConfig, steps_per_second: float = 0.0,
                 slots: TrainingSlots | None = None, limits: ServerLimits | None = None,
                 own: OwnInputs | None = None) -> None:
        self.config = config
        self.own = own  # the user's model and data, in place of the config's
        self.limits = limits or server_limits.current()
        self.slots = slots or server_limits.training_slots()
        self.trainer: SteppableRun | None = None
        self.error = ""
        self.steps_per_second = steps_per_second  # 0: as fast as the engine goes
        self._lr = config.lr
        self._momentum, self._beta1 = config.momentum, config.beta1
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._go = threading.Event()  # set while there is work: playing, a pending step, a stop
        self._idle = threading.Event()  # set while the thread waits for work, or has ended
        self._playing = False
        self._pending = 0
        self.thread = threading.Thread(target=self._loop, name=f"{THREAD_PREFIX}{next(_ids)}",
                                       daemon=True)
        _live_runs.add(self)
        self.thread.start()

    # ---- controls (any thread) -----------------------------------------------------------
    def play(self) -> None:
        with self._lock:
            self._playing = True
            self._idle.clear()
            self._go.set()

    def pause(self) -> None:
        with self._lock:
            self._playing = False
            self._pending = 0
        self.slots.wake()  # a run waiting in the queue leaves it

    def step(self, count: int = 1) -> None:
        with self._lock:
            self._playing = False
            self._pending += count
            self._idle.clear()
            self._go.set()

    def stop(self) -> None:
        self._stop.set()
        self._go.set()
        self.slots.wake()

    def set_lr(self, lr: float) -> None:
        """η from the next step on; the weights are kept."""
        with self._lock:
            self._lr = lr
            if self.trainer is not None:
                self.trainer.set_lr(lr)

    def set_hyper(self, momentum: float | None = None, beta1: float | None = None) -> None:
        """The momentum β (gd, sgd) or Adam's β₁ from the next step on; the weights and the
        optimiser's state are kept. An option this run's optimiser does not read is ignored."""
        optimizer = self.config.optimizer
        momentum = momentum if optimizer in ("gd", "sgd") else None
        beta1 = beta1 if optimizer == "adam" else None
        if momentum is None and beta1 is None:
            return
        with self._lock:
            self._momentum = self._momentum if momentum is None else momentum
            self._beta1 = self._beta1 if beta1 is None else beta1
            if self.trainer is not None:
                self.trainer.set_hyper(momentum=momentum, beta1=beta1)

    def _apply_hyper(self, trainer: SteppableRun) -> None:
        """Hand the trainer a β or β₁ changed while it was being built."""
        optimizer = self.config.optimizer
        if optimizer in ("gd", "sgd") and self._momentum != self.config.momentum:
            trainer.set_hyper(momentum=self._momentum)
        if optimizer == "adam" and self._beta1 != self.config.beta1:
            trainer.set_hyper(beta1=self._beta1)

    def wait_idle(self, timeout: float) -> bool:
        """Block until the requested steps are done (or the run ended); False on timeout.
        For scripts and tests: the dashboard itself never waits."""
        return self._idle.wait(timeout)

    # ---- state ---------------------------------------------------------------------------
    @property
    def buffer(self) -> RunBuffer | None:
        return self.trainer.buffer if self.trainer is not None else None

    @property
    def playing(self) -> bool:
        return self._playing

    @property
    def lr(self) -> float:
        return self._lr

    @property
    def threshold_label(self) -> str:
        """The formula of the threshold the next step trains against: "(2+2β)/η, β = 0.5"."""
        c = self.config
        return stability.threshold_label(c.optimizer, self._momentum, c.nesterov, self._beta1)

    @property
    def status(self) -> str:
        """loading, failed (before the first step), or the buffer's status."""
        if self.error:
            return RunStatus.FAILED
        if self.trainer is None:
            return LOADING
        return self.trainer.status

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @property
    def queue_position(self) -> tuple[int, int] | None:
        """(place, queue length) while waiting for a training slot, else None."""
        return self.slots.position(self)

    @property
    def queue_wait(self) -> float | None:
        """About how many seconds until this run steps again, while it waits; else None.
        Every run ahead of it takes at most one slice of a slot."""
        place = self.queue_position
        if place is None:
            return None
        return math.ceil(place[0] / self.slots.capacity) * self.slots.slice

    # ---- the thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            self._train()
        except BaseException as exc:  # the thread dies: the run says why and keeps its steps
            trainer = self.trainer
            reason = f"the training thread stopped: {type(exc).__name__}: {exc}"
            if trainer is not None and not trainer.finished:
                trainer.buffer.set_status(RunStatus.FAILED, reason)
            elif trainer is None:
                self.error = reason
        finally:
            self.slots.release(self)
            self._idle.set()

    def _wants_work(self) -> bool:
        # read without the lock: acquire() calls this while holding the slots' lock
        return not self._stop.is_set() and (self._playing or self._pending > 0)

    def _build(self) -> SteppableRun | None:
        """Build the trainer inside a slot (data loading and the model cost CPU too)."""
        if not self.slots.acquire(self, lambda: not self._stop.is_set()):
            return None
        trainer: SteppableRun | None = None
        try:
            trainer = self._new_trainer()
            self.limits.check_size(*trainer.size, flows=bool(self.config.flows))
        except ConfigError as exc:
            self.error = str(exc)
        except TrainingProcessError as exc:
            self.error = "" if self._stop.is_set() else str(exc)
        except Exception as exc:  # bad data folder, unknown dataset files, out of memory ...
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            # a run that is to step keeps the slot for the rest of its turn: otherwise it would
            # wait a whole turn of the queue to build, and another for its first step
            if self.error or not self._wants_work():
                self.slots.release(self)
        if self.error and trainer is not None:
            trainer.close()
        return None if self.error else trainer

    def _new_trainer(self) -> SteppableRun:
        name = self.thread.name.removeprefix(THREAD_PREFIX)
        if self.limits.training == "pool" and self.own is None:
            return PooledTrainer(self.config, server_limits.slice_pool(),
                                 threads=self.limits.torch_threads, cancelled=self._stop.is_set,
                                 name=name)
        if self.limits.training == "process" and self.own is None:
            # A lecturer's laptop: the run gets its own share of the cores against the browser.
            # A hosted server trains on every core: its runs yield to the event loop instead.
            hosted = self.limits.mode == "hosted"
            return ProcessTrainer(self.config, threads=self.limits.torch_threads,
                                  cancelled=self._stop.is_set,
                                  name=name,
                                  own_session=not hosted, nice=HOSTED_TRAINING_NICE if hosted else 0)
        # OpenMP threads are a per-thread setting in torch: this thread's share of the cores
        torch.set_num_threads(self.limits.torch_threads)
        data, model = self.own.build(self.config) if self.own is not None else (None, None)
        return Trainer(self.config, data=data, model=model)

    def _train(self) -> None:
        trainer = self._build()
        if trainer is None:
            return
        with self._lock:
            trainer.set_lr(self._lr)
            self._apply_hyper(trainer)
            self.trainer = trainer
        try:
            self._drive(trainer)
        finally:
            trainer.close()  # the buffer stays with the run

    def _drive(self, trainer: SteppableRun) -> None:
        while not self._stop.is_set() and not trainer.finished:
            with self._lock:
                playing = self._playing
                work = playing or self._pending > 0
                if not work:
                    self._go.clear()
            if not work:
                # outside the lock (the page's controls take it): collect the queued steps, so
                # the paused page shows its last step and that step's kernel
                trainer.sync()
                with self._lock:
                    if not self._go.is_set():  # no play or step came in meanwhile
                        self._idle.set()
                        if trainer.status == RunStatus.RUNNING:
                            trainer.buffer.set_status(RunStatus.PAUSED)
                self.slots.release(self)
                self._go.wait()
                continue
            if self.slots.should_yield(self):
                self.slots.release(self)  # back of the queue: the others get their turn
            if not self.slots.acquire(self, self._wants_work):
                continue  # paused or stopped while queued
            with self._lock:
                playing = self._playing
                if not playing:
                    if self._pending <= 0:
                        continue
                    self._pending -= 1
            self._advance(trainer, playing)

    def _slice(self, trainer: PooledTrainer, playing: bool) -> None:
        """One slice on the pool: a full slice while others wait for a slot (then the slot
        goes to the next in line), a short one otherwise so the page updates often."""
        if not playing:
            trainer.advance(1)
            return
        seconds = self.slots.slice if self.slots.queued else STREAM_SLICE_S
        t0 = time.perf_counter()
        steps = slice_steps(self.steps_per_second, seconds)
        trainer.advance(steps, seconds)
        if self.steps_per_second > 0:  # the speed cap: wait out the rest of the slice
            wait = steps / self.steps_per_second - (time.perf_counter() - t0)
            if wait > 0 and self.slots.queued:
                self.slots.release(self)
            self._stop.wait(max(0.0, wait))
        elif self.slots.queued:
            self.slots.release(self)  # one slice per turn: the others get theirs

    @property
    def notice(self) -> str:
        """A note for the page from the trainer (a slice that ran again), else ''."""
        return str(getattr(self.trainer, "notice", ""))

    def _advance(self, trainer: SteppableRun, playing: bool) -> None:
        t0 = time.perf_counter()
        if playing and trainer.status != RunStatus.RUNNING:
            trainer.buffer.set_status(RunStatus.RUNNING)
        elif not playing and trainer.status in (RunStatus.READY, RunStatus.RUNNING):
            trainer.buffer.set_status(RunStatus.PAUSED)
        try:
            if isinstance(trainer, PooledTrainer):
                self._slice(trainer, playing)
                return
            # a playing run in a training process keeps its next step queued, unless others
            # wait for a slot or a speed cap paces it
            queue = playing and not self.slots.queued and self.steps_per_second <= 0
            trainer.step(ahead=STEPS_AHEAD if queue else 0)
        except Exception as exc:  # the engine records measurement failures itself
            trainer.buffer.set_status(RunStatus.FAILED, f"{type(exc).__name__}: {exc}")
            return
        if playing and self.steps_per_second > 0:
            wait = 1.0 / self.steps_per_second - (time.perf_counter() - t0)
            if wait > 0 and self.slots.queued:
                self.slots.release(self)  # nobody steps while this run sleeps
            self._stop.wait(max(0.0, wait))


def status_line(step: int, status: str, queue: tuple[int, int] | None = None,
                wait: float | None = None) -> str:
    """'step 120 · running', 'diverged at step 37', 'step 40 · queued: position 3 of 5 ·
    steps again in about 4 s' ... the line the page shows."""
    if status == RunStatus.DIVERGED:
        return f"diverged at step {step}"
    if queue is not None:
        again = f" · steps again in about {wait:.0f} s" if wait is not None else ""
        return f"step {step} · queued: position {queue[0]} of {queue[1]}{again}"
    words = {RunStatus.REACHED_TARGET: "reached the target loss", LOADING: "loading data and model"}
    return f"step {step} · {words.get(status, status)}"


class RunController:
    """The runs of one session: the current one, the ladder still to go, kept runs, a viewed
    file. All methods are meant for the UI thread. ``own``: the user's model and data, which
    every run trains in place of its config's (never on a hosted server)."""

    def __init__(self, limits: ServerLimits | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 own: OwnInputs | None = None) -> None:
        self.limits = limits or server_limits.current()
        if own is not None and self.limits.mode == "hosted":
            raise ConfigError(f"your own model and data: {HOSTED_REFUSAL}")
        self.own = own
        self._clock = clock
        self.last_input = clock()
        self.idle_note = ""
        self.run: TrainingRun | None = None
        self.viewed: RunBuffer | None = None
        self.viewed_name = ""
        self.queue: list[RunConfig] = []
        self.ladder_size = 1
        self._ladder_kept: TrainingRun | None = None  # the ladder run kept last: kept once
        self.kept: list[KeptRun] = []
        self.steps_per_second = 0.0

    # ---- runs ----------------------------------------------------------------------------
    def cap_error(self, configs: list[RunConfig]) -> str:
        """'' when every config fits the server's caps, else the first cap's message."""
        try:
            for config in configs:
                self.limits.check(config)
        except ConfigError as exc:
            return str(exc)
        return ""

    def reset(self, configs: list[RunConfig], play: bool = False) -> None:
        """Stop the current run and start ``configs[0]`` (the rest run after it: the ladder)."""
        self.touch()
        self._stop_run()
        self.viewed, self.viewed_name = None, ""
        self.queue = list(configs[1:])
        self.ladder_size = len(configs)
        self._ladder_kept = None
        self._start(configs[0], play)

    def _start(self, config: RunConfig, play: bool) -> None:
        self.run = TrainingRun(config, steps_per_second=self.steps_per_second, limits=self.limits,
                               own=self.own)
        if play:
            self.run.play()

    def _stop_run(self) -> None:
        if self.run is not None:
            self.run.stop()
            self.run = None

    def advance_ladder(self) -> bool:
        """Keep a finished ladder run and start the next one (the last one is kept too); True
        when the kept runs changed."""
        run = self.run
        if run is None or not run.finished or run.buffer is None or self.ladder_size < 2 \
                or run is self._ladder_kept:
            return False
        self.keep()
        self._ladder_kept = run
        if self.queue:
            self._start(self.queue.pop(0), play=True)
        return True

    def view(self, buffer: RunBuffer, name: str) -> None:
        """Show a saved run instead of training."""
        self._stop_run()
        self.queue = []
        self.viewed, self.viewed_name = buffer, name

    def close(self) -> None:
        self._stop_run()
        self.queue = []

    # ---- controls ------------------------------------------------------------------------
    def touch(self) -> None:
        """Note user input (every control calls this): the idle clock starts again."""
        self.last_input = self._clock()
        self.idle_note = ""

    def play(self) -> None:
        self.touch()
        if self.run is not None:
            self.run.play()

    def pause(self) -> None:
        self.touch()
        if self.run is not None:
            self.run.pause()

    def step(self) -> None:
        self.touch()
        if self.run is not None:
            self.run.step()

    def set_lr(self, lr: float) -> None:
        self.touch()
        if self.run is not None:
            self.run.set_lr(lr)

    def set_hyper(self, momentum: float | None = None, beta1: float | None = None) -> None:
        self.touch()
        if self.run is not None:
            self.run.set_hyper(momentum=momentum, beta1=beta1)

    def set_speed(self, steps_per_second: float) -> None:
        self.touch()
        self.steps_per_second = steps_per_second
        if self.run is not None:
            self.run.steps_per_second = steps_per_second

    def keep(self) -> KeptRun | None:
        """Copy the current (or viewed) run into the comparison overlays."""
        buffer = self.buffer
        if buffer is None or len(buffer) == 0:
            return None
        lrs = buffer.rows(0)["lr"]
        if self.run is not None:  # η as the run went: a change mid-run shows in the legend
            lr, label = self.run.lr, lr_history_label(lrs)
        else:
            lr = float(lrs[-1]) if len(lrs) else float(buffer.attrs.get("lr", float("nan")))
            label = self.viewed_name or lr_history_label(lrs)
        kept = keep_run(buffer, label, lr)
        self.kept = [*self.kept, kept][-MAX_KEPT:]
        return kept

    def clear_kept(self) -> None:
        self.kept = []

    def pause_if_idle(self) -> bool:
        """Pause a playing run after ``idle_minutes`` without input, which frees its training
        slot for others; True when it paused now (``idle_note`` then says why)."""
        minutes = self.limits.idle_minutes
        run = self.run
        if not minutes or run is None or not run.playing or run.finished:
            return False
        if self._clock() - self.last_input < 60 * minutes:
            return False
        run.pause()
        self.idle_note = (f"**Paused after {minutes:g} minutes without input**, to share the "
                          "server with others. Press Play to continue.")
        return True

    # ---- state ---------------------------------------------------------------------------
    @property
    def buffer(self) -> RunBuffer | None:
        if self.viewed is not None:
            return self.viewed
        return self.run.buffer if self.run is not None else None

    @property
    def status(self) -> str:
        if self.viewed is not None:
            return self.viewed.status
        return self.run.status if self.run is not None else RunStatus.READY

    @property
    def step_count(self) -> int:
        """Steps taken so far (the diverging step counts as the step it diverged at)."""
        buffer = self.buffer
        if buffer is None or len(buffer) == 0:
            return 0
        if buffer.status == RunStatus.DIVERGED:
            return int(buffer.rows(len(buffer) - 1)["step"][-1])
        return len(buffer)

    @property
    def status_line(self) -> str:
        live = self.run is not None and self.viewed is None
        queue = self.run.queue_position if live and self.run is not None else None
        wait = self.run.queue_wait if live and self.run is not None and queue else None
        return status_line(self.step_count, self.status, queue, wait)

    @property
    def worker_note(self) -> str:
        """The live run's note about its training workers (a slice that ran again), or ''."""
        return self.run.notice if self.run is not None and self.viewed is None else ""

    @property
    def ladder_position(self) -> int:
        """1-based index of the current run in the ladder."""
        return self.ladder_size - len(self.queue)
