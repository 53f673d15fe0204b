"""Shared helpers: timing, peak memory, summaries and where the optional peer packages live.

Every cost is a ratio to a plain GD step timed in the same process, interleaved with the
measurements; absolute times on shared CPUs move 2-5x between runs, ratios do not.

The peer tools are third-party code, so they live outside the repository, in a per-user cache
folder: ``$NTK_EOS_PEERS_DIR``, else ``$XDG_CACHE_HOME/ntk-eos/peers`` (``~/.cache/ntk-eos/peers``).
"""

from __future__ import annotations

import fcntl
import functools
import importlib
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
PEERS_REQUIREMENTS = HERE / "requirements-peers.txt"


def _peers_home() -> Path:
    if os.environ.get("NTK_EOS_PEERS_DIR"):
        return Path(os.environ["NTK_EOS_PEERS_DIR"]).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser().resolve() / "ntk-eos" / "peers"


PEERS_HOME = _peers_home()
PEERS_DIR = PEERS_HOME / "torch"  # pip install --target: pyhessian, nngeometry, hessian-eigenthings
NT_VENV = PEERS_HOME / "venv-nt"  # neural-tangents' own venv (benchmarks/setup_peers.sh)
NT_PYTHON = NT_VENV / "bin" / "python"
# Written into PEERS_DIR after a complete install: a copy of the requirements it was installed
# from, so that changed pins reinstall and a half-finished install is never mistaken for one.
_STAMP = PEERS_DIR / PEERS_REQUIREMENTS.name


def add_peer_path() -> None:
    """Make the peer packages importable without installing them into the project's venv."""
    if PEERS_DIR.is_dir() and str(PEERS_DIR) not in sys.path:
        sys.path.append(str(PEERS_DIR))


def _installed() -> bool:
    return _STAMP.is_file() and _STAMP.read_text() == PEERS_REQUIREMENTS.read_text()


@functools.cache
def ensure_torch_peers() -> str | None:
    """Install the torch peers into PEERS_DIR unless they are there already.

    Returns None when they are installed, else why they could not be (no network, no pip), which
    is also printed. Once per process; a lock lets parallel workload processes share one install.
    """
    why_not = _install_once()
    if why_not is not None:
        print(f"the third-party peers are skipped: {why_not}", file=sys.stderr, flush=True)
    return why_not


def _install_once() -> str | None:
    if _installed():
        return None
    try:
        PEERS_HOME.mkdir(parents=True, exist_ok=True)
        with open(PEERS_HOME / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if _installed():  # another process finished it while this one waited
                return None
            return _pip_install_torch_peers()
    except OSError as exc:
        return f"cannot write the peer folder {PEERS_HOME}: {exc}"


def _pip_install_torch_peers() -> str | None:
    # --no-deps: they run on the project's torch, numpy and scipy. Into a fresh folder that replaces
    # the old one only when complete.
    partial = PEERS_HOME / "torch.partial"
    shutil.rmtree(partial, ignore_errors=True)
    print(f"installing the peer tools into {PEERS_DIR} (once) ...", file=sys.stderr, flush=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--retries", "1",
         "--target", str(partial), "-r", str(PEERS_REQUIREMENTS)],
        capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return f"pip could not install {PEERS_REQUIREMENTS.name}: {lines[-1] if lines else proc.returncode}"
    (partial / _STAMP.name).write_text(PEERS_REQUIREMENTS.read_text())
    shutil.rmtree(PEERS_DIR, ignore_errors=True)
    partial.rename(PEERS_DIR)
    importlib.invalidate_caches()
    return None


def _sync() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall time of fn(); on a GPU, queued kernels are waited for on both sides."""
    _sync()
    t0 = time.perf_counter()
    out = fn()
    _sync()
    return time.perf_counter() - t0, out


def peak_rss_mib() -> float:
    """High-water resident memory of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def median(values: list[float]) -> float:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(vals) if vals else math.nan


def rel_err(value: float, ref: float) -> float:
    return abs(value - ref) / abs(ref) if ref else math.nan


class Series:
    """Named lists of per-repeat numbers (seconds, products, errors) summarised by medians."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, list[float]]] = {}

    def add(self, name: str, **values: float) -> None:
        row = self.data.setdefault(name, {})
        for key, value in values.items():
            row.setdefault(key, []).append(float(value))

    def summary(self, gd_seconds: float) -> dict[str, dict[str, float]]:
        out = {}
        for name, row in self.data.items():
            s = {f"{key}_median": median(vals) for key, vals in row.items()}
            for key in row:
                if key.endswith("seconds"):  # "seconds" -> "ratio_to_gd", "pipeline_seconds" -> ...
                    s[key.replace("seconds", "ratio_to_gd")] = s[f"{key}_median"] / gd_seconds
                    s["repeats"] = len(row[key])
            if "err" in row:
                s["err_max"] = max(row["err"]) if row["err"] else math.nan
            out[name] = s
        return out
