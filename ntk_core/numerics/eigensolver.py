"""Top-k eigenpairs of a symmetric operator given only block products V ↦ A V.

A thick-restart block Krylov method (a block Davidson iteration without preconditioner):

1. the basis starts from the caller's seed (last step's eigenvectors, J ᵀu₁ …) plus random guard
   vectors, so an eigenvalue rising from below is still caught;
2. Rayleigh–Ritz in float64 on span(Q) using the stored images A Q — no product is ever repeated;
3. the next block is the residual A x − θ x of every unconverged Ritz vector (and the guards),
   orthogonalised twice against the basis;
4. when the basis is full it restarts from the current Ritz vectors and their images.

Convergence is judged on the eigenvalue error bound min(‖r_i‖, ‖r_i‖²/gap_i) ≤ tol·|θ_i| for
each of the top k (r_i = A x_i − θ_i x_i; gap_i the distance to the nearest other Ritz value;
the quadratic bound is Kato–Temple's; with ``cluster_width``, nearly equal Ritz values may also
share one bound, from their block residual and the gap around the cluster). So ``tol`` is the
relative accuracy of the eigenvalues; the eigenvectors are then accurate to about √tol in angle
(within a cluster, their span is). The final basis and its images are
returned for estimators that reuse them (the deflated ‖K‖_F estimate).

``kernel_eigenpairs`` is the cold, standalone entry: it picks dense LAPACK or the block solver
by size and tolerance (``choose_solver``). The trainer calls ``top_eigenpairs`` directly, warm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

MatMat = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class EigResult:
    values: torch.Tensor  # (k,) float64, descending
    vectors: torch.Tensor  # (m, k) float64, orthonormal columns
    residuals: torch.Tensor  # (k,) relative residual norms
    products: int  # operator applications (columns)
    converged: bool
    basis: torch.Tensor  # (m, q) orthonormal basis of the final search space
    basis_image: torch.Tensor  # (m, q) A @ basis
    block: torch.Tensor  # (m, k + guard) Ritz vectors incl. guards: the next warm start
    method: str = "krylov"  # or "dense": LAPACK on the explicit (or product-built) matrix


def _orthonormalize(W: torch.Tensor, Q: torch.Tensor | None, drop: float = 1e-10) -> torch.Tensor:
    """Columns of W made orthonormal and orthogonal to the columns of Q (classical Gram–Schmidt,
    twice)."""
    norms0 = W.norm(dim=0).clamp_min(1e-300)
    if Q is not None and Q.shape[1]:
        for _ in range(2):
            W = W - Q @ (Q.T @ W)
    Wq, R = torch.linalg.qr(W)
    keep = R.diagonal().abs() > drop * norms0
    return Wq if bool(keep.all()) else Wq[:, keep]  # the usual case needs no gather copy


class SolverWorkspace:
    """The basis buffers of one caller's solves, kept from one solve to the next.

    A warm solve at every training step otherwise allocates its (capacity × dim) buffers afresh
    and touches new pages each time: on the W1 MLP's Hessian (dim 93,601) that was a fifth of a
    GD step per solve. A result's ``basis`` and ``basis_image`` are views into these buffers,
    valid until the next solve with the same workspace. Scratch space never travels with a run's
    state (pickling gives an empty workspace)."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def __getstate__(self) -> dict[str, object]:
        return {"_buffers": {}}

    def get(self, name: str, shape: tuple[int, int], **f64: Any) -> torch.Tensor:
        buf = self._buffers.get(name)
        if (buf is None or buf.shape[1] != shape[1] or buf.shape[0] < shape[0]
                or buf.dtype != f64["dtype"] or buf.device != torch.device(f64["device"])):
            buf = torch.empty(shape, **f64)
            self._buffers[name] = buf
        return buf[:shape[0]]


