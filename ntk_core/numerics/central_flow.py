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
from dataclasses import dataclass

import numpy as np
import torch

from .complementarity import solve
from .eigensolver import top_eigenpairs
from .hessian import HessianOperator
from .third_order import curvature_gradients, flat, unflat

LossFunction = Callable[[], torch.Tensor]
TRACKED = 3  # Hessian eigenpairs followed along the flow
WINDOW = 0.9  # those above WINDOW·2/η enter the complementarity problem


@dataclass(frozen=True)
class CentralVelocity:
    """The central flow's velocity at one point, with what it found there."""

    velocity: torch.Tensor  # dw/dt, flat float64
    loss: float
    eigenvalues: np.ndarray  # the tracked top Hessian eigenvalues, descending
    X: np.ndarray  # (c, c): Σ = U X Uᵀ on the c eigenvectors in the window
    kkt_residual: float
    products: int  # Hessian-vector products and third-derivative backward passes

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

    def __init__(self, tracked: int = TRACKED, tol: float = 1e-6, seed: int = 0) -> None:
        if tracked < 1:
            raise ValueError(f"tracked must be at least 1, got {tracked}")
        self.tracked = tracked
        self.tol = tol
        self.seed = seed
        self.block: torch.Tensor | None = None
        self.critical: torch.Tensor | None = None  # the eigenvectors in the window, (dim, c)
        self.X: np.ndarray | None = None
        self.generator: torch.Generator | None = None

    def __call__(self, loss_fn: LossFunction, params: Sequence[torch.Tensor], lr: float,
                 dt: float, resolve: bool = True) -> CentralVelocity:
        """The velocity at the current weights. With ``resolve`` False (a later substep of the
        same unit of time) the eigenvectors of the last solve are kept: the constraint is then
        on their span, with UᵀHU taken at the current weights, which the third derivatives
        compute anyway; the window's membership is that of the last solve."""
        L = loss_fn()
        grads = torch.autograd.grad(L, params, create_graph=True)
        gradient = flat([g.detach() for g in grads], params)
        edge = 2.0 / lr
        if resolve or self.critical is None:
            op = HessianOperator(grads, params)
            device = params[0].device
            if self.generator is None:
                self.generator = torch.Generator(device=device).manual_seed(self.seed)
            pairs = top_eigenpairs(op.matmat, op.dim, self.tracked, start=self.block,
                                   tol=self.tol, guard=1, generator=self.generator, device=device)
            self.block = pairs.block
            values = pairs.values.cpu().numpy()
            inside = int(np.sum(values >= WINDOW * edge))
            self.critical = pairs.vectors[:, :inside]
            products = pairs.products
        else:
            values, products = np.zeros(0), 0
        inside = self.critical.shape[1]
        if inside == 0:
            self.X = None
            return CentralVelocity(-lr * gradient, float(L.detach()), values, np.zeros((0, 0)),
                                   0.0, products)
        Q, G = curvature_gradients(grads, params, self.critical)
        if not values.size:  # kept eigenvectors: their Ritz values at these weights
            values = np.linalg.eigvalsh(Q.cpu().numpy())[::-1]
        products += inside + inside * (inside + 1) // 2
        Gm = G.reshape(inside * inside, -1)
        gram = (Gm @ Gm.T).cpu().numpy()
        alpha = (Gm @ (-lr * gradient)).reshape(inside, inside).cpu().numpy()
        # linearised one substep ahead: Q + dt(α − β[X]) ⪯ (2/η) I
        alpha = alpha + (Q.cpu().numpy() - edge * np.eye(inside)) / dt
        start = self.X if self.X is not None and self.X.shape == (inside, inside) else None
        solution = solve(alpha, gram, lr / 2, start=start)
        self.X = solution.X
        penalty = torch.as_tensor(solution.X, dtype=torch.float64, device=G.device).reshape(-1) @ Gm
        velocity = -lr * (gradient + 0.5 * penalty)
        return CentralVelocity(velocity, float(L.detach()), values, solution.X,
                               solution.residual, products)


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
