"""The ``ntk-eos`` command line: argparse and printing only. Each subcommand is a module here
(``run``, ``info``, ``presets``, ``bench``, ``sweep``, ``reproduce``) that registers its parser and
calls the engine; ``options`` turns every RunConfig field into a flag.

``serve`` is the dashboard's subcommand: ``app.cli`` adds it and is the console script, so the
engine never imports the app. ``python -m ntk_core.cli`` runs the engine's subcommands alone.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
