"""HoloViews plots of a learning-rate sweep: final alignment against η, KTA and sharpness over
steps per η, and the final alignment spectrum (Jiang, Cohen, Li 2025, Fig. 1 a, b, d).

Every function takes the sweep cube and returns an element; the numbers come from
``ntk_core.experiments.sweep_summary``, the only arithmetic here is picking a seed and display limits.
"""

from __future__ import annotations

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401  (registers the Bokeh options used below)
import numpy as np
import pandas as pd
import xarray as xr
from bokeh.palettes import Category10_10, Viridis256

from ntk_core.experiments.sweep_summary import (
    EXCLUDED,
    final_by_lr,
    final_spectrum,
    measured_curve,
    runs_table,
    seed_mean_curve,
    series_label,
    series_points,
    spearman,
)
from ntk_core.vocabulary import RunStatus

MEAN = "mean"  # the seed choice that averages over seeds
PLOT_HEIGHT = 320
SIZE = {"responsive": True, "height": PLOT_HEIGHT, "show_grid": True}
METRICS = {"final KTA": "final_kta", "top-k mass Aₖ": "final_topk_mass",
           "top eigenvector a₁": "a1", "centred KTA": "final_kta_centered"}
STATUS_STYLE = {  # marker, fill alpha and legend text of each run's point
    RunStatus.REACHED_TARGET: ("circle", 0.5, "run at target loss"),
    RunStatus.COMPLETED: ("square", 0.0, "run at step budget"),
    RunStatus.STOPPED: ("square", 0.0, "run stopped early"),
    RunStatus.DIVERGED: ("x", 1.0, "diverged (not in mean)"),
    RunStatus.FAILED: ("x", 1.0, "failed (not in mean)"),
}
DIVERGED_COLOR = "#d62728"


def lr_colors(lrs: np.ndarray) -> dict[float, str]:
    """Dark (small η) to light green (large η), as in the reproduction figures."""
    idx = np.linspace(0, 0.85 * 255, max(len(lrs), 1)).round().astype(int)
    return {float(lr): Viridis256[i] for lr, i in zip(lrs, idx, strict=False)}


def lr_label(cube: xr.Dataset, lr: float) -> str:
    """``η = 0.4`` with ``(diverged)`` when every run at that η diverged or failed."""
    status = np.asarray(cube.status.sel(lr=lr).values).astype(str).ravel()
    return f"η = {lr:g}" + (" (diverged)" if np.isin(status, EXCLUDED).all() else "")


def select(cube: xr.Dataset, series: dict | None) -> xr.Dataset:
    return cube.sel(series) if series else cube


def metric_cube(cube: xr.Dataset, metric: str) -> xr.Dataset:
    """The cube with ``a1`` (alignment of the top eigenvector) added when it is asked for."""
    if metric == "a1" and "a1" not in cube:
        cube = cube.assign(a1=cube.final_alignment.isel(eig=0, drop=True))
    return cube


def final_plot(cube: xr.Dataset, metric: str = "final_kta") -> hv.Overlay:
    """Mean ± std over seeds against η (log x) per series, and every run as a point whose
    marker says how it stopped."""
    cube = metric_cube(cube, metric)
    stats = final_by_lr(cube, metric)
    runs = runs_table(cube).assign(value=cube[metric].stack(run=list(cube.status.dims)).values)
    name = next((k for k, v in METRICS.items() if v == metric), metric)
    layers: list[hv.Element] = []
    for i, point in enumerate(series_points(cube)):
        color = Category10_10[i % 10]
        mine = _rows(stats, point)
        label = series_label(point) or "mean ± std"
        layers += [hv.Curve(mine, "lr", [("mean", name), "std", "runs", "excluded"],
                            label=label).opts(color=color, line_width=2, tools=["hover"]),
                   hv.ErrorBars(mine, "lr", [("mean", name), "std"]).opts(color=color)]
        for status, (marker, alpha, text) in STATUS_STYLE.items():
            pts = _rows(runs, point)
            pts = pts[(pts.status == status) & np.isfinite(pts.value)]
            if len(pts):
                dot = DIVERGED_COLOR if status in EXCLUDED else color
                vdims = [("value", name)] + [c for c in ("seed", "status", "steps", "final_loss")
                                             if c in pts.columns]
                layers.append(hv.Scatter(pts, "lr", vdims,
                                         label=text if i == 0 else "").opts(
                    marker=marker, size=9, color=dot, fill_alpha=alpha, line_width=1.5,
                    tools=["hover"]))
    kept = ~runs.status.isin(EXCLUDED)
    rho = spearman(runs.lr[kept], runs.value[kept])
    title = f"{name[:1].upper()}{name[1:]} against η"
    if np.isfinite(rho):
        title += f" · Spearman ρ = {rho:.2f} over runs"
    return hv.Overlay(layers).opts(
        title=title, logx=True, xlabel="learning rate η (log)", ylabel=name, padding=0.08,
        xticks=[float(lr) for lr in cube.lr.values],
        legend_position="right", **_least_span(runs.value[kept].to_numpy()), **SIZE)