class _Basis:
    """The search space Q, its images AQ and the small matrices T = QᵀAQ and G = (AQ)ᵀAQ.

    Everything of length ``dim`` lives in buffers allocated once per solve (or kept in a
    ``SolverWorkspace`` across solves), each vector a contiguous row; T and G grow by the new
    block's rows only. Allocating and concatenating fresh (dim × q) arrays each iteration cost
    more than the arithmetic at dim ≈ 25 000 (the Hessian's), mostly in page faults. (The small
    matrices stay in torch: numpy's BLAS threads would spin on the core the browser needs.)
    """

    def __init__(self, dim: int, capacity: int, workspace: SolverWorkspace | None = None,
                 **f64: Any) -> None:
        ws = workspace or SolverWorkspace()
        self.Q = ws.get("Q", (capacity, dim), **f64)
        self.AQ = ws.get("AQ", (capacity, dim), **f64)
        self.T = torch.empty(capacity, capacity, **f64)
        self.G = torch.empty(capacity, capacity, **f64)
        self.size = 0

    @property
    def vectors(self) -> torch.Tensor:
        return self.Q[:self.size].T  # (dim, q) view

    @property
    def images(self) -> torch.Tensor:
        return self.AQ[:self.size].T

    def append(self, W: torch.Tensor, AW: torch.Tensor) -> None:
        q, b = self.size, W.shape[1]
        self.Q[q:q + b] = W.T
        self.AQ[q:q + b] = AW.T
        self.size = q + b
        for M, rows in ((self.T, self.Q), (self.G, self.AQ)):
            C = rows[:q + b] @ AW  # (q + b, b): the new columns, and by symmetry the new rows
            M[:q + b, q:q + b] = C
            M[q:q + b, :q] = C[:q].T

    def restart(self, X: torch.Tensor, AX: torch.Tensor, theta: torch.Tensor) -> None:
        """Thick restart on the Ritz vectors X (orthonormal), whose T is diag(θ)."""
        nb = X.shape[1]
        self.Q[:nb] = X.T
        self.AQ[:nb] = AX.T
        self.T[:nb, :nb] = torch.diag(theta)
        self.G[:nb, :nb] = AX.T @ AX
        self.size = nb

    def ritz(self, block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Ritz values (descending), their coefficient vectors S, and the residual norms of
        the first ``block``: ‖A x − θ x‖² = sᵀ G s − θ² for x = Q s (Q orthonormal,
        sᵀ T s = θ), so a Ritz vector is formed only where that difference cancels.

        G's entries reach θ_max², and each is a float64 dot over ``dim`` terms, so sᵀ G s − θ²
        is noise below about dim·ε·θ_max². Where the spread of the spectrum puts converging
        residuals there (a CNN's traced kernel, λ₁/λ₂₀ ≈ 3800: the solve never converged and
        spent its 1,400 products), those residuals are formed from Q and AQ instead."""
        q = self.size
        theta, S = torch.linalg.eigh(self.T[:q, :q])
        theta, S = theta.flip(0), S.flip(1)
        Sb = S[:, :block]
        r2 = ((self.G[:q, :q] @ Sb) * Sb).sum(0) - theta[:block] ** 2
        noise = 10 * self.Q.shape[1] * torch.finfo(r2.dtype).eps * float(theta.abs().max()) ** 2
        near = torch.nonzero(r2 <= noise).flatten()
        if near.numel():
            X, AX = self.combine(Sb[:, near])
            r2[near] = ((AX - X * theta[near]) ** 2).sum(0)
        return theta, S, r2.clamp_min(0).sqrt()

    def combine(self, S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The vectors Q S and their images AQ S."""
        return self.vectors @ S, self.images @ S


def top_eigenpairs(matmat: MatMat, dim: int, k: int, start: torch.Tensor | None = None,
                   tol: float = 1e-4, guard: int = 2, max_products: int | None = None,
                   max_basis: int | None = None, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu", max_gap: float | None = None,
                   workspace: SolverWorkspace | None = None,
                   cluster_width: float | None = None) -> EigResult:
    """Largest-k eigenpairs of the symmetric operator ``matmat`` on R^dim.

    ``start`` (dim, s): seed directions, e.g. the previous step's eigenvectors. Everything
    inside the solver is float64; ``matmat`` receives and must return float64 (dim, b).
    ``max_gap``: an estimate of the spectral gap known from elsewhere. A basis of two or three
    vectors places its lower Ritz values far below the true next eigenvalue, so the gap between
    Ritz values can overstate the true gap many times over; the error bound then uses the
    smaller of the two. ``workspace``: buffers to reuse from the caller's previous solve.
    ``cluster_width``: also bound Ritz values within this relative distance of each other as
    one cluster (``_cluster_bound``), for operators whose top eigenvalues can coincide.
    """
    k = min(k, dim)
    block = min(dim, max(k + guard, start.shape[1] if start is not None else 0))
    max_basis = min(dim, max_basis or max(3 * block, block + 2 * k + 8))
    max_products = max_products or max(50 * block, 200)
    f64: dict[str, Any] = dict(dtype=torch.float64, device=device)

    given = start.to(**f64)[:, :block] if start is not None and start.numel() else None
    fill = block - (given.shape[1] if given is not None else 0)
    parts = [given] if given is not None else []
    if fill:
        parts.append(torch.randn(dim, fill, generator=generator, **f64))
    Q = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    if not _is_orthonormal(Q):  # last step's Ritz block already is: no QR
        Q = _orthonormalize(Q, None)
    while Q.shape[1] < block:  # degenerate seeds: refill with random directions
        Q = torch.cat([Q, _orthonormalize(torch.randn(dim, block - Q.shape[1], generator=generator,
                                                      **f64), Q)], dim=1)
    basis = _Basis(dim, max(max_basis, block), workspace, **f64)
    basis.append(Q, matmat(Q))
    products = Q.shape[1]
    while True:
        q = basis.size
        nb = min(block, q)
        theta, S, rnorm = basis.ritz(nb)
        rel = (_error_bound(rnorm, theta, nb, max_gap, cluster_width)
               / theta[:nb].abs().clamp_min(1e-300))
        done = bool((rel[:k] <= tol).all())
        if done or products >= max_products or q >= dim:
            X = basis.combine(S[:, :nb])[0]
            return EigResult(theta[:k].clone(), X[:, :k], rel[:k].clone(), products,
                             done or q >= dim, basis.vectors, basis.images, X)
        # expand along the unconverged pairs and the guards (seed columns past k + guard are
        # kept in the basis but not expanded, so a 2-vector seed costs 1 product per iteration)
        active = torch.cat([torch.nonzero(rel[:k] > tol).flatten(),
                            torch.arange(k, min(nb, k + guard), device=rel.device)])
        X_a, AX_a = basis.combine(S[:, active])
        R = AX_a - X_a * theta[active]
        restarted = q + active.numel() > max_basis
        if restarted:  # thick restart on the Ritz vectors
            basis.restart(*basis.combine(S[:, :nb]), theta[:nb])
        W = _orthonormalize(R, basis.vectors)
        if W.shape[1] == 0:  # the residuals lie in the basis: an invariant subspace
            W = _orthonormalize(torch.randn(dim, 1, generator=generator, **f64), basis.vectors)
            if W.shape[1] == 0:
                X = basis.vectors.clone() if restarted else basis.combine(S[:, :nb])[0]
                return EigResult(theta[:k].clone(), X[:, :k], rel[:k].clone(), products, True,
                                 basis.vectors, basis.images, X)
        W = W[:, :basis.Q.shape[0] - basis.size]
        basis.append(W, matmat(W))
        products += W.shape[1]


def _is_orthonormal(Q: torch.Tensor, tol: float = 1e-12) -> bool:
    """Whether QᵀQ = I to ``tol``: one small Gram instead of a QR."""
    G = Q.T @ Q
    G.diagonal().sub_(1.0)
    return bool(G.abs().max() <= tol)


def _error_bound(rnorm: torch.Tensor, theta: torch.Tensor, nb: int,
                 max_gap: float | None = None, cluster_width: float | None = None
                 ) -> torch.Tensor:
    """min(‖r‖, ‖r‖²/gap) per Ritz pair; the gap is to the nearest other Ritz value, and at
    most ``max_gap``. With ``cluster_width``, also the bound of the cluster each pair is in
    (``_cluster_bound``), where that is smaller."""
    diff = (theta[:nb, None] - theta[None, :]).abs()
    diff.fill_diagonal_(float("inf"))  # (nb ≤ len(theta): the diagonal is each pair's own)
    gap = diff.min(dim=1).values
    if max_gap is not None:
        gap = gap.clamp_max(max_gap)
    # A lone Ritz value has no gap estimate: only ‖r‖ bounds its error (r²/∞ would claim 0).
    quadratic = torch.where(torch.isfinite(gap), rnorm[:nb]**2 / gap.clamp_min(1e-300),
                            rnorm[:nb])
    bound = torch.minimum(rnorm[:nb], quadratic)
    if cluster_width is None:
        return bound
    clustered = _cluster_bound(rnorm[:nb].detach().cpu().numpy(), theta.detach().cpu().numpy(),
                               nb, cluster_width, max_gap)
    return torch.minimum(bound, torch.from_numpy(clustered).to(bound))


def _cluster_bound(r: np.ndarray, theta: np.ndarray, nb: int, width: float,
                   max_gap: float | None) -> np.ndarray:
    """‖R_c‖²/gap_c for each pair's cluster: the neighbouring Ritz values within ``width``
    (relative) of each other, their block residual ‖R_c‖ ≤ (Σ‖r_i‖²)^½ and the gap from the
    cluster to the other Ritz values (the quadratic residual bound for clusters, Mathias 1998).

    Nearly equal eigenvalues (two Hessian eigenvalues pinned at 2/η, about 1e-6 apart) have
    almost no gap between them, and behind float32 products their individual vectors' residuals
    stall above a tight tolerance: bounded together, their eigenvalues converge with the span.
    ‖r_i‖ where a cluster has no Ritz value outside it."""
    values = theta[:nb]
    scale = np.maximum(np.abs(values), 1e-300)
    near = np.abs(values[:-1] - values[1:]) <= width * np.maximum(scale[:-1], scale[1:])
    cluster = np.concatenate([[0], np.cumsum(~near)])
    same = cluster[:, None] == cluster[None, :]  # (nb, nb)
    inside = np.zeros((nb, len(theta)), dtype=bool)
    inside[:, :nb] = same
    # each member's distance to the nearest Ritz value outside its cluster, then the cluster's
    member_gap = np.where(inside, np.inf, np.abs(values[:, None] - theta[None, :])).min(axis=1)
    gap = np.where(same, member_gap[None, :], np.inf).min(axis=1)
    if max_gap is not None:
        gap = np.minimum(gap, max_gap)
    block_residual_sq = (same * (r * r)[None, :]).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.isfinite(gap), block_residual_sq / np.maximum(gap, 1e-300), r)


