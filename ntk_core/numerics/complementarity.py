"""The central flow's small semidefinite complementarity problem, solved exactly.

Given the k×k symmetric ``alpha`` and the Gram matrix ``gram`` (k²×k², entry ((i,j),(k,l)) =
⟨g_ij, g_kl⟩) of the third-derivative vectors g_ij = ∇(u_iᵀHu_j), find X ⪰ 0 with

    β[X] − α ⪰ 0,   ⟨X, β[X] − α⟩ = 0,   β[X]_ij = scale · Σ_kl gram[(i,j),(k,l)] X_kl,

the optimality conditions of the convex problem min_{X ⪰ 0} ½⟨X, β[X]⟩ − ⟨α, X⟩.

Why not a conic solver: k is the number of Hessian eigenvalues at the edge (1 to 4), so the
problem has at most 10 unknowns. An exact method fits better than an interior-point solver's
1e-8 tolerance, and keeps CVXPY and its compiled back-ends out of the dependencies. The
method: accelerated projected gradient (FISTA with adaptive restart) on the PSD cone finds the
solution's range; on that face the conditions are a linear system, solved directly, so the
answer satisfies them to rounding. ``kkt_residual`` checks every answer, and the caller sees it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ComplementaritySolution:
    X: np.ndarray  # (k, k) symmetric positive semidefinite
    residual: float  # kkt_residual of X, relative
    iterations: int  # projected-gradient iterations (0 for the closed form / interior case)


def operator(gram: np.ndarray, scale: float, X: np.ndarray) -> np.ndarray:
    """β[X] = scale · gram · vec(X), as a symmetric k×k matrix."""
    k = X.shape[0]
    B = scale * (gram @ X.reshape(-1)).reshape(k, k)
    return (B + B.T) / 2


def kkt_residual(alpha: np.ndarray, gram: np.ndarray, scale: float, X: np.ndarray) -> float:
    """The largest violation of X ⪰ 0, β[X] − α ⪰ 0 and ⟨X, β[X] − α⟩ = 0, relative to the
    problem's size (‖α‖ and ‖β[X]‖ in Frobenius norm, and ‖X‖ for the complementarity)."""
    image = operator(gram, scale, X)
    slack = image - alpha
    size = max(float(np.linalg.norm(alpha)), float(np.linalg.norm(image)), 1e-300)
    norm_X = float(np.linalg.norm(X))
    primal = max(0.0, -float(np.linalg.eigvalsh(X)[0])) / max(norm_X, 1e-300)
    dual = max(0.0, -float(np.linalg.eigvalsh(slack)[0])) / size
    gap = abs(float(np.sum(X * slack))) / (size * max(norm_X, 1e-300))
    return max(primal if norm_X > 0 else 0.0, dual, gap)


def closed_form(alpha: float, gram: float, scale: float) -> float:
    """k = 1: X = max(0, α / (scale·‖g‖²)). With α = ⟨∇S, −η∇L⟩ and scale = η/2 this is the
    paper's σ² = max(0, 2⟨−∇L, ∇S⟩/‖∇S‖²)."""
    if gram <= 0:
        return 0.0
    return max(0.0, alpha / (scale * gram))


