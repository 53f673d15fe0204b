"""``ntk_eigenpairs``: the top-k NTK eigenpairs of a model, exact or matrix-free."""

from __future__ import annotations

import torch
from torch import nn

from ..eigensolver import explicit_matmat, top_eigenpairs
from .cost import estimate_costs
from .exact import empirical_ntk
from .products import NTKOperator


def ntk_eigenpairs(model: nn.Module, X: torch.Tensor, k: int, mode: str = "auto",
                   tol: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k eigenpairs of the (full, sample-major) empirical NTK of ``model`` on ``X``.

    Returns (eigenvalues descending (k,), eigenvectors as columns (m, k)), float64.
    ``mode``: ``exact`` forms K with the per-layer rules; ``matrix_free`` uses NTK-vector
    products only; ``auto`` picks the cheaper by the cost and memory model of ``ntk.cost``.
    """
    if mode not in ("auto", "exact", "matrix_free"):
        raise ValueError(f"mode: expected auto, exact or matrix_free, got {mode!r}")
    if mode == "auto":
        with torch.no_grad():
            outputs = model(X[:1]).shape[1]
        mode = estimate_costs(model, X, outputs, "full", k).choice
    if mode == "exact":
        K = empirical_ntk(model, X)
        matmat, dim = explicit_matmat(K), K.shape[0]
    else:
        op = NTKOperator(model, X, "full")
        matmat, dim = op.matmat, op.dim
    result = top_eigenpairs(matmat, dim, k, tol=tol, device=X.device)
    return result.values, result.vectors
