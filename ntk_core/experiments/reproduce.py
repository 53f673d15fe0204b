"""``ntk-eos reproduce``: rerun the paper's experiments at small scale and regenerate
``docs/reproduction.md`` with its figures, stating for each claim whether it reproduced.

Jiang, Cohen, Li (2025), "Understanding the Evolution of the NTK at the Edge of Stability".
For an MLP, a CNN and a small ViT: a learning-rate × seed sweep (``ntk_core.experiments.sweep``) in which
every run stops at the same target loss (matched-loss protocol), then

(a) KTA over steps, one curve per η (paper Fig. 1a);
(b) a_i against the normalised eigenvalue λ_i/‖K‖_F of the final NTK's top 20, per η (Fig. 1b);
(c) one run's loss, sharpness against 2/η, and KTA (Fig. 1c);
(d) final KTA, a₁ and A₂₀ against η, mean ± std over seeds;
(e) the two-layer linear network: predicted against simulated final KTA and a² (``theory``).

Every verdict in the report is computed from these runs. KTA and the eigen-alignments a₁, A_k
can move in opposite directions (KTA = Σ λ̃_i a_i), so all three are reported.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from ..config import ConfigError, RunConfig
from ..version import __version__
from ..vocabulary import RunStatus
from . import theory
from .sweep import sweep
from .sweep_summary import final_spectrum, measured_curve, spearman

SPEARMAN_PASS = 0.8
PATCH = {"digits": 2, "mnist1d": 4, "cifar10": 4, "synthetic": 4, "teacher": 4}


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    config: RunConfig
    lrs: tuple[float, ...]
    highlight: float  # the η of panel (c) and of the EoS run measured at every step
    seeds: tuple[int, ...] = (0, 1)
    notes: list[str] = field(default_factory=list, compare=False)


@dataclass(frozen=True)
class Scale:
    """Sizes of one reproduction: ``full`` is what the committed report uses, ``quick`` a smoke test."""

    n_mlp: int
    n_cnn: int
    n_vit: int
    steps: int
    target_loss: float
    seeds: tuple[int, ...]
    width_mlp: int
    width_cnn: int
    width_vit: int
    theory_lrs: tuple[float, ...]
    theory_seeds: tuple[int, ...]


FULL = Scale(n_mlp=256, n_cnn=128, n_vit=64, steps=2000, target_loss=0.01,
             seeds=(0, 1),
             width_mlp=128, width_cnn=32, width_vit=32,
             theory_lrs=(0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6), theory_seeds=(0, 1))
QUICK = Scale(n_mlp=64, n_cnn=48, n_vit=32, steps=300, target_loss=0.05,
              seeds=(0, 1),
              width_mlp=32, width_cnn=8, width_vit=16, theory_lrs=(0.2, 0.3, 0.4),
              theory_seeds=(0,))


def experiments(dataset: str = "digits", quick: bool = False, data_dir: str | None = None,
                archs: Sequence[str] = ("mlp", "cnn", "vit")) -> list[Experiment]:
    """The three architectures on ``dataset`` (four balanced classes, one-hot MSE targets,
    output-traced kernel Σ_c K_cc against YYᵀ), each with an η grid that spans gradient-flow-like
    runs to strong Edge of Stability and a common target loss."""
    s = QUICK if quick else FULL
    common = dict(dataset=dataset, data_dir=data_dir, classes=(0, 1, 2, 3), target="onehot",
                  kernel="traced", k=20, target_loss=s.target_loss, steps=s.steps, eig_tol=1e-3,
                  eigvec_every=10**6, patch=PATCH.get(dataset, 4))
    table = {
        "mlp": Experiment("mlp", f"MLP (2 hidden layers × {s.width_mlp}, tanh)", RunConfig(
            **common, arch="mlp", n=s.n_mlp, width=s.width_mlp, depth=2, activation="tanh",
            measure_every=3), lrs=(0.05, 0.1, 0.15, 0.2), highlight=0.15, seeds=s.seeds),
        "cnn": Experiment("cnn", f"CNN (2 conv layers × {s.width_cnn} channels, tanh, avg-pool)",
                          RunConfig(**common, arch="cnn", n=s.n_cnn, width=s.width_cnn, depth=2,
                                    activation="tanh", measure_every=5),
                          lrs=(0.2, 0.4, 0.6, 0.8), highlight=0.6, seeds=s.seeds),
        "vit": Experiment("vit", f"ViT (depth 2, dim {s.width_vit}, 4 heads, GELU)", RunConfig(
            **common, arch="vit", n=s.n_vit, width=s.width_vit, depth=2, heads=4,
            activation="gelu", measure_every=20), lrs=(0.01, 0.02, 0.04, 0.06), highlight=0.04,
            seeds=s.seeds),
    }
    unknown = [a for a in archs if a not in table]
    if unknown:
        raise ConfigError(f"--archs: unknown architecture(s) {unknown}; choose from mlp, cnn, vit")
    return [table[a] for a in archs]


# ---- what the runs say -------------------------------------------------------------------------


def eos_phase(sharpness: np.ndarray, lr: float, band: tuple[float, float] = (0.95, 1.1)
              ) -> np.ndarray:
    """Indices of the measured steps from the first with S·η/2 inside ``band`` to the end (empty if
    none): the sharpness has reached the edge, by progressive sharpening from below or, after a
    catapult, from above; the steps of a catapult itself (S far above 2/η) are not EoS."""
    idx = np.flatnonzero(np.isfinite(sharpness))
    ratio = sharpness[idx] * lr / 2.0
    hits = idx[(ratio >= band[0]) & (ratio <= band[1])]
    return idx[idx >= hits[0]] if len(hits) else np.array([], int)


def eos_correlation(kta: np.ndarray, sharpness: np.ndarray, lr: float) -> float:
    """corr(ΔKTA, −ΔS) over consecutive measured steps of the EoS phase (NaN if too short)."""
    phase = eos_phase(sharpness, lr)
    if len(phase) < 5:
        return math.nan
    dk, ds = np.diff(kta[phase]), np.diff(sharpness[phase])
    if dk.std() == 0 or ds.std() == 0:
        return math.nan
    return float(np.corrcoef(dk, -ds)[0, 1])


def detail_eos(run: xr.Dataset, lr: float) -> dict:
    """corr(ΔKTA, −ΔS) and the length of the EoS phase of one finely measured run."""
    S, K = run.sharpness.values, run.kta.values
    return {"detail_corr": eos_correlation(K, S, lr), "detail_phase": len(eos_phase(S, lr))}


def compute_time(cube: xr.Dataset) -> float:
    """Seconds spent in the runs' steps, summed over runs (the same whether runs were resumed)."""
    return float(np.nansum(cube.time_step.values))


