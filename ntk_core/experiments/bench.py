"""The cost of each measurement as a ratio to a plain GD step, in the same process
(``ntk-eos bench``).

Absolute times on shared CPUs move 2–5× from run to run; ratios measured side by side do not.
Each workload first takes ``lead_in`` plain GD steps at η = 1.9/λ_max(init), unmeasured, to
reach the Edge of Stability, then measures a short trajectory there, so the warm starts see the
step-to-step changes of the edge (from initialisation, W1's sharpness took 5 Hessian-vector
products a step instead of 2). Reported per workload (medians over steps):

* ``gd``: one plain full-batch GD step (forward, backward, update) — the unit;
* ``ntk``: the exact K (its own forward + per-output backward + per-layer Grams);
* ``topk``: the warm-started top-k eigenpairs of K, with products used;
* ``kta``: KTA, centred KTA, a_i and A_k from K and the eigenpairs;
* ``sharpness``: warm-started Hessian λ_max at the configured tolerance — gradient graph plus
  HVPs — with HVPs used, and the HVPs a cold start needs for the same tolerance;
* ``matrix_free``: top-k from NTK-vector products only (ViT), warm and cold products.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import torch

from ..config import RunConfig
from ..data import load_dataset
from ..models import build_model
from ..numerics.alignment import centered_kernel_target_alignment, eigen_alignment, kernel_target_alignment
from ..numerics.eigensolver import SolverWorkspace, explicit_matmat, top_eigenpairs
from ..numerics.hessian import (
    HessianOperator,
    gauss_newton_gap,
    top_hessian_eigenpair,
    warm_sharpness,
)
from ..numerics.losses import loss_value
from ..numerics.ntk import LayerCapture, NTKOperator, NTKWorkspace, kernel_from_capture

WORKLOADS: dict[str, RunConfig] = {
    "mlp-n1000": RunConfig(dataset="synthetic", n=1000, classes=(0, 1), target="binary",
                           input_dim=64, arch="mlp", width=200, depth=3, activation="tanh",
                           k=20),
    "vit-n256": RunConfig(dataset="digits", n=256, classes=(0, 1, 2, 3), target="onehot",
                          arch="vit", width=32, depth=2, heads=4, patch=4, activation="gelu",
                          k=5, ntk_mode="matrix_free"),
}


T = TypeVar("T")


def _timed(fn: Callable[[], T]) -> tuple[float, T]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


class Workload:
    def __init__(self, config: RunConfig) -> None:
        torch.set_num_threads(torch.get_num_threads())
        self.config = config
        data = load_dataset(config)
        self.X, self.Y = data.X, data.Y
        self.model = build_model(config, tuple(self.X.shape[1:]), self.Y.shape[1])
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.lr = 0.0

    def gd_step(self) -> None:
        L = loss_value(self.model(self.X), self.Y)
        grads = torch.autograd.grad(L, self.params)
        with torch.no_grad():
            for p, g in zip(self.params, grads, strict=True):
                p.sub_(self.lr * g)

    def set_edge_lr(self, factor: float = 1.9) -> float:
        """η = factor / λ_max at init: just past the edge, so the trajectory oscillates."""
        L = loss_value(self.model(self.X), self.Y)
        grads = torch.autograd.grad(L, self.params, create_graph=True)
        s = float(top_hessian_eigenpair(HessianOperator(grads, self.params), tol=1e-3,
                                        guard=1).values[0])
        self.lr = factor / s
        return s

    def lead_in(self, steps: int) -> None:
        """``steps`` plain GD steps, neither timed nor measured: towards the edge."""
        for _ in range(steps):
            self.gd_step()


def bench_exact(config: RunConfig, steps: int, tol: float, lead_in: int = 0) -> dict[str, object]:
    w = Workload(config)
    sharp0 = w.set_edge_lr()
    w.lead_in(lead_in)
    ws = NTKWorkspace()
    y = w.Y.reshape(-1).to(torch.float64)
    times: dict[str, list[float]] = {k: [] for k in ("gd", "ntk", "topk", "kta", "sharpness")}
    products: dict[str, list[float]] = {"topk": [], "hvp": [], "hvp_cold": [], "topk_cold": []}
    prev_u, prev_v = None, None
    kernel_solves, hessian_solves = SolverWorkspace(), SolverWorkspace()
    for step in range(steps + 3):
        dt, _ = _timed(w.gd_step)
        times["gd"].append(dt)

        def ntk():
            with LayerCapture(w.model) as cap:
                f = w.model(w.X)
                return f, kernel_from_capture(w.model, w.X, f, cap, "full", ws)

        dt_ntk, (f, K) = _timed(ntk)
        dt_eig, eig = _timed(lambda: top_eigenpairs(explicit_matmat(K), K.shape[0], config.k,
                                                    start=prev_u, tol=tol, guard=8,
                                                    workspace=kernel_solves))
        prev_u = eig.block

        def kta():
            return (kernel_target_alignment(K, y), centered_kernel_target_alignment(K, y),
                    eigen_alignment(eig.vectors, y).sum())

        dt_kta, _ = _timed(kta)
        u1 = eig.vectors[:, :1]

        # The trainer takes its GD gradient from the same graph the HVPs use, so the sharpness
        # costs (graph with create_graph − plain gradient) + pullback Jᵀu₁ + HVPs.
        ff = w.model(w.X)
        L = loss_value(ff, w.Y)
        dt_plain, _ = _timed(lambda: torch.autograd.grad(L, w.params, retain_graph=True))
        dt_graph, grads = _timed(lambda: torch.autograd.grad(L, w.params, create_graph=True))

        def sharpness():
            g = torch.autograd.grad(ff, w.params, grad_outputs=u1.to(ff.dtype).reshape(ff.shape),
                                    retain_graph=True)
            seed = torch.cat([x.reshape(-1) for x in g]).to(torch.float64)[:, None]
            gauss_newton = config.loss == "mse"  # the full kernel: u₁ maps to GN's top vector
            return warm_sharpness(
                HessianOperator(grads, w.params), tol, pullback=seed, gauss_newton=gauss_newton,
                gauss_newton_gap=(gauss_newton_gap(eig.values, ff.shape[0], tol)
                                  if gauss_newton else None),
                previous=prev_v, workspace=hessian_solves)

        dt_s, hres = _timed(sharpness)
        dt_s += max(dt_graph - dt_plain, 0.0)
        prev_v = hres.vectors
        if step < 3:  # warm-up: the first solves are cold by construction
            times["gd"].pop()
            continue
        times["ntk"].append(dt_ntk)
        times["topk"].append(dt_eig)
        times["kta"].append(dt_kta)
        times["sharpness"].append(dt_s)
        products["topk"].append(eig.products)
        products["hvp"].append(hres.products)
        if step % 5 == 0:  # cold starts for comparison, at the same tolerance
            cold = top_hessian_eigenpair(HessianOperator(grads, w.params), tol=tol, guard=1)
            products["hvp_cold"].append(cold.products)
            cold_k = top_eigenpairs(explicit_matmat(K), K.shape[0], config.k, tol=tol, guard=8)
            products["topk_cold"].append(cold_k.products)
    return _summary(config, times, products, {"sharpness_init": sharp0, "lr": w.lr,
                                              "kernel_rows": int(K.shape[0])})


def bench_matrix_free(config: RunConfig, steps: int, tol: float,
                      lead_in: int = 0) -> dict[str, object]:
    w = Workload(config)
    sharp0 = w.set_edge_lr()
    w.lead_in(lead_in)
    times: dict[str, list[float]] = {"gd": [], "matrix_free": []}
    products: dict[str, list[float]] = {"matrix_free": [], "matrix_free_cold": []}
    prev = None
    for step in range(steps + 2):
        dt, _ = _timed(w.gd_step)
        times["gd"].append(dt)

        def solve():
            op = NTKOperator(w.model, w.X, "full")
            return op, top_eigenpairs(op.matmat, op.dim, config.k, start=prev, tol=tol)

        dt_mf, (op, eig) = _timed(solve)
        prev = eig.block
        if step < 2:
            times["gd"].pop()
            continue
        times["matrix_free"].append(dt_mf)
        products["matrix_free"].append(eig.products)
        if step % 4 == 0:
            products["matrix_free_cold"].append(
                top_eigenpairs(op.matmat, op.dim, config.k, tol=tol).products)
    return _summary(config, times, products, {"sharpness_init": sharp0, "lr": w.lr,
                                              "kernel_rows": op.dim})


def _summary(config: RunConfig, times: dict[str, list[float]],
             products: dict[str, list[float]], extra: dict[str, object]) -> dict[str, object]:
    gd = statistics.median(times["gd"])
    med = {k: statistics.median(v) for k, v in times.items() if v}
    ratios = {k: v / gd for k, v in med.items()}
    if {"ntk", "topk", "kta"} <= ratios.keys():
        ratios["ntk+topk+kta"] = ratios["ntk"] + ratios["topk"] + ratios["kta"]
    return {"config": config.to_dict(), "gd_step_s": gd, "median_s": med, "ratio_to_gd": ratios,
            "products": {k: statistics.median(v) for k, v in products.items() if v},
            **extra}
