"""``ntk-eos info FILE``: the summary of a saved run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..training.netcdf import load_run
from .summary import summarize


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="summarise a saved run (.nc)")
    p.add_argument("path")
    p.set_defaults(func=info)


def info(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.is_file():
        print(f"error: {'not a file' if path.exists() else 'no such file'}: {path}",
              file=sys.stderr)
        return 2
    try:
        ds = load_run(path)
        if "config" not in ds.attrs and "lr" in ds.dims:
            print(f"error: {path} is a sweep (`ntk-eos sweep`), not a single run: open it in "
                  "the dashboard's Sweep tab", file=sys.stderr)
            return 2
        text = summarize(ds)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {path} is not an ntk-eos run file ({type(exc).__name__}: {exc})",
              file=sys.stderr)
        return 2
    print(f"file         {path}")
    print(text)
    return 0
