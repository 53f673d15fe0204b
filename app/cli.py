"""The ``ntk-eos`` console script: the engine's subcommands (``ntk_core.cli``) plus ``serve``,
which the dashboard adds here, so that the engine never imports the app."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ntk_core.cli import main as engine_main

from .server import launch


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the dashboard with panel (other options go to "
                       "`panel serve`)")
    p.add_argument("--port", type=int, default=5006)
    p.add_argument("--address", default="localhost")
    p.add_argument("--show", action="store_true", help="open a browser tab")
    p.add_argument("--allow-websocket-origin", action="append", default=None)
    g = p.add_argument_group("server limits (defaults: NTK_EOS_* variables, see docs/deploy.md)")
    g.add_argument("--hosted", action="store_true",
                   help="public or class server: caps on run size, idle runs paused")
    g.add_argument("--max-sessions", type=int, default=None, help="open tabs at most")
    g.add_argument("--max-trainings", type=int, default=None,
                   help="runs stepping at once; the others queue")
    g.add_argument("--torch-threads", type=int, default=None, help="torch threads per run")
    g.add_argument("--idle-minutes", type=float, default=None,
                   help="pause a run after this long without input (0: never)")
    g.add_argument("--training", choices=["pool", "process", "thread"], default=None,
                   help="pool: fair slices on max-trainings shared workers (the --hosted "
                   "default); process: a child process per run (the local default); thread: "
                   "in the server process")
    g.add_argument("--scheduler", metavar="tcp://HOST:8786", default=None,
                   help="run the pool's slices on this Dask cluster (implies --training pool; "
                   "--max-trainings defaults to its worker threads)")
    own = p.add_argument_group("your own model and data (a local server only, not --hosted)")
    own.add_argument("--arch", metavar="PACKAGE.MODULE:FACTORY", default=None,
                     help="train factory(input_shape, num_outputs) in every tab")
    own.add_argument("--data", metavar="FILE.npz", default=None,
                     help="train on arrays X and y of a NumPy .npz file in every tab")
    p.set_defaults(func=serve, forward=True)


def serve(args: argparse.Namespace) -> int:
    env = launch.limits_env(hosted=args.hosted, max_sessions=args.max_sessions,
                     max_trainings=args.max_trainings, torch_threads=args.torch_threads,
                     idle_minutes=args.idle_minutes, training=args.training,
                     scheduler=args.scheduler)
    env = launch.own_inputs_env(args.arch, args.data, env)
    return launch.serve(port=args.port, address=args.address, show=args.show,
                 allow_websocket_origin=args.allow_websocket_origin, extra_args=args.extra,
                 limits=env)


def main(argv: Sequence[str] | None = None) -> int:
    return engine_main(argv, commands=(add_serve,))


if __name__ == "__main__":
    sys.exit(main())
