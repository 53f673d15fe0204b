"""The run options as command-line flags: every RunConfig field is a flag (``--lr 0.5
--classes 3,8``) that overrides the preset's value. ``run`` and ``sweep`` take them."""

from __future__ import annotations

import argparse
from typing import get_origin

from ..config import RunConfig, option_base_type, option_choices, option_names
from ..presets import load_preset


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run options (override the preset; `none` clears an "
                                      "optional one)")
    for name in option_names():
        group.add_argument(f"--{name}", dest=f"opt_{name}", metavar=_metavar(name), default=None)


def _metavar(name: str) -> str:
    """What a flag takes, from the RunConfig field's type: {a,b} for choices, I,J,... for a
    tuple (``--classes 3,8``), else INT, FLOAT, TEXT or {true,false}."""
    choices = option_choices(name)
    base = option_base_type(name)
    if get_origin(base) is tuple:  # --classes 3,8; --flows central,stable
        return "{" + ",".join(map(str, choices)) + "},..." if choices else "I,J,..."
    if choices:
        return "{" + ",".join(map(str, choices)) + "}"
    return {bool: "{true,false}", int: "INT", float: "FLOAT"}.get(base, "TEXT")


def add_user_flags(parser: argparse.ArgumentParser) -> None:
    """``--data`` (and ``--arch package.module:factory``, read by ``user_model_name``)."""
    parser.add_argument("--data", metavar="FILE.npz",
                        help="train on arrays X and y of a NumPy .npz file instead of the "
                        "preset's dataset (y: (n,) class labels or targets, or (n, C))")


def user_model_name(args: argparse.Namespace) -> str | None:
    """``--arch`` when it names a model factory (``package.module:factory``), else None."""
    arch = getattr(args, "opt_arch", None)
    return arch if isinstance(arch, str) and ":" in arch else None


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The preset ``args.preset`` with the flags given applied (ConfigError when invalid).
    A model factory given as ``--arch`` is left to ``user_model_name``."""
    base = load_preset(args.preset).config
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_") and v is not None}
    if user_model_name(args):
        del overrides["arch"]
    merged = base.to_dict()
    merged.update(overrides)
    return RunConfig.from_dict(merged)
