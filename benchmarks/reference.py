"""Float64 references the measured values are checked against (never timed).

* kernel spectrum: dense ``eigh`` of the float64 kernel when it fits (explicit K by the
  structured rules on a float64 copy of the model; cross-checked against torch.func jacrev in
  tests/integration/test_benchmarks.py; LAPACK's subset solver, so the top-k eigenvectors come
  with the values), otherwise ARPACK (scipy ``eigsh``, tol 1e-10) on float64 NTK-vector products;
* sharpness: ARPACK on float64 Hessian-vector products, tol 1e-10.
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


def float64_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).double()


def dense_kernel_reference(model: nn.Module, X: torch.Tensor, Y: torch.Tensor, kernel: str,
                           k: int) -> dict[str, object]:
    """Top-k eigenpairs (descending), KTA and centred KTA of the float64 kernel, by dense eigh."""
    K = empirical_ntk(float64_copy(model), X.double(), kernel)
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
    op = NTKOperator(float64_copy(model), X.double(), kernel)
    values = _scipy_top(op.matmat, op.dim, k, X.device)
    return {"values": torch.from_numpy(values.copy()).to(X.device)}


def sharpness_reference(model: nn.Module, X: torch.Tensor, Y: torch.Tensor) -> float:
    """λ_max(∇²L) of the float64 model."""
    m64 = float64_copy(model)
    params = [p for p in m64.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_value(m64(X.double()), Y.double()), params, create_graph=True)
    op = HessianOperator(grads, params)
    return float(_scipy_top(op.matmat, op.dim, 1, X.device)[0])
