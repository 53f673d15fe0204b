"""The two-layer linear theory: closed forms against autograd, the sharpness ceiling, gradient flow's
conserved imbalance, and prediction against gradient descent in the engine."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference import dense_hessian, reference_ntk
from scipy.stats import spearmanr

from ntk_core.experiments import theory
from ntk_core.models import Linear2


def _rank_one_interpolant(X: torch.Tensor, y: torch.Tensor, a: float, h: int = 6, seed: int = 0):
    """W = u wᵀ, v = a u with X w = y / a (w the minimum-norm solution), as a Linear2 model."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(h, generator=g, dtype=torch.float64)
    u /= u.norm()
    w = torch.linalg.lstsq(X, (y / a)[:, None]).solution[:, 0]
    model = Linear2(X.shape[1], h).double()
    with torch.no_grad():
        model.W.weight.copy_(torch.outer(u, w))
        model.v.weight.copy_(a * u[None, :])
    return model


@pytest.fixture(scope="module")
def small_data():
    data = theory.outlier_data(n=10, d=24, seed=3)
    return data.X, data.Y[:, 0]


def test_closed_form_ntk_matches_autograd(small_data) -> None:
    X, _ = small_data
    torch.manual_seed(0)
    model = Linear2(X.shape[1], 7).double()
    K = theory.linear2_ntk(X, model.W.weight, model.v.weight)
    torch.testing.assert_close(K, reference_ntk(model, X), rtol=0, atol=1e-10)


def test_rank_one_kernel_and_sharpness_at_interpolation(small_data) -> None:
    """At the rank-one interpolant K = a²XXᵀ + yyᵀ/a² exactly, and the Hessian's top eigenvalue is
    λ_max(K)/n (the residual term of the Hessian vanishes)."""
    X, y = small_data
    a = 1.3
    model = _rank_one_interpolant(X, y, a)
    with torch.no_grad():
        assert float((model(X)[:, 0] - y).abs().max()) < 1e-10
        K = theory.linear2_ntk(X, model.W.weight, model.v.weight).numpy()
    G, yn = (X @ X.T).numpy(), y.numpy()
    np.testing.assert_allclose(K, theory.rank_one_ntk(G, yn, a**2), atol=1e-10)
    H = dense_hessian(model, X, y[:, None])
    assert float(torch.linalg.eigvalsh(H)[-1]) == pytest.approx(
        theory.rank_one_sharpness(G, yn, a**2), rel=1e-9)


def test_sharpness_ceiling_and_predicted_alignment(small_data) -> None:
    X, y = small_data
    G, yn = (X @ X.T).numpy(), y.numpy()
    b_star, s_min = theory.sharpness_minimum(G, yn)
    for b in (0.5 * b_star, 2 * b_star):
        assert theory.rank_one_sharpness(G, yn, b) > s_min
    lrs = np.linspace(0.2, 0.99, 6) * 2 / s_min
    b_max = [theory.max_admissible_a2(G, yn, lr) for lr in lrs]
    for lr, b in zip(lrs, b_max, strict=True):
        assert theory.rank_one_sharpness(G, yn, b) == pytest.approx(2 / lr, rel=1e-9)
        assert b >= b_star
    assert np.all(np.diff(b_max) < 0), "a smaller ceiling 2/η admits a smaller layer scale"
    assert math.isnan(theory.max_admissible_a2(G, yn, 1.01 * 2 / s_min))
    pred = theory.predict(G, yn, lrs)
    assert np.all(np.diff(pred.kta_pred.values) >= 0) and pred.kta_pred[-1] > pred.kta_pred[0]
    # below 2/S(b_flow) the ceiling does not bind: gradient descent keeps the flow's interpolant
    assert theory.predict(G, yn, [0.5 * 2 / pred.sharpness_flow]).a2_pred.item() == pytest.approx(
        pred.a2_flow)


def test_gradient_flow_conserves_the_imbalance(small_data) -> None:
    X, y = (t.numpy() for t in small_data)
    rng = np.random.default_rng(0)
    W0, v0 = 0.3 * rng.standard_normal((5, X.shape[1])), 0.3 * rng.standard_normal(5)
    flow = theory.gradient_flow(X, y, W0, v0, time=60.0, dt=0.01)
    assert flow.loss[-1] < 1e-3 * flow.loss[0]
    assert flow.imbalance_drift.max() < 1e-8
    # a gradient-descent step (Euler with a finite step) does change it
    euler = theory.gradient_flow(X, y, W0, v0, time=60.0, dt=0.01, method="euler")
    assert euler.imbalance_drift.max() > 1e-4
    # from a small initialisation the flow ends at the balanced interpolant a⁴ = yᵀG⁻¹y
    small = theory.gradient_flow(X, y, 1e-3 * W0, 1e-3 * v0, time=200.0, dt=0.01,
                                 target_loss=1e-12)
    assert small.a2[-1] == pytest.approx(theory.balanced_flow_a2(X @ X.T, y), rel=1e-3)


def test_prediction_matches_gradient_descent_in_trend() -> None:
    """Engine GD runs (float64, exact NTK) at matched loss: the final KTA rises with η as predicted,
    and each value is within 10 % of the prediction."""
    lrs = [0.2, 0.35, 0.45]
    cmp = theory.compare(lrs, seeds=(0,), sharpness=False, measure_every=1000)
    sim, pred = cmp.kta.values[:, 0], cmp.kta_pred.values[:, 0]
    assert (cmp.status == "reached_target").all()
    assert spearmanr(lrs, sim).statistic == 1.0 and spearmanr(lrs, pred).statistic == 1.0
    assert sim[-1] > 1.3 * sim[0]
    np.testing.assert_allclose(sim, pred, rtol=0.1)
    np.testing.assert_allclose(cmp.a2.values, cmp.a2_pred.values, rtol=0.1)
    assert cmp.flow_drift.values.max() < 1e-6
