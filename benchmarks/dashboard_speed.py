"""Training speed of the default preset while the dashboard streams it.

Two modes:

``--browser`` (the real thing): serve the app with ``ntk-eos serve``'s command line, open it in
headless Chromium, press Play, and read for ``--seconds`` the status line's ``step N`` (GD steps
per second, each with a full measurement) and the Bokeh websocket messages the page receives
(page updates per second)::

    python benchmarks/dashboard_speed.py --browser --seconds 30

Without ``--browser``: the engine alone with a reader in the main thread that pulls new rows,
eigenvectors and the kernel at the page's rate (``--hz``), as the page's periodic callback does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

from ntk_core import Trainer
from ntk_core.presets import DEFAULT_PRESET, load_preset


def engine_only(seconds: float, hz: float, preset: str) -> dict:
    trainer = Trainer(load_preset(preset).config.replace(steps=1_000_000))
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
    return {"mode": "engine", "preset": preset, "seconds": elapsed,
            "steps_per_s": (len(trainer.buffer) - start_steps) / elapsed,
            "updates_per_s": polls / elapsed, "status": trainer.status}


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


def browser(seconds: float, warmup: float, preset: str) -> dict:
    from playwright.sync_api import sync_playwright

    from app.server import serve_command

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        raise SystemExit("chromium is not installed (apt-get install -y chromium)")
    port = _free_port()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root}
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
            page.goto(f"http://127.0.0.1:{port}/main?preset={preset}")
            status = page.get_by_text(re.compile(r"^step \d+ · "))
            status.wait_for(timeout=120_000)
            page.get_by_role("button", name="Play", exact=True).click()
            page.get_by_text(re.compile(r"^step \d+ · running$")).wait_for(timeout=120_000)
            time.sleep(warmup)  # past the cold first solves

            def read() -> tuple[float, int, int]:
                text = status.inner_text()
                return time.perf_counter(), int(re.search(r"step (\d+)", text).group(1)), frames

            t0, s0, f0 = read()
            time.sleep(seconds)
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
    errors = [line for line in err.splitlines() if "Traceback" in line or "ERROR" in line]
    if os.environ.get("NTK_EOS_DEBUG"):
        print(err)
    return {"mode": "browser", "preset": preset, "seconds": t1 - t0,
            "steps_per_s": (s1 - s0) / (t1 - t0), "updates_per_s": (f1 - f0) / (t1 - t0),
            "status": final, "server_errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--hz", type=float, default=4.0, help="engine mode: reader polling rate")
    parser.add_argument("--warmup", type=float, default=5.0, help="browser mode: seconds skipped")
    parser.add_argument("--preset", default=DEFAULT_PRESET)
    parser.add_argument("--browser", action="store_true", help="serve the app and drive Chromium")
    args = parser.parse_args()
    result = (browser(args.seconds, args.warmup, args.preset) if args.browser
              else engine_only(args.seconds, args.hz, args.preset))
    result["load_average"] = os.getloadavg()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
