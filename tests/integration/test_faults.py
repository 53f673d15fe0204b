"""Fault tests: an exception inside a measurement, a training thread that dies, damaged and
hostile run files, path traversal in the server's run folder, a full disk and a read-only
folder. Each must end with a clear message and keep everything already computed."""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from app.dashboard import Dashboard
from app.files import runfile
from app.files.runs import RunFileError, read_run_bytes, run_schema
from app.files.storage import RunStore, StorageError
from app.session.runner import TrainingRun, training_threads
from app.session.settings import RunSettings
from app.views.server_files import ServerFiles
from ntk_core import RunBuffer, RunConfig, Trainer
from ntk_core.cli import main as cli_main
from ntk_core.training import netcdf as netcdf_module
from ntk_core.training.netcdf import SaveError, run_bytes, save_run

pytestmark = pytest.mark.timeout(180)

CONFIG = RunConfig(dataset="digits", n=16, classes=(0, 1), width=8, k=2, steps=50)
SMALL = {"n": 16, "classes": "0,1", "width": 8, "k": 2, "steps": 50}
CLI_FLAGS = ["--dataset", "digits", "--n", "16", "--classes", "0,1", "--width", "8", "--k", "2",
             "--steps", "3", "--quiet"]


class Killed(BaseException):
    """Stands for what ends a thread outside the Exception hierarchy."""


def trained(steps: int = 3) -> Trainer:
    trainer = Trainer(CONFIG)
    for _ in range(steps):
        trainer.step()
    return trainer


def boom(*_: object, **__: object) -> None:
    raise RuntimeError("injected fault")


@pytest.fixture(scope="module")
def run_file() -> bytes:
    return run_bytes(trained().buffer.snapshot())


# ---- an exception mid-measurement --------------------------------------------------------------
def test_measurement_exception_fails_the_run_and_keeps_the_log(monkeypatch) -> None:
    trainer = trained(3)
    before = trainer.buffer.rows(0)
    monkeypatch.setattr(trainer.measurer, "measure", boom)
    trainer.step()
    assert trainer.status == "failed"
    reason = trainer.buffer.attrs["status_reason"]
    assert "measurement failed at step 3" in reason and "injected fault" in reason
    assert "RuntimeError" in trainer.buffer.attrs["traceback"]
    rows = trainer.buffer.rows(0)
    assert len(rows["step"]) == 4 and np.isfinite(rows["loss"][3])  # the failed step's loss too
    for name, values in before.items():
        np.testing.assert_array_equal(rows[name][:3], values, err_msg=name)
    ds = read_run_bytes(run_bytes(trainer.buffer.snapshot()))  # what was computed can be saved
    assert ds.attrs["status"] == "failed" and ds.sizes["step"] == 4


def test_an_error_outside_the_measurement_also_fails_the_run(monkeypatch) -> None:
    trainer = trained(3)
    monkeypatch.setattr(trainer.rule, "update", boom)  # the parameter update, after measuring
    ds = trainer.run()  # returns instead of raising
    assert ds.attrs["status"] == "failed" and "step 3 failed: RuntimeError" in \
        ds.attrs["status_reason"]
    assert ds.sizes["step"] == 3
    with pytest.raises(RuntimeError, match="has ended"):
        trainer.step()


def test_dashboard_shows_a_failed_measurement_and_keeps_serving(monkeypatch,
                                                                  thread_training: None) -> None:
    dash = Dashboard(settings=RunSettings(**SMALL))
    try:
        for _ in range(3):
            dash.step()
        assert dash.controller.run.wait_idle(60)
        monkeypatch.setattr(dash.controller.run.trainer.measurer, "measure", boom)
        dash.step()
        assert dash.controller.run.wait_idle(60)
        dash.tick()
        assert dash.run_alert.alert_type == "danger" and "The run failed" in dash.run_alert.object
        assert "injected fault" in dash.run_alert.object
        assert read_run_bytes(dash._download_netcdf().getvalue()).sizes["step"] == 4
        monkeypatch.undo()
        dash.reset()  # the page still trains
        dash.step()
        assert dash.controller.run.wait_idle(60) and len(dash.controller.buffer) == 1
    finally:
        dash.close()
        for thread in training_threads():
            thread.join(30)


