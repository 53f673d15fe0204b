"""The ``ntk-eos`` parser and its dispatch: each subcommand module registers its parser."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from . import bench, info, presets, reproduce, run, sweep

# Adds one subcommand to the parser's subparsers, with ``func`` (and ``forward=True`` when the
# subcommand parses the remaining options itself) as defaults.
Command = Callable[[argparse._SubParsersAction], None]
ENGINE_COMMANDS: tuple[Command, ...] = (run.register, info.register, presets.register,
                                        bench.register, sweep.register, reproduce.register)


def build_parser(commands: Sequence[Command] = ()) -> argparse.ArgumentParser:
    """The engine's subcommands, then ``commands`` (the dashboard adds ``serve``)."""
    parser = argparse.ArgumentParser(
        prog="ntk-eos", description="Gradient descent at the Edge of Stability and the NTK: run "
        "a preset, inspect a saved run, sweep, benchmark, serve the dashboard.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (*ENGINE_COMMANDS, *commands):
        command(sub)
    return parser


def main(argv: Sequence[str] | None = None, commands: Sequence[Command] = ()) -> int:
    parser = build_parser(commands)
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "forward", False):  # only some parse their own options
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:  # ConfigError, DataError (bad data_dir, too few samples), bad ports
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`ntk-eos presets -v | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
