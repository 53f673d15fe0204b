"""Load test: many dashboard tabs training at once on one server, over loopback only.

Serves the app with ``ntk-eos serve``'s command line (hosted mode by default) on 127.0.0.1,
opens ``--sessions`` Bokeh client sessions (the same websocket protocol a browser tab uses,
without drawing), presses Play in each, and, from the moment every tab has pressed Play, for
``--seconds`` records:

- per session: every document update received (the largest gap between two), the step reached;
- ``/liveness`` latency, polled every 0.25 s (the server's event loop), and the app's health
  check ``/liveness?endpoint=/main`` every 5 s (builds a document), from a process of its own;
- per session, the step shown on its status line each time it changes, as a timeline; from it,
  over the measuring window, how many steps each tab gained (fairness: min, median, max and
  max/min across the admitted tabs) and the longest time its step did not advance;
- the server's own figures (training threads and processes, sessions, queue, memory), from the
  stats line of the ``--setup`` script (``NTK_EOS_STATS_SECONDS``), and the memory of the
  whole tree from /proc (proportional set sizes): the server, its training processes or pool
  workers, and the Dask cluster's processes where the test started one;
- error lines and tracebacks in the server's log.

``--training pool|process|thread`` picks how the server trains (default: the mode's, the pool
when hosted). ``--scheduler tcp://HOST:PORT`` runs the pool's slices on that Dask cluster;
``--scheduler local-cluster`` starts one here first, on loopback only: a ``LocalCluster`` of
``--cluster-workers`` single-threaded worker processes, in a process of its own (its own
process group, at the niceness of a hosted server's training workers) so that the client
sessions' GIL does not slow its scheduler and its memory counts in full, scheduler included.
It is ended with the server however the test ends. ``--kill-worker-after S`` then SIGKILLs one
of its worker processes S seconds into the window (Dask's nanny starts a new one), and checks
that every tab's step still advances after it.

Then it closes every session and waits for the training threads and processes to return to
the baseline::

    python benchmarks/load_test.py --sessions 20 --seconds 120 --json benchmarks/results/load.json

Tabs beyond the server's session cap (``--max-sessions``, else ``NTK_EOS_MAX_SESSIONS`` or the
mode's default) get the app's "busy" page: they are counted as refused, closed at once, and left
out of the checks on the admitted pages. The whole test ends by ``--deadline`` seconds (by
default the server's start, the tabs' opening, ``--seconds`` and the close), or on SIGTERM or
Ctrl-C, and reports what it has measured by then: ``stopped`` says why it ended early,
``missing`` names the parts it did not measure, and their checks are null. The server runs in
a process group of its own, which is ended however the test ends. Progress lines, the server's
pid first, go to stderr.

It prints the figures as JSON; ``checks`` holds each acceptance criterion and whether it held.
``fairness`` holds the steps gained in the window and the longest stalls across the admitted
tabs (each tab's own under ``tabs``), ``scheduler`` where the slices ran (null: the server's own
workers), ``worker_killed_at`` the second of the window at which a cluster worker was killed.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import panel.models  # noqa: F401  (the client document needs Panel's model classes)
import panel.models.file_dropper  # noqa: F401  (the upload box, loaded only on demand)
import psutil
from bokeh.client import ClientSession, pull_session
from bokeh.document import Document
from bokeh.document.events import MessageSentEvent
from bokeh.events import ButtonClick, DocumentReady
from bokeh.models import Button
from tornado.ioloop import IOLoop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.server.launch import limits_env, serve_command  # noqa: E402
from app.server.startup import LIMITS_PREFIX, STATS_PREFIX  # noqa: E402
from app.session.limits import HOSTED_TRAINING_NICE  # noqa: E402

LIVENESS_P95_S = 1.0
LIVENESS_TIMEOUT_S = 5.0
MAX_UPDATE_GAP_S = 15.0  # a tab that hears nothing for this long looks frozen
READY_TIMEOUT_S = 120.0  # the server must answer /liveness within this
STATS_TIMEOUT_S = 30.0
OPEN_TIMEOUT_S = 300.0  # every tab must show its dashboard (or the busy page) within this
# closed sessions are culled after the unused-session lifetime; their training must follow
BACK_TIMEOUT_S = 120.0
TAB_CLOSE_TIMEOUT_S = 30.0  # all tabs together
SERVER_GRACE_S = 10.0  # after SIGTERM, before SIGKILL
# peak proportional set size of the whole tree (the server, its training processes or pool
# workers, and the cluster's processes where the test started one): issue 20's bound for 50
# tabs of the default preset on 2 cores
MEMORY_BOUND_MB = 4096.0
STALL_BOUND_S = 60.0  # no admitted tab may go longer without its step advancing
FAIR_RATIO_BOUND = 3.0  # most steps gained by a tab over the fewest, in the window
LOCAL_CLUSTER = "local-cluster"  # --scheduler: start a Dask LocalCluster here
CLUSTER_READY_TIMEOUT_S = 120.0  # its scheduler and every worker must be up within this
BUSY_CLASS = "ntk-busy"  # the page app/main.py serves a tab beyond the session cap
STATUS_CLASS = "ntk-status"
ERROR_PATTERN = re.compile(r"Traceback|ERROR|Exception|Error:", re.I)
STEP_PATTERN = re.compile(r"step (\d+)")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def default_deadline(seconds: float, local_cluster: bool = False) -> float:
    """Seconds the whole test may take: the cluster's start (``local_cluster``), the server's
    start, the tabs' opening, the measuring window and the close, each at its own limit."""
    return (CLUSTER_READY_TIMEOUT_S if local_cluster else 0.0) + READY_TIMEOUT_S \
        + STATS_TIMEOUT_S + OPEN_TIMEOUT_S + seconds + BACK_TIMEOUT_S + TAB_CLOSE_TIMEOUT_S


