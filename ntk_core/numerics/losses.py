"""Training losses and their function-space residuals.

MSE follows both Cohen et al. codebases: L = (1/2n) Σ_i ‖f(x_i) − y_i‖², whose gradient in
function space is r/n with r = f − y. Cross-entropy is the mean over samples; its residual is
softmax(f) − y, the same role in the linearised dynamics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def loss_value(f: torch.Tensor, Y: torch.Tensor, loss: str = "mse") -> torch.Tensor:
    if loss == "mse":
        return 0.5 * ((f - Y) ** 2).sum() / f.shape[0]
    if loss == "ce":
        return F.cross_entropy(f, Y.argmax(1))
    raise ValueError(f"loss: unknown loss {loss!r} (expected mse or ce)")


def residual(f: torch.Tensor, Y: torch.Tensor, loss: str = "mse") -> torch.Tensor:
    if loss == "ce":
        return f.softmax(1) - Y
    return f - Y


def accuracy(f: torch.Tensor, Y: torch.Tensor) -> float:
    if Y.shape[1] == 1:
        return float(((f[:, 0] > 0) == (Y[:, 0] > 0)).double().mean())
    return float((f.argmax(1) == Y.argmax(1)).double().mean())
