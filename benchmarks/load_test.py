"""Load test: many dashboard tabs training at once on one server, over loopback only.

Serves the app with ``ntk-eos serve``'s command line (hosted mode by default) on 127.0.0.1,
opens ``--sessions`` Bokeh client sessions (the same websocket protocol a browser tab uses,
without drawing), presses Play in each, and, from the moment every tab has pressed Play, for
``--seconds`` records:

- per session: every document update received (the largest gap between two), the step reached;
- ``/liveness`` latency, polled every 0.25 s (the server's event loop), and the app's health
  check ``/liveness?endpoint=/main`` every 5 s (builds a document), from a process of its own;
- the server's own figures (training threads and processes, sessions, queue, memory), from the
  stats line of the ``--setup`` script (``NTK_EOS_STATS_SECONDS``), and the memory of the
  server with its training processes from /proc (proportional set sizes);
- error lines and tracebacks in the server's log.

Then it closes every session and waits for the training threads and processes to return to
the baseline::

    python benchmarks/load_test.py --sessions 20 --seconds 120 --json benchmarks/results/load.json

It prints the figures as JSON; ``checks`` holds each acceptance criterion and whether it held.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import panel.models  # noqa: F401  (the client document needs Panel's model classes)
import panel.models.file_dropper  # noqa: F401  (the upload box, loaded only on demand)
from bokeh.client import ClientSession, pull_session
from bokeh.document.events import MessageSentEvent
from bokeh.events import ButtonClick, DocumentReady
from bokeh.models import Button
from tornado.ioloop import IOLoop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.server.launch import limits_env, serve_command  # noqa: E402
from app.server.startup import LIMITS_PREFIX, STATS_PREFIX  # noqa: E402

LIVENESS_P95_S = 1.0
LIVENESS_TIMEOUT_S = 5.0
MAX_UPDATE_GAP_S = 15.0  # a tab that hears nothing for this long looks frozen
OPEN_TIMEOUT_S = 300.0  # every tab must show its dashboard within this
# the server and its training processes, 20 tabs of the default preset (each live run has a
# process of its own: about 180 MB unique, torch's pages shared)
MEMORY_BOUND_MB = 6144.0
ERROR_PATTERN = re.compile(r"Traceback|ERROR|Exception|Error:", re.I)
STEP_PATTERN = re.compile(r"step (\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mb(pid: int) -> float:
    """Memory of ``pid`` and its descendants (the fork server, the training processes): the sum
    of their proportional set sizes, so pages they share (torch's) count once in all."""
    import psutil

    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for proc in procs:
        try:
            with open(f"/proc/{proc.pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            continue  # it ended meanwhile
    return total / 2**10


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def probe(url: str, out: Path) -> None:
    """Poll ``/liveness`` every 0.25 s and the app's check every 5 s, one JSON line per answer.
    Runs in a process of its own, as a load balancer's or Docker's checks would: in the load
    test's process it would wait for the GIL behind twenty client sessions and time them."""
    parent = os.getppid()
    with out.open("a") as log:
        for count in itertools.count():
            if os.getppid() != parent:  # the load test has gone: so does its prober
                return
            endpoint = "" if count % 20 else "/main"
            query = f"?endpoint={endpoint}" if endpoint else ""
            t0 = time.perf_counter()
            error = ""
            try:
                with urllib.request.urlopen(f"{url}/liveness{query}",
                                            timeout=LIVENESS_TIMEOUT_S) as r:
                    r.read()
            except OSError as exc:  # counted as the timeout in the percentiles
                error = f"{endpoint or '/'}: {exc}"
            seconds = LIVENESS_TIMEOUT_S if error else time.perf_counter() - t0
            log.write(json.dumps({"t": time.monotonic(), "endpoint": endpoint,
                                  "s": seconds, "error": error}) + "\n")
            log.flush()
            time.sleep(0.25 if error else max(0.0, 0.25 - seconds))


def start_prober(url: str, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--probe", url, "--probe-log", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if the process is still there after ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def read_probes(path: Path) -> tuple[list[float], list[float], list[float], list[str]]:
    """(/liveness latencies, app-check latencies, /liveness times, failures) from the log."""
    latencies: list[float] = []
    app_latencies: list[float] = []
    stamps: list[float] = []
    failures: list[str] = []
    for line in path.read_text().splitlines() if path.exists() else []:
        row = json.loads(line)
        if row["error"]:
            failures.append(row["error"])
        if row["endpoint"]:
            app_latencies.append(row["s"])
        else:
            latencies.append(row["s"])
            stamps.append(row["t"])
    return latencies, app_latencies, stamps, failures


class Server:
    """``panel serve`` in a subprocess, its log in a file, its stats lines parsed."""

    def __init__(self, mode: str, stats_seconds: float, workdir: Path) -> None:
        self.port = free_port()
        env = limits_env(hosted=mode == "hosted")
        env.update(NTK_EOS_STATS_SECONDS=str(stats_seconds), OMP_NUM_THREADS="1",
                   PYTHONPATH=str(ROOT), BOKEH_ALLOW_WS_ORIGIN=f"127.0.0.1:{self.port}")
        self.log_path = workdir / "server.log"
        self._log = self.log_path.open("w")
        cmd = serve_command(port=self.port, address="127.0.0.1")
        self.proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def liveness(self, endpoint: str = "", timeout: float = 5.0) -> float:
        """Seconds one /liveness request took; raises OSError on failure."""
        query = f"?endpoint={endpoint}" if endpoint else ""
        t0 = time.perf_counter()
        with urllib.request.urlopen(f"{self.url}/liveness{query}", timeout=timeout) as r:
            r.read()
            if r.status != 200:
                raise OSError(f"liveness answered {r.status}")
        return time.perf_counter() - t0

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the server exited:\n" + self.log()[-3000:])
            try:
                self.liveness("/main")
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError("the server did not answer /liveness")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def limits(self) -> dict[str, Any]:
        """The limits the --setup script applied (its first line)."""
        for line in self.log().splitlines():
            if line.startswith(LIMITS_PREFIX):
                return json.loads(line[len(LIMITS_PREFIX):])
        return {}

    def stats(self) -> list[dict[str, Any]]:
        decoder = json.JSONDecoder()
        lines = []
        for line in self.log().splitlines():
            if line.startswith(STATS_PREFIX):
                try:  # another thread's log line can land on the same line
                    lines.append(decoder.raw_decode(line[len(STATS_PREFIX):])[0])
                except json.JSONDecodeError:
                    continue
        return lines

    def wait_stats(self, after: int, timeout: float = 30.0) -> dict[str, Any]:
        """The first stats line after the ``after``-th one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.stats()
            if len(lines) > after:
                return lines[-1]
            time.sleep(0.2)
        raise TimeoutError("no stats line from the server")

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


class Tab:
    """One client session in its own thread and IO loop: pull the page, press Play, listen."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.updates: list[float] = []
        self.status = ""
        self.error = ""
        self.played_at = 0.0
        self.session: ClientSession | None = None
        self.loop: IOLoop | None = None
        self.status_model: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        self.loop = IOLoop()
        try:
            self.session = pull_session(url=self.url, io_loop=self.loop)
        except Exception as exc:  # a refused or failed connection is a result, not a crash
            self.error = f"{type(exc).__name__}: {exc}"
            return
        doc = self.session.document
        doc.on_change(self._on_change)
        # what BokehJS sends once the page is drawn: the app then builds the dashboard
        self._send(DocumentReady())
        self.session._loop_until_closed()  # bokeh 3 keeps the listening loop private

    def _send(self, event: Any) -> None:
        doc = self.session.document
        doc.callbacks.trigger_on_change(MessageSentEvent(doc, "bokeh_event", event))

    def _on_change(self, _: Any) -> None:
        self.updates.append(time.monotonic())
        doc = self.session.document
        if self.status_model is None:
            found = [m for m in doc.models
                     if "ntk-status" in (getattr(m, "css_classes", None) or [])]
            self.status_model = found[0] if found else None
        if self.status_model is not None:
            self.status = str(self.status_model.text)
        if not self.played_at:
            play = [m for m in doc.select({"type": Button}) if m.label == "Play"]
            if play:
                self.played_at = time.monotonic()
                self.loop.add_callback(self._send, ButtonClick(play[0]))

    def close(self) -> None:
        if self.session is not None and self.loop is not None:
            self.loop.add_callback(self.session.close)

    def figures(self, until: float) -> dict[str, Any]:
        stamps = [t for t in self.updates if t <= until]
        # gaps count from the Play press: a tab waits for its page before that
        marks = ([self.played_at, *[t for t in stamps if t > self.played_at], until]
                 if self.played_at else [])
        gaps = [b - a for a, b in zip(marks, marks[1:], strict=False)]
        step = STEP_PATTERN.search(self.status)
        if not self.played_at and not self.error:
            self.error = "the dashboard never showed a Play button"
        return {"updates": len(stamps), "max_gap_s": round(max(gaps), 2) if gaps else None,
                "step": int(step.group(1)) if step else 0, "status": self.status,
                "error": self.error}


def run(sessions: int, seconds: float, mode: str, stats_seconds: float = 1.0) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="ntk-eos-load-"))
    load_before = os.getloadavg()
    server = Server(mode, stats_seconds, workdir)
    try:
        server.wait_ready()
        baseline = server.wait_stats(0)
        memory_base = memory_mb(server.proc.pid)
        memory_peak = memory_base
        done = threading.Event()

        def watch_memory() -> None:
            nonlocal memory_peak
            while not done.wait(0.25):
                memory_peak = max(memory_peak, memory_mb(server.proc.pid))

        poller = threading.Thread(target=watch_memory, daemon=True)
        poller.start()
        probe_log = workdir / "liveness.jsonl"
        prober = start_prober(server.url, probe_log)
        tabs = [Tab(f"{server.url}/main") for _ in range(sessions)]
        t_open = time.monotonic()
        for tab in tabs:
            tab.start()
        # the window starts once every tab has its dashboard and has pressed Play
        while (not all(tab.played_at or tab.error for tab in tabs)
               and time.monotonic() - t_open < OPEN_TIMEOUT_S):
            time.sleep(0.2)
        opened_s = time.monotonic() - t_open
        t0 = time.monotonic()
        peak: dict[str, Any] = {}
        while time.monotonic() - t0 < seconds:
            time.sleep(1.0)
            lines = server.stats()
            if lines:
                last = lines[-1]
                peak = {k: max(v, peak.get(k, v)) for k, v in last.items()}
        until = time.monotonic()
        per_tab = [tab.figures(until) for tab in tabs]
        n_stats = len(server.stats())
        t_close = time.monotonic()
        for tab in tabs:
            tab.close()
        for tab in tabs:
            tab.thread.join(30)
        # culled after the unused-session lifetime; the training threads and processes must follow
        after = server.wait_stats(n_stats)
        while ((after["training_threads"] > baseline["training_threads"]
                or after["training_processes"] > baseline["training_processes"])
               and time.monotonic() - t_close < 120):
            after = server.wait_stats(len(server.stats()))
        back_s = time.monotonic() - t_close
        done.set()
        poller.join(5)
        stop_process(prober)
        latencies, app_latencies, stamps, failures = read_probes(probe_log)
        memory_after = memory_mb(server.proc.pid)
        limits = server.limits()
        errors = [line for line in server.log().splitlines()
                  if ERROR_PATTERN.search(line) and not line.startswith(STATS_PREFIX)]
    finally:
        server.stop()
    steps = [t["step"] for t in per_tab]
    gaps = [t["max_gap_s"] for t in per_tab if t["max_gap_s"] is not None]
    result = {
        "sessions": sessions, "seconds": seconds, "mode": mode, "cores": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "limits": limits, "open_all_s": round(opened_s, 1),
        "liveness": {"polls": len(latencies), "failures": len(failures),
                     "p50_s": round(percentile(latencies, 0.5), 3),
                     "p95_s": round(percentile(latencies, 0.95), 3),
                     "max_s": round(max(latencies, default=float("nan")), 3),
                     "steady_p95_s": round(percentile(
                         [x for x, t in zip(latencies, stamps, strict=True) if t > t0], 0.95), 3),
                     "app_check_p95_s": round(percentile(app_latencies, 0.95), 3),
                     "app_check_max_s": round(max(app_latencies, default=float("nan")), 3)},
        "updates": {"min_per_session": min(t["updates"] for t in per_tab),
                    "max_gap_s": max(gaps, default=None)},
        "steps": {"min": min(steps), "median": sorted(steps)[len(steps) // 2],
                  "max": max(steps), "total": sum(steps)},
        "server": {"baseline": baseline, "peak": peak, "after_close": after,
                   "threads_back_after_s": round(back_s, 1)},
        "memory_mb": {"baseline": round(memory_base, 1), "peak": round(memory_peak, 1),
                   "after_close": round(memory_after, 1), "bound": MEMORY_BOUND_MB},
        "errors": errors[:20], "server_log": str(server.log_path),
        "tabs": per_tab,
    }
    result["checks"] = {
        "every_session_updates": all(not t["error"] and t["updates"] > 0 for t in per_tab)
        and bool(gaps) and max(gaps) <= MAX_UPDATE_GAP_S,
        "every_session_trains": min(steps) > 0,
        "liveness_p95_under_1s": result["liveness"]["p95_s"] <= LIVENESS_P95_S,
        "no_server_errors": not errors,
        "threads_back_to_baseline":
            after["training_threads"] <= baseline["training_threads"]
            and after["training_processes"] <= baseline["training_processes"],
        "memory_within_bound": memory_peak <= MEMORY_BOUND_MB,
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=120.0, help="training time per tab")
    parser.add_argument("--mode", choices=("hosted", "local"), default="hosted")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--probe", metavar="URL", help=argparse.SUPPRESS)  # the prober process
    parser.add_argument("--probe-log", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        probe(args.probe, args.probe_log)
        return 0
    result = run(args.sessions, args.seconds, args.mode)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
