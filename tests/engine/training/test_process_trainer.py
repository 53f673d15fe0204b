"""Training in a child process (``ntk_core.training.process_trainer``): the mirror matches an in-process
``Trainer`` exactly, queued steps and η changes, the kernel after a pause and at the end, a
child that dies or fails to build, cancelling a build, and a served run's process ending with
its run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import assert_same_log, wait_for

from app.session.limits import ServerLimits, TrainingSlots
from app.session.runner import TrainingRun
from ntk_core import RunConfig, Trainer
from ntk_core.training.buffer import sample_major
from ntk_core.training.process_trainer import ProcessTrainer, TrainingProcessError, training_processes

pytestmark = pytest.mark.timeout(180)

# the full multi-output kernel: output-major in the engine, sample-major in the buffer
CONFIG = RunConfig(dataset="digits", n=24, classes=(0, 1, 2), width=16, k=4, steps=12, lr=0.2,
                   kernel="full")


def test_the_mirror_matches_an_in_process_trainer_step_for_step() -> None:
    reference = Trainer(CONFIG)
    mirror = ProcessTrainer(CONFIG)
    try:
        assert mirror.size == reference.size and mirror.buffer.m == reference.buffer.m
        assert mirror.buffer.attrs["n_params"] == reference.buffer.attrs["n_params"]
        for _ in range(CONFIG.steps):
            mirror.step(want_kernel=True)
            reference.step()
        assert mirror.status == reference.status == "completed"
        assert_same_log(mirror, reference)
        step, K = mirror.buffer.latest_kernel()
        ref_step, ref_K = reference.buffer.latest_kernel()
        assert step == ref_step == CONFIG.steps - 1
        np.testing.assert_array_equal(K, ref_K)
        with pytest.raises(RuntimeError, match="has ended"):
            mirror.step()
    finally:
        mirror.close()
    assert not mirror.process.is_alive()


def test_queued_steps_take_lr_as_queued_and_sync_collects_them() -> None:
    config = CONFIG.replace(steps=50)
    mirror = ProcessTrainer(config)
    reference = Trainer(config)
    try:
        mirror.step(ahead=2)  # steps 1 and 2 are queued with η = 0.2
        mirror.set_lr(0.1)
        mirror.step(ahead=2)  # collects step 1, queues step 3 with η = 0.1
        assert len(mirror.buffer) == 2
        mirror.sync()  # a pause: the queued steps arrive
        assert len(mirror.buffer) == 4
        lrs = mirror.buffer.rows(0)["lr"]
        np.testing.assert_array_equal(lrs, [0.2, 0.2, 0.2, 0.1])
        for lr in lrs:
            reference.set_lr(float(lr))
            reference.step()
        assert_same_log(mirror, reference)
        # the steps that asked for no kernel were caught up by the pause
        step, K = mirror.buffer.latest_kernel()
        assert step == 3
        np.testing.assert_array_equal(K, reference.buffer.latest_kernel()[1])
    finally:
        mirror.close()


def test_a_kernel_asked_for_between_eigenvector_snapshots_still_comes() -> None:
    """Past ``eigvec_max_snapshots`` the eigenvectors are kept every 2nd, 4th … step. The kernel
    must still come for any step that asks: with two steps queued, the asking steps all had
    one parity, and from step 512 of the default preset the page's NTK stopped updating."""
    config = CONFIG.replace(steps=20, eigvec_max_snapshots=2)
    mirror = ProcessTrainer(config)
    reference = Trainer(config)
    try:
        for _ in range(9):
            mirror.step(want_kernel=False)
            reference.step()
        assert mirror.buffer.eigvec_every >= 4 and 9 % mirror.buffer.eigvec_every != 0
        mirror.step(want_kernel=True)  # step 9: no eigenvector snapshot
        reference.step()
        step, K = mirror.buffer.latest_kernel()
        ref_step, ref_K, outputs = reference.latest_kernel
        assert step == ref_step == 9
        np.testing.assert_array_equal(K, sample_major(ref_K.numpy(), outputs))
    finally:
        mirror.close()


def test_only_some_steps_carry_the_kernel_while_playing() -> None:
    mirror = ProcessTrainer(CONFIG.replace(steps=40))
    try:
        sent = 0
        for _ in range(10):
            mirror.step(ahead=2)
            sent += mirror.buffer.latest_kernel() is not None and \
                mirror.buffer.latest_kernel()[0] == len(mirror.buffer) - 1
        # at most one kernel per KERNEL_INTERVAL_S: these small steps take a few ms each
        assert 1 <= sent < 10
    finally:
        mirror.close()


def test_a_child_that_dies_fails_the_run_and_keeps_its_steps() -> None:
    mirror = ProcessTrainer(CONFIG.replace(steps=50))
    try:
        for _ in range(3):
            mirror.step()
        os.kill(mirror.process.pid, signal.SIGKILL)
        mirror.process.join(10)
        mirror.step()
        assert mirror.status == "failed"
        assert "ended unexpectedly" in mirror.buffer.attrs["status_reason"]
        assert "-9" in mirror.buffer.attrs["status_reason"]  # killed by SIGKILL
        np.testing.assert_array_equal(mirror.buffer.rows(0)["step"], [0, 1, 2])
        mirror.sync()  # nothing to collect from a dead child, and no exception
    finally:
        mirror.close()


