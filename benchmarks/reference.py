"""Float64 references the measured values are checked against (never timed).

* kernel spectrum: dense ``eigh`` of the float64 kernel when it fits (explicit K by the
  structured rules on a float64 copy of the model; cross-checked against torch.func jacrev in
  tests/integration/test_benchmarks.py; LAPACK's subset solver, so the top-k eigenvectors come
  with the values), otherwise ARPACK (scipy ``eigsh``, tol 1e-10) on float64 NTK-vector products;
* sharpness: ARPACK on float64 Hessian-vector products, tol 1e-10.

The float64 copy keeps the ReLU gates the float32 forward chose on the same inputs
(``float64_copy(model, X)``). A pre-activation within rounding of 0 can open in one precision and
close in the other; its derivative then jumps by O(1) and moves the kernel's small eigenvalues by
far more than rounding does. At a kink the derivative is a convention: the reference takes the
measured model's. ``gate_flips`` counts the gates the two precisions set differently.
"""

from __future__ import annotations

import copy

import numpy as np
import scipy.linalg
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import nn

from ntk_core.numerics.alignment import centered_kernel_target_alignment, kernel_target_alignment
from ntk_core.numerics.hessian import HessianOperator
from ntk_core.numerics.losses import loss_value
from ntk_core.numerics.ntk import NTKOperator, empirical_ntk

ARPACK_TOL = 1e-10


class PinnedGate(nn.Module):
    """A ReLU whose gates are fixed to a recorded mask: x · mask (derivative: the mask)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape != self.mask.shape:
            raise ValueError(f"pinned gates recorded for {tuple(self.mask.shape)}, got "
                             f"{tuple(x.shape)}: the reference must see the recorded inputs")
        return x * self.mask


def relu_gates(model: nn.Module, X: torch.Tensor) -> dict[str, torch.Tensor]:
    """name → (pre-activation > 0) of each ReLU that runs once in ``model(X)``."""
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = [module.register_forward_hook(
                 lambda _m, inputs, _out, name=name: seen.setdefault(name, []).append(inputs[0] > 0))
             for name, module in model.named_modules() if isinstance(module, nn.ReLU)]
    try:
        with torch.no_grad():
            model(X)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: masks[0] for name, masks in seen.items() if len(masks) == 1}


def float64_copy(model: nn.Module, X: torch.Tensor | None = None) -> nn.Module:
    """A float64 copy of ``model``; given the inputs ``X``, with the ReLU gates the model's own
    forward on ``X`` sets (the copy then only takes those inputs)."""
    m64 = copy.deepcopy(model).double()
    if X is None:
        return m64
    for name, mask in relu_gates(model, X).items():
        parent_name, _, attr = name.rpartition(".")
        setattr(m64.get_submodule(parent_name), attr, PinnedGate(mask))
    return m64


def gate_flips(model: nn.Module, X: torch.Tensor) -> int:
    """How many ReLU gates the float64 forward on ``X`` sets otherwise than ``model``'s own."""
    ours, exact = relu_gates(model, X), relu_gates(copy.deepcopy(model).double(), X.double())
    return sum(int((ours[name] != exact[name]).sum()) for name in ours)


def dense_kernel_reference(model: nn.Module, X: torch.Tensor, Y: torch.Tensor, kernel: str,
                           k: int) -> dict[str, object]:
    """Top-k eigenpairs (descending), KTA and centred KTA of the float64 kernel, by dense eigh."""
    K = empirical_ntk(float64_copy(model, X), X.double(), kernel)
    m = K.shape[0]
    values, vectors = scipy.linalg.eigh(K.cpu().numpy(), subset_by_index=[m - k, m - 1])
    values, vectors = (torch.from_numpy(a.copy()).to(K.device) for a in (values[::-1], vectors[:, ::-1]))
    return {"values": values, "vectors": vectors, "kta": kernel_target_alignment(K, Y),
            "kta_centered": centered_kernel_target_alignment(K, Y), "K": K}


def _scipy_top(apply, dim: int, k: int, device: torch.device) -> np.ndarray:
    """ARPACK on a torch operator (V (dim, b) float64 -> A V); vectors cross to the CPU."""
    def matvec(v: np.ndarray) -> np.ndarray:
        v = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(-1, 1)).to(device)
        return apply(v).cpu().numpy()[:, 0]

    op = LinearOperator((dim, dim), matvec=matvec, dtype=np.float64)
    values = eigsh(op, k=k, which="LA", tol=ARPACK_TOL, return_eigenvectors=False)
    return np.sort(values)[::-1]


def operator_kernel_reference(model: nn.Module, X: torch.Tensor, kernel: str,
                              k: int) -> dict[str, object]:
    """Top-k eigenvalues of the float64 kernel from NTK-vector products (K is never formed)."""
    op = NTKOperator(float64_copy(model, X), X.double(), kernel)
    values = _scipy_top(op.matmat, op.dim, k, X.device)
    return {"values": torch.from_numpy(values.copy()).to(X.device)}


def sharpness_reference(model: nn.Module, X: torch.Tensor, Y: torch.Tensor) -> float:
    """λ_max(∇²L) of the float64 model."""
    m64 = float64_copy(model, X)
    params = [p for p in m64.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_value(m64(X.double()), Y.double()), params, create_graph=True)
    op = HessianOperator(grads, params)
    return float(_scipy_top(op.matmat, op.dim, 1, X.device)[0])