def say(text: str) -> None:
    """A progress line on stderr (stdout carries the JSON)."""
    print(f"load_test: {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mb(pid: int) -> float:
    """Memory of ``pid`` and its descendants (the fork server, the training processes): the sum
    of their proportional set sizes, so pages they share (torch's) count once in all. Sums of
    several trees' figures are the memory of them all, counted the same way."""
    if pid <= 0:
        return 0.0
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


def rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


# ---- ending early: the deadline and signals ---------------------------------------------------
class Stop(Exception):
    """Ends the measurement early (the deadline passed, or a signal came); the report follows."""


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self, cap: float = float("inf")) -> float:
        """Seconds left, at most ``cap``: how long a phase may wait."""
        return max(0.0, min(cap, self.end - time.monotonic()))

    def check(self, doing: str) -> None:
        if time.monotonic() >= self.end:
            raise Stop(f"deadline of {self.seconds:g} s passed while {doing}")


def ignore_stop_signals() -> None:
    """From here on the test is ending anyway: a second signal must not cut its cleanup short."""
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def raise_stop(signum: int, _: Any) -> None:
    ignore_stop_signals()
    raise Stop(f"stopped by {signal.Signals(signum).name}")


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM, SIGINT and SIGHUP raise Stop in the main thread (so that ``finally`` blocks
    end the server); the previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers
        return
    previous = {sig: signal.signal(sig, raise_stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def wait_until(predicate: Callable[[], bool], timeout: float, every: float = 0.2) -> bool:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= end:
            return False
        time.sleep(every)
    return True


# ---- processes ----------------------------------------------------------------------------------
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
        proc.wait()


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def process_tree(pid: int) -> list[psutil.Process]:
    """``pid`` and its descendants now (a local server's training processes start sessions of
    their own, so its process group alone would miss them)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def end_process_group(proc: subprocess.Popen, grace: float = SERVER_GRACE_S) -> None:
    """SIGTERM to the group led by ``proc`` and to its descendants, SIGKILL to whatever is left
    after ``grace`` seconds."""
    tree = process_tree(proc.pid)
    signal_group(proc.pid, signal.SIGTERM)
    for child in tree[1:]:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(tree, timeout=grace)
    signal_group(proc.pid, signal.SIGKILL)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(alive, timeout=5)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def read_probes(path: Path, until: float | None = None
                ) -> tuple[list[float], list[float], list[float], list[str]]:
    """(/liveness latencies, app-check latencies, /liveness times, failures) from the log, up
    to ``until`` (when the server was told to stop: later polls time its shutdown)."""
    latencies: list[float] = []
    app_latencies: list[float] = []
    stamps: list[float] = []
    failures: list[str] = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # the prober was stopped in the middle of a line
            continue
        if until is not None and row["t"] >= until:
            continue
        if row["error"]:
            failures.append(row["error"])
        if row["endpoint"]:
            app_latencies.append(row["s"])
        else:
            latencies.append(row["s"])
            stamps.append(row["t"])
    return latencies, app_latencies, stamps, failures


class Server:
    """``panel serve`` in a subprocess of its own process group, its log in a file, its stats
    lines parsed."""

    def __init__(self, mode: str, stats_seconds: float, workdir: Path,
                 max_sessions: int | None = None, training: str | None = None,
                 scheduler: str | None = None) -> None:
        self.port = free_port()
        self.env = limits_env(hosted=mode == "hosted", max_sessions=max_sessions,
                              training=training, scheduler=scheduler)
        self.env.update(NTK_EOS_STATS_SECONDS=str(stats_seconds), OMP_NUM_THREADS="1",
                        PYTHONPATH=str(ROOT), BOKEH_ALLOW_WS_ORIGIN=f"127.0.0.1:{self.port}")
        self.workdir = workdir
        self.log_path = workdir / "server.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, scheduler: str | None = None) -> None:
        """``scheduler``: the Dask scheduler's address, known only once a local cluster is up."""
        if scheduler:
            self.env = limits_env(scheduler=scheduler, environ=self.env)
        cmd = serve_command(port=self.port, address="127.0.0.1")
        with self.log_path.open("w") as log:
            # a process group of its own: its training processes are ended with it, and Ctrl-C
            # in a terminal reaches only the load test, which ends them all. Not a session: that
            # would be a scheduler autogroup of its own on Linux, and change the CPU shares
            # being measured
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, process_group=0)
        say(f"server pid {self.proc.pid} (its process group) at {self.url}")

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else -1

    def liveness(self, endpoint: str = "", timeout: float = 5.0) -> float:
        """Seconds one /liveness request took; raises OSError on failure."""
        query = f"?endpoint={endpoint}" if endpoint else ""
        t0 = time.perf_counter()
        with urllib.request.urlopen(f"{self.url}/liveness{query}", timeout=timeout) as r:
            r.read()
            if r.status != 200:
                raise OSError(f"liveness answered {r.status}")
        return time.perf_counter() - t0

    def wait_ready(self, timeout: float) -> bool:
        """True once the app's health check answers; raises when the server exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError("the server exited:\n" + self.log()[-3000:])
            try:
                self.liveness("/main", timeout=min(5.0, max(0.1, deadline - time.monotonic())))
                return True
            except OSError:
                time.sleep(0.5)
        return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def limits(self) -> dict[str, Any]:
        """The limits the --setup script applied (its first line)."""
        for line in self.log().splitlines():
            if line.startswith(LIMITS_PREFIX):
                return json.loads(line[len(LIMITS_PREFIX):])
        return {}

    def errors(self) -> list[str]:
        return [line for line in self.log().splitlines()
                if ERROR_PATTERN.search(line) and not line.startswith(STATS_PREFIX)]

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

    def wait_stats(self, after: int, timeout: float) -> dict[str, Any] | None:
        """The first stats line after the ``after``-th one; None if none came in time."""
        found: list[dict[str, Any]] = []

        def arrived() -> bool:
            found[:] = self.stats()
            return len(found) > after

        return found[-1] if wait_until(arrived, timeout) else None

    def stop(self) -> None:
        if self.proc is not None:
            end_process_group(self.proc)


def serve_cluster(workers: int, address_file: Path, nice: int) -> None:
    """``--scheduler local-cluster``'s process: a Dask ``LocalCluster`` of ``workers``
    single-threaded worker processes, on loopback only and without its dashboard. Once every
    worker is up it writes the scheduler's address to ``address_file``; it closes the cluster on
    SIGTERM, SIGINT or SIGHUP, or once the load test that started it has gone."""
    from distributed import Client, LocalCluster

    parent = os.getppid()
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, _: sys.exit(0))  # the ``with`` closes the cluster
    if nice:  # the workers inherit it
        with contextlib.suppress(OSError):
            os.nice(nice)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address=None) as cluster:
        with Client(cluster, set_as_default=False) as client:
            client.wait_for_workers(workers, timeout=CLUSTER_READY_TIMEOUT_S)
        ready = address_file.with_suffix(".tmp")
        ready.write_text(cluster.scheduler_address)
        ready.replace(address_file)  # whole, never half written
        while os.getppid() == parent:
            time.sleep(0.5)


class Cluster:
    """The local Dask cluster of ``--scheduler local-cluster``: ``serve_cluster`` in a
    subprocess of its own process group, its log in a file."""

    def __init__(self, workers: int, workdir: Path, nice: int) -> None:
        self.workers = workers
        self.nice = nice
        self.log_path = workdir / "cluster.log"
        self.address_file = workdir / "scheduler-address"
        self.address = ""
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else -1

    def start(self, timeout: float) -> str:
        """Start the cluster and return its scheduler's address once every worker is up."""
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, __file__, "--serve-cluster", str(self.workers),
               "--cluster-address-file", str(self.address_file), "--cluster-nice", str(self.nice)]
        with self.log_path.open("w") as log:
            # a process group of its own, like the server's: it ends with its workers
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, process_group=0)
        say(f"cluster pid {self.proc.pid} (its process group)")
        end = time.monotonic() + timeout
        while not self.address_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError("the Dask cluster exited:\n" + self.log()[-3000:])
            if time.monotonic() >= end:
                raise TimeoutError("the Dask cluster's workers did not start in time")
            time.sleep(0.2)
        self.address = self.address_file.read_text().strip()
        say(f"cluster ready at {self.address}")
        return self.address

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def worker_pids(self) -> list[int]:
        """The worker processes' ids, as their workers report them."""
        from distributed import Client

        with Client(self.address, timeout=10, set_as_default=False) as client:
            return sorted(client.run(os.getpid).values())

    def stop(self) -> None:
        """SIGTERM to the cluster's process, which closes its workers; whatever is left of its
        group after the grace gets SIGTERM, then SIGKILL."""
        if self.proc is None:
            return
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(SERVER_GRACE_S)
        end_process_group(self.proc, grace=5.0)


