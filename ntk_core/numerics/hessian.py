"""Loss-Hessian products and the sharpness λ_max(∇²L).

Hessian-vector products reuse one gradient graph (``create_graph=True``): each product is a
single double-backward through it, and the graph is the same one the GD step takes its gradient
from, so a measured step pays only for the products.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from .eigensolver import DEFAULT_TOL, EigResult, SolverWorkspace, top_eigenpairs
from .losses import loss_value

BATCH_WORK = 3_000_000
"""Below this many parameter-samples (parameters × n), a block of Hessian-vector products runs as
one vmapped double backward; above it, column by column. Blocks of 4 on one CPU thread: the
central-flow preset's MLP (8,580 parameters, n = 128) took 1.99 ms batched against 3.18 in a
loop, the default preset's (25,348, n = 256) 8.26 against 6.90, W1 88 against 65, W3's CNN 342
against 254 and W4's ViT 437 against 298."""


class HessianOperator:
    """∇²L at the current weights as an operator on flat parameter vectors (float64 in and out).

    ``samples`` (the batch's n) lets a small model take a block of products in one vmapped pass
    (``BATCH_WORK``); without it, or for a larger one, the columns go one by one."""

    def __init__(self, grads: tuple[torch.Tensor, ...], params: Sequence[torch.Tensor],
                 samples: int | None = None) -> None:
        self.grads = grads
        self.params = params
        self.dim = sum(p.numel() for p in params)
        self.products = 0
        self.batched = samples is not None and self.dim * samples < BATCH_WORK

    def _unflatten(self, V: torch.Tensor) -> list[torch.Tensor]:
        """(dim, b) columns → per-parameter cotangents of shape (b, *p.shape)."""
        out, i = [], 0
        for p in self.params:
            out.append(V[i:i + p.numel()].T.reshape(V.shape[1], *p.shape).to(p.dtype))
            i += p.numel()
        return out

    def _flatten(self, hv: tuple[torch.Tensor | None, ...], b: int) -> torch.Tensor:
        return torch.cat([(h if h is not None else torch.zeros(b, *p.shape, dtype=p.dtype,
                                                                  device=p.device)).reshape(b, -1)
                          for h, p in zip(hv, self.params, strict=True)], dim=1).T

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        # H v is the vector-Jacobian product of the gradient with v (H is symmetric).
        b = V.shape[1]
        if b > 1 and not self.batched:
            return torch.cat([self.matmat(V[:, j:j + 1]) for j in range(b)], 1)
        cot = self._unflatten(V)
        if b == 1:
            hv = torch.autograd.grad(self.grads, self.params, grad_outputs=[c[0] for c in cot],
                                     retain_graph=True, allow_unused=True)
            out = self._flatten(tuple(None if h is None else h[None] for h in hv), 1)
        else:
            try:
                hv = torch.autograd.grad(self.grads, self.params, grad_outputs=cot,
                                         retain_graph=True, allow_unused=True,
                                         is_grads_batched=True)
                out = self._flatten(hv, b)
            except RuntimeError:  # an op without a batching rule: one column at a time
                self.batched = False
                return self.matmat(V)
        self.products += b
        return out.to(torch.float64)


class PreconditionedHessian(HessianOperator):
    """P^{-1/2} ∇²L P^{-1/2} for a positive diagonal P (flat, one entry per parameter): it is
    symmetric and shares its eigenvalues with P⁻¹∇²L, whose top one is the preconditioned
    sharpness of Adam and RMSProp (Cohen et al. 2022). Nothing dense is formed."""

    def __init__(self, grads: tuple[torch.Tensor, ...], params: list[torch.Tensor],
                 preconditioner: torch.Tensor, samples: int | None = None) -> None:
        super().__init__(grads, params, samples)
        if preconditioner.shape != (self.dim,):
            raise ValueError(f"preconditioner: expected shape ({self.dim},) for the "
                             f"{self.dim} parameters, got {tuple(preconditioner.shape)}")
        if not bool((preconditioner > 0).all()):
            raise ValueError("preconditioner: every entry must be positive")
        self.scale = preconditioner.to(torch.float64).rsqrt()[:, None]

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        scale = self.scale.to(V.device)
        return scale * super().matmat(scale * V.to(torch.float64))


