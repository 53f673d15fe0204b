"""One workload: a GD trajectory at the Edge of Stability, measured with the engine at every step.

Per step (after a short warm-up, which the warm starts need) the costs are timed separately:

* ``gd``: a plain full-batch GD step (forward, backward, update) — the unit of every ratio;
* ``ntk``: the exact K by the per-layer rules with its own forward pass; ``ntk_in_trainer``: the
  same without that forward, which the trainer shares with its GD step; ``topk``: warm-started
  top-k eigenpairs of K, ``kta``: KTA, centred KTA and A_k as the trainer computes them;
* ``matrix_free``: NTK-vector-product operator + warm top-k, and ``kta`` from the deflated ‖K‖_F
  estimate (no K exists);
* ``sharpness``: warm-started λ_max(∇²L), seeded as the trainer seeds it (``warm_sharpness``:
  the Krylov space of Jᵀu₁ with the Gauss–Newton gap for MSE on the full kernel). As the
  trainer pays it: the products plus the extra cost of ``create_graph`` over a plain gradient.
  ``sharpness_standalone`` adds the forward and the whole gradient graph (what a separate tool
  pays, and what the peers are compared with).

Every ``check_every`` steps: float64 references, cold starts at the same tolerance, the public
calls from nothing (``cold_calls``: ``ntk_eigenpairs`` at its defaults, ``hessian_sharpness``,
and torch.func jacrev + eigh where jacrev is a peer), and the peers, interleaved with the
trajectory in this process. Run as a script it writes one JSON file; the
driver (run.py) starts one process per workload so that ru_maxrss is that workload's peak.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, run as a script

from benchmarks.common import Series, median, peak_rss_mib, rel_err, timed  # noqa: E402
from benchmarks.reference import (  # noqa: E402
    dense_kernel_reference,
    gate_flips,
    operator_kernel_reference,
    sharpness_reference,
)
from benchmarks.workloads import SPECS, Spec  # noqa: E402
from ntk_core import hessian_sharpness, ntk_eigenpairs  # noqa: E402
from ntk_core.experiments.bench import Workload  # noqa: E402
from ntk_core.numerics.alignment import (  # noqa: E402
    centered_alignment_from_products,
    deflated_fro_norm,
    eigen_alignment,
    fro_norm,
    target_fro,
)
from ntk_core.numerics.eigensolver import (  # noqa: E402
    SolverWorkspace,
    explicit_matmat,
    kernel_eigenpairs,
    top_eigenpairs,
)
from ntk_core.numerics.hessian import (  # noqa: E402
    HessianOperator,
    gauss_newton_gap,
    top_hessian_eigenpair,
    warm_sharpness,
)
from ntk_core.numerics.losses import kernel_targets, loss_value  # noqa: E402
from ntk_core.numerics.ntk import LayerCapture, NTKOperator, NTKWorkspace, kernel_from_capture  # noqa: E402
from ntk_core.training.measurer import FRO_PROBES, kernel_rows  # noqa: E402

WARMUP = 3


class Ours:
    """The engine's measurements with the trainer's warm-start state, timed one by one."""

    def __init__(self, spec: Spec, w: Workload, tol: float) -> None:
        self.spec, self.w, self.tol = spec, w, tol
        cfg = spec.config
        n, C = w.Y.shape
        self.full = cfg.kernel == "full" or C == 1
        self.targets = kernel_targets(w.Y, kernel_rows(n, C, cfg.kernel))
        self.m = self.targets.shape[0]
        self.k = min(cfg.k, self.m)
        self.ws = NTKWorkspace()
        self.kernel_solves, self.hessian_solves = SolverWorkspace(), SolverWorkspace()
        self.device = w.X.device
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        self.prev_u: torch.Tensor | None = None
        self.prev_v: torch.Tensor | None = None
        self.last: dict[str, object] = {}

    def step(self) -> tuple[dict[str, float], dict[str, float]]:
        w, times, prods = self.w, {}, {}
        self.last = {"prev_u": self.prev_u, "prev_v": self.prev_v}
        if self.spec.mode == "exact":
            def forward():
                with LayerCapture(w.model) as cap:
                    return w.model(w.X), cap

            # The trainer captures the layers in its GD step's own forward pass: in it, K costs
            # the rules alone (``ntk_in_trainer``); standalone it needs that forward too.
            dt_forward, (f, cap) = timed(forward)
            times["ntk_in_trainer"], K = timed(lambda: kernel_from_capture(
                w.model, w.X, f, cap, self.spec.config.kernel, self.ws))
            times["ntk"] = dt_forward + times["ntk_in_trainer"]
            matmat, op = explicit_matmat(K), None
            times["topk"], eig = timed(lambda: top_eigenpairs(
                matmat, self.m, self.k, start=self.prev_u, tol=self.tol, guard=8, generator=self.gen,
                device=self.device, workspace=self.kernel_solves))
            times["kta"], kta = timed(lambda: self._kta(matmat, eig, K))
            self.last.update(K=K)
        else:
            def solve():
                op = NTKOperator(w.model, w.X, self.spec.config.kernel)
                return op, top_eigenpairs(op.matmat, op.dim, self.k, start=self.prev_u, tol=self.tol,
                                          guard=2, generator=self.gen, device=self.device,
                                          workspace=self.kernel_solves)

            times["matrix_free"], (op, eig) = timed(solve)
            matmat, K = op.matmat, None
            times["kta"], kta = timed(lambda: self._kta(matmat, eig, None))
            prods["kta"] = FRO_PROBES + self.targets.shape[1] + 1
        prods["topk"] = eig.products
        self.prev_u = eig.block
        self.last.update(eig=eig, kta=kta, op=op)

        # Sharpness: the trainer's gradient comes from this graph, so only the extra cost counts.
        times["forward"], ff = timed(lambda: w.model(w.X))
        L = loss_value(ff, w.Y)
        dt_plain, _ = timed(lambda: torch.autograd.grad(L, w.params, retain_graph=True))
        dt_graph, grads = timed(lambda: torch.autograd.grad(L, w.params, create_graph=True))
        dt_s, hres = timed(lambda: self._sharpness(grads, ff, eig, op))
        times["sharpness"] = dt_s + max(dt_graph - dt_plain, 0.0)
        times["sharpness_standalone"] = dt_s + dt_graph + times.pop("forward")
        prods["hvp"] = hres.products
        self.prev_v = hres.vectors
        self.last.update(hessian=float(hres.values[0]), grads=grads)
        return times, prods

    def _sharpness(self, grads, f, eig, op):
        """What the trainer's measurer does (``warm_sharpness``): Jᵀu₁ and, for MSE on the
        full kernel, the Gauss–Newton gap from the NTK's eigenvalues."""
        pullback = None
        if self.full:
            u1 = eig.vectors[:, :1]
            if op is not None:
                pullback = op.pullback(u1).to(torch.float64)
            else:
                g = torch.autograd.grad(f, self.w.params, grad_outputs=u1.to(f.dtype).reshape(f.shape),
                                        retain_graph=True)
                pullback = torch.cat([x.reshape(-1) for x in g]).to(torch.float64)[:, None]
        gauss_newton = self.full and self.spec.config.loss == "mse"
        return warm_sharpness(
            HessianOperator(grads, self.w.params), self.tol, pullback=pullback,
            gauss_newton=gauss_newton,
            gauss_newton_gap=gauss_newton_gap(eig.values, f.shape[0], self.tol) if gauss_newton else None,
            previous=self.prev_v, generator=self.gen, workspace=self.hessian_solves)

    def _kta(self, matmat, eig, K: torch.Tensor | None) -> tuple[float, float, float, float]:
        """KTA, centred KTA, A_k (and the KTA's standard error) as the trainer computes them:
        K [Y, 1] in one product, ‖K‖_F exactly from K or by the deflated estimate without it."""
        Y = self.targets
        ones = torch.ones(self.m, 1, dtype=torch.float64, device=self.device)
        KY, K1 = matmat(torch.cat([Y, ones], 1)).split([Y.shape[1], 1], 1)
        if K is not None:
            fro, stderr = fro_norm(K), 0.0
        else:
            est = deflated_fro_norm(matmat, eig.basis, eig.basis_image, FRO_PROBES, self.gen)
            fro, stderr = est.value, est.stderr
        kta = float((Y * KY).sum()) / (fro * target_fro(Y))
        return (kta, centered_alignment_from_products(Y, KY, K1, fro),
                float(eigen_alignment(eig.vectors, Y).sum()), kta * stderr / fro)

    def cold_products(self) -> dict[str, float]:
        """Products a cold (random) start needs for the same tolerance, at the current weights."""
        eig, op = self.last["eig"], self.last["op"]
        matmat = explicit_matmat(self.last["K"]) if op is None else op.matmat
        guard = 8 if op is None else 2
        cold = top_eigenpairs(matmat, eig.basis.shape[0], self.k, tol=self.tol, guard=guard,
                              generator=self.gen, device=self.device)
        hcold = top_hessian_eigenpair(HessianOperator(self.last["grads"], self.w.params), tol=self.tol,
                                      guard=1, generator=self.gen)
        return {"topk_cold": cold.products, "hvp_cold": hcold.products}


