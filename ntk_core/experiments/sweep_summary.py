"""What a sweep hypercube (``ntk_core.experiments.sweep``) says per learning rate: the numbers behind final
KTA against η, KTA over steps per η, and the final alignment spectrum (Jiang, Cohen, Li 2025,
Fig. 1). Shared by ``ntk-eos reproduce`` (matplotlib) and the dashboard's Sweep view.

A cube has the grid's dims (``lr``, ``seed``, and any other swept option) plus ``step`` and
``eig``. Runs that diverged or failed keep their row in every table, but are left out of the
means: their "final" values are those of a blown-up or missing run, not of a run at matched loss.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import xarray as xr
from numpy.typing import ArrayLike
from scipy.stats import spearmanr

from ..vocabulary import RunStatus
from .sweep import PER_RUN_DIMS

EXCLUDED = (RunStatus.DIVERGED, RunStatus.FAILED)  # statuses left out of means over seeds


def grid_dims(cube: xr.Dataset) -> list[str]:
    """The swept dims (``lr``, ``seed``, ...), in the cube's order."""
    return [d for d in cube.status.dims if d not in PER_RUN_DIMS]


def series_dims(cube: xr.Dataset) -> list[str]:
    """Swept dims other than ``lr`` and ``seed``: each combination is a separate series."""
    return [d for d in grid_dims(cube) if d not in ("lr", "seed")]


def series_points(cube: xr.Dataset) -> list[dict]:
    """Every combination of the series dims' values ([{}] when there are none)."""
    dims = series_dims(cube)
    values = [cube[d].values.tolist() for d in dims]
    return [dict(zip(dims, combo, strict=True)) for combo in itertools.product(*values)]


def series_label(point: dict) -> str:
    return ", ".join(f"{k} = {v}" for k, v in point.items())


def measured_curve(run: xr.Dataset, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values of one run's per-step variable where it is finite (measured steps)."""
    values = np.asarray(run[name].values, dtype=float)
    ok = np.isfinite(values)
    return run.step.values[ok], values[ok]


def final_spectrum(run: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Normalised eigenvalues λ_i/‖K‖_F and alignments a_i of one run's last measured NTK."""
    lam = np.asarray(run.final_eigval_normalized.values, dtype=float)
    a = np.asarray(run.final_alignment.values, dtype=float)
    ok = np.isfinite(lam) & np.isfinite(a)
    return lam[ok], a[ok]


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman's ρ over the finite pairs (NaN with fewer than 3 or a constant y)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(y[ok]) == 0:
        return math.nan
    return float(spearmanr(x[ok], y[ok]).statistic)


def runs_table(cube: xr.Dataset) -> pd.DataFrame:
    """One row per run: grid values, status, steps, final loss, KTA, a₁, A_k and S·η/2."""
    dims = grid_dims(cube)
    flat = cube[["status", "steps_done", "final_loss", "final_kta", "final_topk_mass",
                 "final_sharpness"]].stack(run=dims) if dims else cube.expand_dims(run=[0])
    a1 = cube.final_alignment.isel(eig=0)
    a1 = a1.stack(run=dims) if dims else a1.expand_dims(run=[0])
    table = pd.DataFrame({d: flat[d].values for d in dims})
    table["status"] = flat.status.values.astype(str)
    table["steps"] = flat.steps_done.values.astype(int)
    table["final_loss"] = flat.final_loss.values
    table["final_kta"] = flat.final_kta.values
    table["a1"] = a1.values
    table["topk_mass"] = flat.final_topk_mass.values
    if "lr" in dims:
        table["edge_ratio"] = flat.final_sharpness.values * table["lr"].to_numpy() / 2
    return table


def final_by_lr(cube: xr.Dataset, name: str = "final_kta") -> pd.DataFrame:
    """Mean and std over seeds of a ``final_*`` variable for each series and η, over the runs
    that neither diverged nor failed; ``runs`` counts those, ``excluded`` the others."""
    rows = []
    for point in series_points(cube):
        sub = cube.sel(point) if point else cube
        for lr in sub.lr.values:
            r = sub.sel(lr=lr)
            values = np.atleast_1d(np.asarray(r[name].values, dtype=float))
            status = np.atleast_1d(r.status.values.astype(str))
            keep = ~np.isin(status, EXCLUDED) & np.isfinite(values)
            rows.append({**point, "lr": float(lr),
                         "mean": float(values[keep].mean()) if keep.any() else math.nan,
                         "std": float(values[keep].std()) if keep.any() else math.nan,
                         "runs": int(keep.sum()), "excluded": int((~keep).sum())})
    return pd.DataFrame(rows)


def seed_mean_curve(runs: xr.Dataset, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean over the ``seed`` dim of a per-step variable at the steps every included run
    measured: runs stop at different steps, and a mean over fewer seeds would jump."""
    status = np.atleast_1d(runs.status.values.astype(str))
    keep = ~np.isin(status, EXCLUDED)
    if not keep.any():  # every seed diverged: show their mean rather than nothing
        keep[:] = True
    values = np.asarray(runs[name].transpose("seed", "step").values, dtype=float)[keep]
    ok = np.isfinite(values).all(axis=0)
    return runs.step.values[ok], values[:, ok].mean(axis=0)
