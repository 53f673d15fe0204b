"""The dashboard's runs on a pool of slices (``training = "pool"``): many runs on one worker take
turns, each advancing once per rotation; a waiting run's status says when it steps again; a
paused run's state stays and Play goes on from it; the run's log equals an uninterrupted
``Trainer``'s."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import numpy as np
import pytest
from support import assert_same_log, wait_for

from app.session import limits as server_limits
from app.session.limits import ServerLimits
from app.session.runner import TrainingRun
from ntk_core import RunConfig, Trainer
from ntk_core.training.pooled_trainer import PooledTrainer

pytestmark = pytest.mark.timeout(240)

CONFIG = RunConfig(dataset="digits", n=32, classes=(0, 1), width=16, k=4, steps=4000, lr=0.2)


@pytest.fixture
def pool_limits() -> Iterator[ServerLimits]:
    limits = server_limits.configure(ServerLimits(training="pool", max_trainings=1,
                                                  slice_seconds=0.5))
    yield limits
    server_limits.close_slice_pool()
    server_limits.configure(None)


def test_runs_on_one_worker_take_turns_and_all_advance(pool_limits: ServerLimits) -> None:
    runs = [TrainingRun(CONFIG, limits=pool_limits) for _ in range(5)]
    try:
        for run in runs:
            run.play()
        wait_for(lambda: all(run.buffer is not None and len(run.buffer) > 0 for run in runs),
                 timeout=120)
        start = [len(run.buffer) for run in runs]  # type: ignore[arg-type]
        waits = []
        deadline = time.monotonic() + 8  # 5 runs × 0.5 s slices: about 3 rotations
        while time.monotonic() < deadline:
            waits += [w for run in runs if (w := run.queue_wait) is not None]
            time.sleep(0.05)
        gained = [len(run.buffer) - s for run, s in zip(runs, start, strict=True)]  # type: ignore[arg-type]
        assert all(isinstance(run.trainer, PooledTrainer) for run in runs)
        assert min(gained) > 0, gained
        assert max(gained) <= 3 * min(gained), gained
        # at most one rotation: every run ahead of it (all 5 at a hand-over) takes one slice
        assert waits and max(waits) <= 5 * pool_limits.slice_seconds
    finally:
        for run in runs:
            run.stop()


def test_pause_and_play_go_on_from_the_checked_in_state(pool_limits: ServerLimits) -> None:
    config = CONFIG.replace(steps=30)
    reference = Trainer(config)
    reference.run()
    run = TrainingRun(config, limits=pool_limits)
    try:
        run.step(7)
        assert run.wait_idle(60)
        assert run.buffer is not None and len(run.buffer) == 7 and run.status == "paused"
        run.set_lr(0.2)  # the same η: the log must still match
        run.play()
        wait_for(lambda: run.finished, timeout=120)
        assert run.status == "completed"
        assert_same_log(run.trainer, reference)
    finally:
        run.stop()


def test_a_killed_worker_costs_one_slice_and_the_page_says_so(pool_limits: ServerLimits) -> None:
    # long enough that no machine ends it within its first 0.5 s slice (60 steps did, on a
    # fast one: the worker was then killed idle and nothing was lost)
    config = CONFIG.replace(steps=1500)
    run = TrainingRun(config, limits=pool_limits)
    try:
        run.play()
        wait_for(lambda: run.buffer is not None and len(run.buffer) >= 10, timeout=120)
        assert not run.finished
        pool = server_limits.slice_pool()
        os.kill(pool.pids()[0], signal.SIGKILL)  # type: ignore[attr-defined]
        wait_for(lambda: run.finished, timeout=180)
        assert run.status == "completed"
        np.testing.assert_array_equal(run.buffer.rows(0)["step"], np.arange(1500))
        assert "worker was lost" in run.notice
    finally:
        run.stop()
