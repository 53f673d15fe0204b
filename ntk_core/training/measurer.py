"""One full measurement at the current weights: NTK spectrum, alignment, sharpness, dynamics.

The measurer keeps the warm-start state between steps: the previous NTK eigenvectors seed the
next block solve (plus guard vectors), and the previous Hessian eigenvector plus Jᵀu₁ seed the
sharpness solve. At EoS u₁ flips sign every step, so seeds are subspaces, never signed vectors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..config import RunConfig
from ..numerics.alignment import (
    centered_alignment_from_products,
    deflated_fro_norm,
    eigen_alignment,
    fro_norm,
    kernel_distance,
    target_fro,
)
from ..numerics.eigensolver import SolverWorkspace, explicit_matmat, top_eigenpairs
from ..numerics.hessian import (
    HessianOperator,
    PreconditionedHessian,
    batch_sharpness,
    gauss_newton_gap,
    top_hessian_eigenpair,
    warm_sharpness,
)
from ..numerics.losses import gradient_norm, kernel_targets
from ..numerics.ntk import LayerCapture, NTKOperator, NTKWorkspace, kernel_from_capture
from ..numerics.ntk.cost import CostEstimate, estimate_costs
from ..numerics.ntk.exact import output_major_order
from ..vocabulary import KernelKind, NTKMethod

FRO_PROBES = 8


def kernel_rows(n: int, num_outputs: int, kernel: KernelKind) -> int:
    return n if kernel == "traced" or num_outputs == 1 else n * num_outputs


def resolve_ntk_mode(config: RunConfig, model: nn.Module, X: torch.Tensor,
                     num_outputs: int) -> tuple[NTKMethod, CostEstimate]:
    """``auto`` picks the cheaper of exact and matrix-free by the FLOP model in ``ntk.cost``,
    provided the explicit kernel fits the memory budget; an explicit choice is kept."""
    estimate = estimate_costs(model, X, num_outputs, config.kernel, config.k)
    mode = estimate.choice if config.ntk_mode == "auto" else config.ntk_mode
    return mode, estimate


@dataclass
class Measurement:
    """What one measured step found: the per-step scalars (``kta``, ``sharpness`` ...), the
    per-eigen-index arrays (``eigenvalues``, ``alignment`` ...), the top-k eigenvectors and, in
    exact mode, the kernel itself."""

    scalars: dict[str, float]
    spectrum: dict[str, np.ndarray]
    vectors: torch.Tensor  # (m, k) float64 eigenvectors, sign-fixed, rows sample-major
    kernel: torch.Tensor | None  # the explicit K (workspace memory: copy before keeping)
    extras: dict[str, float] = field(default_factory=dict)
    output_major: int = 0  # C when the explicit K's rows are output-major (c·n + i)


class Measurer:
    """Measures a run at its current weights (``measure``): the top-k NTK eigenpairs, KTA and
    the label alignments, the residual along each eigenvector and the Hessian sharpness.

    ``mode`` is ``exact`` (K by per-layer rules, from the layer inputs and outputs that the
    hooks of ``capture`` record in the training forward pass) or ``matrix_free`` (vjp/jvp
    products only). Between steps it keeps the warm starts (the last eigenvectors and Hessian
    eigenvector), the first explicit K for the kernel distance, and the workspace the explicit
    K is built in.
    """

    def __init__(self, config: RunConfig, Y: torch.Tensor, mode: NTKMethod) -> None:
        self.config = config
        self.mode = mode
        self.Y = Y  # the training targets, as the loss takes them (the batch sharpness)
        n, C = Y.shape
        self.full = config.kernel == "full" or C == 1
        # Targets in kernel coordinates: vec(Y) sample-major for the full kernel, Y for traced.
        # The explicit multi-output kernel is built output-major (contiguous Hadamard products);
        # every vector the measurement uses is then permuted by ``order`` on the way in, and
        # the eigenvectors back on the way out.
        self.order = (output_major_order(n, C, Y.device)
                      if mode == "exact" and self.full and C > 1 else None)
        self.inverse = torch.argsort(self.order) if self.order is not None else None
        self.targets = kernel_targets(Y, kernel_rows(n, C, config.kernel))
        self.kernel_targets = self._internal(self.targets)
        self.sign_ref = self.kernel_targets.sum(1)
        self.m = self.targets.shape[0]
        self.k = min(config.k, self.m)
        self.workspace = NTKWorkspace()
        self.kernel_solves = SolverWorkspace()
        self.hessian_solves = SolverWorkspace()
        self.generator = torch.Generator(device=Y.device).manual_seed(config.seed + 1)
        self.prev_vectors: torch.Tensor | None = None
        self.prev_hessian: torch.Tensor | None = None
        self.prev_preconditioned: torch.Tensor | None = None
        self.K0: torch.Tensor | None = None
        self.K0_fro = math.nan

    # ---- kernel spectrum -----------------------------------------------------------------
    def capture(self, model: nn.Module) -> LayerCapture | None:
        return LayerCapture(model) if self.mode == "exact" else None

    def measure(self, model: nn.Module, X: torch.Tensor, f: torch.Tensor, r: torch.Tensor,
                grads: tuple[torch.Tensor, ...], params: Sequence[torch.Tensor],
                capture: LayerCapture | None, preconditioner: torch.Tensor | None = None,
                batches: Sequence[torch.Tensor] | None = None) -> Measurement:
        """The NTK spectrum, alignment and sharpness at the current weights. ``preconditioner``
        (Adam, RMSProp: the diagonal P of this step's update) adds the preconditioned
        sharpness λ_max(P⁻¹H); ``batches`` (SGD: the epoch's mini-batches) the batch
        sharpness."""
        cfg = self.config
        s: dict[str, float] = {}
        K = None
        if self.mode == "exact":
            assert capture is not None
            K = kernel_from_capture(model, X, f, capture, cfg.kernel, self.workspace,
                                    output_major=self.order is not None)
            matmat = explicit_matmat(K)
            op = None
        else:
            op = NTKOperator(model, X, cfg.kernel)
            matmat = op.matmat
        # Guards are nearly free against an explicit K (one matmul per block), costly otherwise.
        guard = 8 if K is not None else 2
        eig = top_eigenpairs(matmat, self.m, self.k, start=self.prev_vectors, tol=cfg.eig_tol,
                             guard=guard, generator=self.generator, device=X.device,
                             workspace=self.kernel_solves)
        values, U = eig.values, self._fix_signs(eig.vectors)
        self.prev_vectors = eig.block  # the top-k and the guard Ritz vectors seed the next step
        s["ntk_products"] = float(eig.products)
        s["ntk_max_residual"] = float(eig.residuals.max())

        Y = self.kernel_targets
        ones = torch.ones(self.m, 1, dtype=torch.float64, device=X.device)
        KY, K1 = matmat(torch.cat([Y, ones], 1)).split([Y.shape[1], 1], 1)
        num = float((Y * KY).sum())
        if K is not None:
            fro = fro_norm(K)
            trace = float(K.diagonal().sum(dtype=torch.float64))
            s["kta_stderr"] = 0.0
            if self.K0 is None:
                self.K0, self.K0_fro = K.detach().clone(), fro
            s["kernel_distance"] = kernel_distance(K, self.K0, fro, self.K0_fro)
            extra_products = 0
        else:
            est = deflated_fro_norm(matmat, eig.basis, eig.basis_image, FRO_PROBES, self.generator)
            fro = est.value
            trace = math.nan
            s["kta_stderr"] = (num / target_fro(Y)) * est.stderr / fro**2 if fro > 0 else math.nan
            s["kernel_distance"] = math.nan
            extra_products = est.products
        s["ntk_products"] += extra_products + Y.shape[1] + 1
        s["kta_centered"] = centered_alignment_from_products(Y, KY, K1, fro)
        s["kernel_fro"], s["kernel_trace"] = fro, trace
        s["kta"] = num / (fro * target_fro(Y)) if fro > 0 else math.nan
        a = eigen_alignment(U, Y)
        s["topk_mass"] = float(a.sum())
        n = f.shape[0]
        s["gn_sharpness"] = float(values[0]) / n if self.full else math.nan
        R = self._internal((r.reshape(-1, 1) if self.full else r).to(torch.float64))
        proj = self._residual_projection(U, R)
        s["u1_residual"] = float(proj[0])
        s["grad_norm"] = gradient_norm(grads)

        if cfg.sharpness:
            s.update(self._sharpness(grads, params, U[:, :1], f, op, values))
        else:
            s.update(sharpness=math.nan, hvp_products=0.0, hessian_residual=math.nan)
        s["preconditioned_sharpness"] = (
            self._preconditioned_sharpness(grads, params, preconditioner)
            if cfg.sharpness and preconditioner is not None else math.nan)
        s["batch_sharpness"] = (batch_sharpness(model, X, self.Y, batches, cfg.loss)
                                if cfg.sharpness and batches is not None else math.nan)
        spectrum = {
            "eigenvalues": values.cpu().numpy(),
            "eigval_normalized": (values / fro if fro > 0 else values * math.nan).cpu().numpy(),
            "alignment": a.cpu().numpy(),
            "residual_proj": proj.cpu().numpy(),
        }
        U_out = U[self.inverse] if self.inverse is not None else U
        return Measurement(s, spectrum, U_out, K,
                           output_major=self.targets.shape[0] // n if self.order is not None else 0)

    def _internal(self, V: torch.Tensor) -> torch.Tensor:
        """Rows from sample-major to the explicit kernel's row order."""
        return V[self.order] if self.order is not None else V

    def _fix_signs(self, U: torch.Tensor) -> torch.Tensor:
        """Eigenvectors are defined up to sign: orient each so that u_iᵀ y ≥ 0."""
        dots = self.sign_ref @ U
        signs = torch.where(dots < 0, -1.0, 1.0).to(U.dtype)
        return U * signs

    def _residual_projection(self, U: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        """u_iᵀ r for the full kernel; for the traced kernel the component of U_iᵀR along U_iᵀY."""
        if R.shape[1] == 1:
            return (U.T @ R)[:, 0]
        ur, uy = U.T @ R, U.T @ self.kernel_targets
        return (ur * uy).sum(1) / uy.norm(dim=1).clamp_min(1e-300)

    # ---- Hessian sharpness ---------------------------------------------------------------
    def _sharpness(self, grads: tuple[torch.Tensor, ...], params: Sequence[torch.Tensor],
                   u1: torch.Tensor, f: torch.Tensor, op: NTKOperator | None,
                   ntk_values: torch.Tensor) -> dict[str, float]:
        u1_rows = u1[self.inverse] if self.inverse is not None else u1  # back to sample-major
        gauss_newton = self.full and self.config.loss == "mse"
        res = warm_sharpness(
            HessianOperator(grads, params, samples=f.shape[0]), self.config.eig_tol,
            pullback=self._pullback(u1_rows, f, params, op) if self.full else None,
            gauss_newton=gauss_newton,
            gauss_newton_gap=(gauss_newton_gap(ntk_values, f.shape[0], self.config.eig_tol)
                              if gauss_newton else None),
            previous=self.prev_hessian, generator=self.generator, workspace=self.hessian_solves)
        self.prev_hessian = res.vectors[:, :1]
        return {"sharpness": float(res.values[0]), "hvp_products": float(res.products),
                "hessian_residual": float(res.residuals[0])}

    def _preconditioned_sharpness(self, grads: tuple[torch.Tensor, ...],
                                  params: Sequence[torch.Tensor], preconditioner: torch.Tensor
                                  ) -> float:
        """λ_max(P^{-1/2} H P^{-1/2}), warm-started from the previous step's eigenvector."""
        op = PreconditionedHessian(grads, list(params), preconditioner, samples=self.Y.shape[0])
        start = self.prev_preconditioned
        res = top_hessian_eigenpair(op, start=start, tol=self.config.eig_tol,
                                    guard=1, generator=self.generator)
        self.prev_preconditioned = res.vectors[:, :1]
        return float(res.values[0])

    def _pullback(self, u: torch.Tensor, f: torch.Tensor, params: Sequence[torch.Tensor],
                  op: NTKOperator | None) -> torch.Tensor:
        if op is not None:
            return op.pullback(u).to(torch.float64)
        cot = u[:, 0].to(f.dtype).reshape(f.shape)
        g = torch.autograd.grad(f, params, grad_outputs=cot, retain_graph=True, allow_unused=True)
        return torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1)
                          for x, p in zip(g, params, strict=True)]).to(torch.float64)[:, None]
