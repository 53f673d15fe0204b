"""``ntk-eos reproduce``: rerun the paper's experiments at small scale and write the report
(``ntk_core.experiments.reproduce``). Exit status 2 for bad input, 3 when every run of an
architecture failed."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..config import ConfigError
from ..experiments.reproduce import ReproductionError, reproduce
from ..experiments.reproduce.flow_claims import run_flow_claims, write_flow_report
from ..experiments.reproduce.grid import experiments


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", add_help=False,
                       help="regenerate docs/reproduction.md and its figures "
                       "(`ntk-eos reproduce --help`)")
    p.set_defaults(func=lambda args: main(args.extra), forward=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ntk-eos reproduce",
        description="Rerun the paper's experiments at small scale (MLP, CNN, ViT, linear theory) "
        "and regenerate reproduction.md with its figures; every verdict is computed.")
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run of a few minutes)")
    p.add_argument("--dataset", default="digits",
                   choices=["digits", "mnist1d", "synthetic", "cifar10"])
    p.add_argument("--data_dir", "--data-dir", dest="data_dir", default=None,
                   help="folder of the CIFAR-10 python batches (for --dataset cifar10)")
    p.add_argument("--archs", default="mlp,cnn,vit",
                   help="comma-separated subset of mlp,cnn,vit,mlp-sgd,mlp-adam (the MLP with "
                   "mini-batch SGD and with Adam)")
    p.add_argument("--out-dir", default=None,
                   help="where reproduction.md and figures/ go (default docs, or "
                   "reproduction-quick with --quick, so a smoke run never replaces the report)")
    p.add_argument("--resume-dir", default=None,
                   help="keep every run's NetCDF here and reuse them on the next call")
    p.add_argument("--scheduler", default=None, help="'serial' or a Dask scheduler address")
    p.add_argument("--workers", type=int, default=2, help="LocalCluster processes (default 2)")
    p.add_argument("--serial", action="store_true", help="same as --scheduler serial")
    p.add_argument("--no-theory", action="store_true", help="skip the linear-network comparison")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--flows", action="store_true",
                   help="instead of the sweeps: the central-flow claims (one run per "
                   "architecture with the central flow and gradient flow beside GD), written "
                   "to reproduction-flows.md")
    return p


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    if args.dataset == "cifar10" and not args.data_dir:
        print("error: --dataset cifar10 needs --data_dir (a folder with the CIFAR-10 python "
              "batches; nothing is downloaded)", file=sys.stderr)
        return 2
    try:
        exps = experiments(args.dataset, args.quick, args.data_dir,
                           [a.strip() for a in args.archs.split(",") if a.strip()])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(args.out_dir or ("reproduction-quick" if args.quick else "docs"))
    command = "ntk-eos reproduce" + "".join(  # the options that change results, no local paths
        [" --quick"] * args.quick + [f" --dataset {args.dataset}"] * (args.dataset != "digits")
        + [" --data_dir DIR"] * bool(args.data_dir) + [" --no-theory"] * args.no_theory
        + [f" --archs {args.archs}"] * (args.archs != "mlp,cnn,vit")
        # a folder of the repository (docs/optimizers) is part of how to rerun it
        + [f" --out-dir {args.out_dir}"] * bool(args.out_dir
                                                and not Path(args.out_dir).is_absolute()))
    if args.flows:
        results = run_flow_claims(exps, args.quick, log=lambda line: print(line, file=sys.stderr),
                                  resume_dir=Path(args.resume_dir) if args.resume_dir else None)
        report = write_flow_report(out_dir / "reproduction-flows.md", results,
                                   command + " --flows")
        print(f"wrote {report}", file=sys.stderr)
        return 0
    try:
        report, figures = reproduce(
            exps, out_dir, command, quick=args.quick, with_theory=not args.no_theory,
            scheduler="serial" if args.serial else args.scheduler, workers=args.workers,
            resume_dir=Path(args.resume_dir) if args.resume_dir else None,
            progress=not args.quiet, log=lambda line: print(line, file=sys.stderr))
    except ReproductionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    print(f"wrote {report} and {len(figures)} figure{'s' * (len(figures) != 1)} in "
          f"{out_dir / 'figures'}", file=sys.stderr)
    return 0