def shows_busy_page(doc: Document) -> bool:
    return any(BUSY_CLASS in (getattr(m, "css_classes", None) or []) for m in doc.models)


class Tab:
    """One client session in its own thread and IO loop: pull the page, press Play, listen.
    A tab shown the busy page is refused: it closes at once."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.updates: list[float] = []
        self.status = ""
        self.error = ""
        self.refused = False
        self.admitted = False
        self.played_at = 0.0
        self.session: ClientSession | None = None
        self.loop: IOLoop | None = None
        self.status_model: Any = None
        # (when it arrived, step) each time the status line shows another step
        self.timeline: list[tuple[float, int]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def answered(self) -> bool:
        """The tab's opening is over: it pressed Play, was refused, or failed."""
        return bool(self.played_at or self.refused or self.error)

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
        if shows_busy_page(doc):
            self.refused = True
            self.loop.add_callback(self.session.close)  # frees the server's session soon
        else:
            self.admitted = True
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
                     if STATUS_CLASS in (getattr(m, "css_classes", None) or [])]
            self.status_model = found[0] if found else None
        if self.status_model is not None:
            self.status = str(self.status_model.text)
            shown = STEP_PATTERN.search(self.status)
            if shown and (not self.timeline or self.timeline[-1][1] != int(shown.group(1))):
                self.timeline.append((time.monotonic(), int(shown.group(1))))
        if not self.played_at:
            play = [m for m in doc.select({"type": Button}) if m.label == "Play"]
            if play:
                self.played_at = time.monotonic()
                self.loop.add_callback(self._send, ButtonClick(play[0]))

    def close(self) -> None:
        if self.session is not None and self.loop is not None:
            self.loop.add_callback(self.session.close)

    def figures(self, until: float, since: float | None = None,
                kill_at: float | None = None) -> dict[str, Any]:
        """The tab's figures up to ``until``; with ``since`` (the window's start) also its
        progress in the window, and with ``kill_at`` whether it advanced after the kill."""
        stamps = [t for t in self.updates if t <= until]
        # gaps count from the Play press: a tab waits for its page before that
        marks = ([self.played_at, *[t for t in stamps if t > self.played_at], until]
                 if self.played_at else [])
        gaps = [b - a for a, b in zip(marks, marks[1:], strict=False)]
        step = STEP_PATTERN.search(self.status)
        error = self.error
        if not error and not self.refused and not self.played_at:
            error = ("the dashboard never showed a Play button" if self.admitted
                     else "no page from the server")
        figures = {"refused": self.refused, "updates": len(stamps),
                   "max_gap_s": round(max(gaps), 2) if gaps else None,
                   "step": int(step.group(1)) if step else 0, "status": self.status,
                   "error": error}
        if since is not None:
            figures.update(window_progress(list(self.timeline), since, until, kill_at))
        return figures


