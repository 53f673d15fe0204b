"""What the runs say: the Edge-of-Stability phase of a run, how KTA moves against the
sharpness during it, and the trends over η of one (lr, seed) sweep.

"The sharpness" is the one the run's optimiser holds at its threshold (``tracked_sharpness``):
the Hessian's against 2/η for gradient descent, the preconditioned one against 38/η for Adam,
the batch sharpness against 2/η for SGD."""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from ...numerics.stability import tracked_sharpness
from ...vocabulary import OptimizerName
from ..sweep_summary import spearman


def eos_phase(sharpness: np.ndarray, lr: float, band: tuple[float, float] = (0.95, 1.1),
              threshold: np.ndarray | None = None) -> np.ndarray:
    """Indices of the measured steps from the first with S / threshold (default 2/η) inside
    ``band`` to the end (empty if none): the sharpness has reached the edge, by progressive
    sharpening from below or, after a catapult, from above; the steps of a catapult itself (S
    far above the threshold) are not EoS."""
    idx = np.flatnonzero(np.isfinite(sharpness))
    ratio = sharpness[idx] / (threshold[idx] if threshold is not None else 2.0 / lr)
    hits = idx[(ratio >= band[0]) & (ratio <= band[1])]
    return idx[idx >= hits[0]] if len(hits) else np.array([], int)


def eos_correlation(kta: np.ndarray, sharpness: np.ndarray, lr: float,
                    threshold: np.ndarray | None = None) -> float:
    """corr(ΔKTA, −ΔS) over consecutive measured steps of the EoS phase (NaN if too short)."""
    phase = eos_phase(sharpness, lr, threshold=threshold)
    if len(phase) < 5:
        return math.nan
    dk, ds = np.diff(kta[phase]), np.diff(sharpness[phase])
    if dk.std() == 0 or ds.std() == 0:
        return math.nan
    return float(np.corrcoef(dk, -ds)[0, 1])


def tracked(run: xr.Dataset, optimizer: OptimizerName = "gd"
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """The optimiser's tracked sharpness along a run and its threshold per step (None: 2/η,
    for runs logged before thresholds were)."""
    name = tracked_sharpness(optimizer)
    threshold = run.stability_threshold.values if "stability_threshold" in run else None
    return run[name].values, threshold


def detail_eos(run: xr.Dataset, lr: float, optimizer: OptimizerName = "gd") -> dict:
    """corr(ΔKTA, −ΔS) and the length of the EoS phase of one finely measured run."""
    (S, threshold), K = tracked(run, optimizer), run.kta.values
    return {"detail_corr": eos_correlation(K, S, lr, threshold),
            "detail_phase": len(eos_phase(S, lr, threshold=threshold))}


def compute_time(cube: xr.Dataset) -> float:
    """Seconds spent in the runs' steps, summed over runs (the same whether runs were resumed)."""
    return float(np.nansum(cube.time_step.values))


def summarize(cube: xr.Dataset, optimizer: OptimizerName = "gd") -> dict:
    """The claims' numbers from one (lr, seed) sweep: trends over η, EoS statistics, correlations."""
    lrs = cube.lr.values
    pooled = np.repeat(lrs, cube.sizes["seed"])
    out: dict = {"lr": lrs}
    for name, var in (("kta", "final_kta"), ("a1", None), ("topk", "final_topk_mass"),
                      ("kta_centered", "final_kta_centered")):
        vals = cube[var].values if var else cube.final_alignment.isel(eig=0).values
        out[f"{name}_mean"] = np.nanmean(vals, axis=1)
        out[f"{name}_std"] = np.nanstd(vals, axis=1)
        out[f"{name}_rho"] = spearman(pooled, vals.reshape(-1))
        out[f"{name}_rho_means"] = spearman(lrs, out[f"{name}_mean"])
    out["topk_up"] = bool(out["topk_mean"][-1] > out["topk_mean"][0])
    corr = np.full((len(lrs), cube.sizes["seed"]), np.nan)
    edge = np.full_like(corr, np.nan)
    peak = np.full_like(corr, np.nan)
    for i, lr in enumerate(lrs):
        for j in range(cube.sizes["seed"]):
            r = cube.isel(lr=i, seed=j)
            (S, threshold), K = tracked(r, optimizer), r.kta.values
            ratio = S / threshold if threshold is not None else S * lr / 2
            corr[i, j] = eos_correlation(K, S, lr, threshold)
            phase = eos_phase(S, lr, threshold=threshold)
            if len(phase):
                edge[i, j] = np.median(ratio[phase])
            if np.isfinite(S).any():
                peak[i, j] = np.nanmax(ratio)
    out["eos_corr"], out["edge_ratio"], out["peak_ratio"] = corr, edge, peak
    s0 = cube.sharpness.isel(step=0).values  # the Hessian's, against 2/η: the catapult's test
    out["initial_ratio"] = np.nanmean(s0, axis=1) * lrs / 2 if np.isfinite(s0).any() else lrs * np.nan
    out["status"] = cube.status.values
    out["steps"] = cube.steps_done.values
    out["final_loss"] = cube.final_loss.values
    return out
