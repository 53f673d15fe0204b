"""Trainings as slices (``ntk_core.training.slices``, ``slice_pool``, ``pooled_trainer``): a run
checked out and in between slices logs exactly what an uninterrupted ``Trainer`` logs, on every
optimiser and with flows; slices on a local pool match too; a worker killed mid-slice loses
only that slice, and no step is lost or logged twice."""

from __future__ import annotations

import os
import pickle
import signal
import threading

import numpy as np
import pytest
from support import assert_same_log

from ntk_core import RunConfig, Trainer
from ntk_core.training.buffer import sample_major
from ntk_core.training.pooled_trainer import PooledTrainer
from ntk_core.training.slice_pool import LocalSlicePool, SlicePool
from ntk_core.training.slices import SliceRequest, SliceResult, run_slice

pytestmark = pytest.mark.timeout(240)

CONFIG = RunConfig(dataset="digits", n=24, classes=(0, 1, 2), width=16, k=4, steps=12, lr=0.2,
                   kernel="full")
VARIANTS = {
    "gd": CONFIG,
    "heavy ball": CONFIG.replace(momentum=0.5),
    "adam": CONFIG.replace(optimizer="adam", lr=0.01),
    "sgd": CONFIG.replace(optimizer="sgd", batch_size=8),
    "flows": CONFIG.replace(flows=("central", "stable"), steps=6),
    "thinned snapshots": CONFIG.replace(eigvec_every=1, eigvec_max_snapshots=2),
}


class InProcessPool:
    """Runs each slice here, unpickling every state (no cache): the strictest check-in."""

    workers = 1

    def __init__(self) -> None:
        self.requests: list[SliceRequest] = []

    def run(self, request: SliceRequest, cancelled: object = None) -> SliceResult:
        self.requests.append(request)
        request = pickle.loads(pickle.dumps(request))  # as it travels to a worker
        from ntk_core.training import slices

        slices.forget(request.run)
        return pickle.loads(pickle.dumps(run_slice(request)))

    def close(self) -> None:
        pass


@pytest.mark.parametrize("name", list(VARIANTS))
def test_slices_log_what_an_uninterrupted_trainer_logs(name: str) -> None:
    config = VARIANTS[name]
    reference = Trainer(config)
    reference.run()
    pool = InProcessPool()
    run = PooledTrainer(config, pool)
    sizes = iter([1, 3, 2, 5, 100])
    while not run.finished:
        run.advance(next(sizes))
    assert run.status == reference.status == "completed"
    assert_same_log(run, reference)
    assert all(r.state is not None for r in pool.requests[1:])  # every slice from a state
    if config.flows:
        for column in ("loss@central", "distance_to_gd@stable", "predicted_loss"):
            np.testing.assert_array_equal(run.buffer.rows(0)[column],
                                          reference.buffer.rows(0)[column])
    # the log keeps the last measured step's kernel, as a training process's mirror does
    step, K = run.buffer.latest_kernel()
    assert reference.latest_kernel is not None
    ref_step, ref_K, outputs = reference.latest_kernel
    assert step == ref_step == config.steps - 1
    np.testing.assert_array_equal(K, sample_major(ref_K.numpy(), outputs))


def test_a_state_is_small_and_carries_no_scratch_space() -> None:
    trainer = Trainer(CONFIG.replace(n=256, classes=(0, 1, 2, 3), width=64))
    for _ in range(3):
        trainer.step()
    scratch = sum(b.numel() * b.element_size()
                  for b in trainer.measurer.workspace._buffers.values())
    assert scratch > 0
    state = pickle.dumps(trainer, protocol=5)
    restored = pickle.loads(state)
    assert restored.measurer.workspace._buffers == {}
    assert len(restored.buffer) == 0 and restored.step_index == 3
    K0 = trainer.measurer.K0.numel() * 4
    params = sum(p.numel() for p in trainer.params) * 4
    # the weights, the first kernel, warm starts and the data; the scratch space is not in it
    assert len(state) < K0 + 6 * params + scratch


def test_a_bad_config_fails_its_build_with_the_engines_message() -> None:
    from ntk_core.config import ConfigError

    bad = CONFIG.replace(data_dir="/nonexistent", dataset="cifar10")
    with pytest.raises((ConfigError, RuntimeError)):
        PooledTrainer(bad, InProcessPool())


@pytest.fixture(scope="module")
def local_pool() -> SlicePool:
    pool = LocalSlicePool(2)
    yield pool
    pool.close()


def test_slices_on_local_workers_match_and_a_killed_worker_loses_only_its_slice(
        local_pool: LocalSlicePool) -> None:
    config = CONFIG.replace(steps=40, measure_every=1)
    reference = Trainer(config)
    reference.run()
    runs = [PooledTrainer(config, local_pool, name=f"r{i}") for i in range(3)]
    killed = threading.Event()

    def drive(run: PooledTrainer) -> None:
        while not run.finished:
            run.advance(4)

    def kill_one() -> None:
        while not killed.is_set():
            pids = local_pool.pids()
            if pids and all(len(r.buffer) >= 8 for r in runs):
                os.kill(pids[0], signal.SIGKILL)
                killed.set()

    threads = [threading.Thread(target=drive, args=(r,)) for r in runs]
    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    killed.set()
    assert local_pool.replaced >= 1
    assert sum(r.lost_slices for r in runs) >= 1
    for run in runs:
        assert run.status == "completed"
        steps = run.buffer.rows(0)["step"]
        np.testing.assert_array_equal(steps, np.arange(config.steps))  # none lost, none twice
        assert_same_log(run, reference)
    assert any("worker was lost" in r.notice for r in runs)
