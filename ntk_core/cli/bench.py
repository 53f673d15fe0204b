"""``ntk-eos bench``: print the cost of each measurement as a multiple of a plain GD step
(``ntk_core.experiments.bench``), and save the figures as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from ..experiments.bench import WORKLOADS, bench_exact, bench_matrix_free


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", add_help=False,
                       help="per-step cost of each measurement as a ratio to a GD step "
                       "(`ntk-eos bench --help` for its options)")
    p.set_defaults(func=lambda args: main(args.extra), forward=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ntk-eos bench", description="The cost of each measurement as a ratio to a plain "
        "GD step, in the same process.")
    parser.add_argument("--steps", type=int, default=20, help="measured steps per workload")
    parser.add_argument("--lead-in", type=int, default=150,
                        help="plain GD steps before measuring, to reach the Edge of Stability")
    parser.add_argument("--tol", type=float, default=1e-4, help="relative eigen-residual")
    parser.add_argument("--json", help="write the figures to this JSON file")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    problems = []
    if args.steps < 1:
        problems.append(f"--steps: at least 1, got {args.steps}")
    if args.lead_in < 0:
        problems.append(f"--lead-in: at least 0, got {args.lead_in}")
    if not 0 < args.tol < 1:
        problems.append(f"--tol: between 0 and 1, got {args.tol}")
    if args.json and not Path(args.json).resolve().parent.is_dir():  # before the run, not after
        problems.append(f"--json: no folder {Path(args.json).resolve().parent}")
    if problems:
        print(f"error: {problems[0]}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {
        "mlp-n1000": bench_exact(WORKLOADS["mlp-n1000"], args.steps, args.tol, args.lead_in),
        "vit-n256": bench_matrix_free(WORKLOADS["vit-n256"], args.steps, args.tol, args.lead_in),
    }
    results["meta"] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                       "steps": args.steps, "lead_in": args.lead_in, "tol": args.tol}
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def format_table(results: dict[str, dict]) -> str:
    rows = [f"{'workload':12s} {'measurement':26s} {'× GD step':>10s} {'products':>10s}"
            f" {'cold':>8s}"]
    labels = {"ntk": "exact NTK", "topk": "top-k eigenpairs (warm)", "kta": "KTA, a_i, A_k",
              "ntk+topk+kta": "NTK + top-k + KTA", "sharpness": "Hessian sharpness (warm)",
              "matrix_free": "matrix-free top-k (warm)"}
    counts = {"topk": ("topk", "topk_cold"), "sharpness": ("hvp", "hvp_cold"),
              "matrix_free": ("matrix_free", "matrix_free_cold")}
    for name, res in results.items():
        if name == "meta":
            continue
        rows.append(f"{name:12s} {'GD step':26s} {1.0:10.2f} {'':>10s} {'':>8s}"
                    f"   ({res['gd_step_s'] * 1e3:.1f} ms)")
        for key, label in labels.items():
            if key not in res["ratio_to_gd"]:
                continue
            warm, cold = counts.get(key, (None, None))
            p = res["products"].get(warm, "") if warm else ""
            c = res["products"].get(cold, "") if cold else ""
            rows.append(f"{'':12s} {label:26s} {res['ratio_to_gd'][key]:10.2f} "
                        f"{p if p == '' else format(p, '.0f'):>10s} "
                        f"{c if c == '' else format(c, '.0f'):>8s}")
    meta = results.get("meta", {})
    rows.append(f"(medians over {meta.get('steps')} steps after {meta.get('lead_in', 0)} unmeasured; "
                f"eigen tolerance {meta.get('tol')}; "
                f"torch {meta.get('torch')}, {meta.get('threads')} threads)")
    return "\n".join(rows)