def _least_span(values: np.ndarray, fraction: float = 0.1) -> dict:
    """A y range at least ``fraction`` of the values' size tall: autoscaling values that agree
    to 0.5 % (a₁ ≈ 1/C at every η) would stretch their noise into an apparent trend."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return {}
    low, high = float(finite.min()), float(finite.max())
    least = fraction * max(abs(low), abs(high))
    if least <= 0 or high - low >= least:
        return {}
    middle = (low + high) / 2
    return {"ylim": (middle - 0.6 * least, middle + 0.6 * least)}


def _rows(frame: pd.DataFrame, point: dict) -> pd.DataFrame:
    mask = np.ones(len(frame), bool)
    for key, value in point.items():
        mask &= frame[key].to_numpy() == value
    return frame[mask]


def _curve(run: xr.Dataset, name: str, seed: int | str) -> tuple[np.ndarray, np.ndarray]:
    if seed == MEAN and "seed" in run.dims:
        return seed_mean_curve(run, name)
    return measured_curve(run.sel(seed=seed) if "seed" in run.dims else run, name)


def kta_curves(cube: xr.Dataset, seed: int | str = MEAN, series: dict | None = None
               ) -> hv.Overlay:
    """KTA over steps, one curve per η (paper Fig. 1a)."""
    cube = select(cube, series)
    colors = lr_colors(cube.lr.values)
    layers = []
    for lr in cube.lr.values:
        steps, kta = _curve(cube.sel(lr=lr), "kta", seed)
        layers += _curve_layers(cube, lr, steps, kta, "KTA", colors[float(lr)])
    return hv.Overlay(layers).opts(
        title=f"KTA over steps ({_seed_text(seed)})", legend_position="right", **SIZE)


def _curve_layers(cube: xr.Dataset, lr: float, steps: np.ndarray, values: np.ndarray,
                  name: str, color: str) -> list[hv.Element]:
    """One η's curve, and where every run at that η diverged, a cross on its last finite point:
    a run that diverged within a few steps is otherwise a line too short to see."""
    label = lr_label(cube, lr)
    layers: list[hv.Element] = [hv.Curve((steps, values), "step", name, label=label).opts(
        color=color, line_width=2, tools=["hover"])]
    finite = np.flatnonzero(np.isfinite(values))
    if label.endswith("(diverged)") and finite.size:
        last = finite[-1]
        layers.append(hv.Scatter(([steps[last]], [values[last]]), "step", name).opts(
            marker="x", size=12, line_width=2.5, color=color, tools=["hover"]))
    return layers


def sharpness_curves(cube: xr.Dataset, seed: int | str = MEAN, series: dict | None = None
                     ) -> hv.Overlay:
    """Sharpness over steps per η with its own 2/η as a dashed line of the same colour; the y
    range ends a little above the largest 2/η so a diverging run does not flatten the rest."""
    cube = select(cube, series)
    colors = lr_colors(cube.lr.values)
    layers, tops = [], []
    for lr in cube.lr.values:
        edge = 2 / float(lr)
        steps, s = _curve(cube.sel(lr=lr), "sharpness", seed)
        layers += _curve_layers(cube, lr, steps, s, "sharpness", colors[float(lr)])
        finite = s[np.isfinite(s)]
        tops += [edge, min(float(finite.max()), 1.3 * edge) if len(finite) else edge]
    edges = pd.DataFrame({"2/η": 2 / cube.lr.values, "color": list(colors.values())})
    layers.append(hv.HLines(edges, kdims=["2/η"], vdims=["color"]).opts(
        color="color", line_dash="dashed", line_width=1.5))
    top = 1.1 * max(tops) if tops else 1.0
    return hv.Overlay(layers).opts(
        title=f"Sharpness S and its limit 2/η (dashed) ({_seed_text(seed)})", ylim=(0, top),
        ylabel="sharpness S = λ_max(Hessian)", legend_position="right", **SIZE)


def spectrum_plot(cube: xr.Dataset, seed: int | str = MEAN, series: dict | None = None
                  ) -> hv.Overlay:
    """Alignment a_i against λ_i/‖K‖_F for the top eigenvectors of the final NTK, per η
    (paper Fig. 1b); with the seed mean, the i-th pairs are averaged over seeds."""
    cube = select(cube, series)
    colors = lr_colors(cube.lr.values)
    layers = []
    for lr in cube.lr.values:
        lam, a = _spectrum(cube.sel(lr=lr), seed)
        keep = (lam > 0) & (a > 0)  # log axes
        # (name, label): the name keys the data, the label is what axis and tooltip show
        layers.append(hv.Scatter((lam[keep], a[keep]), ("λᵢ/‖K‖_F", "λᵢ / ‖K‖"), "aᵢ",
                                 label=lr_label(cube, lr)).opts(
            color=colors[float(lr)], size=7, alpha=0.8, tools=["hover"]))
    k = cube.sizes.get("eig", 0)
    return hv.Overlay(layers).opts(
        title=f"Final NTK: alignment of the top {k} eigenvectors ({_seed_text(seed)})",
        logx=True, logy=True, xlabel="λᵢ / ‖K‖, Frobenius norm (log)",
        ylabel="alignment aᵢ (log)", legend_position="right", **SIZE)


def _spectrum(runs: xr.Dataset, seed: int | str) -> tuple[np.ndarray, np.ndarray]:
    if seed != MEAN or "seed" not in runs.dims:
        return final_spectrum(runs.sel(seed=seed) if "seed" in runs.dims else runs)
    status = np.asarray(runs.status.values).astype(str)
    keep = ~np.isin(status, EXCLUDED)
    part = runs.isel(seed=np.flatnonzero(keep)) if keep.any() else runs
    return final_spectrum(part[["final_eigval_normalized", "final_alignment"]].mean("seed"))


def _seed_text(seed: int | str) -> str:
    return "mean over seeds" if seed == MEAN else f"seed {seed}"
