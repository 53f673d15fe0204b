"""Kernel–target alignment and the eigen-alignment spectrum.

For targets Y in the kernel's rows (m × q; a vector when q = 1) the target kernel is T = Y Yᵀ
and

* KTA(K, Y) = ⟨K, T⟩_F / (‖K‖_F ‖T‖_F)  (Cristianini et al. 2001); centred: K_c = HKH, Y_c = HY
  with H = I − 11ᵀ/m (Cortes et al. 2012);
* a_i = ‖Yᵀu_i‖² / ‖Y‖_F², the share of the targets along eigenvector u_i (Σ_i a_i = 1);
* A_k = Σ_{i≤k} a_i, the top-k mass (the paper plots k = 20);
* λ̃_i = λ_i / ‖K‖_F; then KTA = (‖Y‖_F² / ‖T‖_F) Σ_i λ̃_i a_i, which is Σ_i λ̃_i a_i exactly for a
  single target vector;
* kernel distance (Fort et al. 2020): 1 − ⟨K_t, K_s⟩_F / (‖K_t‖_F ‖K_s‖_F).

Targets may be given as (n,) or (n, C) however the kernel is laid out: ``losses.kernel_targets``
maps them to its rows (vec(Y) for the full sample-major kernel, Y itself for an n × n one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .losses import kernel_targets


def _square(K: torch.Tensor) -> int:
    if K.dim() != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"kernel: expected a square matrix, got shape {tuple(K.shape)}")
    return K.shape[0]


def target_fro(y: torch.Tensor) -> float:
    """‖Y Yᵀ‖_F = ‖Yᵀ Y‖_F, without forming the m × m target kernel; Y (m,) or (m, q)."""
    Y = (y.reshape(-1, 1) if y.dim() == 1 else y).to(torch.float64)
    return float(torch.linalg.matrix_norm(Y.T @ Y))


def kernel_target_alignment(K: torch.Tensor, y: torch.Tensor) -> float:
    """KTA = ⟨K, yyᵀ⟩_F / (‖K‖_F ‖yyᵀ‖_F).

    ``K``: an m × m kernel; ``y``: (m,) or (m, q) in its rows, or (n, C) targets against the
    full sample-major kernel (m = n·C), which stand for the column vec(Y). An n × n kernel (one
    output, or output-traced) with (n, C) targets uses T = Y Yᵀ."""
    Y = kernel_targets(y, _square(K)).to(K.device)
    num = float((Y * (K @ Y.to(K.dtype)).to(torch.float64)).sum())
    den = fro_norm(K) * target_fro(Y)
    return num / den if den > 0 else math.nan


def centered_kernel_target_alignment(K: torch.Tensor, y: torch.Tensor) -> float:
    """KTA of the centred kernel HKH against the centred targets HY, without forming HKH.
    Targets as in ``kernel_target_alignment``."""
    Y = kernel_targets(y, _square(K)).to(K.device)
    ones = torch.ones(K.shape[0], 1, dtype=torch.float64, device=K.device)
    KY, K1 = (K @ torch.cat([Y, ones], 1).to(K.dtype)).to(torch.float64).split([Y.shape[1], 1], 1)
    return centered_alignment_from_products(Y, KY, K1, fro_norm(K))


def centered_alignment_from_products(Y: torch.Tensor, KY: torch.Tensor, K1: torch.Tensor,
                                     fro: float) -> float:
    """Centred KTA from K Y, K 1 and ‖K‖_F, with H = I − 11ᵀ/m idempotent:
    ⟨HKH, Y_cY_cᵀ⟩ = Y_cᵀ K Y_c and ‖HKH‖_F² = ‖K‖_F² − (2/m)‖K1‖² + (1ᵀK1)²/m²."""
    m = Y.shape[0]
    Yc = Y - Y.mean(0, keepdim=True)
    KYc = KY - K1 * Y.mean(0, keepdim=True)
    num = float((Yc * KYc).sum())
    kc2 = fro**2 - 2.0 / m * float((K1**2).sum()) + float(K1.sum()) ** 2 / m**2
    den = math.sqrt(max(kc2, 0.0)) * target_fro(Yc)
    return num / den if den > 0 else math.nan


def fro_norm(K: torch.Tensor) -> float:
    """‖K‖_F as one BLAS dot: its blocked accumulation errs ~1e-7 relative in float32, where
    float32 ``vector_norm`` errs ~1e-5 and its float64 upcast costs 10× the time."""
    flat = K.reshape(-1)
    return math.sqrt(max(float(torch.dot(flat, flat)), 0.0))


def eigen_alignment(vectors: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """a_i = ‖Yᵀ u_i‖² / ‖Y‖_F² for each column u_i of ``vectors`` (m, k): kernel eigenvectors,
    whose rows are the kernel's. Targets as in ``kernel_target_alignment``."""
    if vectors.dim() != 2:
        raise ValueError(f"vectors: expected (m, k) columns, got shape {tuple(vectors.shape)}")
    Y = kernel_targets(y, vectors.shape[0]).to(vectors.device)
    proj = vectors.to(torch.float64).T @ Y  # (k, q)
    return (proj**2).sum(1) / (Y**2).sum()


def kernel_distance(K: torch.Tensor, K_ref: torch.Tensor, fro: float | None = None,
                    fro_ref: float | None = None) -> float:
    """1 − ⟨K, K_ref⟩/(‖K‖_F‖K_ref‖_F); pass the norms when they are already known."""
    den = (fro if fro is not None else fro_norm(K)) * (fro_ref if fro_ref is not None
                                                      else fro_norm(K_ref))
    inner = float(torch.dot(K.reshape(-1), K_ref.reshape(-1).to(K.dtype)))
    return 1.0 - inner / den if den > 0 else math.nan


@dataclass
class FroEstimate:
    value: float  # estimate of ‖K‖_F
    stderr: float  # its standard error (0 when exact)
    products: int


def deflated_fro_norm(matmat, basis: torch.Tensor, basis_image: torch.Tensor, probes: int = 8,
                      generator: torch.Generator | None = None) -> FroEstimate:
    """‖K‖_F² = ‖KQ‖_F² + ‖K(I − QQᵀ)‖_F²: the first term exactly from the eigensolver's basis Q
    and its stored images, the second by Hutchinson with probes projected off Q.

    Plain Hutchinson errs 13–28 % at 10 probes; deflating the top subspace, which holds most of
    ‖K‖_F at EoS, brings that to a few percent. The standard error is of the second term only.
    """
    head = float((basis_image**2).sum())
    m = basis.shape[0]
    if basis.shape[1] >= m:
        return FroEstimate(math.sqrt(head), 0.0, 0)
    Z = torch.randn(m, probes, dtype=torch.float64, device=basis.device, generator=generator)
    Z = Z - basis @ (basis.T @ Z)
    samples = (matmat(Z) ** 2).sum(0)  # each an unbiased estimate of ‖K(I − QQᵀ)‖_F²
    tail = float(samples.mean())
    tail_se = float(samples.std() / math.sqrt(probes)) if probes > 1 else math.nan
    total = head + tail
    value = math.sqrt(max(total, 0.0))
    stderr = tail_se / (2 * value) if value > 0 else math.nan  # delta method for the sqrt
    return FroEstimate(value, stderr, probes)
