"""Memory of runs opened from files on a hosted server: several tabs open the heaviest run file
the server still accepts, at once.

Starts ``ntk-eos serve --hosted`` with its stats log, builds the file (a kernel at the viewer's
row cap and eigenvector snapshots up to the per-file share of the budget, all zeros, so it is
small on disk), opens ``--tabs`` pages in Chromium that upload it together, and polls
``/liveness`` throughout. Prints the server's resident memory before, at its peak and once the
runs are open (held), what each tab showed, and the ``/liveness`` latencies.

    python benchmarks/open_runs_memory.py --tabs 4
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.files.runs import MAX_KERNEL_ROWS  # noqa: E402
from app.server.startup import STATS_PREFIX  # noqa: E402
from app.session.limits import HOSTED_OPEN_RUNS_MB  # noqa: E402
from ntk_core import RunConfig, Trainer  # noqa: E402
from ntk_core.training.netcdf import run_bytes  # noqa: E402


def heaviest_file(path: Path, share_mb: float) -> float:
    """A valid run whose arrays, once read, take just under ``share_mb``; returns their MB."""
    trainer = Trainer(RunConfig(dataset="digits", n=8, classes=(0, 1), width=4, k=20, steps=5))
    for _ in range(3):
        trainer.step()
    path.write_bytes(run_bytes(trainer.buffer.snapshot()))
    rows, k = MAX_KERNEL_ROWS, 20
    kernel_mb = rows * rows * 8 / 2**20
    per_snapshot = k * rows * 8 / 2**20
    snapshots = int((share_mb * 0.97 - kernel_mb) / per_snapshot)
    with h5py.File(path, "r+") as f:
        for name in ("kernel", "eigenvectors", "snapshot_step", "label", "target",
                     "sample_index", "output_index", "sample", "snapshot"):
            if name in f:
                del f[name]
        f.create_dataset("sample", data=np.arange(rows))
        f.create_dataset("label", data=np.arange(rows) % 2)
        f.create_dataset("kernel", shape=(rows, rows), dtype="f8", chunks=(512, 512),
                         compression="gzip")
        f.create_dataset("snapshot_step", data=np.zeros(snapshots, dtype=np.int64))
        f.create_dataset("eigenvectors", shape=(snapshots, f["eig"].shape[0], rows), dtype="f8",
                         chunks=(1, f["eig"].shape[0], rows), compression="gzip")
    return kernel_mb + snapshots * per_snapshot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tabs", type=int, default=4)
    parser.add_argument("--port", type=int, default=5093)
    parser.add_argument("--seconds", type=float, default=120.0, help="wait for the tabs at most")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="ntk-eos-open-"))
    share = HOSTED_OPEN_RUNS_MB / 4
    data_mb = heaviest_file(work / "heavy.nc", share)
    print(f"file: {(work / 'heavy.nc').stat().st_size / 2**20:.2f} MB on disk, {data_mb:.0f} MB "
          f"once read (per-file share {share:.0f} MB of a {HOSTED_OPEN_RUNS_MB:.0f} MB budget)")
    env = {**os.environ, "NTK_EOS_STATS_SECONDS": "0.25"}
    server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--hosted",
                               "--port", str(args.port)], env=env, cwd=ROOT,
                              stderr=subprocess.PIPE, text=True)
    rss: list[float] = []
    threading.Thread(target=lambda: [rss.append(json.loads(line[len(STATS_PREFIX):])["rss_mb"])
                                     for line in server.stderr if line.startswith(STATS_PREFIX)],
                     daemon=True).start()
    base = f"http://127.0.0.1:{args.port}"
    latencies: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                urllib.request.urlopen(f"{base}/liveness", timeout=30).read()
                latencies.append(time.perf_counter() - started)
            except OSError:
                pass
            stop.wait(0.2)

    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not rss:
            time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"),
                                        args=["--no-sandbox", "--disable-gpu",
                                              "--disable-background-networking"])
            pages = [browser.new_page() for _ in range(args.tabs)]
            for page in pages:
                page.goto(f"{base}/main?n=32&classes=0,1&width=16")
                page.get_by_text(re.compile(r"^step 0 ·")).wait_for(timeout=120_000)
                page.get_by_role("button", name="Files", exact=True).click()
            before = rss[-1]
            threading.Thread(target=poll, daemon=True).start()
            for page in pages:
                page.locator("input[type=file]").first.set_input_files(str(work / "heavy.nc"))
            outcome = re.compile(r"Viewing the saved run|Could not open")
            shown = []
            for page in pages:
                note = page.get_by_text(outcome).first
                note.wait_for(timeout=args.seconds * 1000)
                shown.append(note.inner_text()[:160])
            time.sleep(2)
            held = rss[-1]
            browser.close()
    finally:
        stop.set()
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)
    lat = np.array(latencies)
    print(f"server RSS: before {before:.0f} MB, peak {max(rss):.0f} MB, held {held:.0f} MB")
    for i, text in enumerate(shown):
        print(f"tab {i + 1}: {text}")
    print(f"/liveness: {len(lat)} polls, p50 {np.median(lat):.2f} s, p95 "
          f"{np.percentile(lat, 95):.2f} s, max {lat.max():.2f} s")


if __name__ == "__main__":
    main()
