"""Two ways to seed the warm sharpness, side by side at W1's Edge of Stability, in one process.

* ``trainer``: what a measured training step does (``warm_sharpness``): the Krylov space of
  Jᵀu₁, the Gauss–Newton matrix's top eigenvector, whose gap caps the error bound's, with the
  solver's buffers kept from step to step.
* ``two_seeds``: the previous step's eigenvector and Jᵀu₁ as a two-column start (one batched
  product), Ritz gaps only: what the benchmark suite measured before it measured the trainer.

Both solve at every step of one trajectory, in alternating order, after an unmeasured lead-in
that brings GD to the edge. Prints the median cost in GD steps (timed in the same loop), the
Hessian-vector products per step, and the largest relative error against float64 ARPACK (tol
1e-10) at every ``--check-every``-th step.

    python benchmarks/sharpness_seeds.py --lead-in 150 --steps 120
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, run as a script

from benchmarks.common import rel_err, timed  # noqa: E402
from benchmarks.reference import sharpness_reference  # noqa: E402
from benchmarks.workloads import SPECS  # noqa: E402
from ntk_core.experiments.bench import Workload  # noqa: E402
from ntk_core.numerics.eigensolver import SolverWorkspace, explicit_matmat, top_eigenpairs  # noqa: E402
from ntk_core.numerics.hessian import (  # noqa: E402
    HessianOperator,
    gauss_newton_gap,
    top_hessian_eigenpair,
    warm_sharpness,
)
from ntk_core.numerics.losses import loss_value  # noqa: E402
from ntk_core.numerics.ntk import LayerCapture, NTKWorkspace, kernel_from_capture  # noqa: E402

TOL = 1e-4


def pullback(f: torch.Tensor, params: list[torch.Tensor], u1: torch.Tensor):
    """Jᵀu₁, computed when called (inside each timed solve, as the trainer pays it)."""
    def compute() -> torch.Tensor:
        g = torch.autograd.grad(f, params, grad_outputs=u1.to(f.dtype).reshape(f.shape),
                                retain_graph=True)
        return torch.cat([x.reshape(-1) for x in g]).to(torch.float64)[:, None]
    return compute


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lead-in", type=int, default=150, help="GD steps before measuring")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--check-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = SPECS["W1"]
    w = Workload(spec.config)
    w.set_edge_lr()
    for _ in range(args.lead_in):
        w.gd_step()
    n, ws, solves = w.X.shape[0], NTKWorkspace(), SolverWorkspace()
    prev_u: torch.Tensor | None = None
    previous: dict[str, torch.Tensor | None] = {"trainer": None, "two_seeds": None}
    seconds: dict[str, list[float]] = {"gd": [], "trainer": [], "two_seeds": []}
    products: dict[str, list[int]] = {"trainer": [], "two_seeds": []}
    errors: dict[str, list[float]] = {"trainer": [], "two_seeds": []}
    for step in range(args.steps):
        seconds["gd"].append(timed(w.gd_step)[0])
        with LayerCapture(w.model) as cap:
            f = w.model(w.X)
        K = kernel_from_capture(w.model, w.X, f, cap, spec.config.kernel, ws)
        eig = top_eigenpairs(explicit_matmat(K), K.shape[0], spec.config.k, start=prev_u, tol=TOL,
                             guard=8)
        prev_u = eig.block
        grads = torch.autograd.grad(loss_value(f, w.Y), w.params, create_graph=True)
        pull = pullback(f, w.params, eig.vectors[:, :1])
        gap = gauss_newton_gap(eig.values, n, TOL)

        def trainer(grads=grads, pull=pull, gap=gap):
            return warm_sharpness(HessianOperator(grads, w.params), TOL, pullback=pull(),
                                  gauss_newton=True, gauss_newton_gap=gap,
                                  previous=previous["trainer"], workspace=solves)

        def two_seeds(grads=grads, pull=pull):
            prev = previous["two_seeds"]
            seeds = torch.cat(([prev] if prev is not None else []) + [pull()], dim=1)
            return top_hessian_eigenpair(HessianOperator(grads, w.params), start=seeds, tol=TOL,
                                         guard=0 if prev is not None else 1)

        order = [("trainer", trainer), ("two_seeds", two_seeds)]
        found = {}
        for name, solve in order if step % 2 else order[::-1]:
            dt, res = timed(solve)
            previous[name] = res.vectors
            found[name] = float(res.values[0])
            if step >= 10:  # both warm
                seconds[name].append(dt)
                products[name].append(res.products)
        if step >= 10 and step % args.check_every == 0:
            ref = sharpness_reference(w.model, w.X, w.Y)
            for name, value in found.items():
                errors[name].append(rel_err(value, ref))
    gd = statistics.median(seconds["gd"][10:])
    print(f"W1 after {args.lead_in} GD steps, {args.steps - 10} measured steps, GD step {gd * 1e3:.1f} ms")
    for name in ("trainer", "two_seeds"):
        hvps = products[name]
        print(f"  {name:10s} {statistics.median(seconds[name]) / gd:5.2f} GD steps (median), "
              f"HVPs median {statistics.median(hvps):g}, mean {statistics.mean(hvps):.2f}, "
              f"max error {max(errors[name]):.1e} over {len(errors[name])} checks")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
