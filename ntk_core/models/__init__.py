"""Model zoo: MLP, CNN, small ViT and the two-layer linear network, built from a RunConfig."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ConfigError, RunConfig
from .cnn import CNN
from .linear2 import Linear2
from .mlp import MLP
from .vit import ViT

__all__ = ["CNN", "MLP", "UNUSED_FIELDS", "Linear2", "ViT", "build_model"]

# RunConfig fields an architecture ignores: f(x) = vᵀWx has no depth and no activation
UNUSED_FIELDS: dict[str, tuple[str, ...]] = {"linear2": ("depth", "activation")}


def build_model(config: RunConfig, input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """Construct the configured architecture with PyTorch's default init, seeded by config.seed.

    ``init_scale`` multiplies every parameter after the default initialisation.
    """
    torch.manual_seed(config.seed)
    if config.arch == "mlp":
        model: nn.Module = MLP(_flat_dim(input_shape), config.width, config.depth, num_outputs,
                               config.activation, config.bias)
    elif config.arch == "linear2":
        model = Linear2(_flat_dim(input_shape), config.width)
    elif config.arch == "cnn":
        if len(input_shape) not in (2, 3):
            raise ConfigError(f"arch: cnn needs image inputs (c, h, w) or (c, L), got {input_shape}")
        model = CNN(input_shape, config.width, config.depth, num_outputs, config.activation,
                    config.pooling, config.bias)
    elif config.arch == "vit":
        if len(input_shape) != 2:
            raise ConfigError(f"arch: vit needs token inputs (T, d), got {input_shape}")
        model = ViT(input_shape[0], input_shape[1], config.width, config.depth, config.heads,
                    num_outputs, config.activation)
    else:  # validated by RunConfig; kept for direct callers
        raise ConfigError(f"arch: unknown architecture {config.arch!r}")
    if config.init_scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(config.init_scale)
    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    return model.to(dtype)


def _flat_dim(input_shape: tuple[int, ...]) -> int:
    size = 1
    for s in input_shape:
        size *= s
    return size
