"""The reproduction from start to end: per architecture, its sweep at matched loss, the
statistics, the one run measured at every step and the figure; then the linear theory; then the
report. Progress lines go to ``log``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import xarray as xr

from ...vocabulary import RunStatus
from .. import theory
from ..sweep import sweep
from .figures import figure_experiment, figure_theory
from .grid import FULL, QUICK, Experiment
from .report import write_report
from .statistics import compute_time, detail_eos, summarize


class ReproductionError(RuntimeError):
    """Nothing to report on: every run of an architecture failed (the reason is the runs')."""


def reproduce(exps: Sequence[Experiment], out_dir: Path, command: str, *, quick: bool = False,
              with_theory: bool = True, scheduler: Any = None, workers: int = 2,
              resume_dir: Path | None = None, progress: bool = True,
              log: Callable[[str], None] = lambda line: None) -> tuple[Path, dict[str, str]]:
    """Run ``exps`` (and the theory), write ``out_dir/reproduction.md`` and its figures in
    ``out_dir/figures``; returns the report's path and the figures by name. ``command`` is the
    command line the report says made it."""
    fig_dir = out_dir / "figures"
    suffix = "-quick" if quick else ""
    cubes: dict[str, xr.Dataset] = {}
    stats: dict[str, dict] = {}
    runtimes: dict[str, tuple[float, float, int, int]] = {}
    figures: dict[str, str] = {}
    for exp in exps:
        log(f"reproduce · {exp.title} · η ∈ {list(exp.lrs)} · seeds {list(exp.seeds)}")
        t0 = time.perf_counter()
        resume = resume_dir / exp.name if resume_dir else None
        cube = sweep(exp.config, {"lr": list(exp.lrs), "seed": list(exp.seeds)},
                     scheduler=scheduler, workers=workers, resume_dir=resume, progress=progress)
        failed = cube.status.values == RunStatus.FAILED
        if failed.all():  # nothing to report on (a missing CIFAR-10 folder, say): say why
            reason = sorted(set(cube.status_reason.values[failed].ravel()))[0]
            raise ReproductionError(f"every {exp.name} run failed: {reason}")
        cubes[exp.name], stats[exp.name] = cube, summarize(cube, exp.config.optimizer)
        detail = sweep(exp.config.replace(measure_every=1),
                       {"lr": [exp.highlight], "seed": [exp.seeds[0]]}, scheduler="serial",
                       resume_dir=Path(f"{resume}-detail") if resume else None,
                       progress=progress).isel(lr=0, seed=0)
        stats[exp.name].update(detail_eos(detail, exp.highlight, exp.config.optimizer))
        runtimes[exp.name] = (compute_time(cube) + compute_time(detail),
                              time.perf_counter() - t0,
                              cube.attrs["runs_resumed"] + detail.attrs["runs_resumed"],
                              cube.attrs["runs"] + detail.attrs["runs"])
        name = f"fig1-{exp.name}{suffix}.png"
        fig_dir.mkdir(parents=True, exist_ok=True)  # only once there is a figure to save
        figure_experiment(exp, cube, stats[exp.name], fig_dir / name)
        figures[exp.name] = f"figures/{name}"
    cmp, theory_runtime = None, 0.0
    if with_theory:
        scale = QUICK if quick else FULL
        log(f"reproduce · linear2 theory · η ∈ {list(scale.theory_lrs)}")
        t0 = time.perf_counter()
        cmp = theory.compare(scale.theory_lrs, seeds=scale.theory_seeds, sharpness=False,
                             measure_every=1000)
        theory_runtime = time.perf_counter() - t0
        name = f"fig-theory{suffix}.png"
        fig_dir.mkdir(parents=True, exist_ok=True)
        figure_theory(cmp, fig_dir / name)
        figures["theory"] = f"figures/{name}"
    report = out_dir / "reproduction.md"
    write_report(report, list(exps), cubes, stats, runtimes, cmp, theory_runtime, command,
                 figures)
    return report, figures
