"""``ntk-eos reproduce``: rerun the paper's experiments at small scale and write the report."""

from __future__ import annotations

import argparse

from ..experiments.reproduce import main


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", add_help=False,
                       help="regenerate docs/reproduction.md and its figures "
                       "(`ntk-eos reproduce --help`)")
    p.set_defaults(func=lambda args: main(args.extra), forward=True)