def step_at(timeline: list[tuple[float, int]], when: float) -> int:
    """The step a tab showed at ``when`` (0 before its first status line)."""
    shown = [step for t, step in timeline if t <= when]
    return shown[-1] if shown else 0


def window_progress(timeline: list[tuple[float, int]], start: float, end: float,
                    kill_at: float | None = None) -> dict[str, Any]:
    """From a tab's (time, step) timeline: the steps it gained between ``start`` and ``end``,
    the longest interval in there in which its step did not advance (from the window's start
    to the first advance, between two, and from the last to the window's end), and with
    ``kill_at`` whether its step advanced after that time."""
    advances = []
    previous = 0
    for t, step in timeline:
        if start < t <= end and step > previous:
            advances.append(t)
        previous = step
    marks = [start, *advances, end]
    figures: dict[str, Any] = {
        "steps_in_window": step_at(timeline, end) - step_at(timeline, start),
        "longest_stall_s": round(max(b - a for a, b in zip(marks, marks[1:], strict=False)), 2)}
    if kill_at is not None:
        figures["advanced_after_kill"] = step_at(timeline, end) > step_at(timeline, kill_at)
    return figures


def close_tabs(tabs: list[Tab], timeout: float) -> None:
    for tab in tabs:
        tab.close()
    end = time.monotonic() + timeout
    for tab in tabs:
        tab.thread.join(max(0.0, end - time.monotonic()))


# ---- the measurement ----------------------------------------------------------------------------
@dataclass
class Progress:
    """What the run has measured so far; a phase that did not finish leaves its fields None."""

    tabs: list[Tab] = field(default_factory=list)
    baseline: dict[str, Any] | None = None
    memory_base: float | None = None
    memory_peak: float | None = None
    opened_s: float | None = None
    window_start: float | None = None
    window_end: float | None = None
    peak: dict[str, Any] = field(default_factory=dict)
    per_tab: list[dict[str, Any]] | None = None
    after: dict[str, Any] | None = None
    back_s: float | None = None
    memory_after: float | None = None
    memory_peak_parts: dict[str, float] = field(default_factory=dict)  # at the peak
    kill_after: float | None = None  # --kill-worker-after
    kill_at: float | None = None  # when a cluster worker was killed
    killed_pid: int | None = None
    worker_pids: list[int] = field(default_factory=list)  # the cluster's, before the kill
    kill_error: str = ""
    stopped: str = ""
    ending_at: float | None = None  # when the server was told to stop
    prober: subprocess.Popen | None = None
    done: threading.Event = field(default_factory=threading.Event)


