"""``ntk-eos presets [-v]``: the lecture presets, with their paragraphs."""

from __future__ import annotations

import argparse
import textwrap

from ..presets import load_preset, preset_names


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list the presets")
    p.add_argument("-v", "--verbose", action="store_true", help="show the descriptions")
    p.set_defaults(func=presets)


def presets(args: argparse.Namespace) -> int:
    for name in preset_names():
        p = load_preset(name)
        print(f"{name:18s} {p.title}")
        if args.verbose:
            print(textwrap.fill(" ".join(p.description.split()), width=96,
                                initial_indent=" " * 19, subsequent_indent=" " * 19) + "\n")
    return 0
