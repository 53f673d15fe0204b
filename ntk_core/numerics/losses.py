"""Training losses, their function-space residuals, and the shape rules for targets.

MSE follows both Cohen et al. codebases: L = (1/2n) Σ_i ‖f(x_i) − y_i‖², whose gradient in
function space is r/n with r = f − y. Cross-entropy is the mean over samples; its residual is
softmax(f) − y, the same role in the linearised dynamics.

Targets come as (n,) or (n, C). This module is the one place that reads them against what they
are compared with: the model's outputs (``as_outputs``, ``as_targets``) or the rows of a kernel
(``kernel_targets``). Everything public that takes targets goes through one of them, so a shape
that does not fit fails here with both shapes named, never by silent broadcasting
((n, 1) − (n,) is n × n).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

LOSSES = ("mse", "ce")


def as_outputs(f: torch.Tensor) -> torch.Tensor:
    """Model outputs as an (n, C) matrix: a single-output model may return (n,)."""
    if f.dim() == 1:
        return f[:, None]
    if f.dim() != 2:
        raise ValueError(f"model outputs: expected shape (n,) or (n, C), got {tuple(f.shape)}")
    return f


def as_targets(Y: torch.Tensor, f: torch.Tensor, loss: str = "mse") -> torch.Tensor:
    """Targets as an (n, C) matrix in the dtype of the outputs ``f`` (n, C) or (n,).

    Accepted: (n, C); (n,) for a single-output model; integer class labels (n,) for a model
    with C > 1 outputs, one-hot encoded (the datasets' own one-hot targets are 0/1 too).
    Anything else is a ValueError naming both shapes."""
    if loss not in LOSSES:
        raise ValueError(f"loss: unknown loss {loss!r} (expected mse or ce)")
    f = as_outputs(f)
    n, C = f.shape
    Y = torch.as_tensor(Y, device=f.device)
    given = tuple(Y.shape)
    if Y.dim() not in (1, 2) or Y.shape[0] != n:
        raise ValueError(f"targets: expected shape ({n},) or ({n}, {C}) for model outputs "
                         f"{tuple(f.shape)}, got {given}")
    if loss == "ce" and C < 2:
        raise ValueError(f"loss: cross-entropy needs a model with at least two outputs; "
                         f"the outputs have shape {tuple(f.shape)}")
    if Y.dim() == 1 and C == 1:
        Y = Y[:, None]
    elif Y.dim() == 1:
        if Y.dtype.is_floating_point or Y.dtype.is_complex or Y.dtype == torch.bool:
            raise ValueError(f"targets: shape {given} fits a single-output model, but the "
                             f"outputs have shape {tuple(f.shape)}: pass ({n}, {C}) targets "
                             f"(one-hot for classes) or integer class labels")
        if int(Y.min()) < 0 or int(Y.max()) >= C:
            raise ValueError(f"targets: class labels must lie in 0..{C - 1} for {C} outputs, "
                             f"got {int(Y.min())}..{int(Y.max())}")
        Y = F.one_hot(Y.long(), C)
    elif Y.shape[1] != C:
        raise ValueError(f"targets: shape {given} does not match model outputs "
                         f"{tuple(f.shape)}: expected ({n}, {C})")
    return Y.to(f.dtype)


def kernel_targets(Y: torch.Tensor, rows: int) -> torch.Tensor:
    """Targets in the coordinates of an m × m kernel (m = ``rows``), float64, as (m, q).

    * (m,) or (m, q): already in kernel rows — a single-output or output-traced kernel;
    * (n, C) with n·C = m: the full sample-major kernel (row i·C + c), as the column vec(Y).

    (n,) against a full kernel with C > 1 is refused: which output it belongs to is unknown."""
    Y = torch.as_tensor(Y)
    given = tuple(Y.shape)
    if Y.dim() == 1 and Y.shape[0] == rows:
        return Y[:, None].to(torch.float64)
    if Y.dim() == 2 and Y.shape[0] == rows:
        return Y.to(torch.float64)
    if Y.dim() == 2 and Y.shape[0] * Y.shape[1] == rows:
        return Y.reshape(-1, 1).to(torch.float64)
    if Y.dim() == 1 and Y.shape[0] > 0 and rows % Y.shape[0] == 0:
        C = rows // Y.shape[0]
        raise ValueError(f"targets: shape {given} against a {rows} × {rows} kernel, which has "
                         f"{C} outputs per sample: pass ({Y.shape[0]}, {C}) targets")
    raise ValueError(f"targets: shape {given} does not fit a {rows} × {rows} kernel: expected "
                     f"({rows},), ({rows}, q), or (n, C) with n·C = {rows}")


def loss_value(f: torch.Tensor, Y: torch.Tensor, loss: str = "mse") -> torch.Tensor:
    """The training loss of outputs ``f`` against targets ``Y`` (shapes as in ``as_targets``)."""
    Y = as_targets(Y, f, loss)
    f = as_outputs(f)
    if loss == "mse":
        return 0.5 * ((f - Y) ** 2).sum() / f.shape[0]
    return F.cross_entropy(f, Y.argmax(1))


def residual(f: torch.Tensor, Y: torch.Tensor, loss: str = "mse") -> torch.Tensor:
    """The function-space residual (n, C): f − y for MSE, softmax(f) − y for cross-entropy."""
    Y = as_targets(Y, f, loss)
    f = as_outputs(f)
    if loss == "ce":
        return f.softmax(1) - Y
    return f - Y


def accuracy(f: torch.Tensor, Y: torch.Tensor) -> float:
    """Share of samples classified right: the sign for one output, the argmax for several."""
    Y = as_targets(Y, f)
    f = as_outputs(f)
    if Y.shape[1] == 1:
        return float(((f[:, 0] > 0) == (Y[:, 0] > 0)).double().mean())
    return float((f.argmax(1) == Y.argmax(1)).double().mean())


def gradient_norm(grads: Sequence[torch.Tensor]) -> float:
    """‖g‖ over every parameter tensor, each square summed in float64: a float32 sum's rounding
    depends on how many threads split it (a sweep's workers and a lone process differed in the
    last bit of float32 runs)."""
    total = torch.zeros((), dtype=torch.float64, device=grads[0].device)
    for g in grads:  # in order, as a float64 run always summed them
        total = total + (g.detach().double() ** 2).sum()
    return float(total.sqrt())


def divergence(loss: float, initial: float, factor: float, step: int) -> str:
    """Why a run (or a flow) diverged at ``step``, or "": a non-finite loss, or one above
    ``factor`` times the first (``initial``)."""
    if not math.isfinite(loss):
        return f"diverged at step {step}: the loss is {loss}"
    if loss > factor * max(initial, 1e-12):
        return f"diverged at step {step}: loss {loss:.3g} exceeds {factor:g}× its initial value"
    return ""