def tree_memory(server: Server, cluster: Cluster | None) -> dict[str, float]:
    """Memory (PSS) of the server's tree and of the cluster's, MB."""
    return {"server": memory_mb(server.pid),
            "cluster": memory_mb(cluster.pid) if cluster is not None else 0.0}


def watch_memory(server: Server, cluster: Cluster | None, progress: Progress) -> None:
    while not progress.done.wait(0.25):
        parts = tree_memory(server, cluster)
        if sum(parts.values()) > (progress.memory_peak or 0.0):
            progress.memory_peak = sum(parts.values())
            progress.memory_peak_parts = parts


def start_cluster(cluster: Cluster | None, deadline: Deadline) -> str | None:
    """Start the local Dask cluster, if any; its scheduler's address."""
    if cluster is None:
        return None
    try:
        return cluster.start(deadline.left(CLUSTER_READY_TIMEOUT_S))
    except TimeoutError:
        deadline.check("waiting for the Dask cluster")
        raise


def start_server(server: Server, deadline: Deadline, scheduler: str | None = None) -> None:
    server.start(scheduler)
    if not server.wait_ready(deadline.left(READY_TIMEOUT_S)):
        deadline.check("waiting for the server")
        raise TimeoutError("the server did not answer /liveness")
    say("server ready")


def take_baseline(server: Server, cluster: Cluster | None, progress: Progress,
                  deadline: Deadline, workdir: Path) -> None:
    progress.baseline = server.wait_stats(0, deadline.left(STATS_TIMEOUT_S))
    if progress.baseline is None:
        deadline.check("waiting for the server's stats")
        raise TimeoutError("no stats line from the server")
    progress.memory_peak_parts = tree_memory(server, cluster)
    progress.memory_base = progress.memory_peak = sum(progress.memory_peak_parts.values())
    threading.Thread(target=watch_memory, args=(server, cluster, progress), daemon=True).start()
    progress.prober = start_prober(server.url, workdir / "liveness.jsonl")


def open_tabs(server: Server, progress: Progress, sessions: int, deadline: Deadline) -> None:
    """Open every tab; the window starts once each has pressed Play, been refused or failed."""
    progress.tabs = [Tab(f"{server.url}/main") for _ in range(sessions)]
    t_open = time.monotonic()
    for tab in progress.tabs:
        tab.start()
    wait_until(lambda: all(tab.answered for tab in progress.tabs),
               deadline.left(OPEN_TIMEOUT_S))
    progress.opened_s = time.monotonic() - t_open
    counts = tab_counts(progress.tabs, sessions)
    say(f"tabs answered: {counts['admitted']} admitted, {counts['refused']} refused, "
        f"{counts['unanswered']} unanswered after {progress.opened_s:.1f} s")
    deadline.check("opening the tabs")


def kill_a_worker(cluster: Cluster, progress: Progress) -> None:
    """SIGKILL one of the cluster's worker processes; a failure is reported, not raised."""
    try:
        progress.worker_pids = cluster.worker_pids()
        progress.killed_pid = progress.worker_pids[0]
        os.kill(progress.killed_pid, signal.SIGKILL)
        progress.kill_at = time.monotonic()
        start = progress.window_start or progress.kill_at
        say(f"killed the Dask worker pid {progress.killed_pid} "
            f"{progress.kill_at - start:.1f} s into the window")
    except Exception as exc:  # the check on the kill reports it
        progress.kill_error = f"{type(exc).__name__}: {exc}"
        say(f"could not kill a Dask worker: {progress.kill_error}")


def watch_window(server: Server, cluster: Cluster | None, progress: Progress, seconds: float,
                 deadline: Deadline) -> None:
    progress.window_start = time.monotonic()
    while time.monotonic() - progress.window_start < seconds:
        progress.window_end = time.monotonic()
        deadline.check("measuring")
        if (cluster is not None and progress.kill_after is not None
                and progress.kill_at is None and not progress.kill_error
                and time.monotonic() - progress.window_start >= progress.kill_after):
            kill_a_worker(cluster, progress)
        left = seconds - (time.monotonic() - progress.window_start)
        time.sleep(max(0.0, min(1.0, left, deadline.left())))
        lines = server.stats()
        if lines:
            progress.peak = {k: max(v, progress.peak.get(k, v)) for k, v in lines[-1].items()}
    progress.window_end = time.monotonic()
    progress.per_tab = [tab.figures(progress.window_end, progress.window_start, progress.kill_at)
                        for tab in progress.tabs]
    say("window ended")


def wait_threads_back(server: Server, cluster: Cluster | None, progress: Progress,
                      deadline: Deadline) -> None:
    """Close the tabs; the server culls their sessions after the unused-session lifetime, and
    their training threads and processes must return to the baseline."""
    n_stats = len(server.stats())
    t_close = time.monotonic()
    close_tabs(progress.tabs, deadline.left(TAB_CLOSE_TIMEOUT_S))
    baseline = progress.baseline or {}
    end = t_close + BACK_TIMEOUT_S
    after = server.wait_stats(n_stats, deadline.left(STATS_TIMEOUT_S))
    while (after is not None and not threads_back(baseline, after)
           and time.monotonic() < end and deadline.left() > 0):
        after = server.wait_stats(len(server.stats()), deadline.left(STATS_TIMEOUT_S)) or after
    progress.after = after
    progress.back_s = time.monotonic() - t_close
    progress.memory_after = sum(tree_memory(server, cluster).values())
    deadline.check("waiting for the training to stop")