def batch_sharpness(model: nn.Module, X: torch.Tensor, Y: torch.Tensor,
                    batches: Sequence[torch.Tensor], loss: str = "mse") -> float:
    """The mean over ``batches`` (index tensors) of g_Bᵀ H_B g_B / ‖g_B‖², each batch's
    curvature along its own gradient: the quantity mini-batch SGD holds at 2/η (Andreyev and
    Beneventano 2024). One Hessian-vector product per batch; a batch whose gradient vanishes
    is left out of the mean."""
    if len(batches) == 0:
        raise ValueError("batches: need at least one batch")
    params = [p for p in model.parameters() if p.requires_grad]
    values = []
    for batch in batches:
        L = loss_value(model(X[batch]), Y[batch], loss)
        g = torch.autograd.grad(L, params, create_graph=True)
        hg = torch.autograd.grad(g, params, grad_outputs=[x.detach() for x in g],
                                 allow_unused=True)
        gg = sum(float((x.detach().double() ** 2).sum()) for x in g)
        ghg = sum(float((x.detach().double() * h.double()).sum())
                  for x, h in zip(g, hg, strict=True) if h is not None)
        if gg > 0:
            values.append(ghg / gg)
    return sum(values) / len(values) if values else math.nan


UNCAPPED_MARGIN = 10  # a solve without a known gap runs to tol / UNCAPPED_MARGIN


def top_hessian_eigenpair(op: HessianOperator, start: torch.Tensor | None = None,
                          tol: float = 1e-4, guard: int = 0,
                          generator: torch.Generator | None = None,
                          max_gap: float | None = None,
                          workspace: SolverWorkspace | None = None) -> EigResult:
    """Top Hessian eigenpair, warm-started from ``start`` (p, s) seed directions.

    The solve runs to tol/10: with a two- or three-vector basis the gap between Ritz values
    overstates the true spectral gap, so the r²/gap bound is optimistic. On the benchmark's
    W2-traced trajectory (a 10-output MLP, the previous step's eigenvector and one guard) a
    solve to tol/3 at tol 1e-4 erred by a median of 8.0e-5 and at most 1.24e-4 over five
    checks: the bound was 2.4-3.7x optimistic (7e-4 before any margin). ``max_gap`` (the
    Gauss–Newton matrix's gap, for the trainer) caps the gap the bound assumes instead, and the
    solve then runs to tol itself."""
    device = op.params[0].device
    return top_eigenpairs(op.matmat, op.dim, 1, start=start,
                          tol=tol / UNCAPPED_MARGIN if max_gap is None else tol, guard=guard,
                          max_products=300, generator=generator, device=device, max_gap=max_gap,
                          workspace=workspace)


def gauss_newton_gap(ntk_values: torch.Tensor, n: int, tol: float) -> float | None:
    """λ₁ − λⱼ of the Gauss–Newton matrix JᵀJ/n (spectrum λ(K)/n, from the NTK's top
    eigenvalues ``ntk_values``, descending) to its first eigenvalue more than ``tol`` (relative)
    below λ₁. Eigenvalues closer than that count as one: any of them is within the tolerance of
    λ₁ (at initialisation a C-output MLP's top eigenvalue of K is nearly C-fold, and the gap to
    λ₂ alone would be almost zero). None when all of them are that close."""
    gaps = (ntk_values[0] - ntk_values[1:]) / n
    far = gaps[gaps > tol * float(ntk_values[0]) / n]
    return float(far[0]) if far.numel() else None


def warm_sharpness(op: HessianOperator, tol: float, *, pullback: torch.Tensor | None = None,
                   gauss_newton: bool = False, gauss_newton_gap: float | None = None,
                   previous: torch.Tensor | None = None,
                   generator: torch.Generator | None = None,
                   workspace: SolverWorkspace | None = None) -> EigResult:
    """The sharpness at a measured training step, from what the step already knows.

    ``pullback`` is Jᵀu₁ (p, 1), the NTK's top eigenvector mapped to parameter space.
    ``gauss_newton``: the loss is MSE and u₁ is an eigenvector of the full kernel, so Jᵀu₁ is
    the top eigenvector of the Gauss–Newton part JᵀJ/n of the Hessian. Its Krylov space alone is
    then the seed, and the Gauss–Newton gap (``gauss_newton_gap``) caps the gap the error bound
    assumes. Against [last step's eigenvector, Jᵀu₁] with Ritz gaps, on the default preset past
    step 300: 2.7 Hessian-vector products a step instead of 3.0, and no sampled step off by more
    than the tolerance (1 in 140 was, by 3.8e-4). Otherwise (cross-entropy, the traced kernel)
    the seeds are the ``previous`` step's eigenvector and the pullback where there is one."""
    max_gap = None
    if gauss_newton and pullback is not None:
        seeds = [pullback]
        max_gap = gauss_newton_gap
    else:
        seeds = [s for s in (previous, pullback) if s is not None]
    start = torch.cat(seeds, dim=1) if seeds else None
    guard = 0 if len(seeds) >= 2 or max_gap is not None else 1
    return top_hessian_eigenpair(op, start=start, tol=tol, guard=guard, generator=generator,
                                 max_gap=max_gap, workspace=workspace)