# ---- a training thread that dies ---------------------------------------------------------------
def test_a_killed_training_thread_leaves_a_failed_run_with_its_steps(thread_training: None
                                                                     ) -> None:
    run = TrainingRun(CONFIG)
    try:
        run.step(3)
        assert run.wait_idle(60)
        steps = run.buffer.rows(0)["step"].copy()

        def killed(*, ahead: int = 0) -> None:
            raise Killed("thread killed")

        run.trainer.step = killed
        run.step()
        run.thread.join(30)
        assert not run.thread.is_alive()
        assert run.status == "failed" and run.finished
        assert "training thread stopped: Killed: thread killed" in \
            run.buffer.attrs["status_reason"]
        np.testing.assert_array_equal(run.buffer.rows(0)["step"], steps)
    finally:
        run.stop()


# ---- damaged and hostile files -----------------------------------------------------------------
def test_a_valid_run_file_round_trips(run_file: bytes) -> None:
    ds = read_run_bytes(run_file)
    rebuilt = RunBuffer.from_dataset(ds)
    assert len(rebuilt) == 3 and rebuilt.latest_kernel() is not None


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999])
def test_truncated_files_are_refused_with_a_message(run_file: bytes, fraction: float) -> None:
    with pytest.raises(RunFileError, match="not a readable NetCDF|missing|could not"):
        read_run_bytes(run_file[: int(len(run_file) * fraction)])


def _h5(path: Path, build) -> bytes:
    with h5py.File(path, "w") as f:
        build(f)
    return path.read_bytes()


def test_wrong_schema_and_huge_declared_dims(tmp_path: Path, run_file: bytes) -> None:
    ds = read_run_bytes(run_file)
    wrong = ds.copy()
    wrong["loss"] = (("step", "eig"), np.zeros((3, 2)))
    with pytest.raises(RunFileError, match="loss has 2 dimensions"):
        read_run_bytes(run_bytes(wrong))
    bad_config = ds.copy()
    bad_config.attrs["config"] = '{"lr": -1}'
    with pytest.raises(RunFileError, match="config is not valid: lr"):
        read_run_bytes(run_bytes(bad_config))
    backwards = ds.assign_coords(step=[2, 1, 0])
    with pytest.raises(RunFileError, match="steps must be increasing"):
        read_run_bytes(run_bytes(backwards))
    # a few kB on disk that declare 8 GB: refused before any data is read
    huge = _h5(tmp_path / "huge.nc", lambda f: f.create_dataset(
        "loss", shape=(10**9,), dtype="f8", chunks=(2**16,), compression="gzip"))
    assert len(huge) < 100_000
    with pytest.raises(RunFileError, match="missing|limit is"):
        read_run_bytes(huge)
    for name in ("step", "eig", "sample"):
        with pytest.raises(RunFileError, match=f"dimension {name} has .* the limit"):
            read_run_isolated_dims(tmp_path, name)


def read_run_isolated_dims(tmp_path: Path, big: str) -> None:
    """A file with every required variable, one dimension far beyond its cap."""
    schema = run_schema()
    sizes = {"step": 3, "eig": 2, "sample": 4, "snapshot": 1, "sample_col": 4}
    sizes[big] = schema.dim_caps[big] + 1

    def build(f: h5py.File) -> None:
        for name in schema.required:
            dims, _ = schema.variables[name]
            f.create_dataset(name, shape=tuple(sizes[d] for d in dims), dtype="f8",
                             chunks=True, compression="gzip")

    read_run_bytes(_h5(tmp_path / f"big-{big}.nc", build))


def test_memory_budget_is_checked_before_reading(tmp_path: Path, run_file: bytes) -> None:
    with pytest.raises(RunFileError, match="more than 0 MB"):
        read_run_bytes(run_file, max_data_mb=0.001)


def test_hdf5_features_that_reach_other_files_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"server secret" * 100)
    other = tmp_path / "other.h5"
    _h5(other, lambda f: f.create_dataset("loss", data=np.arange(3.0)))
    cases = {
        "is a link": lambda f: f.__setitem__("loss", h5py.ExternalLink(str(other), "/loss")),
        "is a link ": lambda f: (f.create_dataset("x", data=np.arange(3.0)),
                                 f.__setitem__("loss", h5py.SoftLink("/x"))),
        "another file": lambda f: f.create_dataset(
            "loss", shape=(100,), dtype="u1", external=[(str(secret), 0, 100)]),
        "virtual": lambda f: f.create_virtual_dataset(
            "loss", _layout(other)),
        "type": lambda f: f.create_dataset("loss", data=np.array([b"text"] * 3, dtype="S4")),
    }
    for i, (message, build) in enumerate(cases.items()):
        with pytest.raises(RunFileError, match=message.strip()):
            read_run_bytes(_h5(tmp_path / f"hostile{i}.nc", build))


