"""Small convolutional network: ``depth`` conv layers of ``width`` channels, optional pooling,
global average, linear read-out. Works on 2-D images (c, h, w) and 1-D signals (c, L)."""

from __future__ import annotations

import torch
from torch import nn

from .activations import make_activation


class CNN(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], width: int, depth: int, d_out: int,
                 activation: str = "relu", pooling: str = "avg", bias: bool = True) -> None:
        super().__init__()
        one_d = len(input_shape) == 2
        conv = nn.Conv1d if one_d else nn.Conv2d
        pool = {"avg": nn.AvgPool1d if one_d else nn.AvgPool2d,
                "max": nn.MaxPool1d if one_d else nn.MaxPool2d}.get(pooling)
        layers: list[nn.Module] = []
        channels = input_shape[0]
        spatial = min(input_shape[1:])
        for _ in range(depth):
            layers += [conv(channels, width, kernel_size=3, padding=1, bias=bias),
                       make_activation(activation)]
            channels = width
            if pool is not None and spatial >= 4:  # stop pooling before the map vanishes
                layers.append(pool(2))
                spatial //= 2
        self.features = nn.Sequential(*layers)
        self.readout = nn.Linear(channels, d_out, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.readout(h.flatten(2).mean(-1))
