"""Two-layer linear network f(x) = vᵀ W x, the model the paper's theory solves.

Its NTK is exactly K = X WᵀW Xᵀ + ‖v‖² X Xᵀ (Jiang, Cohen, Li 2025, Sec. 4).
"""

from __future__ import annotations

import torch
from torch import nn


class Linear2(nn.Module):
    def __init__(self, d_in: int, width: int) -> None:
        super().__init__()
        self.W = nn.Linear(d_in, width, bias=False)
        self.v = nn.Linear(width, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.v(self.W(x.flatten(1)))
