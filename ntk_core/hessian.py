"""Loss-Hessian products and the sharpness λ_max(∇²L).

Hessian-vector products reuse one gradient graph (``create_graph=True``): each product is a
single double-backward through it, and the graph is the same one the GD step takes its gradient
from, so a measured step pays only for the products.
"""

from __future__ import annotations

import torch
from torch import nn

from .losses import loss_value
from .spectral import EigResult, top_eigenpairs


class HessianOperator:
    """∇²L at the current weights as an operator on flat parameter vectors (float64 in and out)."""

    def __init__(self, grads: tuple[torch.Tensor, ...], params: list[torch.Tensor]) -> None:
        self.grads = grads
        self.params = params
        self.dim = sum(p.numel() for p in params)
        self.products = 0

    def _unflatten(self, v: torch.Tensor) -> list[torch.Tensor]:
        out, i = [], 0
        for p in self.params:
            out.append(v[i:i + p.numel()].view_as(p).to(p.dtype))
            i += p.numel()
        return out

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        cols = []
        for v in V.T:
            dot = sum((g * u).sum() for g, u in zip(self.grads, self._unflatten(v), strict=True))
            hv = torch.autograd.grad(dot, self.params, retain_graph=True, allow_unused=True)
            cols.append(torch.cat([(h if h is not None else torch.zeros_like(p)).reshape(-1)
                                   for h, p in zip(hv, self.params, strict=True)]))
        self.products += V.shape[1]
        return torch.stack(cols, dim=1).to(torch.float64)


def top_hessian_eigenpair(op: HessianOperator, start: torch.Tensor | None = None,
                          tol: float = 1e-4, guard: int = 0,
                          generator: torch.Generator | None = None) -> EigResult:
    """Top Hessian eigenpair, warm-started from ``start`` (p, s) seed directions."""
    device = op.params[0].device
    return top_eigenpairs(op.matmat, op.dim, 1, start=start, tol=tol, guard=guard,
                          max_products=300, generator=generator, device=device)


def hessian_sharpness(model: nn.Module, X: torch.Tensor, Y: torch.Tensor, loss: str = "mse",
                      tol: float = 1e-6) -> float:
    """λ_max of the Hessian of L = (1/2n) Σ‖f − y‖² (or mean cross-entropy) at the current weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    L = loss_value(model(X), Y, loss)
    grads = torch.autograd.grad(L, params, create_graph=True)
    result = top_hessian_eigenpair(HessianOperator(grads, params), tol=tol, guard=1)
    return float(result.values[0])
