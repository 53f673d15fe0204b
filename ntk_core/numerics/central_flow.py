"""The central flow of gradient descent (Cohen, Damian, Talwalkar, Kolter, Lee, ICLR 2025) and
gradient flow, as velocity fields on the weights. One unit of time is one GD step at η.

Gradient flow: dw/dt = −η∇L. The central flow adds the sharpness penalty of GD's oscillation:

    dw/dt = −η [∇L + ½ Σ_ij X_ij g_ij],   g_ij = ∇_w(u_iᵀ H u_j),

over the top Hessian eigenvectors u_i near 2/η, with X ⪰ 0 the solution of a small
complementarity problem (``complementarity``): the smallest penalty that keeps every tracked
eigenvalue at or below 2/η. As in the public code, the constraint is linearised one substep
ahead, UᵀHU + dt·d(UᵀHU)/dt ⪯ (2/η) I, so an eigenvalue that approaches 2/η within the substep
is caught, and one that overshot is pulled back. With one eigenvalue at the edge this is the
closed form σ² = max(0, 2⟨−∇L, ∇S⟩/‖∇S‖²).

Along the flow: Σ = U X Uᵀ is GD's predicted oscillation covariance, σ_i² (eigenvalues of X)
its variance along each direction, and L(w) + tr(Σ)/η the predicted time-averaged loss of GD.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from .complementarity import solve
from .eigensolver import top_eigenpairs
from .hessian import HessianOperator
from .third_order import curvature_gradients, flat, unflat

LossFunction = Callable[[], torch.Tensor]
TRACKED = 3  # Hessian eigenpairs followed along the flow
# Those above WINDOW·2/η enter the complementarity problem. The public code takes 1.95/η; the
# eigenvectors just below the edge carry the rotation of the top one, and with 1.95/η the
# central-flow preset's flow overshot 2/η by 0.16 % (0.04 % here) and settled 4 steps later.
WINDOW = 0.9
CLUSTER_WIDTH = 1e-2  # tracked eigenvalues this close (relative) are solved as one cluster


@dataclass(frozen=True)
class CentralVelocity:
    """The central flow's velocity at one point, with what it found there."""

    velocity: torch.Tensor  # dw/dt, flat float64
    loss: float
    eigenvalues: np.ndarray  # the tracked top Hessian eigenvalues, descending
    X: np.ndarray  # (c, c): Σ = U X Uᵀ on the c eigenvectors in the window
    kkt_residual: float
    products: int  # Hessian-vector products and third-derivative backward passes
    residual: float = float("nan")  # the eigensolve's error bound on eigenvalues[0], relative

    @property
    def sigma_sq(self) -> np.ndarray:
        """σ_i², the eigenvalues of X, descending (empty below the edge)."""
        return np.linalg.eigvalsh(self.X)[::-1] if self.X.size else np.zeros(0)

    def predicted_loss(self, lr: float) -> float:
        """L(w) + tr(Σ)/η: GD's predicted time-averaged loss."""
        return self.loss + float(np.trace(self.X)) / lr if self.X.size else self.loss


