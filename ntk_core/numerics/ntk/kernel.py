"""The public empirical NTK: the structured kernel of ``exact``, or, for a model with a layer
its per-sample Jacobians cannot go through (a GRU under ``vmap``), the same matrix assembled
from matrix-free products."""

from __future__ import annotations

import torch
from torch import nn

from .exact import outside_rules, structured_ntk
from .products import NTKOperator

COLUMNS_PER_BLOCK = 64  # NTK-vector products per vmapped block when assembling K


def empirical_ntk(model: nn.Module, X: torch.Tensor, kernel: str = "full") -> torch.Tensor:
    """Exact empirical NTK of ``model`` on ``X``: (n·C) × (n·C) sample-major, or n × n when
    C = 1.

    ``kernel="traced"`` gives the output-traced Σ_c K_cc instead. The model's outputs are (n, C),
    or (n,) for one output. Targets that go with the full kernel are (n, C) (row i·C + c of
    vec(Y)); with an n × n kernel, (n,) or (n, C): see ``losses.kernel_targets``. Returns a fresh
    tensor. Layers outside the per-layer rules (``exact.outside_rules``) are covered too: by
    per-sample Jacobians, or where those fail, by m matrix-free products K e_j.
    """
    try:
        return structured_ntk(model, X, kernel)
    except RuntimeError:
        if not outside_rules(model):
            raise
    op = NTKOperator(model, X, kernel)
    eye = torch.eye(op.dim, dtype=op.dtype, device=X.device)
    K = torch.cat([op.matmat(eye[:, j:j + COLUMNS_PER_BLOCK])
                   for j in range(0, op.dim, COLUMNS_PER_BLOCK)], dim=1)
    return (K + K.T) / 2  # the products are symmetric only to rounding
