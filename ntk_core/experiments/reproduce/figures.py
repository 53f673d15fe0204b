"""The report's figures (matplotlib, Agg): panels (a)–(d) of one architecture's sweep, and the
two-layer linear theory against its simulation (e)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from ...numerics.stability import stability_threshold, threshold_label, tracked_sharpness
from ...vocabulary import RunStatus
from .. import theory
from ..sweep_summary import final_spectrum, measured_curve
from .grid import Experiment


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "figure.dpi": 110,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


SHARPNESS_LABELS = {"sharpness": "sharpness S", "preconditioned_sharpness": "λ_max(P⁻¹H)",
                    "batch_sharpness": "batch sharpness"}


def figure_experiment(exp: Experiment, cube: xr.Dataset, stats: dict, path: Path) -> None:
    plt = _plt()
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, len(exp.lrs)))
    fig = plt.figure(figsize=(10, 7.6))
    outer = fig.add_gridspec(2, 2, hspace=0.35, wspace=0.28)
    ax_a, ax_b, ax_d = (fig.add_subplot(outer[i, j]) for i, j in ((0, 0), (0, 1), (1, 1)))
    ax_loss, ax_s, ax_k = outer[1, 0].subgridspec(3, 1, hspace=0.12).subplots(sharex=True)
    seed0 = cube.isel(seed=0)
    for color, lr in zip(colors, cube.lr.values, strict=True):
        r = seed0.sel(lr=lr)
        ax_a.plot(*measured_curve(r, "kta"), color=color, lw=1.3, label=f"η = {lr:g}")
        ax_b.plot(*final_spectrum(r), "o-", color=color, ms=3.5, lw=0.8, label=f"η = {lr:g}")
    ax_a.set(title=f"(a) kernel–target alignment (seed {int(seed0.seed)})", xlabel="step",
             ylabel="KTA (traced NTK vs YYᵀ)")
    ax_a.legend(frameon=False)
    ax_b.set(title="(b) final NTK: top-20 eigenvectors", xlabel="normalised eigenvalue λᵢ/‖K‖_F",
             ylabel="alignment aᵢ = ‖Yᵀuᵢ‖²/‖Y‖²", xscale="log", yscale="log")
    ax_b.legend(frameon=False)

    r = seed0.sel(lr=exp.highlight)
    ax_loss.semilogy(*measured_curve(r, "loss"), color="0.3", lw=1.0)
    ax_loss.set(ylabel="loss", title=f"(c) the η = {exp.highlight:g} run (seed {int(seed0.seed)})")
    c = exp.config  # the sharpness the optimiser holds at its own threshold (2/η for GD)
    name = tracked_sharpness(c.optimizer)
    edge = stability_threshold(c.optimizer, exp.highlight, c.momentum, c.nesterov, c.beta1)
    ax_s.plot(*measured_curve(r, name), color="C3", lw=1.0, label=SHARPNESS_LABELS[name])
    ax_s.axhline(edge, color="k", ls="--", lw=1,
                 label=threshold_label(c.optimizer, c.momentum, c.nesterov, c.beta1))
    # a catapult's initial spike would flatten the edge: clip the axis at 2.2 × the threshold
    ax_s.set_ylim(0, max(1.15 * edge, min(1.05 * float(np.nanmax(r[name])), 2.2 * edge)))
    ax_s.set(ylabel="sharpness")
    ax_s.legend(frameon=False, loc="lower right", ncol=2, fontsize=8)
    ax_k.plot(*measured_curve(r, "kta"), color="C0", lw=1.2)
    ax_k.set(ylabel="KTA", xlabel="step")

    lrs = stats["lr"]
    for key, label, color, marker in (("kta", "final KTA", "C0", "o"), ("a1", "a₁", "C1", "s"),
                                      ("topk", "A₂₀", "C2", "^")):
        ax_d.errorbar(lrs, stats[f"{key}_mean"], yerr=stats[f"{key}_std"], color=color,
                      marker=marker, ms=4, capsize=3, lw=1.2,
                      label=f"{label} (ρ = {stats[f'{key}_rho']:.2f})")
    stop = f"matched loss {exp.config.target_loss:g}" if exp.config.target_loss else "step budget"
    ax_d.set(title=f"(d) final, at the {stop}: mean ± std over {cube.sizes['seed']} seeds",
             xlabel="learning rate η", ylabel="alignment")
    ax_d.set_ylim(0, 1.22)  # the band above 1 holds the legend, clear of the curves
    if lrs.max() >= 5 * lrs.min():  # a grid spanning decades (Adam's) reads on a log axis
        ax_d.set_xscale("log")
        ax_d.set_xticks(lrs, [f"{lr:g}" for lr in lrs])
        ax_d.minorticks_off()
    ax_d.legend(frameon=False, loc="upper center", ncol=3, fontsize=8, columnspacing=1.0)
    fig.suptitle(f"{exp.title} on {exp.config.dataset}, n = {exp.config.n}", fontsize=11)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def figure_theory(cmp: xr.Dataset, path: Path) -> None:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    lrs = cmp.lr.values
    dense = np.linspace(lrs.min(), lrs.max() * 1.6, 200)
    X, y = _theory_data()
    curve = theory.predict(X @ X.T, y, dense, a2_flow=float(cmp.a2_flow.mean()))
    ax1.plot(dense, curve.kta_pred, color="k", lw=1.2, label="prediction KTA(min(a²_flow, a²_max(η)))")
    ax2.plot(dense, curve.a2_pred, color="k", lw=1.2, label="prediction min(a²_flow, a²_max(η))")
    for j, seed in enumerate(cmp.seed.values):
        ok = cmp.status.values[:, j] == RunStatus.REACHED_TARGET
        ax1.plot(lrs[ok], cmp.kta.values[ok, j], "o", ms=5, mfc="none", color=f"C{j}",
                 label=f"GD in the engine, seed {seed}")
        ax2.plot(lrs[ok], cmp.a2.values[ok, j], "o", ms=5, mfc="none", color=f"C{j}",
                 label=f"GD ‖v‖², seed {seed}")
    edge = 2 / cmp.attrs["sharpness_flow"]
    failed = lrs[~(cmp.status.values == RunStatus.REACHED_TARGET).all(1)]
    for ax in (ax1, ax2):
        ax.axvline(edge, color="0.6", ls=":", lw=1)
        ax.set_xlabel("learning rate η")
        if len(failed):
            ax.axvspan(failed.min(), dense.max(), color="C3", alpha=0.08, lw=0,
                       label=f"GD diverged at η ∈ {{{', '.join(f'{x:g}' for x in failed)}}}")
    bottom, top = ax1.get_ylim()
    ax1.text(edge, bottom + 0.03 * (top - bottom), " η = 2/S(a²_flow): the ceiling binds from here",
             color="0.4", va="bottom", fontsize=8)
    ax1.set(title="(e) two-layer linear net: final KTA", ylabel="KTA")
    ax2.set(title="final layer scale a² = ‖v‖²", ylabel="a²")
    ax1.legend(frameon=False, fontsize=8)
    ax2.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _theory_data() -> tuple[np.ndarray, np.ndarray]:
    data = theory.outlier_data()
    return data.X.numpy(), data.Y.numpy()[:, 0]
