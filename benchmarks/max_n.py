"""The largest n whose per-step measurements fit, with absolute times (meant for a GPU; gpu.sh).

For the W1 MLP (exact K, C = 1), the W2 MLP (C = 10: exact traced K, matrix-free full K) and the
W5 MLP (C = 1, matrix-free), n doubles until memory runs out or one step exceeds ``--budget-s``.
Each size times, after one warm-up step: a GD step, the exact (or matrix-free) top-k solve, and
the warm sharpness.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, run as a script

from benchmarks.common import timed  # noqa: E402
from benchmarks.harness import Ours  # noqa: E402
from benchmarks.workloads import SPECS  # noqa: E402
from ntk_core.experiments.bench import Workload  # noqa: E402

SIZES = (1000, 2000, 4000, 8000, 16000, 32000, 50000)
CASES = {"W1-mlp-exact": ("W1", "synthetic"), "W2-mlp-traced-exact": ("W2-traced", "synthetic"),
         "W2-mlp-full-matrix-free": ("W2-full", "synthetic"),
         "W5-mlp-binary-matrix-free": ("W5", "synthetic")}


def one_size(case: str, n: int, device: str) -> dict:
    spec = SPECS[CASES[case][0]]
    # synthetic data: any n (mnist1d and digits have fixed pools); same widths, depths and k
    cfg = spec.config.replace(dataset="synthetic", n=n, input_dim=64 if spec.name == "W1" else 40,
                              classes=spec.config.classes or tuple(range(10)))
    w = Workload(cfg)
    w.model.to(device)
    w.X, w.Y = w.X.to(device), w.Y.to(device)
    w.params = [p for p in w.model.parameters() if p.requires_grad]
    w.set_edge_lr()
    ours = Ours(spec, w, 1e-4)
    for _ in range(2):  # the second step is warm
        gd, _ = timed(w.gd_step)
        times, prods = ours.step()
    out = {"n": n, "gd_s": gd, **{f"{k}_s": v for k, v in times.items()}, **prods}
    if device.startswith("cuda"):
        out["gpu_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget-s", type=float, default=20.0, help="stop above this per step")
    parser.add_argument("--max-n", type=int, default=SIZES[-1])
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    results: dict[str, dict] = {}
    for case in CASES:
        rows, largest = [], None
        for n in (s for s in SIZES if s <= args.max_n):
            try:
                row = one_size(case, n, args.device)
            except (torch.cuda.OutOfMemoryError, MemoryError, RuntimeError) as exc:
                rows.append({"n": n, "failed": type(exc).__name__})
                break
            finally:
                if args.device.startswith("cuda"):
                    torch.cuda.empty_cache()
            rows.append(row)
            largest = n
            print(case, row, flush=True)
            if sum(v for k, v in row.items() if k.endswith("_s")) > args.budget_s:
                break
        results[case] = {"largest_n": largest, "sizes": rows}
    Path(args.json).write_text(json.dumps({"device": args.device, "cases": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