def test_build_errors_come_back_as_they_would_in_process() -> None:
    with pytest.raises(TrainingProcessError, match="DataError: digits: .* only 178 examples"):
        ProcessTrainer(RunConfig(dataset="digits", n=5000))
    with pytest.raises(TrainingProcessError, match="DataError: cifar10: .* not a cifar-10"):
        ProcessTrainer(RunConfig(dataset="cifar10", data_dir="/nonexistent-folder"))
    assert not training_processes()


def test_a_cancelled_build_kills_the_child() -> None:
    with pytest.raises(TrainingProcessError, match="cancelled"):
        ProcessTrainer(CONFIG, cancelled=lambda: True)
    wait_for(lambda: not training_processes(), timeout=10)


def test_a_served_run_trains_in_a_process_that_ends_with_it() -> None:
    before = set(training_processes())
    run = TrainingRun(CONFIG.replace(steps=400), slots=TrainingSlots(1),
                      limits=ServerLimits(training="process"))
    try:
        run.play()
        wait_for(lambda: run.buffer is not None and len(run.buffer) >= 5)
        ours = [p for p in training_processes() if p not in before]
        assert len(ours) == 1 and isinstance(run.trainer, ProcessTrainer)
        run.pause()
        assert run.wait_idle(30)
        steps = len(run.buffer)
        assert run.buffer.latest_kernel()[0] == steps - 1  # the paused page's kernel is current
        run.step(2)
        assert run.wait_idle(30) and len(run.buffer) == steps + 2
    finally:
        run.stop()
        run.thread.join(30)
    assert not run.thread.is_alive()
    wait_for(lambda: not ours[0].is_alive(), timeout=10)
    assert run.status in ("paused", "running")  # stopping keeps the log as it was


def test_a_finished_run_frees_its_process_and_keeps_the_last_kernel() -> None:
    run = TrainingRun(CONFIG, slots=TrainingSlots(1), limits=ServerLimits(training="process"))
    try:
        run.play()
        wait_for(lambda: run.finished)
        run.thread.join(30)
        assert run.status == "completed" and len(run.buffer) == CONFIG.steps
        assert not run.trainer.process.is_alive()
        assert run.buffer.latest_kernel()[0] == CONFIG.steps - 1
    finally:
        run.stop()


def test_stopping_mid_step_kills_the_child_and_keeps_the_status() -> None:
    stop = False
    mirror = ProcessTrainer(CONFIG.replace(steps=50), cancelled=lambda: stop)
    try:
        mirror.step()
        stop = True
        mirror.step()  # the child is killed instead of waited for
        assert mirror.status == "ready" and len(mirror.buffer) == 1
        wait_for(lambda: not mirror.process.is_alive(), timeout=10)
    finally:
        mirror.close()


def test_a_script_without_a_main_guard_is_not_run_again_in_the_child(tmp_path) -> None:
    script = tmp_path / "serve_it.py"
    script.write_text(
        "from ntk_core import RunConfig\n"
        "from ntk_core.training.process_trainer import ProcessTrainer\n"
        "print('script body runs', flush=True)\n"
        f"trainer = ProcessTrainer(RunConfig.from_json({CONFIG.replace(steps=3).to_json()!r}))\n"
        "for _ in range(3):\n"
        "    trainer.step()\n"
        "print('status', trainer.status, len(trainer.buffer), flush=True)\n"
        "trainer.close()\n")
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("script body runs") == 1, done.stdout
    assert "status completed 3" in done.stdout


def test_session_and_niceness_of_the_child() -> None:
    """Local servers give each run a session of its own (its own share of the cores where the
    scheduler groups by session); hosted servers keep runs in theirs, at a lower priority."""
    own = ProcessTrainer(CONFIG, own_session=True)
    shared = ProcessTrainer(CONFIG, own_session=False, nice=5)
    try:
        assert os.getsid(own.process.pid) == own.process.pid != os.getsid(0)
        assert os.getsid(shared.process.pid) == os.getsid(0)
        assert os.getpriority(os.PRIO_PROCESS, shared.process.pid) == os.getpriority(
            os.PRIO_PROCESS, 0) + 5
        assert os.getpriority(os.PRIO_PROCESS, own.process.pid) == os.getpriority(
            os.PRIO_PROCESS, 0)
    finally:
        own.close()
        shared.close()


def test_a_kernel_map_that_cannot_be_made_is_skipped(monkeypatch, tmp_path) -> None:
    from ntk_core.training import process_trainer

    path, view = process_trainer._kernel_map(8)
    try:
        assert view.shape == (8, 8) and os.path.exists(path)
    finally:
        os.unlink(path)
    monkeypatch.setattr(process_trainer, "_shared_dir", lambda nbytes: str(tmp_path / "gone"))
    assert process_trainer._kernel_map(8) == (None, None)  # no folder: no map, no stray file
