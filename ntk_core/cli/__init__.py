"""The ``ntk-eos`` command line: run a preset, inspect a saved run, benchmark, serve the app.

Every RunConfig field is a flag of ``run`` (``--lr 0.5 --classes 3,8``), overriding the preset.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import get_origin

from ..config import RunConfig, option_base_type, option_choices, option_names
from ..presets import DEFAULT_PRESET, load_preset, preset_names


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run options (override the preset; `none` clears an "
                                      "optional one)")
    for name in option_names():
        group.add_argument(f"--{name}", dest=f"opt_{name}", metavar=_metavar(name), default=None)


def _metavar(name: str) -> str:
    """What a flag takes, from the RunConfig field's type: {a,b} for choices, I,J,... for a
    tuple (``--classes 3,8``), else INT, FLOAT, TEXT or {true,false}."""
    choices = option_choices(name)
    if choices:
        return "{" + ",".join(map(str, choices)) + "}"
    base = option_base_type(name)
    if get_origin(base) is tuple:
        return "I,J,..."
    return {bool: "{true,false}", int: "INT", float: "FLOAT"}.get(base, "TEXT")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    base = load_preset(args.preset).config
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_") and v is not None}
    merged = base.to_dict()
    merged.update(overrides)
    return RunConfig.from_dict(merged)


def _fmt(x: float, spec: str = ".4g") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def cmd_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..training.allocator import keep_freed_memory
    from ..training.trainer import Trainer

    config = config_from_args(args)
    if args.out:
        problem = _unwritable(Path(args.out))
        if problem:  # before training: a run that cannot be saved is better not started
            print(f"error: cannot save to {args.out}: {problem}", file=sys.stderr)
            return 2
    keep_freed_memory()  # this process trains one run, then exits
    trainer = Trainer(config)
    print(f"ntk-eos run · {config.arch} on {config.dataset} (n={config.n}, "
          f"{trainer.data.num_outputs} output(s)) · η = {config.lr:g} · 2/η = {2 / config.lr:.4g}"
          f" · NTK {trainer.mode}, {trainer.measurer.m}×{trainer.measurer.m} kernel",
          file=sys.stderr)
    bar = tqdm(total=config.steps, unit="step", disable=args.quiet, mininterval=0.5,
               file=sys.stderr)

    def progress(record) -> None:
        s = record.scalars
        bar.update(1)
        bar.set_postfix_str(f"loss {_fmt(s['loss'], '.3e')} · S {_fmt(s.get('sharpness'))} "
                            f"vs 2/η {2 / s['lr']:.4g} · KTA {_fmt(s.get('kta'), '.3f')}",
                            refresh=False)

    try:
        ds = trainer.run(callback=progress)
    except KeyboardInterrupt:
        trainer.buffer.set_status("stopped", "interrupted from the keyboard")
        ds = trainer.dataset
    finally:
        bar.close()
    saved = _save(ds, Path(args.out)) if args.out else True
    print(summarize(ds))
    if not saved:
        return 2
    return 0 if ds.attrs["status"] in ("completed", "reached_target", "stopped") else 3


def _unwritable(path: Path) -> str:
    """Why a run could not be written at ``path`` ('' when it can): a real test file, since
    permissions alone miss read-only file systems and quotas."""
    from ..training.buffer import save_reason

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".ntk-eos-check-"):
            pass
    except OSError as exc:
        return save_reason(exc)
    return ""


def _save(ds, path: Path) -> bool:
    """Save the run; when that fails (disk full ...), save it to the temp folder instead so that
    nothing computed is lost, and say where."""
    from ..training.buffer import SaveError, save_run

    try:
        print(f"saved {save_run(ds, path)}", file=sys.stderr)
        return True
    except SaveError as exc:
        print(f"error: {exc}", file=sys.stderr)
    fallback = Path(tempfile.gettempdir()) / f"ntk-eos-{time.strftime('%Y%m%d-%H%M%S')}.nc"
    try:
        print(f"the run was saved to {save_run(ds, fallback)} instead", file=sys.stderr)
    except SaveError as exc:
        print(f"error: the run could not be saved anywhere ({exc})", file=sys.stderr)
    return False


def summarize(ds) -> str:
    """A human summary of a run log (used by ``run`` and ``info``)."""
    import numpy as np

    cfg = RunConfig.from_json(ds.attrs["config"])
    steps = ds.sizes["step"]
    lines = [f"status       {ds.attrs['status']}: {ds.attrs.get('status_reason', '')}".rstrip(": "),
             f"run          {cfg.arch} ({_shape(cfg)}) "
             f"on {cfg.dataset}, n = {cfg.n}, target {cfg.target}, loss {cfg.loss}",
             f"NTK          {ds.attrs.get('ntk_mode')} · {ds.attrs.get('kernel')} kernel · "
             f"{ds.sizes['sample']} rows · k = {ds.sizes['eig']}",
             f"steps        {steps}"]
    if steps:
        last = ds.isel(step=-1)
        # isel, not where: where would broadcast the eigenvector snapshots over every step
        measured = ds.isel(step=np.flatnonzero(ds.measured.values == 1))
        lr = float(last.lr)
        lines.append(f"final η      {lr:g} (2/η = {2 / lr:.4g})")
        lines.append(f"final loss   {float(last.loss):.4e} (start {float(ds.loss[0]):.4e}), "
                     f"accuracy {float(last.accuracy):.3f}")
        if measured.sizes.get("step", 0):
            m = measured.isel(step=-1)
            sharp = measured.sharpness.values
            half = sharp[len(sharp) // 2:]
            ratio = np.nanmedian(half / (2 / measured.lr.values[len(sharp) // 2:])) if np.isfinite(
                half).any() else float("nan")
            lines += [
                f"sharpness    {_fmt(float(m.sharpness))} (max {_fmt(float(np.nanmax(sharp)) if np.isfinite(sharp).any() else float('nan'))}; "  # noqa: E501
                f"median over the 2nd half = {_fmt(ratio, '.3f')} × 2/η)",
                f"GN λ₁(K)/n   {_fmt(float(m.gn_sharpness))}",
                f"KTA          {_fmt(float(m.kta), '.4f')} (start {_fmt(float(measured.kta[0]), '.4f')})"
                f" · centred {_fmt(float(m.kta_centered), '.4f')}",
                f"a₁, A_k      {_fmt(float(m.alignment[0]), '.4f')}, {_fmt(float(m.topk_mass), '.4f')}",
                f"kernel dist  {_fmt(float(m.kernel_distance), '.4f')} from the initial NTK",
                f"cost         {np.nanmedian(measured.ntk_products):.0f} NTK products, "
                f"{np.nanmedian(measured.hvp_products):.0f} HVPs per measured step (median); "
                f"{steps / np.nansum(ds.time_step):.1f} steps/s over the run",
            ]
    return "\n".join(lines)


def _shape(cfg: RunConfig) -> str:
    from ..models import UNUSED_FIELDS

    unused = UNUSED_FIELDS.get(cfg.arch, ())
    parts = [f"width {cfg.width}"] + [f"depth {cfg.depth}"] * ("depth" not in unused) \
        + [cfg.activation] * ("activation" not in unused)
    return ", ".join(parts)


def cmd_info(args: argparse.Namespace) -> int:
    from ..training.buffer import load_run

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


def cmd_presets(args: argparse.Namespace) -> int:
    for name in preset_names():
        p = load_preset(name)
        print(f"{name:18s} {p.title}")
        if args.verbose:
            print(textwrap.fill(" ".join(p.description.split()), width=96,
                                initial_indent=" " * 19, subsequent_indent=" " * 19) + "\n")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from ..experiments.bench import main as bench_main

    return bench_main(args.extra)


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..experiments.sweep import main as sweep_main

    return sweep_main(args.extra)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from ..experiments.reproduce import main as reproduce_main

    return reproduce_main(args.extra)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from app.server.launch import serve
    except ImportError as exc:  # the dashboard ships in the same distribution
        print(f"error: the dashboard is not available ({exc})", file=sys.stderr)
        return 2
    from app.server.launch import limits_env

    env = limits_env(hosted=args.hosted, max_sessions=args.max_sessions,
                     max_trainings=args.max_trainings, torch_threads=args.torch_threads,
                     idle_minutes=args.idle_minutes, training=args.training)
    return serve(port=args.port, address=args.address, show=args.show,
                 allow_websocket_origin=args.allow_websocket_origin, extra_args=args.extra,
                 limits=env)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ntk-eos", description="Gradient descent at the Edge of Stability and the NTK: run "
        "a preset, inspect a saved run, sweep, benchmark, serve the dashboard.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="train a preset step by step and print the figures")
    p.add_argument("--preset", default=DEFAULT_PRESET, help=f"preset name (default "
                   f"{DEFAULT_PRESET}); see `ntk-eos presets`")
    p.add_argument("--out", help="save the run log as NetCDF (.nc)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_flags(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("info", help="summarise a saved run (.nc)")
    p.add_argument("path")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("presets", help="list the presets")
    p.add_argument("-v", "--verbose", action="store_true", help="show the descriptions")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("bench", add_help=False,
                       help="per-step cost of each measurement as a ratio to a GD step "
                       "(`ntk-eos bench --help` for its options)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("sweep", add_help=False,
                       help="a learning-rate × seed × … grid on Dask (`ntk-eos sweep --help`)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("reproduce", add_help=False,
                       help="regenerate docs/reproduction.md and its figures "
                       "(`ntk-eos reproduce --help`)")
    p.set_defaults(func=cmd_reproduce)

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
    g.add_argument("--training", choices=["process", "thread"], default=None,
                   help="train each run in a child process (default) or in the server process")
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # only these subcommands forward their remaining options
    if extra and args.command not in ("bench", "serve", "sweep", "reproduce"):
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


if __name__ == "__main__":
    sys.exit(main())