COLD_KEYS = ("cold_spectrum", "cold_sharpness", "jacrev_eigh")


def cold_calls(spec: Spec, w: Workload, ours: Ours) -> tuple[dict[str, float], float, dict]:
    """What a user pays for one answer from nothing, at the current weights: the top-k of K by
    ``ntk_eigenpairs`` and the sharpness by ``hessian_sharpness``, both at their defaults (tol
    1e-5; the workload's kernel), and, where jacrev is a peer, the torch.func tutorial's K
    (vmap(jacrev) + einsum) with a dense ``eigh``.

    Like the peers, a cold call runs once per check, and its × GD divides by the trajectory's
    median GD step, the unit of every row. Five samples against two hundred make it the
    noisiest row on a shared machine, so GD steps are also timed right before and after
    (forward and backward, the update skipped to leave the trajectory alone) and their median
    is returned with the seconds and the values for the errors: ``cold_ratio_beside``. Those
    steps run back to back with warm caches and come out faster than the trajectory's, which
    follow a measurement (W1: 22 against 34 ms), so that ratio is the stricter one.

    ``values`` also holds, untimed, the products of the call's solve where K is explicit:
    ``kernel_eigenpairs`` (what ``ntk_eigenpairs`` runs on an explicit K) again on this step's K,
    at the same defaults and seed."""
    from benchmarks.peers import jacrev_kernel  # noqa: PLC0415

    def gradient_step() -> None:
        torch.autograd.grad(loss_value(w.model(w.X), w.Y), w.params)

    beside = [timed(gradient_step)[0] for _ in range(3)]
    kernel, k = spec.config.kernel, ours.k
    times, values = {}, {}
    times["cold_spectrum"], (values["cold_topk"], values["cold_vectors"]) = timed(
        lambda: ntk_eigenpairs(w.model, w.X, k, kernel=kernel))
    times["cold_sharpness"], values["cold_sharpness"] = timed(
        lambda: hessian_sharpness(w.model, w.X, w.Y))
    if "jacrev" in spec.peers:
        times["jacrev_eigh"], (jacrev_values, _) = timed(
            lambda: torch.linalg.eigh(jacrev_kernel(w.model, w.X, kernel)))
        values["jacrev_eigh"] = jacrev_values.flip(0)[:k]
    beside += [timed(gradient_step)[0] for _ in range(3)]
    if spec.mode == "exact":
        values["cold_products"] = kernel_eigenpairs(k, K=ours.last["K"]).products
    return times, median(beside), values