def summarize(cube: xr.Dataset) -> dict:
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
            S, K = r.sharpness.values, r.kta.values
            corr[i, j] = eos_correlation(K, S, lr)
            phase = eos_phase(S, lr)
            if len(phase):
                edge[i, j] = np.median(S[phase]) * lr / 2
            if np.isfinite(S).any():
                peak[i, j] = np.nanmax(S) * lr / 2
    out["eos_corr"], out["edge_ratio"], out["peak_ratio"] = corr, edge, peak
    s0 = cube.sharpness.isel(step=0).values
    out["initial_ratio"] = np.nanmean(s0, axis=1) * lrs / 2 if np.isfinite(s0).any() else lrs * np.nan
    out["status"] = cube.status.values
    out["steps"] = cube.steps_done.values
    out["final_loss"] = cube.final_loss.values
    return out


# ---- figures ---------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "figure.dpi": 110,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


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
    ax_s.plot(*measured_curve(r, "sharpness"), color="C3", lw=1.0, label="sharpness S")
    ax_s.axhline(2 / exp.highlight, color="k", ls="--", lw=1, label="2/η")
    # a catapult's initial spike would flatten the edge: clip the axis at 2.2 × 2/η
    edge = 2 / exp.highlight
    ax_s.set_ylim(0, max(1.15 * edge, min(1.05 * float(np.nanmax(r.sharpness)), 2.2 * edge)))
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


