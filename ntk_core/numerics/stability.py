"""Where each optimiser's Edge of Stability lies: the curvature above which its iteration on a
quadratic diverges, as a function of its hyperparameters.

On the 1-D quadratic L(w) = λw²/2 each update below is a linear recurrence in w; it is stable
while every root of its characteristic polynomial lies inside the unit circle, which holds
exactly while λ (or, for the adaptive methods, λ/P with a frozen preconditioner P) stays below
the threshold returned here:

* gradient descent (and mini-batch SGD, on the batch sharpness): 2/η;
* heavy ball, v ← g + βv, w ← w − ηv: (2 + 2β)/η (Cohen et al. 2021, appendix);
* Nesterov, v ← g + βv, w ← w − η(g + βv): (2 + 2β)/(η(1 + 2β));
* RMSProp, on the preconditioned sharpness λ_max(P⁻¹H): 2/η;
* Adam, m ← β₁m + (1 − β₁)g, on λ_max(P⁻¹H): 2(1 + β₁)/((1 − β₁)η), which is 38/η at β₁ = 0.9
  (Cohen et al. 2022, "Adaptive Gradient Methods at the Edge of Stability").
"""

from __future__ import annotations

from ..vocabulary import OptimizerName


def stability_threshold(optimizer: OptimizerName, lr: float, momentum: float = 0.0,
                        nesterov: bool = False, beta1: float = 0.9) -> float:
    """The sharpness at which ``optimizer`` with learning rate ``lr`` stops being stable.

    ``momentum`` and ``nesterov`` apply to ``gd`` and ``sgd``; ``beta1`` to ``adam``."""
    if not lr > 0:
        raise ValueError(f"lr: the learning rate must be positive, got {lr!r}")
    if optimizer == "adam":
        return 2 * (1 + beta1) / ((1 - beta1) * lr)
    if optimizer == "rmsprop":
        return 2 / lr
    if optimizer in ("gd", "sgd"):
        return (2 + 2 * momentum) / (lr * (1 + 2 * momentum if nesterov else 1))
    raise ValueError(f"optimizer: {optimizer!r} is not one of gd, sgd, adam, rmsprop")


def threshold_label(optimizer: OptimizerName, momentum: float = 0.0, nesterov: bool = False,
                    beta1: float = 0.9) -> str:
    """The threshold's formula as the dashboard labels its line: "2/η", "(2+2β)/η",
    "38/η (Adam, β₁ = 0.9)"."""
    if optimizer == "adam":
        coefficient = 2 * (1 + beta1) / (1 - beta1)
        return f"{coefficient:.3g}/η (Adam, β₁ = {beta1:g})"
    if optimizer == "rmsprop":
        return "2/η (RMSProp)"
    if momentum:
        formula = "(2+2β)/(η(1+2β))" if nesterov else "(2+2β)/η"
        return f"{formula}, β = {momentum:g}" + (" (Nesterov)" if nesterov else "")
    return "2/η"


def tracked_sharpness(optimizer: OptimizerName) -> str:
    """The logged sharpness that hovers at the threshold: the Hessian's for full-batch GD, the
    preconditioned one for the adaptive methods, the batch sharpness for mini-batch SGD."""
    return {"gd": "sharpness", "sgd": "batch_sharpness", "adam": "preconditioned_sharpness",
            "rmsprop": "preconditioned_sharpness"}[optimizer]