def solve(alpha: np.ndarray, gram: np.ndarray, scale: float, start: np.ndarray | None = None,
          tol: float = 1e-10, max_iterations: int = 2_000) -> ComplementaritySolution:
    """The X of the complementarity problem (module docstring). ``alpha`` (k, k) symmetric,
    ``gram`` (k², k²) positive semidefinite, ``scale`` > 0, ``start`` an optional warm start."""
    alpha = np.asarray(alpha, np.float64)
    gram = np.asarray(gram, np.float64)
    k = alpha.shape[0]
    if alpha.shape != (k, k) or gram.shape != (k * k, k * k):
        raise ValueError(f"alpha must be (k, k) and gram (k², k²); got {alpha.shape} and "
                         f"{gram.shape}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    alpha = (alpha + alpha.T) / 2
    if k == 1:
        X = np.array([[closed_form(float(alpha[0, 0]), float(gram[0, 0]), scale)]])
        return ComplementaritySolution(X, kkt_residual(alpha, gram, scale, X), 0)
    # the interior case first: β[X] = α with X ⪰ 0 is the answer when it exists
    interior = _on_face(alpha, gram, scale, np.eye(k))
    if interior is not None and kkt_residual(alpha, gram, scale, interior) <= tol:
        return ComplementaritySolution(interior, kkt_residual(alpha, gram, scale, interior), 0)
    X, iterations = _projected_gradient(alpha, gram, scale, start, tol, max_iterations)
    polished = _polish(alpha, gram, scale, X)
    if polished is not None:
        X = polished
    return ComplementaritySolution(X, kkt_residual(alpha, gram, scale, X), iterations)


def _psd_part(X: np.ndarray) -> np.ndarray:
    w, V = np.linalg.eigh((X + X.T) / 2)
    return (V * np.clip(w, 0, None)) @ V.T


def _projected_gradient(alpha: np.ndarray, gram: np.ndarray, scale: float,
                        start: np.ndarray | None, tol: float, max_iterations: int
                        ) -> tuple[np.ndarray, int]:
    k = alpha.shape[0]
    lipschitz = scale * float(np.linalg.eigvalsh((gram + gram.T) / 2)[-1])
    if lipschitz <= 0:
        return np.zeros((k, k)), 0
    step = 1.0 / lipschitz
    X = _psd_part(start) if start is not None and start.shape == (k, k) else np.zeros((k, k))
    Z, t = X.copy(), 1.0
    for iteration in range(1, max_iterations + 1):
        X_new = _psd_part(Z - step * (operator(gram, scale, Z) - alpha))
        if np.sum((Z - X_new) * (X_new - X)) > 0:  # the momentum points uphill: restart
            Z, t = X_new.copy(), 1.0
        else:
            t_new = (1 + np.sqrt(1 + 4 * t * t)) / 2
            Z = X_new + ((t - 1) / t_new) * (X_new - X)
            t = t_new
        X = X_new
        if iteration % 20 == 0 and kkt_residual(alpha, gram, scale, X) <= tol:
            return X, iteration
    return X, max_iterations


def _polish(alpha: np.ndarray, gram: np.ndarray, scale: float, X: np.ndarray
            ) -> np.ndarray | None:
    """On the face of X (its range V), X = V Z Vᵀ and Vᵀ(β[X] − α)V = 0 is linear in Z: solve it,
    and keep the result when it satisfies the conditions better than X."""
    w, V = np.linalg.eigh(X)
    keep = w > 1e-9 * max(float(w[-1]), 1e-300)
    if not keep.any():
        return None
    polished = _on_face(alpha, gram, scale, V[:, keep])
    if polished is None:
        return None
    before = kkt_residual(alpha, gram, scale, X)
    return polished if kkt_residual(alpha, gram, scale, polished) < before else None


def _on_face(alpha: np.ndarray, gram: np.ndarray, scale: float, V: np.ndarray
             ) -> np.ndarray | None:
    """The X = V Z Vᵀ (Z symmetric) with Vᵀ(β[X] − α)V = 0, by least squares on the symmetric
    coordinates of Z; None when it is not positive semidefinite."""
    k, r = V.shape
    pairs = [(i, j) for i in range(r) for j in range(i, r)]
    columns, images = [], []
    for i, j in pairs:
        E = np.zeros((r, r))
        E[i, j] = E[j, i] = 1.0
        basis = V @ E @ V.T
        columns.append(basis)
        images.append((V.T @ operator(gram, scale, basis) @ V)[np.triu_indices(r)])
    A = np.stack(images, axis=1)
    b = (V.T @ alpha @ V)[np.triu_indices(r)]
    z = np.linalg.lstsq(A, b, rcond=None)[0]
    X = sum((c * zi for c, zi in zip(columns, z, strict=True)), np.zeros((k, k)))
    X = (X + X.T) / 2
    w = np.linalg.eigvalsh(X)
    if w[0] < -1e-10 * max(abs(float(w[-1])), 1e-300):
        return None
    return _psd_part(X)