def threads_back(baseline: dict[str, Any], after: dict[str, Any]) -> bool:
    return (after["training_threads"] <= baseline["training_threads"]
            and after["training_processes"] <= baseline["training_processes"])


def measure(server: Server, cluster: Cluster | None, progress: Progress, workdir: Path,
            sessions: int, seconds: float, deadline: Deadline) -> None:
    scheduler = start_cluster(cluster, deadline)
    start_server(server, deadline, scheduler)
    take_baseline(server, cluster, progress, deadline, workdir)
    open_tabs(server, progress, sessions, deadline)
    watch_window(server, cluster, progress, seconds, deadline)
    wait_threads_back(server, cluster, progress, deadline)


def wrap_up(server: Server, cluster: Cluster | None, progress: Progress) -> None:
    """Ends the server and its training processes, the prober, the cluster and the tabs, in
    that order: on an early stop the server must go first, whatever else is slow, and it must
    not see its cluster go away while it runs; the prober must not time a server that has
    gone."""
    ignore_stop_signals()
    progress.done.set()
    progress.ending_at = time.monotonic()  # the prober's later polls time the shutdown
    server.stop()
    say("server ended")
    if progress.prober is not None:
        stop_process(progress.prober, timeout=5.0)
    if cluster is not None:
        cluster.stop()
        say("cluster ended")
    close_tabs(progress.tabs, timeout=5.0)


def run(sessions: int, seconds: float, mode: str, stats_seconds: float = 1.0,
        deadline_s: float | None = None, max_sessions: int | None = None,
        training: str | None = None, scheduler: str | None = None, cluster_workers: int = 2,
        kill_worker_after: float | None = None) -> dict[str, Any]:
    """``scheduler``: a Dask scheduler's address, or ``local-cluster`` to start a cluster of
    ``cluster_workers`` here; ``kill_worker_after`` (with a local cluster): seconds into the
    window at which one of its workers is killed."""
    local = scheduler == LOCAL_CLUSTER
    if kill_worker_after is not None and not local:
        raise ValueError(f"kill_worker_after: needs scheduler={LOCAL_CLUSTER!r}")
    deadline = Deadline(deadline_s if deadline_s is not None
                        else default_deadline(seconds, local_cluster=local))
    t_start = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="ntk-eos-load-"))
    load_before = os.getloadavg()
    # a local cluster's address is known once it is up: until then the server needs only the pool
    server = Server(mode, stats_seconds, workdir, max_sessions,
                    training="pool" if local and training is None else training,
                    scheduler=None if local else scheduler)
    cluster = (Cluster(cluster_workers, workdir, HOSTED_TRAINING_NICE if mode == "hosted" else 0)
               if local else None)
    progress = Progress(kill_after=kill_worker_after)
    with stop_on_signals():
        try:
            measure(server, cluster, progress, workdir, sessions, seconds, deadline)
        except Stop as exc:
            progress.stopped = str(exc)
        except Exception as exc:  # the figures so far are still worth a report
            progress.stopped = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        finally:
            wrap_up(server, cluster, progress)
    if progress.stopped:
        say(progress.stopped)
    result = report(server, cluster, scheduler, progress, workdir, sessions, seconds, mode,
                    deadline)
    result["loadavg_before"] = [round(x, 2) for x in load_before]
    result["elapsed_s"] = round(time.monotonic() - t_start, 1)
    return result


# ---- the report ---------------------------------------------------------------------------------
def tab_counts(tabs: list[Tab], sessions: int) -> dict[str, int]:
    """Admitted (the dashboard), refused (the busy page), failed (no connection) and unanswered
    (still waiting for a page, or never opened: the run stopped before)."""
    counts = {"admitted": sum(tab.admitted for tab in tabs),
              "refused": sum(tab.refused for tab in tabs),
              "failed": sum(bool(tab.error) and not tab.admitted for tab in tabs)}
    return {**counts, "unanswered": sessions - sum(counts.values())}


def missing_parts(progress: Progress, seconds: float, sessions: int) -> list[str]:
    window = (progress.window_end - progress.window_start
              if progress.window_start is not None and progress.window_end is not None else 0.0)
    parts = {"server_baseline": progress.baseline is None,
             "tabs_opened": len(progress.tabs) < sessions
             or not all(tab.answered for tab in progress.tabs),
             "window": progress.per_tab is None or window < seconds,
             "after_close": progress.after is None}
    return [name for name, is_missing in parts.items() if is_missing]