class CentralFlowField:
    """The central flow's velocity at the current weights, warm-started between calls: the last
    Hessian eigenvectors seed the next eigensolve and the last X the next complementarity
    solve. ``tracked`` eigenpairs are solved to relative accuracy ``tol``."""

    def __init__(self, tracked: int = TRACKED, tol: float = 1e-6, seed: int = 0,
                 samples: int | None = None) -> None:
        if tracked < 1:
            raise ValueError(f"tracked must be at least 1, got {tracked}")
        self.tracked = tracked
        self.tol = tol
        self.seed = seed
        self.samples = samples  # the batch's n: small models take blocks of HVPs at once
        self.block: torch.Tensor | None = None
        self.X: np.ndarray | None = None
        self.generator: torch.Generator | None = None
        self.anchor: _Anchor | None = None  # what the last solve found, for later substeps

    def __call__(self, loss_fn: LossFunction, params: Sequence[torch.Tensor], lr: float,
                 dt: float, resolve: bool = True) -> CentralVelocity:
        """The velocity at the current weights.

        With ``resolve`` (the first substep of a unit of time) it solves the tracked Hessian
        eigenpairs and the third derivatives g_ij here. Without it (the unit's later substeps)
        it keeps the last solve's eigenvectors, window and g_ij, and takes UᵀHU to first order,
        Q + G·(w − w₀): exact in the derivative that the linearised constraint uses, and one
        gradient instead of an eigensolve and the third derivatives. The next unit's solve
        measures Q afresh, so an error in the prediction is corrected within one unit."""
        edge = 2.0 / lr
        if not resolve and self.anchor is not None:
            return self._predicted(loss_fn, params, lr, dt, self.anchor)
        L = loss_fn()
        grads = torch.autograd.grad(L, params, create_graph=True)
        gradient = flat([g.detach() for g in grads], params)
        op = HessianOperator(grads, params, samples=self.samples)
        device = params[0].device
        if self.generator is None:
            self.generator = torch.Generator(device=device).manual_seed(self.seed)
        # once two eigenvalues are pinned at 2/η together they are about 1e-6 apart: bounded
        # one by one each solve ran to its 200-product cap (16 products as a cluster)
        pairs = top_eigenpairs(op.matmat, op.dim, self.tracked, start=self.block, tol=self.tol,
                               guard=1, generator=self.generator, device=device,
                               cluster_width=CLUSTER_WIDTH)
        self.block = pairs.block
        values = pairs.values.cpu().numpy()
        residual = float(pairs.residuals[0])
        inside = int(np.sum(values >= WINDOW * edge))
        products = pairs.products
        if inside == 0:
            self.X = None
            self.anchor = _Anchor(flat([p.detach() for p in params], params), np.zeros((0, 0)),
                                  gradient.new_zeros(0, gradient.numel()))
            return CentralVelocity(-lr * gradient, float(L.detach()), values, np.zeros((0, 0)),
                                   0.0, products, residual)
        Q, G = curvature_gradients(grads, params, pairs.vectors[:, :inside])
        products += inside + inside * (inside + 1) // 2
        self.anchor = _Anchor(flat([p.detach() for p in params], params), Q.cpu().numpy(),
                              G.reshape(inside * inside, -1))
        found = self._velocity(L, gradient, values, self.anchor.Q, self.anchor.G, lr, dt,
                               products)
        return replace(found, residual=residual)

    def _predicted(self, loss_fn: LossFunction, params: Sequence[torch.Tensor], lr: float,
                   dt: float, anchor: _Anchor) -> CentralVelocity:
        L = loss_fn()
        gradient = flat(torch.autograd.grad(L, params), params)
        c = anchor.Q.shape[0]
        if c == 0:
            return CentralVelocity(-lr * gradient, float(L.detach()), np.zeros(0),
                                   np.zeros((0, 0)), 0.0, 0)
        shift = flat([p.detach() for p in params], params) - anchor.w
        Q = anchor.Q + (anchor.G @ shift).reshape(c, c).cpu().numpy()
        Q = (Q + Q.T) / 2
        return self._velocity(L, gradient, np.linalg.eigvalsh(Q)[::-1], Q, anchor.G, lr, dt, 0)

    def _velocity(self, L: torch.Tensor, gradient: torch.Tensor, values: np.ndarray,
                  Q: np.ndarray, Gm: torch.Tensor, lr: float, dt: float,
                  products: int) -> CentralVelocity:
        """−η[∇L + ½ Σ X_ij g_ij] with X from the complementarity problem on (Q, G)."""
        c = Q.shape[0]
        gram = (Gm @ Gm.T).cpu().numpy()
        alpha = (Gm @ (-lr * gradient)).reshape(c, c).cpu().numpy()
        # linearised one substep ahead: Q + dt(α − β[X]) ⪯ (2/η) I
        alpha = alpha + (Q - 2.0 / lr * np.eye(c)) / dt
        start = self.X if self.X is not None and self.X.shape == (c, c) else None
        solution = solve(alpha, gram, lr / 2, start=start)
        self.X = solution.X
        penalty = torch.as_tensor(solution.X, dtype=torch.float64, device=Gm.device).reshape(-1) @ Gm
        velocity = -lr * (gradient + 0.5 * penalty)
        return CentralVelocity(velocity, float(L.detach()), values, solution.X,
                               solution.residual, products)


@dataclass(frozen=True)
class _Anchor:
    """The last solve: the weights w₀ there, Q = UᵀHU (c, c) and the g_ij as rows (c², dim)."""

    w: torch.Tensor
    Q: np.ndarray
    G: torch.Tensor


def gradient_flow_velocity(loss_fn: LossFunction, params: Sequence[torch.Tensor],
                           lr: float) -> tuple[torch.Tensor, float]:
    """(−η∇L flat float64, L) at the current weights."""
    L = loss_fn()
    grads = torch.autograd.grad(L, params)
    return -lr * flat(grads, params), float(L.detach())


def move(params: Sequence[torch.Tensor], velocity: torch.Tensor, dt: float) -> None:
    """w ← w + dt·velocity, in place."""
    with torch.no_grad():
        for p, v in zip(params, unflat(velocity * dt, params), strict=True):
            p.add_(v)


def gradient_flow_substeps(lr: float, sharpness: float, minimum: int = 4,
                           stiffness: float = 0.5) -> int:
    """Euler substeps per unit of time for gradient flow: at least ``minimum``, and enough that
    η·S·dt ≤ ``stiffness`` (stable, and close to the flow, where S is the sharpness)."""
    if not np.isfinite(sharpness) or sharpness <= 0:
        return minimum
    return max(minimum, int(np.ceil(lr * sharpness / stiffness)))
