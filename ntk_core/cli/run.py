"""``ntk-eos run``: train a preset step by step with a progress bar, print the summary, and save
the log. Exit status 0 for a finished run, 3 for a diverged or failed one, 2 for bad input."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import xarray as xr
from torch import nn
from tqdm import tqdm

from ..config import RunConfig
from ..data import Dataset
from ..data.arrays import read_npz
from ..models.factory import user_inputs
from ..numerics.stability import tracked_sharpness
from ..presets import DEFAULT_PRESET
from ..training.allocator import keep_freed_memory
from ..training.buffer import StepRecord
from ..training.netcdf import SaveError, save_reason, save_run
from ..training.trainer import Trainer
from ..vocabulary import RunStatus
from .options import add_config_flags, add_user_flags, config_from_args, user_model_name
from .summary import fmt, summarize

FINISHED = (RunStatus.COMPLETED, RunStatus.REACHED_TARGET, RunStatus.STOPPED)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="train a preset step by step and print the figures")
    p.add_argument("--preset", default=DEFAULT_PRESET, help=f"preset name (default "
                   f"{DEFAULT_PRESET}); see `ntk-eos presets`")
    p.add_argument("--out", help="save the run log as NetCDF (.nc)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(p)
    add_user_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.out:
        problem = _unwritable(Path(args.out))
        if problem:  # before training: a run that cannot be saved is better not started
            print(f"error: cannot save to {args.out}: {problem}", file=sys.stderr)
            return 2
    data, model = user_data_and_model(args, config)
    keep_freed_memory()  # this process trains one run, then exits
    trainer = Trainer(config, data=data, model=model)
    attrs = trainer.buffer.attrs
    print(f"ntk-eos run · {attrs['model']} on {attrs['data']} (n={trainer.data.n}, "
          f"{trainer.data.num_outputs} output(s)) · {config.optimizer} at η = {config.lr:g} · "
          f"threshold {trainer.rule.threshold_label()} = {trainer.rule.threshold(config.lr):.4g}"
          f" · NTK {trainer.mode}, {trainer.measurer.m}×{trainer.measurer.m} kernel",
          file=sys.stderr)
    bar = tqdm(total=config.steps, unit="step", disable=args.quiet, mininterval=0.5,
               file=sys.stderr)

    tracked = tracked_sharpness(config.optimizer)

    def progress(record: StepRecord) -> None:
        s = record.scalars
        bar.update(1)
        bar.set_postfix_str(f"loss {fmt(s['loss'], '.3e')} · S {fmt(s.get(tracked))} "
                            f"vs {s['stability_threshold']:.4g} · KTA {fmt(s.get('kta'), '.3f')}",
                            refresh=False)

    try:
        ds = trainer.run(callback=progress)
    except KeyboardInterrupt:
        trainer.buffer.set_status(RunStatus.STOPPED, "interrupted from the keyboard")
        ds = trainer.dataset
    finally:
        bar.close()
    saved = _save(ds, Path(args.out)) if args.out else True
    print(summarize(ds))
    if not saved:
        return 2
    return 0 if ds.attrs["status"] in FINISHED else 3


def user_data_and_model(args: argparse.Namespace, config: RunConfig
                        ) -> tuple[Dataset | None, nn.Module | None]:
    """The ``--data`` arrays and the ``--arch`` factory's model, when given."""
    arrays = read_npz(args.data) if args.data else None
    return user_inputs(config, arrays, user_model_name(args),
                       Path(args.data).name if args.data else "arrays")


def _unwritable(path: Path) -> str:
    """Why a run could not be written at ``path`` ('' when it can): a real test file, since
    permissions alone miss read-only file systems and quotas."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".ntk-eos-check-"):
            pass
    except OSError as exc:
        return save_reason(exc)
    return ""


def _save(ds: xr.Dataset, path: Path) -> bool:
    """Save the run; when that fails (disk full ...), save it to the temp folder instead so that
    nothing computed is lost, and say where."""
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