# ---- the report ------------------------------------------------------------------------------


def _fmt_row(values: Sequence[float], spec: str | None = None) -> str:
    """Values at 3 decimals, or as many more (up to 6) as it takes for values that differ to
    print differently: a verdict on a trend must not rest on numbers that read as equal."""
    finite = [float(v) for v in values if np.isfinite(v)]
    if spec is None:
        decimals = 3
        while decimals < 6 and any(a != b and f"{a:.{decimals}f}" == f"{b:.{decimals}f}"
                                   for a, b in zip(finite, finite[1:], strict=False)):
            decimals += 1
        spec = f".{decimals}f"
    return ", ".join("—" if not np.isfinite(v) else format(v, spec) for v in values)


def _verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("**yes**" if ok else "**no**")


def claim_rows(exp: Experiment, s: dict) -> list[tuple[str, str, str]]:
    """(claim, measured, reproduced) rows for one architecture."""
    corr = s["eos_corr"]
    entered = np.isfinite(corr)
    corr_med = float(np.nanmedian(corr)) if entered.any() else math.nan
    reached = s["status"] == RunStatus.REACHED_TARGET
    eos_lrs = [lr for i, lr in enumerate(s["lr"]) if np.isfinite(s["edge_ratio"][i]).all()]
    edge = [float(np.nanmedian(row)) if np.isfinite(row).any() else math.nan
            for row in s["edge_ratio"]]
    return [
        ("all runs stop at the common target loss (matched loss)",
         f"{int(reached.sum())} of {reached.size} reached {exp.config.target_loss}",
         _verdict(bool(reached.all()))),
        ("the sharpness rises to 2/η and hovers there (EoS)",
         (f"EoS at η ∈ {{{', '.join(f'{x:g}' for x in eos_lrs)}}}" if eos_lrs
          else "no η reached EoS at every seed") +
         f"; median S·η/2 in the EoS phase {_fmt_row(edge, '.2f')}",
         _verdict(len(eos_lrs) >= 2)),
        ("final KTA increases with η",
         f"KTA {_fmt_row(s['kta_mean'])}; Spearman ρ = {s['kta_rho']:.2f} (all runs), "
         f"{s['kta_rho_means']:.2f} (seed means)", _verdict(s["kta_rho"] >= SPEARMAN_PASS)),
        ("top-eigenvector alignment a₁ increases with η",
         f"a₁ {_fmt_row(s['a1_mean'])}; ρ = {s['a1_rho']:.2f}",
         _verdict(bool(np.isfinite(s["a1_rho"]) and s["a1_rho"] >= SPEARMAN_PASS))),
        ("top-20 mass A₂₀ larger at the largest η than at the smallest",
         f"A₂₀ {_fmt_row(s['topk_mean'])}; ρ = {s['topk_rho']:.2f}", _verdict(s["topk_up"])),
        ("during EoS, KTA rises while the sharpness falls: corr(ΔKTA, −ΔS) > 0",
         (f"{s.get('detail_corr', math.nan):.2f} over {s.get('detail_phase', 0)} EoS steps of "
          f"the η = {exp.highlight:g} run measured every step" if s.get("detail_phase", 0)
          else f"no EoS phase in the η = {exp.highlight:g} run measured every step")
         + (f"; sweep runs at lag {exp.config.measure_every}: median {corr_med:.2f} over "
            f"{int(entered.sum())} (range {np.nanmin(corr):.2f} … {np.nanmax(corr):.2f})"
            if entered.any() else "; no sweep run had an EoS phase"),
         # no EoS phase: nothing to test, which is not a failed test
         _verdict(bool(s.get("detail_corr", math.nan) > 0) if s.get("detail_phase", 0) else None)
         + (" (weak)" if 0 < s.get("detail_corr", math.nan) < 0.3 else "")),
    ]


