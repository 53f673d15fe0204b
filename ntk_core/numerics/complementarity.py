"""The central flow's small semidefinite complementarity problem, solved exactly.

Given the k×k symmetric ``alpha`` and the Gram matrix ``gram`` (k²×k², entry ((i,j),(k,l)) =
⟨g_ij, g_kl⟩) of the third-derivative vectors g_ij = ∇(u_iᵀHu_j), find X ⪰ 0 with

    β[X] − α ⪰ 0,   ⟨X, β[X] − α⟩ = 0,   β[X]_ij = scale · Σ_kl gram[(i,j),(k,l)] X_kl,

the optimality conditions of the convex problem min_{X ⪰ 0} ½⟨X, β[X]⟩ − ⟨α, X⟩.

Why not a conic solver: k is the number of Hessian eigenvalues at the edge (1 to 4), so the
problem has at most 10 unknowns. An exact method fits better than an interior-point solver's
1e-8 tolerance, and keeps CVXPY and its compiled back-ends out of the dependencies. The
method: on a face of the PSD cone (X = V Z Vᵀ for a fixed range V) the conditions are a linear
system, solved directly, so the answer satisfies them to rounding. X = 0 and the interior are
tried first; otherwise accelerated projected gradient (FISTA with adaptive restart) on the
cone, from the warm start, runs until its iterate's face gives an exact answer.
``kkt_residual`` checks every answer, and the caller sees it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POLISH_AT = (2, 4, 8)  # projected-gradient iterations after which the face is tried (and every 20)


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
    # X = 0 (no eigenvalue pushes past the edge) and the interior (β[X] = α with X ⪰ 0) are
    # each one linear solve away; on a boundary face, projected gradient finds the range
    zero = np.zeros((k, k))
    candidates = [zero] if start is None or not start.any() else []
    interior = _on_face(alpha, gram, scale, np.eye(k))
    candidates += [interior] if interior is not None else []
    for X in candidates:
        residual = kkt_residual(alpha, gram, scale, X)
        if residual <= tol:
            return ComplementaritySolution(X, residual, 0)
    return ComplementaritySolution(*_projected_gradient(alpha, gram, scale, start, tol,
                                                        max_iterations))


def _range(X: np.ndarray) -> np.ndarray | None:
    """An orthonormal basis of the range of the PSD matrix X, None when X is zero."""
    w, V = np.linalg.eigh((X + X.T) / 2)
    keep = w > 1e-9 * max(float(w[-1]), 1e-300)
    return V[:, keep] if keep.any() and w[-1] > 0 else None


def _psd_part(X: np.ndarray) -> np.ndarray:
    w, V = np.linalg.eigh((X + X.T) / 2)
    return (V * np.clip(w, 0, None)) @ V.T


def _projected_gradient(alpha: np.ndarray, gram: np.ndarray, scale: float,
                        start: np.ndarray | None, tol: float, max_iterations: int
                        ) -> tuple[np.ndarray, float, int]:
    """(X, its KKT residual, iterations)."""
    k = alpha.shape[0]
    lipschitz = scale * float(np.linalg.eigvalsh((gram + gram.T) / 2)[-1])
    if lipschitz <= 0:
        zero = np.zeros((k, k))
        return zero, kkt_residual(alpha, gram, scale, zero), 0
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
        if iteration in POLISH_AT or iteration % 20 == 0:
            # once the iterate has the solution's range, one linear solve on that face is exact
            # (from a warm start, after two iterations on the central flow's problems)
            best, residual = _polished(alpha, gram, scale, X)
            if residual <= tol:
                return best, residual, iteration
    return (*_polished(alpha, gram, scale, X), max_iterations)


def _polished(alpha: np.ndarray, gram: np.ndarray, scale: float, X: np.ndarray
              ) -> tuple[np.ndarray, float]:
    """X, or the solve on its face (its range V: X = V Z Vᵀ, and Vᵀ(β[X] − α)V = 0 is linear in
    Z) where that satisfies the conditions better, with its KKT residual."""
    residual = kkt_residual(alpha, gram, scale, X)
    face = _range(X)
    polished = _on_face(alpha, gram, scale, face) if face is not None else None
    if polished is not None:
        polished_residual = kkt_residual(alpha, gram, scale, polished)
        if polished_residual < residual:
            return polished, polished_residual
    return X, residual


def _on_face(alpha: np.ndarray, gram: np.ndarray, scale: float, V: np.ndarray
             ) -> np.ndarray | None:
    """The X = V Z Vᵀ (Z symmetric) with Vᵀ(β[X] − α)V = 0, by least squares on the symmetric
    coordinates of Z; None when it is not positive semidefinite."""
    k, r = V.shape
    rows, cols = np.triu_indices(r)
    m = rows.size
    units = np.zeros((m, r, r))  # the symmetric unit matrices E_ij = E_ji = 1
    units[np.arange(m), rows, cols] = 1.0
    units[np.arange(m), cols, rows] = 1.0
    bases = V @ units @ V.T  # (m, k, k): X for each coordinate of Z
    images = scale * (bases.reshape(m, k * k) @ gram.T).reshape(m, k, k)
    images = V.T @ ((images + images.transpose(0, 2, 1)) / 2) @ V
    A = images[:, rows, cols].T
    b = (V.T @ alpha @ V)[rows, cols]
    z = np.linalg.lstsq(A, b, rcond=None)[0]
    X = np.tensordot(z, bases, axes=1)
    X = (X + X.T) / 2
    w = np.linalg.eigvalsh(X)
    if w[0] < -1e-10 * max(abs(float(w[-1])), 1e-300):
        return None
    return _psd_part(X)