def liveness_figures(probe_log: Path, window_start: float | None,
                     until: float | None = None) -> dict[str, Any]:
    latencies, app_latencies, stamps, failures = read_probes(probe_log, until)
    steady = ([x for x, t in zip(latencies, stamps, strict=True) if t > window_start]
              if window_start is not None else [])
    return {"polls": len(latencies), "failures": len(failures),
            "p50_s": round(percentile(latencies, 0.5), 3),
            "p95_s": round(percentile(latencies, 0.95), 3),
            "max_s": round(max(latencies, default=float("nan")), 3),
            "steady_p95_s": round(percentile(steady, 0.95), 3),
            "app_check_p95_s": round(percentile(app_latencies, 0.95), 3),
            "app_check_max_s": round(max(app_latencies, default=float("nan")), 3)}


def fairness_figures(pages: list[dict[str, Any]]) -> dict[str, Any]:
    """Across the admitted tabs, over the window: the steps each gained (max/min is None when
    a tab gained none) and the longest time a tab's step did not advance."""
    gained = [t["steps_in_window"] for t in pages if "steps_in_window" in t]
    stalls = [t["longest_stall_s"] for t in pages if "longest_stall_s" in t]
    low, high = min(gained, default=None), max(gained, default=None)
    return {"tabs": len(gained),
            "steps_in_window": {"min": low,
                                "median": statistics.median(gained) if gained else None,
                                "max": high,
                                "max_over_min": round(high / low, 2)
                                if low and high is not None else None},
            "longest_stall_s": {"median": round(statistics.median(stalls), 2) if stalls else None,
                                "max": max(stalls, default=None)},
            "stall_bound_s": STALL_BOUND_S, "max_over_min_bound": FAIR_RATIO_BOUND}


def every_tab_advanced(pages: list[dict[str, Any]], window: float) -> bool:
    """No tab's step stood still for more than STALL_BOUND_S of the window; in a shorter window,
    every tab's step advanced in it."""
    return bool(pages) and all(
        t.get("steps_in_window", 0) > 0
        and (window < STALL_BOUND_S or t["longest_stall_s"] <= STALL_BOUND_S) for t in pages)


def checks(progress: Progress, per_tab: list[dict[str, Any]], missing: list[str],
           liveness: dict[str, Any], errors: list[str], limits: dict[str, Any],
           sessions: int) -> dict[str, bool | None]:
    """Each acceptance criterion: True, False, or None where its part was not measured. The
    pages checks cover every tab that was not refused (refusals are the cap at work)."""
    pages = [t for t in per_tab if not t["refused"]]
    gaps = [t["max_gap_s"] for t in pages if t["max_gap_s"] is not None]
    window_done = "window" not in missing and "tabs_opened" not in missing
    window = (progress.window_end - progress.window_start
              if progress.window_start is not None and progress.window_end is not None else 0.0)
    ratio = fairness_figures(pages)["steps_in_window"]["max_over_min"]
    refused = sum(t["refused"] for t in per_tab)
    cap = limits.get("max_sessions")
    kill: dict[str, bool | None] = {}
    if progress.kill_after is not None:
        kill["every_tab_advanced_after_kill"] = (
            progress.kill_at is not None and bool(pages)
            and all(t.get("advanced_after_kill") for t in pages)) if window_done else None
    return {
        "every_session_updates": (bool(pages) and all(not t["error"] and t["updates"] > 0
                                                      for t in pages)
                                  and bool(gaps) and max(gaps) <= MAX_UPDATE_GAP_S)
        if window_done else None,
        "every_session_trains": (bool(pages) and min(t["step"] for t in pages) > 0)
        if window_done else None,
        "refused_only_beyond_cap": refused == max(0, sessions - cap)
        if cap is not None and "tabs_opened" not in missing else None,
        "liveness_p95_under_1s": liveness["p95_s"] <= LIVENESS_P95_S
        if liveness["polls"] else None,
        "no_server_errors": not errors,
        "threads_back_to_baseline": threads_back(progress.baseline, progress.after)
        if progress.baseline is not None and progress.after is not None else None,
        "memory_within_bound": progress.memory_peak <= MEMORY_BOUND_MB
        if progress.memory_peak is not None else None,
        "every_tab_advanced_each_60s": every_tab_advanced(pages, window)
        if window_done else None,
        "fair_steps_max_over_min_le_3": (ratio is not None and ratio <= FAIR_RATIO_BOUND)
        if window_done else None,
        **kill,
    }


def scheduler_figures(scheduler: str | None, cluster: Cluster | None,
                      progress: Progress) -> dict[str, Any] | None:
    """Where the pool's slices ran: None on the server's own workers."""
    if not scheduler:
        return None
    figures: dict[str, Any] = {"address": cluster.address if cluster is not None else scheduler,
                               "local_cluster": cluster is not None}
    if cluster is not None:
        figures.update(cluster_workers=cluster.workers, cluster_pid=cluster.pid,
                       worker_pids=progress.worker_pids, killed_worker_pid=progress.killed_pid,
                       kill_error=progress.kill_error, cluster_log=str(cluster.log_path))
    return figures