def explicit_matmat(K: torch.Tensor) -> MatMat:
    """Products with an explicit symmetric matrix, computed in K's dtype."""
    def apply(V: torch.Tensor) -> torch.Tensor:
        return (K @ V.to(K.dtype)).to(torch.float64)
    return apply


def dense_top_eigenpairs(K: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of a dense symmetric matrix with LAPACK ``eigh``, in float64, descending."""
    values, vectors = torch.linalg.eigh(K.to(torch.float64))
    return values.flip(0)[:k], vectors.flip(1)[:, :k]


# ---- cold, standalone solves: dense LAPACK or the block solver, by size and tolerance ---------

DEFAULT_TOL = 1e-5
"""The block solver's default: eigenvalues to a relative 1e-5 by the error bound (measured on
the W1 MLP's 1000-row float32 kernel, ten cold solves: within 3.0e-7 of dense eigh, the top-20
subspace within 8.7e-4 rad); the dense path is exact to LAPACK's precision whatever the
tolerance."""
DENSE_ROWS = 400
"""Up to this many rows an explicit K goes to dense ``eigh``: on one CPU thread dense and the
cold block solve (k = 20) cost the same at 300–400 rows, and dense grows as m³ beyond."""
# Guard vectors in a cold solve: against an explicit K a wider block means fewer, larger
# iterations (W1, tol 1e-5: 2.9 GD steps with 16 guards, 3.5 with the trainer's 8). Products
# are the whole cost without K: the ViT's (W4) top-5 took 33-37 products with 2 guards, 28-31
# with 1 (and 23-27 with none, but a lone-vector block can settle on the wrong eigenvalue).
EXPLICIT_GUARD, OPERATOR_GUARD = 16, 1


def krylov_tol_floor(dtype: torch.dtype) -> float:
    """The smallest tolerance the block solver is trusted to reach with products computed in
    ``dtype``: below it the residuals stall at rounding level (a float32 W1 kernel: 1e-5 took
    171 products, 1e-6 never converged in 1,100)."""
    return 64 * torch.finfo(dtype).eps


def choose_solver(dim: int, k: int, tol: float, dtype: torch.dtype, explicit: bool) -> str:
    """``dense`` or ``krylov`` for the top-k of a dim × dim kernel, cold.

    Explicit K: dense when small (``DENSE_ROWS``), when k is a tenth of the rows or more (the
    block basis nears the whole space; k = 100 of 1000 rows did not converge in 1000 products),
    or when ``tol`` is below what products in K's dtype resolve. Products only: the matrix is
    built column by column when that takes fewer products than a cold block solve (about
    6 (k + guard))."""
    if explicit:
        if dim <= DENSE_ROWS or 10 * (k + EXPLICIT_GUARD) >= dim or tol < krylov_tol_floor(dtype):
            return "dense"
        return "krylov"
    return "dense" if dim <= 6 * (k + OPERATOR_GUARD) else "krylov"


def kernel_eigenpairs(k: int, K: torch.Tensor | None = None, matmat: MatMat | None = None,
                      dim: int | None = None, dtype: torch.dtype | None = None,
                      tol: float | None = None, solver: str = "auto",
                      device: torch.device | str = "cpu") -> EigResult:
    """Top-k eigenpairs of a symmetric kernel, cold: an explicit ``K``, or ``matmat`` on R^dim
    with products in ``dtype``. ``solver``: ``auto`` (``choose_solver``), ``dense`` or ``krylov``.
    ``tol`` (default ``DEFAULT_TOL``) is the block solver's relative eigenvalue bound. Seeded
    with a private generator: the same call gives the same answer and leaves torch's RNG alone.
    An explicit K whose block solve stalls (rounding) is finished by dense ``eigh``."""
    tol = DEFAULT_TOL if tol is None else tol
    if K is not None:
        dim, dtype, device, matmat = K.shape[0], K.dtype, K.device, explicit_matmat(K)
    assert matmat is not None and dim is not None and dtype is not None
    if solver == "auto":
        solver = choose_solver(dim, k, tol, dtype, explicit=K is not None)
    if solver == "krylov":
        generator = torch.Generator(device=device).manual_seed(0)
        guard = EXPLICIT_GUARD if K is not None else OPERATOR_GUARD
        result = top_eigenpairs(matmat, dim, k, tol=tol, guard=guard, generator=generator,
                                device=device, max_products=dim if K is not None else None)
        if result.converged or K is None:
            return result
    products = 0
    if K is None:  # the matrix from its columns, in blocks that bound the vmapped memory
        eye = torch.eye(dim, dtype=torch.float64, device=device)
        K = torch.cat([matmat(eye[:, j:j + 64]) for j in range(0, dim, 64)], dim=1)
        K = (K + K.T) / 2  # products round asymmetrically; eigh reads one triangle
        products = dim
    values, vectors = dense_top_eigenpairs(K, k)
    return EigResult(values, vectors, torch.zeros_like(values), products, True, vectors,
                     vectors * values, vectors, method="dense")
