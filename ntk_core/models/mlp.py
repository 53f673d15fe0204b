"""Fully-connected network: ``depth`` hidden layers of ``width`` units, a linear read-out."""

from __future__ import annotations

import torch
from torch import nn

from .activations import make_activation


class MLP(nn.Module):
    def __init__(self, d_in: int, width: int, depth: int, d_out: int, activation: str = "tanh",
                 bias: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        fan_in = d_in
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width, bias=bias), make_activation(activation)]
            fan_in = width
        layers.append(nn.Linear(fan_in, d_out, bias=bias))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))