def hessian_sharpness(model: nn.Module, X: torch.Tensor, Y: torch.Tensor, loss: str = "mse",
                      tol: float | None = None) -> float:
    """λ_max of the Hessian of L = (1/2n) Σ‖f − y‖² (or mean cross-entropy) at the current weights.

    ``Y``: (n, C) targets, (n,) for a single-output model, or integer class labels (n,) for a
    C-output one (``losses.as_targets``); other shapes are a ValueError. ``tol`` (default
    ``spectral.DEFAULT_TOL`` = 1e-5) is the relative error of the eigenvalue to aim for.

    The solve starts from the gradient and one random vector. The gradient Jᵀr/n leans
    towards the top Gauss–Newton directions; from it, cold solves on W1 and W3 took 3–12
    Hessian-vector products against 10–26 from two random vectors. Its stopping bound takes
    the gap from the Ritz values of that small basis, which overstate it: stopped at tol/3, one
    W1 solve along the benchmark trajectory erred by 1.9e-5 at tol 1e-5. So it runs to tol/30
    (that solve: 7 products, 9e-8 off; none of the five checked past 1.3e-7). Far below 1e-5,
    float32 products may stall; a solve that stops short warns."""
    return _top_pair(model, X, Y, loss, tol, "hessian_sharpness")[0]


def sharpness_gradient(model: nn.Module, X: torch.Tensor, Y: torch.Tensor, loss: str = "mse",
                       tol: float | None = None) -> tuple[float, list[torch.Tensor]]:
    """(S, ∇_w S): the sharpness λ_max(∇²L) as ``hessian_sharpness`` finds it, and its gradient
    with respect to every parameter of ``model.parameters()`` (one tensor each, zeros for a
    frozen one), for the central flow's sharpness penalty.

    For a simple top eigenvalue with unit eigenvector u, ∇S = ∇_w (uᵀ ∇²L(w) u) with u held
    fixed (the eigenvector's own change drops out because u is stationary for the Rayleigh
    quotient): one Hessian-vector product kept in the graph, then one more backward pass, a
    third derivative of L contracted with u twice. Where the top eigenvalue is degenerate S is
    not differentiable and this is one of its subgradients."""
    S, u, params, grads = _top_pair(model, X, Y, loss, tol, "sharpness_gradient")
    cot, i = [], 0
    for p in params:
        cot.append(u[i:i + p.numel()].reshape(p.shape).to(p.dtype))
        i += p.numel()
    hu = torch.autograd.grad(grads, params, grad_outputs=cot, create_graph=True,
                             allow_unused=True)
    quadratic = sum(((h * c).sum() for h, c in zip(hu, cot, strict=True) if h is not None),
                    torch.zeros((), dtype=params[0].dtype, device=params[0].device))
    found = torch.autograd.grad(quadratic, params, allow_unused=True)
    by_param = {id(p): g if g is not None else torch.zeros_like(p)
                for p, g in zip(params, found, strict=True)}
    return S, [by_param[id(p)] if id(p) in by_param else torch.zeros_like(p)
               for p in model.parameters()]


def _top_pair(model: nn.Module, X: torch.Tensor, Y: torch.Tensor, loss: str,
              tol: float | None, caller: str
              ) -> tuple[float, torch.Tensor, list[torch.Tensor], tuple[torch.Tensor, ...]]:
    """The top Hessian eigenvalue, its unit eigenvector (float64, flat), the trainable
    parameters and the loss gradient with its graph kept."""
    tol = DEFAULT_TOL if tol is None else tol
    if not 0 < tol < 1:
        raise ValueError(f"tol: must be in (0, 1), got {tol}")
    params: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
    L = loss_value(model(X), Y, loss)
    grads = torch.autograd.grad(L, params, create_graph=True)
    op = HessianOperator(grads, params, samples=X.shape[0])
    device = params[0].device
    generator = torch.Generator(device=device).manual_seed(0)  # leaves torch's RNG alone
    gradient = torch.cat([g.detach().reshape(-1) for g in grads]).to(torch.float64)
    start = torch.stack([gradient, torch.randn(op.dim, dtype=torch.float64, device=device,
                                               generator=generator)], dim=1)
    result = top_hessian_eigenpair(op, start=start, tol=tol / 10, guard=0, generator=generator)
    if not result.converged:
        warnings.warn(f"{caller}: the solver stopped after {result.products} "
                      f"Hessian-vector products with a relative error bound of "
                      f"{float(result.residuals[0]):.1e}, above its target {tol / 30:.1e}",
                      RuntimeWarning, stacklevel=3)
    return float(result.values[0]), result.vectors[:, 0], params, grads
