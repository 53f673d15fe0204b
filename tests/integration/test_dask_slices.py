"""Slices on a Dask cluster (``DaskSlicePool``): a ``LocalCluster`` of 2 worker processes on
loopback, started here. Runs trained in slices there log what an uninterrupted ``Trainer``
logs; one worker is killed mid-run, every run goes on, and no logged step is lost or
duplicated. The dashboard's runs take the same path (``TrainingRun`` on a pool of slices)."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest
from support import assert_same_log, wait_for

from app.session.limits import ServerLimits, TrainingSlots
from app.session.runner import TrainingRun
from ntk_core import RunConfig, Trainer
from ntk_core.training.pooled_trainer import PooledTrainer
from ntk_core.training.slice_pool import DaskSlicePool

pytestmark = pytest.mark.timeout(300)

CONFIG = RunConfig(dataset="digits", n=24, classes=(0, 1, 2), width=16, k=4, steps=60, lr=0.2,
                   kernel="full")


@pytest.fixture(scope="module")
def cluster() -> object:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None,
                                  silence_logs=50) as cluster:
        yield cluster


def _worker_pids(pool: DaskSlicePool) -> list[int]:
    return list(pool.client.run(os.getpid).values())


def test_runs_on_dask_survive_a_killed_worker_with_every_step_once(cluster: object) -> None:
    pool = DaskSlicePool(cluster.scheduler_address)  # type: ignore[attr-defined]
    try:
        assert pool.workers == 2
        reference = Trainer(CONFIG)
        reference.run()
        runs = [PooledTrainer(CONFIG, pool, name=f"dask{i}") for i in range(3)]
        killed = threading.Event()

        def drive(run: PooledTrainer) -> None:
            while not run.finished:
                run.advance(3)

        threads = [threading.Thread(target=drive, args=(r,)) for r in runs]
        for t in threads:
            t.start()
        wait_for(lambda: all(len(r.buffer) >= 9 for r in runs), timeout=120)
        os.kill(_worker_pids(pool)[0], signal.SIGKILL)
        killed.set()
        for t in threads:
            t.join(240)
        for run in runs:
            assert run.status == "completed", run.buffer.attrs.get("status_reason")
            np.testing.assert_array_equal(run.buffer.rows(0)["step"], np.arange(CONFIG.steps))
            assert_same_log(run, reference)
        # the slices ran on both workers (and on the one the nanny started again)
        assert len(set().union(*(r.workers_seen for r in runs))) >= 2
    finally:
        pool.close()


def test_a_dashboard_run_streams_from_the_cluster(cluster: object) -> None:
    limits = ServerLimits(training="pool",
                          scheduler=cluster.scheduler_address)  # type: ignore[attr-defined]
    from app.session import limits as server_limits

    previous = server_limits.current()
    server_limits.configure(limits)
    try:
        slots = TrainingSlots(2)
        runs = [TrainingRun(CONFIG.replace(steps=30), slots=slots, limits=limits)
                for _ in range(2)]
        for run in runs:
            run.play()
        wait_for(lambda: all(r.finished for r in runs), timeout=180)
        for run in runs:
            assert run.status == "completed"
            assert isinstance(run.trainer, PooledTrainer)
            assert len(run.buffer) == 30
    finally:
        server_limits.configure(previous)
        server_limits.close_slice_pool()