def _layout(source: Path) -> h5py.VirtualLayout:
    layout = h5py.VirtualLayout(shape=(3,), dtype="f8")
    layout[:] = h5py.VirtualSource(str(source), "loss", shape=(3,))
    return layout


def test_hdf5_that_is_not_netcdf_and_a_pickle_renamed_nc(tmp_path: Path) -> None:
    plain_hdf5 = _h5(tmp_path / "plain.h5", lambda f: f.create_group("g").create_dataset(
        "data", data=np.arange(5)))
    with pytest.raises(RunFileError, match="missing loss"):
        read_run_bytes(plain_hdf5)
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Marker(str(marker)))
    with pytest.raises(RunFileError, match="not a readable NetCDF"):
        read_run_bytes(payload)
    assert not marker.exists()  # nothing was unpickled


class _Marker:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_slow_reader_is_killed_and_the_next_file_still_reads(run_file: bytes) -> None:
    schema = run_schema()
    with pytest.raises(RunFileError, match="took longer than"):
        runfile.read_isolated(run_file * 50, schema, timeout=0.0)
    assert runfile._worker_process is None  # killed, with its children
    assert read_run_bytes(run_file).sizes["step"] == 3


def test_a_dead_reader_process_is_restarted(run_file: bytes) -> None:
    read_run_bytes(run_file)
    worker = runfile._worker_process
    worker.kill()
    worker.wait(10)
    assert read_run_bytes(run_file).sizes["step"] == 3
    assert runfile._worker_process is not worker


# ---- path traversal in load and export ---------------------------------------------------------
@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path / "runs")


@pytest.mark.parametrize("name", [
    "../escape", "..", "../../etc/passwd", "/etc/passwd", "a/b", "a\\b", ".hidden", "a\0b",
    "x" * 65, "", "   ", "~root", "a..b", "%2e%2e%2fx", "C:\\x", "na\nme", "ünïcode"])
def test_names_that_are_not_plain_are_refused(store: RunStore, run_file: bytes,
                                              name: str) -> None:
    ds = read_run_bytes(run_file)
    with pytest.raises(StorageError):
        store.save(ds, name)
    with pytest.raises(StorageError):
        store.load(name)
    outside = [p for p in store.root.parent.rglob("*") if p.suffix == ".nc"]
    assert outside == []  # nothing written anywhere


def test_links_in_the_folder_are_not_followed(store: RunStore, run_file: bytes,
                                              tmp_path: Path) -> None:
    store.root.mkdir(parents=True)
    target = tmp_path / "outside.nc"
    target.write_bytes(run_file)
    (store.root / "evil.nc").symlink_to(target)
    (store.root / "inner.nc").symlink_to(store.root / "evil.nc")
    assert store.list() == []
    with pytest.raises(StorageError, match="outside the runs folder"):
        store.load("evil")
    with pytest.raises(StorageError, match="outside|link"):
        store.load("inner")
    with pytest.raises(StorageError):
        store.save(read_run_bytes(run_file), "evil")
    assert target.read_bytes() == run_file


def test_store_saves_lists_and_loads_without_replacing(store: RunStore, run_file: bytes) -> None:
    ds = read_run_bytes(run_file)
    assert store.save(ds, "first.nc") == "first"
    assert (store.root / "first.nc").stat().st_mode & 0o777 == 0o600
    with pytest.raises(StorageError, match="exists already"):
        store.save(ds, "first")
    assert store.list() == ["first"]
    assert store.load("first").sizes["step"] == 3
    small = RunStore(store.root, max_mb=0.001)
    with pytest.raises(StorageError, match="the limit is"):
        small.load("first")
    with pytest.raises(StorageError, match="no run named"):
        store.load("second")


def test_dashboard_server_files_refuse_traversal(store: RunStore, run_file: bytes) -> None:
    messages: list[tuple[str, str]] = []
    buffer = RunBuffer.from_dataset(read_run_bytes(run_file))
    files = ServerFiles(store, lambda: buffer, lambda name, data: messages.append(("open", name)),
                        lambda text, kind: messages.append((kind, text)))
    files.name_input.value = "../../outside"
    files.save()
    assert messages[-1][0] == "danger" and "letters, digits" in messages[-1][1]
    files.name_input.value = "kept-run"
    files.save()
    assert messages[-1][0] == "success" and files.select.options == ["kept-run"]
    files.select.value = "kept-run"
    files.open()
    assert messages[-1] == ("open", "kept-run")