def theory_rows(cmp: xr.Dataset) -> tuple[list[str], dict]:
    lrs = cmp.lr.values
    ok = (cmp.status == RunStatus.REACHED_TARGET).values
    sim = np.array([row[np.isfinite(row)].mean() if np.isfinite(row).any() else np.nan
                    for row in np.where(ok, cmp.kta.values, np.nan)])
    pred = cmp.kta_pred.values.mean(1)
    rel = np.nanmax(np.abs(np.where(ok, cmp.kta.values, np.nan) / cmp.kta_pred.values - 1))
    lines = ["| η | a² predicted | a² simulated (‖v‖²) | KTA predicted | KTA simulated | steps | status |",
             "|---|---|---|---|---|---|---|"]
    for i, lr in enumerate(lrs):
        lines.append(
            f"| {lr:g} | {_fmt_row(cmp.a2_pred.values[i])} | {_fmt_row(cmp.a2.values[i])} | "
            f"{_fmt_row(cmp.kta_pred.values[i], '.4f')} | {_fmt_row(cmp.kta.values[i], '.4f')} | "
            f"{', '.join(str(int(x)) for x in cmp.steps.values[i])} | "
            f"{', '.join(sorted(set(cmp.status.values[i])))} |")
    stats = {"rho_sim": spearman(lrs, sim), "rho_pred": spearman(lrs, pred), "max_rel_err": rel,
             "diverged": [float(lr) for i, lr in enumerate(lrs) if not ok[i].all()]}
    return lines, stats


