"""The load test against a server with a small session cap, stopped early and on a deadline.

Tabs beyond the cap get the app's busy page: the load test counts them as refused at once
(it used to wait for their Play button until its opening timeout), keeps them out of the
checks on the admitted pages, and reports. However it ends (its end, SIGTERM, its deadline) it
prints what it has and leaves no process of the server's process group behind."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "load_test.py"
SERVER_PID = re.compile(r"server pid (\d+)")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def load_test(*args: str, stderr: Path) -> subprocess.Popen:
    with stderr.open("w") as err:
        return subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=err, text=True)


def end(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL: a failed test must not leave the load test behind."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def finish(proc: subprocess.Popen, timeout: float) -> str:
    """The load test's stdout once it has ended by itself within ``timeout``."""
    try:
        return proc.communicate(timeout=timeout)[0]
    finally:
        end(proc)


def wait_for_line(path: Path, text: str, proc: subprocess.Popen, timeout: float) -> str:
    """The stderr so far, once it holds ``text``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        log = path.read_text()
        if text in log:
            return log
        assert proc.poll() is None, log[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} line in time:\n{path.read_text()[-3000:]}")


def server_pid(stderr: str) -> int:
    found = SERVER_PID.search(stderr)
    assert found, stderr[-3000:]
    return int(found.group(1))


def group_members(pgid: int) -> list[psutil.Process]:
    """The live processes (zombies are dead, awaiting their parent) of process group ``pgid``."""
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
    return members


def test_tabs_beyond_the_cap_are_refused_and_left_out_of_the_checks(tmp_path) -> None:
    err = tmp_path / "stderr.txt"
    t0 = time.monotonic()
    # long enough for the admitted tab's run to start its process and report steps
    proc = load_test("--sessions", "3", "--seconds", "15", "--max-sessions", "1", stderr=err)
    out = finish(proc, timeout=240)
    elapsed = time.monotonic() - t0
    result = json.loads(out)
    assert result["limits"]["max_sessions"] == 1
    assert (result["admitted"], result["refused"], result["unanswered"]) == (1, 2, 0), result
    assert result["stopped"] == "" and result["missing"] == [], result
    refused = [tab for tab in result["tabs"] if tab["refused"]]
    assert len(refused) == 2 and all(not tab["error"] for tab in refused), result["tabs"]
    # the opening ends with the admitted tab's Play press, not the refused tabs' timeout
    assert result["open_all_s"] < 120, result["open_all_s"]
    checks = result["checks"]
    assert checks["every_session_updates"] and checks["every_session_trains"], result["tabs"]
    assert checks["refused_only_beyond_cap"], checks
    assert result["steps"]["min"] > 0
    # fairness covers the admitted tab only: the refused ones show no step and would fail it
    assert result["fairness"]["tabs"] == 1, result["fairness"]
    assert result["fairness"]["steps_in_window"]["min"] > 0, result["fairness"]
    assert checks["every_tab_advanced_each_60s"] is True, result["tabs"]  # a 15 s window
    assert checks["fair_steps_max_over_min_le_3"] is True, result["fairness"]
    assert result["scheduler"] is None and result["worker_killed_at"] is None
    assert "every_tab_advanced_after_kill" not in checks  # no worker to kill
    assert elapsed < 200
    assert group_members(server_pid(err.read_text())) == []


def test_sigterm_ends_the_server_and_its_training_and_reports(tmp_path) -> None:
    err = tmp_path / "stderr.txt"
    proc = load_test("--sessions", "2", "--seconds", "120", "--max-sessions", "1", stderr=err)
    try:
        stderr = wait_for_line(err, "tabs answered", proc, timeout=150)
    except AssertionError:
        end(proc)
        raise
    pid = server_pid(stderr)
    # once the admitted tab pressed Play, its run trains in a process of the server's group
    training = group_members(pid)
    assert len(training) >= 2, training
    proc.send_signal(signal.SIGTERM)
    out = finish(proc, timeout=60)
    result = json.loads(out)
    assert result["stopped"] == "stopped by SIGTERM", result["stopped"]
    assert "window" in result["missing"] and "after_close" in result["missing"]
    assert (result["admitted"], result["refused"]) == (1, 1)
    assert result["checks"]["every_session_updates"] is None  # not measured, not passed
    assert result["checks"]["every_tab_advanced_each_60s"] is None
    assert result["checks"]["fair_steps_max_over_min_le_3"] is None
    assert result["memory_mb"]["peak"] > 0  # measured from the baseline on
    assert proc.returncode == 1
    assert group_members(pid) == []
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in training)


def test_the_deadline_stops_the_waiting_and_reports(tmp_path) -> None:
    err = tmp_path / "stderr.txt"
    proc = load_test("--sessions", "2", "--seconds", "60", "--deadline", "3", stderr=err)
    out = finish(proc, timeout=120)
    result = json.loads(out)
    assert result["stopped"].startswith("deadline of 3 s passed"), result["stopped"]
    assert result["elapsed_s"] < 3 + 20  # the server's end included
    assert "window" in result["missing"]
    assert result["unanswered"] + result["admitted"] + result["refused"] == 2
    assert result["checks"]["every_session_trains"] is None
    assert proc.returncode == 1
    assert group_members(server_pid(err.read_text())) == []
