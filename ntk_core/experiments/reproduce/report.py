"""The markdown report: settings, one verdict per claim with the numbers behind it, what did
not reproduce and why, per-architecture tables, and the linear theory against simulation."""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from ...numerics.stability import threshold_label, tracked_sharpness
from ...version import __version__
from ...vocabulary import RunStatus
from ..sweep_summary import spearman
from .grid import Experiment

SPEARMAN_PASS = 0.8  # a trend over η holds when Spearman's ρ reaches this


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
    eos_text, eos_lrs = eos_reached(s)
    return [
        ("all runs stop at the common target loss (matched loss)",
         f"{int(reached.sum())} of {reached.size} reached {exp.config.target_loss}",
         _verdict(bool(reached.all()))),
        (f"the {_sharpness_name(exp)} rises to {_threshold(exp)} and hovers there (EoS)",
         eos_text,
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


def _sharpness_name(exp: Experiment) -> str:
    return {"sharpness": "sharpness", "preconditioned_sharpness": "preconditioned sharpness",
            "batch_sharpness": "batch sharpness"}[tracked_sharpness(exp.config.optimizer)]


def _threshold(exp: Experiment) -> str:
    c = exp.config
    return threshold_label(c.optimizer, c.momentum, c.nesterov, c.beta1)


def eos_reached(s: dict) -> tuple[str, list[float]]:
    """Which η reached the Edge of Stability (at every seed, or only at some), each with its
    median S·η/2 over the EoS phase, so that every median names its η; and the η of the first
    kind."""
    every: list[tuple[float, float]] = []
    some: list[tuple[float, float]] = []
    for lr, row in zip(s["lr"], s["edge_ratio"], strict=True):
        hit = np.isfinite(row)
        if hit.any():
            (every if hit.all() else some).append((float(lr), float(np.nanmedian(row))))

    def listed(pairs: list[tuple[float, float]]) -> str:
        return (f"η ∈ {{{', '.join(f'{lr:g}' for lr, _ in pairs)}}} (median S / threshold in "
                f"the EoS "
                f"phase {_fmt_row([m for _, m in pairs], '.2f')})")

    text = f"EoS at every seed at {listed(every)}" if every else "no η reached EoS at every seed"
    if some:
        text += f"; at some seeds only at {listed(some)}"
    return text, [lr for lr, _ in every]


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
                 stats: dict[str, dict], runtimes: dict[str, tuple[float, float, int, int]],
                 cmp: xr.Dataset | None, theory_runtime: float, command: str,
                 figures: dict[str, str]) -> None:
    lines = ["# Reproduction: the NTK at the Edge of Stability", "",
             "Generated by `" + command + "` (" + time.strftime("%Y-%m-%d") + f", ntk-eos "
             f"{__version__}, Python {platform.python_version()}). Do not edit by hand: rerun the "
             "command. Paper: Jiang, Cohen, Li (2025), *Understanding the Evolution of the Neural "
             "Tangent Kernel at the Edge of Stability*.", "",
             "Every number and verdict below is computed from the runs of this reproduction. "
             "Full-batch gradient descent (or the optimiser a model's title names) with MSE loss "
             "L = (1/2n) Σ‖f − y‖² on one-hot targets; "
             "every run stops at the same target loss or at its step budget (the matched-loss "
             "protocol); the status of each run says which. Final figures are those of the last "
             "measured step (at most `measured every` − 1 steps before the stop; the final loss is "
             "the last step's). KTA is the output-traced NTK "
             "Σ_c K_cc (n × n) against YYᵀ, uncentred; a_i = ‖Yᵀu_i‖²/‖Y‖² and A₂₀ = Σ_{i≤20} a_i "
             "for the eigenvectors u_i of that kernel. Sharpness is the top Hessian eigenvalue "
             "(Lanczos on Hessian-vector products), held against 2/η; with another optimiser, "
             "the sharpness it holds at its own threshold (Adam: the preconditioned sharpness "
             "against 38/η; SGD: the batch sharpness against 2/η).", ""]
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
                  "peak S / threshold | corr(ΔKTA, −ΔS) |", "|---|---|---|---|---|---|---|---|---|"]
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
                       f"{_threshold(exp)} before the target loss: they are the gradient-flow-like "
                       "baseline.")
        start = s["initial_ratio"]
        if np.all(start > 1):
            out.append(f"- {exp.name.upper()}: the initial sharpness already exceeds 2/η at every η "
                       f"(S₀·η/2 from {start.min():.1f} to {start.max():.1f}): these runs start "
                       "with a catapult and there is no gradient-flow-like baseline in the grid.")
    return out
