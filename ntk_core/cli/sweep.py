"""``ntk-eos sweep``: run a preset over a grid of options on Dask (``ntk_core.experiments.sweep``),
save the hypercube and print one line per run. Exit status 3 when a run failed."""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import xarray as xr

from ..config import ConfigError, RunConfig, coerce, option_names, option_type
from ..experiments.sweep import sweep, value_label
from ..grid import grid_configs, grid_points
from ..presets import DEFAULT_PRESET, load_preset
from ..vocabulary import RunStatus
from .options import add_config_flags, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", add_help=False,
                       help="a learning-rate × seed × … grid on Dask (`ntk-eos sweep --help`)")
    p.set_defaults(func=lambda args: main(args.extra), forward=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ntk-eos sweep",
        description="Run a preset over a grid of options on Dask and save the hypercube.",
        epilog="example: ntk-eos sweep --preset eta-ladder --grid lr=0.02,0.05,0.1 --grid seed=0,1 "
        "--steps 300 --out sweep.nc --resume-dir runs/")
    p.add_argument("--preset", default=DEFAULT_PRESET, help="base preset (default %(default)s)")
    p.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...",
                   help="a grid axis; repeat for more. Default: the preset's [sweep] table")
    p.add_argument("--out", default="sweep.nc", help="hypercube file (default %(default)s)")
    p.add_argument("--scheduler", default=None,
                   help="'serial', or a scheduler address tcp://host:port (default: a LocalCluster)")
    p.add_argument("--workers", type=int, default=2, help="LocalCluster processes (default 2)")
    p.add_argument("--resume-dir", default=None,
                   help="write one NetCDF per run here and skip the runs already there")
    p.add_argument("--retries", type=int, default=3, help="reruns of a failed task (default 3)")
    p.add_argument("--serial", action="store_true", help="same as --scheduler serial")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(p)
    return p


def summary_table(cube: xr.Dataset) -> str:
    """One line per run: grid values, status, steps, final loss, KTA, A_k and sharpness vs 2/η."""
    keys = [d for d in cube.status.dims]
    lines = ["  ".join(f"{k:>8s}" for k in keys) + "  status          steps      loss     KTA    A_k"
             "   S·η/2"]
    for idx in itertools.product(*(range(cube.sizes[k]) for k in keys)):
        r = cube.isel(dict(zip(keys, idx, strict=True)))
        lr = float(r.lr) if "lr" in r.coords else float(RunConfig.from_json(str(r.config.values)).lr)
        vals = "  ".join(f"{value_label(r[k].values.item()):>8s}" for k in keys)
        lines.append(f"{vals}  {str(r.status.values):14s} {int(r.steps_done):6d}  "
                     f"{float(r.final_loss):8.2e}  {float(r.final_kta):6.4f}  "
                     f"{float(r.final_topk_mass):5.3f}  {float(r.final_sharpness) * lr / 2:6.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    try:
        base = config_from_args(args)
        grid = parse_grid(args.grid) if args.grid else load_preset(args.preset).sweep
        if not grid:
            raise ConfigError(f"preset {args.preset} has no [sweep] table; give --grid NAME=V1,V2")
        grid_configs(base, grid)  # every point must be a valid configuration up front
        if args.workers < 1:
            raise ConfigError(f"--workers: at least 1, got {args.workers}")
        if args.retries < 0:
            raise ConfigError(f"--retries: at least 0, got {args.retries}")
        if args.resume_dir and Path(args.resume_dir).exists() and not Path(args.resume_dir).is_dir():
            raise ConfigError(f"--resume-dir: {args.resume_dir} is a file, not a folder")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    scheduler = "serial" if args.serial else args.scheduler
    n_runs = len(grid_points(grid))
    print(f"ntk-eos sweep · {args.preset} · {n_runs} runs over "
          f"{', '.join(f'{k} ({len(v)})' for k, v in grid.items())} · "
          f"{'serial' if scheduler == 'serial' else scheduler or f'LocalCluster ×{args.workers}'}",
          file=sys.stderr)
    try:
        cube = sweep(base, grid, scheduler=scheduler, workers=args.workers,
                     resume_dir=args.resume_dir, retries=args.retries, progress=not args.quiet,
                     out=args.out)
    except OSError as exc:  # an unreachable scheduler, an unwritable folder
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(summary_table(cube))
    reasons = sorted(set(cube.status_reason.values[cube.status.values == RunStatus.FAILED].ravel()))
    for reason in reasons:  # why runs failed, once per distinct reason
        print(f"failed: {reason}", file=sys.stderr)
    print(f"saved {args.out} ({cube.attrs['runs_resumed']} of {n_runs} runs resumed, "
          f"{cube.attrs['wall_time']:.1f} s)", file=sys.stderr)
    failed = int((cube.status == RunStatus.FAILED).sum())
    return 3 if failed else 0


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["lr=0.02,0.05", "seed=0,1"]`` → {"lr": [0.02, 0.05], "seed": [0, 1]}; values are coerced
    to the field's type. A list of tuples is separated by ``;``: ``classes=0,1;2,3``."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not text.strip():
            raise ConfigError(f"--grid: expected NAME=V1,V2,..., got {item!r}")
        if name not in option_names():
            raise ConfigError(f"--grid: unknown option {name!r} (the run options of "
                              "`ntk-eos run --help`)")
        parts = text.split(";") if ";" in text or _is_tuple_field(name) else text.split(",")
        values = [coerce(name, p.strip()) for p in parts if p.strip()]
        if name in grid:
            raise ConfigError(f"--grid: {name} given twice")
        if len(set(map(repr, values))) < len(values):  # two runs would share one cell
            raise ConfigError(f"--grid: {name} lists a value twice: {text}")
        grid[name] = values
    return grid


def _is_tuple_field(name: str) -> bool:
    return "tuple" in str(option_type(name))
