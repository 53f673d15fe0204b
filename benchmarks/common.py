"""Shared helpers: timing, peak memory, summaries and where the optional peer packages live.

Every cost is a ratio to a plain GD step timed in the same process, interleaved with the
measurements; absolute times on shared CPUs move 2-5x between runs, ratios do not.
"""

from __future__ import annotations

import math
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE / ".peers"  # pip install --target: pyhessian, nngeometry, hessian-eigenthings
NT_PYTHON = HERE / ".venv-nt" / "bin" / "python"  # neural-tangents' own venv
RESULTS_DIR = HERE / "results"


def add_peer_path() -> None:
    """Make the peer packages importable without installing them into the project's venv."""
    if PEERS_DIR.is_dir() and str(PEERS_DIR) not in sys.path:
        sys.path.append(str(PEERS_DIR))


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
