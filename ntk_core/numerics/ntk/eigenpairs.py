"""``ntk_eigenpairs``: the top-k NTK eigenpairs of a model, exact or matrix-free."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..eigensolver import DEFAULT_TOL, kernel_eigenpairs
from ..losses import as_outputs
from .cost import estimate_costs
from .exact import check_kernel
from .kernel import empirical_ntk
from .products import NTKOperator


def ntk_eigenpairs(model: nn.Module, X: torch.Tensor, k: int, mode: str = "auto",
                   tol: float | None = None, solver: str = "auto",
                   kernel: str = "full") -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k eigenpairs of the empirical NTK of ``model`` on ``X``, cold.

    Returns (eigenvalues descending (k,), eigenvectors as columns (m, k)), float64. The full
    kernel has m = n·C rows, sample-major (row i·C + c; the model's outputs are (n, C), or (n,)
    for one output); ``kernel="traced"`` is Σ_c K_cc, m = n. Targets that go with the
    eigenvectors are (n, C) or, for one output, (n,): see ``eigen_alignment``.

    ``mode``: ``exact`` forms K with the per-layer rules; ``matrix_free`` uses NTK-vector
    products only; ``auto`` picks the cheaper by the cost and memory model of ``ntk.cost``.
    ``solver``: ``dense`` (LAPACK ``eigh`` in float64: exact to rounding; from m products when
    K is not formed), ``krylov`` (the block solver to ``tol``), or ``auto``: dense for an
    explicit K of at most 400 rows, for k ≥ m/10, or for ``tol`` below what K's dtype resolves;
    otherwise the block solver (``spectral.choose_solver``).

    Accuracy of the default ``tol`` = 1e-5: the block solver stops when the bound on each
    eigenvalue's relative error is ≤ 1e-5; eigenvectors are then good to about √tol in angle.
    The bound is pessimistic. On the W1 MLP (1000 rows, float32 K, the block path: about 200
    products, 7 GD steps with K) ten cold calls along an Edge-of-Stability trajectory were
    within 3.0e-7 (median 1.2e-7) of the float64 dense eigh for the top-20 eigenvalues and
    within 8.7e-4 rad (median 4.6e-4) for their subspace; with ``solver="dense"``, 2.4e-8 and
    6.2e-7 rad (docs/performance.md, "Cold standalone calls"). A block solve that stops short
    of ``tol`` (matrix-free, tol near the products' rounding) warns.
    """
    if mode not in ("auto", "exact", "matrix_free"):
        raise ValueError(f"mode: expected auto, exact or matrix_free, got {mode!r}")
    if solver not in ("auto", "dense", "krylov"):
        raise ValueError(f"solver: expected auto, dense or krylov, got {solver!r}")
    check_kernel(kernel)
    tol = DEFAULT_TOL if tol is None else tol
    if not 0 < tol < 1:
        raise ValueError(f"tol: must be in (0, 1), got {tol}")
    with torch.no_grad():
        outputs = as_outputs(model(X[:1])).shape[1]
    m = X.shape[0] * (outputs if kernel == "full" else 1)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= m:
        raise ValueError(f"k: expected an integer in 1..{m} (the {kernel} kernel has {m} rows: "
                         f"{X.shape[0]} samples, {outputs} outputs), got {k!r}")
    if mode == "auto":
        mode = estimate_costs(model, X, outputs, kernel, k).choice
    if mode == "exact":
        result = kernel_eigenpairs(k, K=empirical_ntk(model, X, kernel), tol=tol, solver=solver)
    else:
        op = NTKOperator(model, X, kernel)
        result = kernel_eigenpairs(k, matmat=op.matmat, dim=op.dim, dtype=op.dtype, tol=tol,
                                   solver=solver, device=X.device)
    if not result.converged:
        warnings.warn(f"ntk_eigenpairs: the block solver stopped after {result.products} "
                      f"products with a relative error bound of {float(result.residuals.max()):.1e}"
                      f", above tol {tol:g}; a float64 model or a looser tol resolves it",
                      RuntimeWarning, stacklevel=2)
    return result.values, result.vectors
