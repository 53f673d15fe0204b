"""Background training for one dashboard session.

``TrainingRun`` owns one ``Trainer`` and the daemon thread that steps it; the page never waits on
it. The thread builds the trainer (data and model loading happen off the UI thread), then steps
while playing or while single steps are pending, sleeping between steps to respect the speed cap.
``RunController`` is the session's view: the current run, the preset's ladder of runs still to go,
the runs kept for comparison, and a saved run opened for viewing. Nothing here imports panel: the
page polls ``buffer`` / ``status_line`` from its periodic callback.
"""

from __future__ import annotations

import atexit
import itertools
import threading
import time
import weakref

from ntk_core.buffer import RunBuffer
from ntk_core.config import RunConfig
from ntk_core.train import TERMINAL, Trainer

from .runs import MAX_KEPT, KeptRun, keep_run

THREAD_PREFIX = "ntk-eos-train-"
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
    thread-safe and return at once."""

    def __init__(self, config: RunConfig, label: str = "", steps_per_second: float = 0.0) -> None:
        self.config = config
        self.label = label or f"η={config.lr:g}"
        self.trainer: Trainer | None = None
        self.error = ""
        self.steps_per_second = steps_per_second  # 0: as fast as the engine goes
        self._lr = config.lr
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

    def step(self, count: int = 1) -> None:
        with self._lock:
            self._playing = False
            self._pending += count
            self._idle.clear()
            self._go.set()

    def stop(self) -> None:
        self._stop.set()
        self._go.set()

    def set_lr(self, lr: float) -> None:
        """η from the next step on; the weights are kept."""
        with self._lock:
            self._lr = lr
            if self.trainer is not None:
                self.trainer.set_lr(lr)

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
    def status(self) -> str:
        """loading, failed (before the first step), or the buffer's status."""
        if self.error:
            return "failed"
        if self.trainer is None:
            return "loading"
        return self.trainer.status

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    # ---- the thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            self._train()
        finally:
            self._idle.set()

    def _train(self) -> None:
        try:
            trainer = Trainer(self.config)
        except Exception as exc:  # bad data folder, unknown dataset files, out of memory ...
            self.error = f"{type(exc).__name__}: {exc}"
            return
        with self._lock:
            trainer.set_lr(self._lr)
            self.trainer = trainer
        while not self._stop.is_set() and not trainer.finished:
            with self._lock:
                playing = self._playing
                work = playing or self._pending > 0
                if not work:
                    self._go.clear()
                    self._idle.set()
                    if trainer.status == "running":
                        trainer.buffer.set_status("paused")
                elif not playing:
                    self._pending -= 1
            if work:
                self._advance(trainer, playing)
            else:
                self._go.wait()

    def _advance(self, trainer: Trainer, playing: bool) -> None:
        t0 = time.perf_counter()
        if playing and trainer.status != "running":
            trainer.buffer.set_status("running")
        elif not playing and trainer.status in ("ready", "running"):
            trainer.buffer.set_status("paused")
        try:
            trainer.step()
        except Exception as exc:  # the engine records measurement failures itself
            trainer.buffer.set_status("failed", f"{type(exc).__name__}: {exc}")
            return
        if playing and self.steps_per_second > 0:
            self._stop.wait(max(0.0, 1.0 / self.steps_per_second - (time.perf_counter() - t0)))


def status_line(step: int, status: str) -> str:
    """'step 120 · running', 'diverged at step 37', ... the line the page shows."""
    if status == "diverged":
        return f"diverged at step {step}"
    words = {"reached_target": "reached the target loss", "loading": "loading data and model"}
    return f"step {step} · {words.get(status, status)}"


class RunController:
    """The runs of one session: the current one, the ladder still to go, kept runs, a viewed
    file. All methods are meant for the UI thread."""

    def __init__(self) -> None:
        self.run: TrainingRun | None = None
        self.viewed: RunBuffer | None = None
        self.viewed_name = ""
        self.queue: list[RunConfig] = []
        self.ladder_size = 1
        self.kept: list[KeptRun] = []
        self.steps_per_second = 0.0

    # ---- runs ----------------------------------------------------------------------------
    def reset(self, configs: list[RunConfig], play: bool = False) -> None:
        """Stop the current run and start ``configs[0]`` (the rest run after it: the ladder)."""
        self._stop_run()
        self.viewed, self.viewed_name = None, ""
        self.queue = list(configs[1:])
        self.ladder_size = len(configs)
        self._start(configs[0], play)

    def _start(self, config: RunConfig, play: bool) -> None:
        self.run = TrainingRun(config, steps_per_second=self.steps_per_second)
        if play:
            self.run.play()

    def _stop_run(self) -> None:
        if self.run is not None:
            self.run.stop()
            self.run = None

    def advance_ladder(self) -> bool:
        """Keep a finished ladder run and start the next one; True when a new run started."""
        run = self.run
        if run is None or not self.queue or not run.finished or run.buffer is None:
            return False
        self.keep()
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
    def play(self) -> None:
        if self.run is not None:
            self.run.play()

    def pause(self) -> None:
        if self.run is not None:
            self.run.pause()

    def step(self) -> None:
        if self.run is not None:
            self.run.step()

    def set_lr(self, lr: float) -> None:
        if self.run is not None:
            self.run.set_lr(lr)

    def set_speed(self, steps_per_second: float) -> None:
        self.steps_per_second = steps_per_second
        if self.run is not None:
            self.run.steps_per_second = steps_per_second

    def keep(self) -> KeptRun | None:
        """Copy the current (or viewed) run into the comparison overlays."""
        buffer = self.buffer
        if buffer is None or len(buffer) == 0:
            return None
        if self.run is not None:
            lr, label = self.run.lr, self.run.label
        else:
            lr = float(buffer.attrs.get("lr", float("nan")))
            label = self.viewed_name or f"η={lr:g}"
        kept = keep_run(buffer, label, lr)
        self.kept = [*self.kept, kept][-MAX_KEPT:]
        return kept

    def clear_kept(self) -> None:
        self.kept = []

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
        return self.run.status if self.run is not None else "ready"

    @property
    def step_count(self) -> int:
        """Steps taken so far (the diverging step counts as the step it diverged at)."""
        buffer = self.buffer
        if buffer is None or len(buffer) == 0:
            return 0
        if buffer.status == "diverged":
            return int(buffer.rows(len(buffer) - 1)["step"][-1])
        return len(buffer)

    @property
    def status_line(self) -> str:
        return status_line(self.step_count, self.status)

    @property
    def ladder_position(self) -> int:
        """1-based index of the current run in the ladder."""
        return self.ladder_size - len(self.queue)
