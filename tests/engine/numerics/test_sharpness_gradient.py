"""∇_w λ_max(∇²L) against central finite differences of a dense float64 eigensolve."""

from __future__ import annotations

import pytest
import torch

from ntk_core import hessian_sharpness, sharpness_gradient
from tests.reference import dense_hessian, tiny_setup


def dense_sharpness(model: torch.nn.Module, X: torch.Tensor, Y: torch.Tensor) -> float:
    return float(torch.linalg.eigvalsh(dense_hessian(model, X, Y))[-1])


@pytest.mark.parametrize("arch", ["mlp", "linear2"])
def test_the_gradient_matches_finite_differences_of_a_dense_eigensolve(arch: str) -> None:
    _, data, model = tiny_setup(arch, n=10)
    X, Y = data.X, data.Y
    S, grads = sharpness_gradient(model, X, Y, tol=1e-12)
    assert S == pytest.approx(dense_sharpness(model, X, Y), rel=1e-9)
    assert S == pytest.approx(hessian_sharpness(model, X, Y, tol=1e-12), rel=1e-10)
    params = list(model.parameters())
    assert [g.shape for g in grads] == [p.shape for p in params]
    generator = torch.Generator().manual_seed(3)
    for _ in range(3):
        direction = [torch.randn(p.shape, dtype=p.dtype, generator=generator) for p in params]
        eps = 1e-5
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                for p, d in zip(params, direction, strict=True):
                    p.add_(sign * eps * d)
            values.append(dense_sharpness(model, X, Y))
            with torch.no_grad():
                for p, d in zip(params, direction, strict=True):
                    p.sub_(sign * eps * d)
        finite = (values[0] - values[1]) / (2 * eps)
        analytic = float(sum((g * d).sum() for g, d in zip(grads, direction, strict=True)))
        assert analytic == pytest.approx(finite, rel=1e-5, abs=1e-8)


def test_one_output_targets_as_n_and_frozen_parameters() -> None:
    _, data, model = tiny_setup("linear2", n=10)
    X, Y = data.X, data.Y
    S_column, g_column = sharpness_gradient(model, X, Y, tol=1e-12)
    S_flat, g_flat = sharpness_gradient(model, X, Y[:, 0], tol=1e-12)
    assert S_flat == pytest.approx(S_column, rel=1e-12)
    for a, b in zip(g_column, g_flat, strict=True):
        torch.testing.assert_close(a, b)
    first = next(model.parameters())
    first.requires_grad_(False)
    _, frozen = sharpness_gradient(model, X, Y, tol=1e-12)
    assert len(frozen) == len(g_column) and not frozen[0].any()
    with pytest.raises(ValueError, match="tol"):
        sharpness_gradient(model, X, Y, tol=2.0)
