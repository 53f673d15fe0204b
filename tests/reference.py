"""Independent float64 references for the numerical tests: jacrev Jacobians, dense Hessians."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jacrev

from ntk_core import RunConfig
from ntk_core.data import load_dataset
from ntk_core.models import build_model


def jacobian(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """(n·C, p) Jacobian, sample-major rows, via torch.func.jacrev on the whole batch."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    J = jacrev(lambda p: functional_call(model, p, (X,)))(params)
    return torch.cat([j.reshape(j.shape[0] * j.shape[1], -1) for j in J.values()], dim=1)


def reference_ntk(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    J = jacobian(model, X)
    return J @ J.T


def dense_hessian(model: nn.Module, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Dense Hessian of L = (1/2n) Σ‖f − y‖² over the flattened parameters."""
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(theta: torch.Tensor) -> torch.Tensor:
        params, i = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            size = shape.numel()
            params[name] = theta[i:i + size].view(shape)
            i += size
        f = functional_call(model, params, (X,))
        return 0.5 * ((f - Y) ** 2).sum() / X.shape[0]

    return torch.autograd.functional.hessian(loss, flat)


TINY = {
    "mlp": dict(arch="mlp", width=16, depth=2),
    "cnn": dict(arch="cnn", width=4, depth=2),
    "vit": dict(arch="vit", width=8, depth=1, heads=2, patch=4),
    "linear2": dict(arch="linear2", width=8, target="binary", classes=(0, 1)),
}


def tiny_setup(arch: str, dtype: str = "float64", n: int = 12, **overrides):
    """A tiny model of ``arch`` on digits with its data, for reference comparisons."""
    options = dict(dataset="digits", n=n, classes=(0, 1, 2), dtype=dtype, seed=0)
    options.update(TINY[arch])
    options.update(overrides)
    cfg = RunConfig(**options)
    data = load_dataset(cfg)
    model = build_model(cfg, tuple(data.X.shape[1:]), data.Y.shape[1])
    return cfg, data, model