def write_report(path: Path, exps: list[Experiment], cubes: dict[str, xr.Dataset],
                 stats: dict[str, dict], runtimes: dict[str, float], cmp: xr.Dataset | None,
                 theory_runtime: float, command: str, figures: dict[str, str]) -> None:
    lines = ["# Reproduction: the NTK at the Edge of Stability", "",
             "Generated by `" + command + "` (" + time.strftime("%Y-%m-%d") + f", ntk-eos "
             f"{__version__}, Python {platform.python_version()}). Do not edit by hand: rerun the "
             "command. Paper: Jiang, Cohen, Li (2025), *Understanding the Evolution of the Neural "
             "Tangent Kernel at the Edge of Stability*.", "",
             "Every number and verdict below is computed from the runs of this reproduction. "
             "Full-batch gradient descent with MSE loss L = (1/2n) Σ‖f − y‖² on one-hot targets; "
             "every run stops at the same target loss or at its step budget (the matched-loss "
             "protocol); the status of each run says which. Final figures are those of the last "
             "measured step (at most `measured every` − 1 steps before the stop; the final loss is "
             "the last step's). KTA is the output-traced NTK "
             "Σ_c K_cc (n × n) against YYᵀ, uncentred; a_i = ‖Yᵀu_i‖²/‖Y‖² and A₂₀ = Σ_{i≤20} a_i "
             "for the eigenvectors u_i of that kernel. Sharpness is the top Hessian eigenvalue "
             "(Lanczos on Hessian-vector products).", ""]
    failures: list[str] = []
    lines += ["## Settings", "",
              "| model | data | n | η grid | seeds | target loss | step budget | measured every |"
              " compute time |", "|---|---|---|---|---|---|---|---|---|"]
    for exp in exps:
        c = exp.config
        lines.append(f"| {exp.title} | {c.dataset}, classes {list(c.classes or [])} | {c.n} | "
                     f"{', '.join(f'{x:g}' for x in exp.lrs)} | {', '.join(map(str, exp.seeds))} | "
                     f"{c.target_loss} | {c.steps} | {c.measure_every} steps | "
                     f"{runtimes[exp.name][0]:.0f} s |")
    wall = sum(r[1] for r in runtimes.values()) + theory_runtime
    loaded, total = (sum(r[i] for r in runtimes.values()) for i in (2, 3))
    lines += ["", "Compute time is the wall time of the runs' steps, summed over runs (one "
              "thread each); the step-by-step EoS run of each model is included. This invocation "
              f"took {wall:.0f} s and loaded {loaded} of its {total} runs from a resume folder "
              "instead of rerunning them. "
              "Panel (c) and the EoS correlations use seed "
              f"{exps[0].seeds[0]}.", ""]
    lines += ["## Verdicts", "", "| model | claim | measured | reproduced |", "|---|---|---|---|"]
    for exp in exps:
        for claim, measured, verdict in claim_rows(exp, stats[exp.name]):
            lines.append(f"| {exp.name.upper()} | {claim} | {measured} | {verdict} |")
            if "no" in verdict:
                failures.append(f"{exp.name.upper()}: {claim} — {measured}.")
    if cmp is not None:
        tlines, ts = theory_rows(cmp)
        agree = ts["rho_sim"] >= SPEARMAN_PASS and ts["rho_pred"] >= SPEARMAN_PASS
        measured = (f"ρ(η, KTA) = {ts['rho_sim']:.2f} simulated, {ts['rho_pred']:.2f} predicted; "
                    f"largest relative KTA error {ts['max_rel_err']:.1%}")
        lines.append(f"| LINEAR2 | predicted final KTA rises with η like the simulated one | "
                     f"{measured} | {_verdict(agree)} |")
        if not agree:
            failures.append(f"LINEAR2: prediction and simulation disagree in trend — {measured}.")
        if ts["diverged"]:
            failures.append(
                "LINEAR2: gradient descent diverged instead of settling at the predicted edge for "
                f"η ∈ {{{', '.join(f'{x:g}' for x in ts['diverged'])}}}: the theory assumes the run "
                "reaches the edge from above, but from a small initialisation the sharpness "
                "overshoots 2/η too fast at large η.")
    lines.append("")
    lines += ["## What did not reproduce", ""]
    lines += [f"- {f}" for f in failures] or ["- Every claim tested here reproduced at this scale."]
    lines += _caveats(exps, stats)
    for exp in exps:
        s = stats[exp.name]
        lines += ["", f"## {exp.title}", "", f"![{exp.name}]({figures[exp.name]})", "",
                  "| η | final KTA | a₁ | A₂₀ | centred KTA | steps (per seed) | final loss | "
                  "peak S·η/2 | corr(ΔKTA, −ΔS) |", "|---|---|---|---|---|---|---|---|---|"]
        for i, lr in enumerate(s["lr"]):
            lines.append(
                f"| {lr:g} | {s['kta_mean'][i]:.3f} ± {s['kta_std'][i]:.3f} | "
                f"{s['a1_mean'][i]:.3f} | {s['topk_mean'][i]:.3f} | {s['kta_centered_mean'][i]:.3f} |"
                f" {', '.join(str(int(x)) for x in s['steps'][i])} | {_fmt_row(s['final_loss'][i], '.4f')} |"
                f" {_fmt_row(s['peak_ratio'][i], '.2f')} | {_fmt_row(s['eos_corr'][i], '.2f')} |")
    if cmp is not None:
        tlines, ts = theory_rows(cmp)
        a = cmp.attrs
        lines += ["", "## Two-layer linear network: theory against simulation", "",
                  f"![theory]({figures['theory']})", "",
                  f"Data: `theory.outlier_data()` — n = {a['n']}, d = {a['d']}, X Xᵀ with an outlier "
                  f"eigenvalue {a['outlier_eigenvalue']:.1f} over a bulk topped by "
                  f"{a['bulk_top_eigenvalue']:.2f}; the labels put {a['y_on_outlier']:.1%} of ‖y‖² "
                  "on the outlier eigenvector. Width 32, init scale 0.1, float64, exact NTK, target "
                  f"loss 1e-8. Flattest interpolant: a²* = {a['a2_star']:.3f} with S_min = "
                  f"{a['sharpness_min']:.3f} (KTA {a['kta_star']:.3f}); gradient flow's interpolant "
                  f"(RK4 from the same initialisation): a² = {float(cmp.a2_flow.mean()):.3f}, "
                  f"S = {a['sharpness_flow']:.3f}, KTA {a['kta_flow']:.4f}; the flow conserved the "
                  f"imbalance v vᵀ − W Wᵀ to {float(cmp.flow_drift.max()):.1e} (relative). "
                  f"Runtime {theory_runtime:.0f} s.", "",
                  "Prediction: a²(η) = min(a²_flow, a²_max(η)), with a²_max(η) the largest a² at "
                  "which the rank-one interpolant's sharpness λ_max(a² XXᵀ + yyᵀ/a²)/n equals 2/η "
                  "(derivation in `ntk_core/experiments/theory.py`).", ""] + tlines
    lines += ["", "## Rerun", "", "```",
              "ntk-eos reproduce                 # this report (docs/reproduction.md, docs/figures/)",
              "ntk-eos reproduce --quick         # a smaller smoke run",
              "ntk-eos reproduce --dataset cifar10 --data_dir PATH/TO/cifar-10-batches-py "
              "--out-dir cifar-report", "```", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def _caveats(exps: list[Experiment], stats: dict[str, dict]) -> list[str]:
    out = ["", "Notes on reading these results:", "",
           "- With four balanced classes the top eigenvector of the traced NTK is close to the "
           "constant vector, whose alignment with YYᵀ is exactly 1/4 (‖Yᵀ1‖²/(n‖Y‖²) = 1/C); a₁ "
           "therefore sits near 0.25 for every η and cannot show the paper's trend in this "
           "setting; the class structure lives in eigenvectors 2–4, which A₂₀ and KTA include.",
           "- KTA = Σ λ̃_i a_i mixes the spectrum and the eigenvectors: it can fall with η while "
           "a₁/A_k rise (the cap 2/η lowers λ₁ relative to ‖K‖_F), so a rising KTA here is a "
           "measured result, not a consequence of the eigen-alignments.",
           "- Scale: small subsets (n ≤ 256) of an offline dataset and small models on a CPU; the "
           "paper uses CIFAR-10 and larger networks. `--dataset cifar10 --data_dir ...` runs the "
           "same protocol on a local copy of CIFAR-10."]
    for exp in exps:
        s = stats[exp.name]
        never = [f"{lr:g}" for i, lr in enumerate(s["lr"]) if not np.isfinite(s["edge_ratio"][i]).any()]
        if never:
            out.append(f"- {exp.name.upper()}: the runs at η ∈ {{{', '.join(never)}}} never reached "
                       "2/η before the target loss: they are the gradient-flow-like baseline.")
        start = s["initial_ratio"]
        if np.all(start > 1):
            out.append(f"- {exp.name.upper()}: the initial sharpness already exceeds 2/η at every η "
                       f"(S₀·η/2 from {start.min():.1f} to {start.max():.1f}): these runs start "
                       "with a catapult and there is no gradient-flow-like baseline in the grid.")
    return out


# ---- command line ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ntk-eos reproduce",
        description="Rerun the paper's experiments at small scale (MLP, CNN, ViT, linear theory) "
        "and regenerate reproduction.md with its figures; every verdict is computed.")
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run of a few minutes)")
    p.add_argument("--dataset", default="digits",
                   choices=["digits", "mnist1d", "synthetic", "cifar10"])
    p.add_argument("--data_dir", "--data-dir", dest="data_dir", default=None,
                   help="folder of the CIFAR-10 python batches (for --dataset cifar10)")
    p.add_argument("--archs", default="mlp,cnn,vit", help="comma-separated subset of mlp,cnn,vit")
    p.add_argument("--out-dir", default=None,
                   help="where reproduction.md and figures/ go (default docs, or "
                   "reproduction-quick with --quick, so a smoke run never replaces the report)")
    p.add_argument("--resume-dir", default=None,
                   help="keep every run's NetCDF here and reuse them on the next call")
    p.add_argument("--scheduler", default=None, help="'serial' or a Dask scheduler address")
    p.add_argument("--workers", type=int, default=2, help="LocalCluster processes (default 2)")
    p.add_argument("--serial", action="store_true", help="same as --scheduler serial")
    p.add_argument("--no-theory", action="store_true", help="skip the linear-network comparison")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    if args.dataset == "cifar10" and not args.data_dir:
        print("error: --dataset cifar10 needs --data_dir (a folder with the CIFAR-10 python "
              "batches; nothing is downloaded)", file=sys.stderr)
        return 2
    try:
        exps = experiments(args.dataset, args.quick, args.data_dir,
                           [a.strip() for a in args.archs.split(",") if a.strip()])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(args.out_dir or ("reproduction-quick" if args.quick else "docs"))
    fig_dir = out_dir / "figures"
    cubes, stats, runtimes, figures = {}, {}, {}, {}
    for exp in exps:
        print(f"reproduce · {exp.title} · η ∈ {list(exp.lrs)} · seeds {list(exp.seeds)}",
              file=sys.stderr)
        t0 = time.perf_counter()
        resume = Path(args.resume_dir) / exp.name if args.resume_dir else None
        cube = sweep(exp.config, {"lr": list(exp.lrs), "seed": list(exp.seeds)},
                     scheduler="serial" if args.serial else args.scheduler, workers=args.workers,
                     resume_dir=resume,
                     progress=not args.quiet)
        failed = cube.status.values == RunStatus.FAILED
        if failed.all():  # nothing to report on (a missing CIFAR-10 folder, say): say why
            reason = sorted(set(cube.status_reason.values[failed].ravel()))[0]
            print(f"error: every {exp.name} run failed: {reason}", file=sys.stderr)
            return 3
        cubes[exp.name], stats[exp.name] = cube, summarize(cube)
        detail = sweep(exp.config.replace(measure_every=1),
                       {"lr": [exp.highlight], "seed": [exp.seeds[0]]}, scheduler="serial",
                       resume_dir=Path(f"{resume}-detail") if resume else None,
                       progress=not args.quiet).isel(lr=0, seed=0)
        stats[exp.name].update(detail_eos(detail, exp.highlight))
        runtimes[exp.name] = (compute_time(cube) + compute_time(detail),
                              time.perf_counter() - t0,
                              cube.attrs["runs_resumed"] + detail.attrs["runs_resumed"],
                              cube.attrs["runs"] + detail.attrs["runs"])
        name = f"fig1-{exp.name}{'-quick' if args.quick else ''}.png"
        fig_dir.mkdir(parents=True, exist_ok=True)  # only once there is a figure to save
        figure_experiment(exp, cube, stats[exp.name], fig_dir / name)
        figures[exp.name] = f"figures/{name}"
    cmp, theory_runtime = None, 0.0
    if not args.no_theory:
        s = QUICK if args.quick else FULL
        print(f"reproduce · linear2 theory · η ∈ {list(s.theory_lrs)}", file=sys.stderr)
        t0 = time.perf_counter()
        cmp = theory.compare(s.theory_lrs, seeds=s.theory_seeds, sharpness=False,
                             measure_every=1000)
        theory_runtime = time.perf_counter() - t0
        name = f"fig-theory{'-quick' if args.quick else ''}.png"
        fig_dir.mkdir(parents=True, exist_ok=True)
        figure_theory(cmp, fig_dir / name)
        figures["theory"] = f"figures/{name}"
    command = "ntk-eos reproduce" + "".join(  # the options that change results, no local paths
        [" --quick"] * args.quick + [f" --dataset {args.dataset}"] * (args.dataset != "digits")
        + [" --data_dir DIR"] * bool(args.data_dir) + [" --no-theory"] * args.no_theory
        + [f" --archs {args.archs}"] * (args.archs != "mlp,cnn,vit"))
    report = out_dir / "reproduction.md"
    write_report(report, exps, cubes, stats, runtimes, cmp, theory_runtime, command.strip(),
                 figures)
    print(f"wrote {report} and {len(figures)} figure{'s' * (len(figures) != 1)} in {fig_dir}",
          file=sys.stderr)
    return 0
