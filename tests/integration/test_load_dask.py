"""The load test with the pool's slices on a Dask cluster, CI-sized: the script starts a
``LocalCluster`` of 2 single-threaded worker processes on loopback, serves the app against it,
opens 4 tabs that press Play, and 15 s into a 45 s window SIGKILLs one of the workers (Dask's
nanny starts a new one). Every tab's step must keep advancing, after the kill too, the server
must log no errors, and once the script has ended nothing of the server's process group or of
the cluster's may be left; nor when the script is stopped by SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from test_load_refusals import end, finish, group_members, load_test, server_pid, wait_for_line

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "load_test.py"
SESSIONS = 4
SECONDS = 45
KILL_AFTER = 15
DEADLINE = 420
CLUSTER_PID = re.compile(r"cluster pid (\d+)")

pytest.importorskip("distributed")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(DEADLINE + 120)]


def test_four_tabs_on_a_local_cluster_go_on_after_a_worker_is_killed(tmp_path) -> None:
    out = tmp_path / "load.json"
    err = tmp_path / "stderr.txt"
    with err.open("w") as stderr:
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), "--sessions", str(SESSIONS), "--seconds", str(SECONDS),
             "--max-sessions", str(SESSIONS), "--scheduler", "local-cluster",
             "--kill-worker-after", str(KILL_AFTER), "--deadline", str(DEADLINE),
             "--json", str(out)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, text=True, timeout=DEADLINE + 60)
    log = err.read_text()
    assert out.exists(), log[-3000:]
    result = json.loads(out.read_text())
    assert result["stopped"] == "" and result["missing"] == [], (result["stopped"], log[-3000:])
    assert result["admitted"] == SESSIONS and result["refused"] == 0, result["tabs"]

    scheduler = result["scheduler"]
    assert scheduler["local_cluster"] and scheduler["address"].startswith("tcp://127.0.0.1:")
    assert result["limits"]["training"] == "pool"
    assert result["limits"]["scheduler"] == scheduler["address"]
    assert result["limits"]["max_trainings"] == 2  # sized to the cluster's worker threads

    # the kill happened, on time, to one of the cluster's workers
    assert scheduler["kill_error"] == "", scheduler["kill_error"]
    assert scheduler["killed_worker_pid"] in scheduler["worker_pids"], scheduler
    assert len(scheduler["worker_pids"]) == 2
    assert KILL_AFTER <= result["worker_killed_at"] < SECONDS, result["worker_killed_at"]

    checks = result["checks"]
    assert checks["every_tab_advanced_after_kill"] is True, result["tabs"]
    assert all(tab["advanced_after_kill"] for tab in result["tabs"]), result["tabs"]
    # a 45 s window: every tab advanced in it
    assert checks["every_tab_advanced_each_60s"] is True, result["tabs"]
    assert result["fairness"]["tabs"] == SESSIONS
    assert result["fairness"]["steps_in_window"]["min"] > 0, result["fairness"]
    assert checks["every_session_trains"] and checks["every_session_updates"], result["tabs"]
    assert checks["no_server_errors"] and result["errors"] == [], result["errors"]
    assert checks["threads_back_to_baseline"], result["server"]
    # the exit status says whether every check held (liveness and memory included)
    assert proc.returncode == (0 if all(v is True for v in checks.values()) else 1), checks
    # the cluster's processes count in the memory figure
    assert result["memory_mb"]["peak_cluster"] > 0, result["memory_mb"]
    assert result["memory_mb"]["peak"] >= result["memory_mb"]["peak_cluster"]

    # nothing left: the server's process group, the cluster's group, its workers
    assert group_members(server_pid(log)) == []
    assert group_members(scheduler["cluster_pid"]) == []
    for pid in scheduler["worker_pids"]:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_sigterm_ends_the_cluster_with_the_server(tmp_path) -> None:
    err = tmp_path / "stderr.txt"
    proc = load_test("--sessions", "1", "--seconds", "60", "--scheduler", "local-cluster",
                     stderr=err)
    try:
        stderr = wait_for_line(err, "server ready", proc, timeout=240)
    except AssertionError:
        end(proc)
        raise
    found = CLUSTER_PID.search(stderr)
    assert found, stderr[-3000:]
    cluster = int(found.group(1))
    workers = [p for p in group_members(cluster) if p.pid != cluster]
    assert len(workers) >= 2, workers  # the cluster's worker processes, in its group
    proc.send_signal(signal.SIGTERM)
    result = json.loads(finish(proc, timeout=90))
    assert result["stopped"] == "stopped by SIGTERM", result["stopped"]
    assert result["scheduler"]["cluster_pid"] == cluster
    assert proc.returncode == 1
    assert group_members(server_pid(err.read_text())) == []
    assert group_members(cluster) == []
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