def references(spec: Spec, w: Workload, ours: Ours, last: bool, quick: bool) -> dict:
    """Float64 references at the current weights; the 40000-row W2 kernel only at the end."""
    ref: dict[str, object] = {"sharpness": sharpness_reference(w.model, w.X, w.Y),
                              "gate_flips": gate_flips(w.model, w.X)}
    if spec.reference == "dense":
        ref.update(dense_kernel_reference(w.model, w.X, w.Y, spec.config.kernel, ours.k))
    elif spec.reference == "operator" or (last and not quick):
        ref.update(operator_kernel_reference(w.model, w.X, spec.config.kernel, ours.k))
    return ref


def subspace_angle(U: torch.Tensor, V: torch.Tensor) -> float:
    """The largest principal angle (radians) between span(U) and span(V), both orthonormal
    (m, k): arcsin ‖U − V VᵀU‖₂, accurate for small angles where arccos of the cosines is not."""
    U = U.to(V)
    return math.asin(min(1.0, float(torch.linalg.matrix_norm(U - V @ (V.T @ U), ord=2))))


def errors_against(ref: dict, ours: Ours, cold: dict) -> dict[str, float]:
    """Relative errors of this step's measured values (warm, and the cold calls') against the
    references (``cold`` is empty where the workload skips the cold calls)."""
    out = {"sharpness": rel_err(ours.last["hessian"], ref["sharpness"])}
    if "cold_sharpness" in cold:
        out["cold_sharpness"] = rel_err(cold["cold_sharpness"], ref["sharpness"])
    if "values" in ref:
        values, rv = ours.last["eig"].values, ref["values"]
        out["topk"] = float(((values - rv).abs() / rv.abs()).max())
        out["top1"] = rel_err(float(values[0]), float(rv[0]))
        for key in ("cold_topk", "jacrev_eigh"):
            if key in cold:
                out[key] = float(((cold[key].to(rv) - rv).abs() / rv.abs()).max())
    if "vectors" in ref:
        out["topk_subspace"] = subspace_angle(ours.last["eig"].vectors, ref["vectors"])
        if "cold_vectors" in cold:
            out["cold_subspace"] = subspace_angle(cold["cold_vectors"], ref["vectors"])
    if "kta" in ref:
        out["kta_abs"] = abs(ours.last["kta"][0] - ref["kta"])
        out["kta_centered_abs"] = abs(ours.last["kta"][1] - ref["kta_centered"])
    return out