def report(server: Server, cluster: Cluster | None, scheduler: str | None, progress: Progress,
           workdir: Path, sessions: int, seconds: float, mode: str,
           deadline: Deadline) -> dict[str, Any]:
    until = progress.window_end or time.monotonic()
    per_tab = progress.per_tab or [tab.figures(until, progress.window_start, progress.kill_at)
                                   for tab in progress.tabs]
    admitted = [t for t in per_tab if not t["refused"]]
    steps = [t["step"] for t in admitted]
    gaps = [t["max_gap_s"] for t in admitted if t["max_gap_s"] is not None]
    missing = missing_parts(progress, seconds, sessions)
    liveness = liveness_figures(workdir / "liveness.jsonl", progress.window_start,
                                progress.ending_at)
    limits = server.limits()
    errors = server.errors()
    window = (progress.window_end - progress.window_start
              if progress.window_start is not None and progress.window_end is not None else None)
    result: dict[str, Any] = {
        "sessions": sessions, "seconds": seconds, "mode": mode, "cores": os.cpu_count(),
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "limits": limits, **tab_counts(progress.tabs, sessions),
        "deadline_s": deadline.seconds, "stopped": progress.stopped, "missing": missing,
        "open_all_s": rounded(progress.opened_s, 1), "window_s": rounded(window, 1),
        "liveness": liveness,
        "updates": {"min_per_session": min((t["updates"] for t in admitted), default=None),
                    "max_gap_s": max(gaps, default=None)},
        "steps": {"min": min(steps, default=None),
                  "median": sorted(steps)[len(steps) // 2] if steps else None,
                  "max": max(steps, default=None), "total": sum(steps)},
        "fairness": fairness_figures(admitted),
        "scheduler": scheduler_figures(scheduler, cluster, progress),
        "worker_killed_at": rounded(progress.kill_at - progress.window_start, 1)
        if progress.kill_at is not None and progress.window_start is not None else None,
        "server": {"pid": server.pid, "baseline": progress.baseline, "peak": progress.peak,
                   "after_close": progress.after, "threads_back_after_s": rounded(progress.back_s, 1)},
        "memory_mb": {"baseline": rounded(progress.memory_base, 1),
                      "peak": rounded(progress.memory_peak, 1),
                      "after_close": rounded(progress.memory_after, 1), "bound": MEMORY_BOUND_MB,
                      "peak_server": rounded(progress.memory_peak_parts.get("server"), 1),
                      "peak_cluster": rounded(progress.memory_peak_parts.get("cluster"), 1)},
        "errors": errors[:20], "server_log": str(server.log_path),
        "tabs": per_tab,
    }
    result["checks"] = checks(progress, per_tab, missing, liveness, errors, limits, sessions)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=120.0, help="training time per tab")
    parser.add_argument("--mode", choices=("hosted", "local"), default="hosted")
    parser.add_argument("--max-sessions", type=int,
                        help="the server's session cap (default: NTK_EOS_MAX_SESSIONS, else the "
                             "mode's: 40 hosted); tabs beyond it are refused")
    parser.add_argument("--deadline", type=float,
                        help="seconds after which the test stops waiting and reports what it has "
                             "(default: the phases' limits plus --seconds)")
    parser.add_argument("--training", choices=("pool", "process", "thread"),
                        help="how the server trains (default: the mode's, the pool when hosted)")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help=f"run the pool's slices on the Dask scheduler at tcp://HOST:PORT, "
                             f"or {LOCAL_CLUSTER}: on a LocalCluster the test starts on loopback")
    parser.add_argument("--cluster-workers", type=int, default=2,
                        help=f"worker processes of {LOCAL_CLUSTER} (one thread each)")
    parser.add_argument("--kill-worker-after", type=float, metavar="S",
                        help=f"with {LOCAL_CLUSTER}: SIGKILL one of its workers S seconds into "
                             "the window")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--probe", metavar="URL", help=argparse.SUPPRESS)  # the prober process
    parser.add_argument("--probe-log", type=Path, help=argparse.SUPPRESS)
    # the local cluster's process
    parser.add_argument("--serve-cluster", type=int, metavar="WORKERS", help=argparse.SUPPRESS)
    parser.add_argument("--cluster-address-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cluster-nice", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        probe(args.probe, args.probe_log)
        return 0
    if args.serve_cluster:
        serve_cluster(args.serve_cluster, args.cluster_address_file, args.cluster_nice)
        return 0
    if args.kill_worker_after is not None and args.scheduler != LOCAL_CLUSTER:
        parser.error(f"--kill-worker-after: needs --scheduler {LOCAL_CLUSTER}")
    if args.scheduler and args.training not in (None, "pool"):
        parser.error("--scheduler: the cluster runs the pool's slices; it needs --training pool")
    if args.cluster_workers < 1:
        parser.error("--cluster-workers: must be ≥ 1")
    result = run(args.sessions, args.seconds, args.mode, deadline_s=args.deadline,
                 max_sessions=args.max_sessions, training=args.training,
                 scheduler=args.scheduler, cluster_workers=args.cluster_workers,
                 kill_worker_after=args.kill_worker_after)
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if all(value is True for value in result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
