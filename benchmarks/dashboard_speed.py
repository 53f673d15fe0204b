"""Training speed of the default preset while the dashboard streams it.

Three modes:

``--browser`` (the real thing): serve the app with ``ntk-eos serve``'s command line, open it in
headless Chromium, press Play, and read for ``--seconds`` the status line's ``step N`` (GD steps
per second, each with a full measurement) and the Bokeh websocket messages the page receives
(page updates per second)::

    python benchmarks/dashboard_speed.py --browser --seconds 30
    python benchmarks/dashboard_speed.py --browser --seconds 30 --flows central,stable

``--flows`` runs the central flow and/or gradient flow beside GD, as the Flows control does,
each measured in full on every step.

The browser mode also reports who used the two cores over the window (the training thread, the
server's other threads, Chromium) and how long the training thread waited for a core.

Without ``--browser``: the engine alone (one torch thread, as served) with a reader in the main
thread that pulls new rows, eigenvectors and the kernel at the page's rate (``--hz``), as the
page's periodic callback does.

``--gil``: how much a thread that runs Python 25 % of the time (as the page's event loop does)
slows the training thread, at GIL switch intervals of 1 ms and 0.1 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from ntk_core import Trainer
from ntk_core.presets import DEFAULT_PRESET, load_preset


def engine_only(seconds: float, hz: float, preset: str, threads: int,
                flows: tuple[str, ...] = ()) -> dict:
    # the served default: one torch thread per training (app.session.limits, two slots on two cores)
    trainer = Trainer(load_preset(preset).config.replace(steps=1_000_000, threads=threads,
                                                         flows=flows))
    trainer.step()  # the cold first solve is not what a running page sees
    done = threading.Event()

    def train() -> None:
        while not done.is_set() and not trainer.finished:
            trainer.step()

    thread = threading.Thread(target=train, daemon=True)
    start_steps, t0 = len(trainer.buffer), time.perf_counter()
    thread.start()
    polls, rows_seen, next_poll = 0, start_steps, t0
    while time.perf_counter() - t0 < seconds:
        next_poll += 1.0 / hz
        rows = trainer.buffer.rows(rows_seen)
        rows_seen += len(rows["step"])
        trainer.buffer.latest_eigenvectors()
        trainer.buffer.latest_kernel()
        polls += 1
        time.sleep(max(0.0, next_poll - time.perf_counter()))
    elapsed = time.perf_counter() - t0
    done.set()
    thread.join()
    return {"mode": "engine", "preset": preset, "flows": list(flows), "seconds": elapsed,
            "steps_per_s": (len(trainer.buffer) - start_steps) / elapsed,
            "updates_per_s": polls / elapsed, "status": trainer.status, "torch_threads": threads}


def gil_share(seconds: float, preset: str, duty: float = 0.25,
              intervals: tuple[float, ...] = (0.001, 0.0001), rounds: int = 3) -> dict:
    """How much a Python-busy thread (like the page's event loop: ``duty`` of every 200 ms)
    slows the training thread, at each GIL switch interval. Each figure is the ratio to the
    engine alone measured right after it, so the machine's drift cancels."""
    trainer = Trainer(load_preset(preset).config.replace(steps=1_000_000, threads=1))
    for _ in range(3):
        trainer.step()

    def steps_per_s(length: float) -> float:
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < length:
            trainer.step()
            count += 1
        return count / (time.perf_counter() - t0)

    def python_work(stop: threading.Event) -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 0.2 * duty:
                sum(i * i for i in range(200))
            stop.wait(0.2 * (1 - duty))

    previous = sys.getswitchinterval()
    ratios: dict[str, list[float]] = {f"{s * 1e3:g} ms": [] for s in intervals}
    try:
        for _ in range(rounds):
            for interval in intervals:
                sys.setswitchinterval(interval)
                stop = threading.Event()
                worker = threading.Thread(target=python_work, args=(stop,))
                worker.start()
                shared = steps_per_s(seconds)
                stop.set()
                worker.join()
                ratios[f"{interval * 1e3:g} ms"].append(shared / steps_per_s(seconds / 2))
    finally:
        sys.setswitchinterval(previous)
    return {"mode": "gil", "preset": preset, "python_duty": duty,
            "training_speed_ratio": {k: [round(r, 3) for r in v] for k, v in ratios.items()},
            "mean_ratio": {k: round(sum(v) / len(v), 3) for k, v in ratios.items()}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_live(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/liveness", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("the dashboard server did not come up")


def _server_errors(log: str) -> list[str]:
    """ERROR lines and the exception line that ends each traceback in the server's log."""
    errors, in_traceback = [], False
    for line in log.splitlines():
        if line.startswith("Traceback"):
            in_traceback = True
        elif in_traceback and line and not line[0].isspace():
            errors.append(line)
            in_traceback = False
        elif "ERROR" in line:
            errors.append(line)
    return errors


def _task_times(pid: int) -> dict[int, tuple[float, float]]:
    """Per thread of ``pid``: (seconds on a core, seconds runnable but waiting for one), from
    the scheduler's own accounting (Linux ``schedstat``; exact, unlike tick samples)."""
    out: dict[int, tuple[float, float]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out  # the process ended
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                on_cpu, waiting, _ = f.read().split()
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
        out[int(tid)] = (int(on_cpu) / 1e9, int(waiting) / 1e9)
    return out


def _chromium_pids() -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter(["name"]) if "chrom" in (p.info["name"] or "")]


def _server_pids(server_pid: int) -> list[int]:
    """The server and its descendants (the fork server and the training processes)."""
    import psutil

    try:
        return [server_pid, *(p.pid for p in psutil.Process(server_pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return [server_pid]


def _machine_times() -> tuple[float, float]:
    """(idle, steal) seconds summed over the cores since boot (Linux ``/proc/stat``)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return (fields[3] + fields[4]) / tick, (fields[7] if len(fields) > 7 else 0) / tick


def _cores_used(server_pid: int, seconds: float) -> dict[str, float]:
    """Sleep ``seconds`` and report who used the two cores meanwhile, in cores: the busiest
    thread of the server's processes (training: in a child process, or a server thread), the
    server's other threads, and every Chromium process; and the share of the time the training
    thread was runnable but waiting for a core."""
    server_pids = _server_pids(server_pid)
    before = {pid: _task_times(pid) for pid in [*server_pids, *_chromium_pids()]}
    machine_before = _machine_times()
    time.sleep(seconds)
    machine_after = _machine_times()
    after = {pid: _task_times(pid) for pid in before}
    delta = {(pid, tid): (t[0] - before[pid].get(tid, (0.0, 0.0))[0],
                          t[1] - before[pid].get(tid, (0.0, 0.0))[1])
             for pid in before for tid, t in after[pid].items()}
    server = {key: t for key, t in delta.items() if key[0] in server_pids}
    training = max(server, key=lambda key: server[key][0]) if server else None
    on_cpu = {key: t[0] for key, t in server.items()}
    return {"training_thread": on_cpu.pop(training, 0.0) / seconds,
            "training_thread_waiting_for_a_core": server[training][1] / seconds
            if training is not None else 0.0,
            "training_in_child_process": training is not None and training[0] != server_pid,
            "server_other_threads": sum(on_cpu.values()) / seconds,
            "chromium": sum(t[0] for key, t in delta.items() if key[0] not in server_pids)
            / seconds,
            "idle": (machine_after[0] - machine_before[0]) / seconds,
            "steal": (machine_after[1] - machine_before[1]) / seconds}


BROWSER_STEPS = 100_000


def browser(seconds: float, warmup: float, preset: str, flows: tuple[str, ...] = (),
            training: str = "") -> dict:
    from playwright.sync_api import sync_playwright

    from app.server.launch import serve_command

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        raise SystemExit("chromium is not installed (apt-get install -y chromium)")
    port = _free_port()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    if training:  # where the run trains: a process of its own (local default) or the pool
        env["NTK_EOS_TRAINING"] = training
    server = subprocess.Popen(serve_command(port=port, address="127.0.0.1"), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    frames = 0
    try:
        _wait_live(port)
        with sync_playwright() as pw:
            chrome = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
            page = chrome.new_page(viewport={"width": 1600, "height": 1000})

            def on_socket(ws) -> None:  # noqa: ANN001 - playwright's WebSocket
                def count(payload: object) -> None:
                    nonlocal frames  # a Bokeh message spans frames; its header names the type
                    if isinstance(payload, str) and 'PATCH-DOC' in payload[:200]:
                        frames += 1
                ws.on("framereceived", count)

            page.on("websocket", on_socket)
            # Steps enough that the run cannot end inside the window at any speed: a run that
            # completes early would count idle seconds as training time.
            extra = f"&flows={','.join(flows)}" if flows else ""
            page.goto(f"http://127.0.0.1:{port}/main?preset={preset}&steps={BROWSER_STEPS}{extra}")
            status = page.get_by_text(re.compile(r"^step \d+ · "))
            status.wait_for(timeout=120_000)
            page.get_by_role("button", name="Play", exact=True).click()
            page.get_by_text(re.compile(r"^step \d+ · running$")).wait_for(timeout=120_000)
            time.sleep(warmup)  # past the cold first solves

            def read() -> tuple[float, int, int]:
                text = status.inner_text()
                return time.perf_counter(), int(re.search(r"step (\d+)", text).group(1)), frames

            t0, s0, f0 = read()
            cores = _cores_used(server.pid, seconds)
            t1, s1, f1 = read()
            final = status.inner_text()
            chrome.close()
    finally:
        server.terminate()
        try:
            _, err = server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            _, err = server.communicate()
    errors = _server_errors(err)
    if os.environ.get("NTK_EOS_DEBUG"):
        print(err)
    if not final.endswith("running"):
        raise SystemExit(f"the run stopped inside the measured window ({final!r}): "
                         "its steps per second would be understated")
    return {"mode": "browser", "preset": preset, "flows": list(flows), "seconds": t1 - t0,
            "steps_per_s": (s1 - s0) / (t1 - t0), "updates_per_s": (f1 - f0) / (t1 - t0),
            "status": final, "server_errors": errors,
            "cores_used": cores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--hz", type=float, default=4.0, help="engine mode: reader polling rate")
    parser.add_argument("--warmup", type=float, default=5.0, help="browser mode: seconds skipped")
    parser.add_argument("--preset", default=DEFAULT_PRESET)
    parser.add_argument("--threads", type=int, default=1, help="engine mode: torch threads")
    parser.add_argument("--flows", default="",
                        help="central or central,stable: the flows beside GD (the Flows control)")
    parser.add_argument("--browser", action="store_true", help="serve the app and drive Chromium")
    parser.add_argument("--training", choices=["pool", "process", "thread"], default="",
                        help="browser mode: where the served run trains (default: the local "
                        "server's, a process of its own)")
    parser.add_argument("--gil", action="store_true",
                        help="slowdown of training by a Python-busy thread, per switch interval")
    args = parser.parse_args()
    flows = tuple(name for name in args.flows.split(",") if name)
    if args.gil:
        result = gil_share(min(args.seconds, 6.0), args.preset)
    elif args.browser:
        result = browser(args.seconds, args.warmup, args.preset, flows, args.training)
        result["training"] = args.training or "process"
    else:
        result = engine_only(args.seconds, args.hz, args.preset, args.threads, flows)
    result["load_average"] = os.getloadavg()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