def run_workload(spec: Spec, steps: int, check_every: int, tol: float = 1e-4,
                 peer_names: tuple[str, ...] | None = None, save_weights: str | None = None,
                 quick: bool = False, device: str = "cpu", lead_in: int = 0) -> dict[str, object]:
    from benchmarks import peers  # noqa: PLC0415  (the optional peer packages load lazily)

    torch.manual_seed(0)
    rss0 = peak_rss_mib()
    w = Workload(spec.config)
    if device != "cpu":
        w.model.to(device)
        w.X, w.Y = w.X.to(device), w.Y.to(device)
        w.params = [p for p in w.model.parameters() if p.requires_grad]
    sharp0 = w.set_edge_lr()
    for _ in range(lead_in):  # towards the edge, unmeasured
        w.gd_step()
    rss_setup = peak_rss_mib()
    ours = Ours(spec, w, tol)
    series, peer_series = Series(), Series()
    errors: dict[str, list[float]] = {}
    flips: list[int] = []  # per check: ReLU gates float64 sets otherwise (reference.py)
    trace = {"sharpness": [], "two_over_lr": 2.0 / w.lr, "lambda1_over_n": []}
    names = spec.peers if peer_names is None else tuple(p for p in spec.peers if p in peer_names)
    skipped = [p for p in names if not peers.available(p)]
    names = tuple(p for p in names if p not in skipped)
    calib: dict[str, object] = {}
    total = steps + WARMUP
    checks = {s for s in range(WARMUP, total) if (s - WARMUP + 1) % check_every == 0} | {total - 1}
    if spec.measure_every > 1:  # a check needs this step's measurement: the last measured one
        total = steps + 1
        checks = {s - s % spec.measure_every for s in checks if s < total} | {steps}
    every = spec.measure_every
    for step in range(total):
        dt_gd, _ = timed(w.gd_step)
        if every > 1 and step % every:  # a GD step between measurements: the unit only
            if step >= WARMUP:
                series.add("gd", seconds=dt_gd)
            continue
        times, prods = ours.step()
        trace["sharpness"].append(ours.last["hessian"])
        if ours.full:
            trace["lambda1_over_n"].append(float(ours.last["eig"].values[0]) / w.X.shape[0])
        if step < WARMUP:
            continue
        series.add("gd", seconds=dt_gd)
        for key, value in times.items():
            series.add(key, seconds=value)
        for key, value in prods.items():
            series.add(key, products=value)
        if step not in checks:
            continue
        cold_times, gd_beside, cold_values = {}, 1.0, {}
        if spec.cold_calls:
            for key, value in ours.cold_products().items():
                series.add(key, products=value)
            cold_times, gd_beside, cold_values = cold_calls(spec, w, ours)
        for key, value in cold_times.items():
            series.add(key, seconds=value, ratio_beside=value / gd_beside)
        if "cold_products" in cold_values:
            series.add("cold_spectrum", products=cold_values["cold_products"])
        ref = references(spec, w, ours, step == total - 1, quick)
        flips.append(int(ref["gate_flips"]))
        for key, value in errors_against(ref, ours, cold_values).items():
            errors.setdefault(key, []).append(value)
        ctx = peers.Context(spec, w, ours, ref, tol, calib)
        for name in names:
            res = peers.PEERS[name](ctx)
            if res is not None:
                peer_series.add(name, **{k: v for k, v in res.items() if isinstance(v, (int, float))})
    if save_weights:
        peers.save_weights(w, save_weights, ref if "K" in ref else None)
    gd = median(series.data["gd"]["seconds"])
    ours_summary = series.summary(gd)
    r = {k: v["ratio_to_gd"] for k, v in ours_summary.items() if "ratio_to_gd" in v}
    beside = {k: ours_summary[k]["ratio_beside_median"] for k in COLD_KEYS if k in ours_summary}
    if spec.mode == "exact":
        r["ntk+topk+kta"] = r["ntk"] + r["topk"] + r["kta"]
        r["ntk+topk+kta_in_trainer"] = r["ntk_in_trainer"] + r["topk"] + r["kta"]
    else:
        r["matrix_free+kta"] = r["matrix_free"] + r["kta"]
    return {
        "name": spec.name, "title": spec.title, "mode": spec.mode, "note": spec.note,
        "config": spec.config.to_dict(), "steps": steps, "check_every": check_every, "tol": tol,
        "lead_in": lead_in,
        "lr": w.lr, "sharpness_init": sharp0, "params": sum(p.numel() for p in w.params),
        "kernel_rows": ours.m, "gd_step_s": gd, "ratio_to_gd": r, "cold_ratio_beside": beside,
        "ours": ours_summary,
        "errors": {k: {"median": median(v), "max": max(v), "count": len(v)} for k, v in errors.items()},
        "gate_flips": flips,
        "peers": peer_series.summary(gd), "peers_skipped": skipped, "calibration": calib,
        "memory_mib": {"baseline": rss0, "after_setup": rss_setup, "peak": peak_rss_mib(),
                       "gpu_peak": (torch.cuda.max_memory_allocated() / 2**20
                                    if w.X.device.type == "cuda" else None)},
        "device": str(w.X.device), "torch_threads": torch.get_num_threads(),
        "trajectory": {k: (v if not isinstance(v, list) else [round(x, 5) for x in v])
                       for k, v in trace.items()},
        "finite": bool(all(math.isfinite(x) for x in trace["sharpness"])),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one benchmark workload (see run.py).")
    parser.add_argument("workload", choices=sorted(SPECS))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--check-every", type=int, default=40)
    parser.add_argument("--lead-in", type=int, default=0, help="plain GD steps before measuring")
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--peers", default=None, help="comma-separated subset of the peers")
    parser.add_argument("--weights", default=None, help="save final weights and data (.npz)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    peer_names = tuple(args.peers.split(",")) if args.peers is not None else None
    res = run_workload(SPECS[args.workload], args.steps, args.check_every, args.tol, peer_names,
                       args.weights, args.quick, args.device, args.lead_in)
    Path(args.json).write_text(json.dumps(res, indent=1, default=_jsonable))
    return 0


def _jsonable(x: object) -> object:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, torch.Tensor):
        return x.tolist()
    raise TypeError(type(x))


if __name__ == "__main__":
    raise SystemExit(main())