# ---- a full disk, a read-only folder -----------------------------------------------------------
def _fail_with(code: int):
    def fail(*_: object, **__: object) -> None:
        raise OSError(code, os.strerror(code))
    return fail


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "the disk is full"),
                                         (errno.EDQUOT, "quota"),
                                         (errno.EROFS, "read-only")])
def test_a_failed_write_keeps_the_old_file_and_the_run(monkeypatch, tmp_path: Path, code: int,
                                                       words: str) -> None:
    trainer = trained(3)
    path = tmp_path / "run.nc"
    save_run(trainer.buffer.snapshot(), path)
    old = path.read_bytes()
    trainer.step()
    rows = trainer.buffer.rows(0)
    monkeypatch.setattr(netcdf_module.os, "fsync", _fail_with(code))
    with pytest.raises(SaveError, match=words) as info:
        trainer.buffer.save(path)
    assert "nothing was overwritten" in str(info.value) and info.value.errno == code
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.nc"]  # no temp file left
    for name, values in trainer.buffer.rows(0).items():
        np.testing.assert_array_equal(values, rows[name])


def test_a_read_only_folder(monkeypatch, tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    ds = trained(2).buffer.snapshot()
    if os.geteuid() == 0:  # root ignores permission bits: stand in the error a read-only fs gives
        monkeypatch.setattr(netcdf_module.tempfile, "mkstemp", _fail_with(errno.EROFS))
        words = "read-only"
    else:
        folder.chmod(0o500)
        words = "no permission"
    try:
        with pytest.raises(SaveError, match=words):
            save_run(ds, folder / "run.nc")
        with pytest.raises(StorageError, match=words):
            RunStore(folder).save(ds, "run")
    finally:
        folder.chmod(0o700)
    assert list(folder.iterdir()) == []


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 64 kB tmpfs where the system allows mounting one (root in a privileged
    container); skipped elsewhere."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_really_full_disk(full_disk: Path, run_file: bytes) -> None:
    ds = read_run_bytes(run_file)
    small = full_disk / "small.nc"
    save_run(ds.isel(step=slice(0, 1)).drop_vars(["eigenvectors", "kernel"]), small)
    old = small.read_bytes()
    big = ds.assign(extra=("x", np.random.default_rng(0).random(20_000)))
    with pytest.raises(SaveError, match="the disk is full"):
        save_run(big, small)
    assert small.read_bytes() == old and [p.name for p in full_disk.iterdir()] == ["small.nc"]


def test_cli_refuses_an_unwritable_out_before_training(monkeypatch, tmp_path: Path,
                                                       capsys) -> None:
    import ntk_core.cli.run as cli_run

    monkeypatch.setattr(cli_run.tempfile, "NamedTemporaryFile", _fail_with(errno.EROFS))
    started = time.perf_counter()
    code = cli_main(["run", *CLI_FLAGS, "--out", str(tmp_path / "out" / "run.nc")])
    assert code == 2
    assert "cannot save to" in capsys.readouterr().err
    assert time.perf_counter() - started < 10


def test_cli_saves_elsewhere_when_the_save_fails(monkeypatch, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run.nc"
    real_replace = os.replace

    def replace(src: str, dst: str | os.PathLike) -> None:
        if Path(dst) == out:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(netcdf_module.os, "replace", replace)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "fallback"))
    (tmp_path / "fallback").mkdir()
    code = cli_main(["run", *CLI_FLAGS, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "the disk is full" in err and "saved to" in err
    saved = list((tmp_path / "fallback").glob("ntk-eos-*.nc"))
    assert len(saved) == 1 and read_run_bytes(saved[0].read_bytes()).sizes["step"] == 3
    assert not out.exists()


def test_an_injected_error_does_not_lose_a_saved_run(tmp_path: Path, run_file: bytes) -> None:
    """A save interrupted by something other than OSError (a kill) also leaves no partial file."""
    path = tmp_path / "run.nc"
    path.write_bytes(run_file)
    ds = xr.Dataset({"loss": ("step", np.ones(3))})
    real_fdopen = os.fdopen

    def interrupted(fd: int, *args: object, **kwargs: object):
        real_fdopen(fd, *args, **kwargs).close()
        raise KeyboardInterrupt

    import unittest.mock as mock

    with mock.patch.object(netcdf_module.os, "fdopen", interrupted), \
            pytest.raises(KeyboardInterrupt):
        save_run(ds, path)
    assert path.read_bytes() == run_file and [p.name for p in tmp_path.iterdir()] == ["run.nc"]
