"""The central flow's pieces against independent references: third derivatives against float64
central finite differences, the complementarity solver against its KKT conditions and the
one-eigenvalue closed form, and the flow itself against a toy whose flow is derived by hand."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from ntk_core import Trainer
from ntk_core.numerics.central_flow import CentralFlowField, move
from ntk_core.numerics.complementarity import closed_form, kkt_residual, solve
from ntk_core.numerics.losses import loss_value
from ntk_core.numerics.third_order import PlainLayerNorm, curvature_gradients, third_order_safe
from ntk_core.presets import load_preset
from tests.reference import tiny_setup


def hessian_form(model: torch.nn.Module, X: torch.Tensor, Y: torch.Tensor,
                 u: list[torch.Tensor], v: list[torch.Tensor]) -> float:
    """uᵀ∇²L v by a double backward: the quantity whose gradient g_uv is."""
    params = list(model.parameters())
    grads = torch.autograd.grad(loss_value(model(X), Y, "mse"), params, create_graph=True)
    hv = torch.autograd.grad(grads, params, grad_outputs=v, allow_unused=True)
    return float(sum((h * a).sum() for h, a in zip(hv, u, strict=True) if h is not None))


@pytest.mark.parametrize("arch", ["mlp", "cnn", "vit", "linear2"])
def test_third_derivatives_match_central_finite_differences(arch: str) -> None:
    _, data, model = tiny_setup(arch, n=8)
    model = third_order_safe(model)
    X, Y = data.X, data.Y
    params = list(model.parameters())
    dim = sum(p.numel() for p in params)
    generator = torch.Generator().manual_seed(1)
    U = torch.linalg.qr(torch.randn(dim, 2, dtype=torch.float64, generator=generator))[0]
    grads = torch.autograd.grad(loss_value(model(X), Y, "mse"), params, create_graph=True)
    Q, G = curvature_gradients(grads, params, U)

    def split(vector: torch.Tensor) -> list[torch.Tensor]:
        out, i = [], 0
        for p in params:
            out.append(vector[i:i + p.numel()].reshape(p.shape))
            i += p.numel()
        return out

    u = [split(U[:, j]) for j in range(2)]
    assert Q[0, 1] == pytest.approx(hessian_form(model, X, Y, u[0], u[1]), rel=1e-10)
    direction = torch.randn(dim, dtype=torch.float64, generator=generator)

    def central_difference(i: int, j: int, eps: float) -> float:
        values = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, d in zip(params, split(sign * eps * direction), strict=True):
                    p.add_(d)
            values.append(hessian_form(model, X, Y, u[i], u[j]))
            with torch.no_grad():
                for p, d in zip(params, split(sign * eps * direction), strict=True):
                    p.sub_(d)
        return (values[0] - values[1]) / (2 * eps)

    for i, j in ((0, 0), (0, 1), (1, 1)):
        # Richardson's extrapolation of two central differences: error O(eps⁴)
        finite = (4 * central_difference(i, j, 5e-5) - central_difference(i, j, 1e-4)) / 3
        analytic = float(G[i, j] @ direction)
        assert analytic == pytest.approx(finite, rel=1e-7, abs=1e-10), (arch, i, j)


def test_the_plain_layer_norm_is_the_same_function_with_its_parameters() -> None:
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(6).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    plain = PlainLayerNorm(norm)
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    assert torch.allclose(plain(x), norm(x), atol=1e-12)
    assert [id(p) for p in plain.parameters()] == [id(p) for p in norm.parameters()]
    _, _, vit = tiny_setup("vit")
    safe = third_order_safe(vit)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in safe.modules())
    assert [p.shape for p in safe.parameters()] == [p.shape for p in vit.parameters()]
    assert all(p is not q for p, q in zip(safe.parameters(), vit.parameters(), strict=True))


def random_instance(rng: np.random.Generator, k: int, d: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    g = rng.standard_normal((k, k, d))
    g = (g + g.transpose(1, 0, 2)) / 2
    gram = np.einsum("ijd,kld->ijkl", g, g).reshape(k * k, k * k)
    alpha = rng.standard_normal((k, k))
    return (alpha + alpha.T) / 2, gram


def random_problem(rng: np.random.Generator, smallest_k: int
                   ) -> tuple[int, np.ndarray, np.ndarray, float]:
    """(k, alpha, gram, scale) with k from ``smallest_k`` to 4 and enough g_ij for a unique X."""
    k = int(rng.integers(smallest_k, 5))
    alpha, gram = random_instance(rng, k, d=int(rng.integers(k * (k + 1) // 2, 40)))
    return k, alpha, gram, float(rng.uniform(0.01, 1.0))


def test_the_solver_meets_the_kkt_conditions_on_random_instances() -> None:
    rng = np.random.default_rng(0)
    active = 0
    for _ in range(200):
        k, alpha, gram, scale = random_problem(rng, 1)
        solution = solve(alpha, gram, scale)
        assert kkt_residual(alpha, gram, scale, solution.X) <= 1e-8
        assert solution.residual <= 1e-8
        assert np.linalg.eigvalsh(solution.X)[0] >= -1e-12
        w = np.linalg.eigvalsh(solution.X)
        active += int(0 < np.sum(w > 1e-9) < k)  # a face strictly inside the cone's boundary
    assert active > 20  # the instances exercise the boundary, not only the interior


def test_a_warm_start_near_the_answer_takes_two_steps_and_a_wrong_one_still_converges(
        ) -> None:
    """Along a flow the next problem is a small perturbation of the last: from its answer, two
    projected-gradient steps find the face and one linear solve on it the exact answer; a warm
    start on the wrong face (or a random one) must still give the exact answer."""
    rng = np.random.default_rng(2)
    boundary = 0
    for _ in range(100):
        k, alpha, gram, scale = random_problem(rng, 2)
        first = solve(alpha, gram, scale)
        nudged = alpha + 1e-7 * np.linalg.norm(alpha) * random_instance(rng, k, 1)[0]
        warm = solve(nudged, gram, scale, start=first.X)
        assert warm.residual <= 1e-8 and kkt_residual(nudged, gram, scale, warm.X) <= 1e-8
        rank = int(np.sum(np.linalg.eigvalsh(first.X) > 1e-6 * max(1.0, np.abs(first.X).max())))
        if 0 < rank < k:
            boundary += 1
            assert warm.iterations <= 2  # the face, found in two steps, then solved directly
        wrong = rng.standard_normal((k, k))
        misled = solve(nudged, gram, scale, start=wrong @ wrong.T)
        assert misled.residual <= 1e-8
        # the same answer, to the conditioning of these random instances
        assert misled.X == pytest.approx(warm.X, abs=1e-5 * max(1.0, np.abs(warm.X).max()))
    assert boundary > 10


def test_one_eigenvalue_is_the_closed_form() -> None:
    rng = np.random.default_rng(1)
    lr = 0.1
    for _ in range(20):
        grad_S, grad_L = rng.standard_normal(50), rng.standard_normal(50)
        alpha = np.array([[grad_S @ (-lr * grad_L)]])
        gram = np.array([[grad_S @ grad_S]])
        sigma_sq = max(0.0, 2 * (-grad_L @ grad_S) / (grad_S @ grad_S))
        assert solve(alpha, gram, lr / 2).X[0, 0] == pytest.approx(sigma_sq, rel=1e-12)
        assert closed_form(float(alpha[0, 0]), float(gram[0, 0]), lr / 2) == pytest.approx(
            sigma_sq, rel=1e-12)
    # two decoupled eigenvalues (orthogonal g's, no cross term): X is diagonal, each entry its
    # own closed form, through the general solver
    g11, g22 = np.eye(3)[0] * 2.0, np.eye(3)[1] * 0.5
    g = np.zeros((2, 2, 3))
    g[0, 0], g[1, 1] = g11, g22
    gram = np.einsum("ijd,kld->ijkl", g, g).reshape(4, 4)
    alpha = np.diag([0.3, 0.2])
    X = solve(alpha, gram, 0.05).X
    assert X == pytest.approx(np.diag([closed_form(0.3, 4.0, 0.05), closed_form(0.2, 0.25, 0.05)]),
                              abs=1e-12)


@pytest.mark.parametrize("solve_each_substep", [True, False])
def test_a_toy_flow_follows_its_hand_derivation(solve_each_substep: bool) -> None:
    """L(x₁, x₂, y₁, y₂) = ½y₁x₁² + ½y₂x₂² − c₁y₁ − c₂y₂ from x = 0: the Hessian there is
    diag(y₁, y₂, 0, 0), and ∇L = (0, 0, −c₁, −c₂). Each y_i rises as y_i(0) + ηc_i t until it
    reaches 2/η; there g_ii = e_{y_i} and dy_i/dt = 0 needs σ_i² = 2c_i (the closed form), so
    y_i stays at 2/η, x stays at 0, and the predicted loss is L + (σ₁² + σ₂²)/η once both are
    at the edge. There the two eigenvalues are equal and g₁₁, g₁₂, g₂₂ span only the plane of
    (y₁, y₂): X itself is then not unique (any rotation of the eigenvectors gives another), but
    the velocity and tr X = σ₁² + σ₂² are. As the trainer runs it, the eigenpairs are solved
    once per unit of time and kept over its later substeps; that gives the same flow here."""
    lr, c1, c2, y0 = 0.1, 0.5, 0.35, (1.0, 3.0)
    w = torch.tensor([0.0, 0.0, *y0], dtype=torch.float64, requires_grad=True)

    def loss() -> torch.Tensor:
        x1, x2, y1, y2 = w
        return 0.5 * y1 * x1 ** 2 + 0.5 * y2 * x2 ** 2 - c1 * y1 - c2 * y2

    field = CentralFlowField(tracked=2, tol=1e-8)
    substeps = 2
    for t in range(600):
        expected = [min(y + lr * c * t, 2 / lr) for y, c in zip(y0, (c1, c2), strict=True)]
        assert w.detach().numpy()[2:] == pytest.approx(expected, abs=1e-9), t
        for s in range(substeps):
            v = field(loss, [w], lr, 1 / substeps, resolve=solve_each_substep or s == 0)
            if s == 0 and t in (450, 599):
                at_edge = [c for y, c in zip(expected, (c1, c2), strict=True) if y >= 2 / lr]
                assert np.trace(v.X) == pytest.approx(sum(2 * c for c in at_edge), rel=1e-9)
                if len(at_edge) == 1:
                    assert v.sigma_sq[v.sigma_sq > 1e-9] == pytest.approx([2 * at_edge[0]],
                                                                          rel=1e-9)
                assert v.predicted_loss(lr) == pytest.approx(
                    float(loss().detach()) + sum(2 * c for c in at_edge) / lr, rel=1e-9, abs=1e-10)
            move([w], v.velocity, 1 / substeps)
    assert np.abs(w.detach().numpy()[:2]).max() < 1e-12


def _flow(config_model: torch.nn.Module, X: torch.Tensor, Y: torch.Tensor, lr: float,
          units: int, substeps: int, solve_each_substep: bool) -> tuple[torch.Tensor, float]:
    """The central flow's weights after ``units`` and the largest S·η/2 it met."""
    model = copy.deepcopy(config_model)
    params = list(model.parameters())
    field = CentralFlowField(seed=2)
    top = 0.0
    for _ in range(units):
        for s in range(substeps):
            v = field(lambda: loss_value(model(X), Y, "mse"), params, lr, 1 / substeps,
                      resolve=solve_each_substep or s == 0)
            if s == 0 and len(v.eigenvalues):
                top = max(top, float(v.eigenvalues[0]) * lr / 2)
            move(params, v.velocity, 1 / substeps)
    return torch.cat([p.detach().reshape(-1) for p in params]).double(), top


@pytest.mark.slow
def test_keeping_the_third_derivatives_over_a_unit_adds_less_than_eulers_own_error() -> None:
    """The trainer solves the eigenpairs and g_ij once per unit and predicts UᵀHU to first order
    over the later substeps. On the central-flow preset, against the flow integrated with twice
    the substeps, each solving everything, that is about as close as the flow that solves at
    every substep (measured: 3.9e-4 and 4.0e-4 of ‖w‖ after 80 units)."""
    config = load_preset("central-flow").config.replace(flows=(), threads=1)
    trainer = Trainer(config)
    args = (trainer.model, trainer.X, trainer.Y, config.lr, 40)
    reference, top = _flow(*args, substeps=8, solve_each_substep=True)
    assert 0.99 < top < 1.01  # the flow reached the edge and was held there
    every, _ = _flow(*args, substeps=4, solve_each_substep=True)
    kept, kept_top = _flow(*args, substeps=4, solve_each_substep=False)
    euler_error = float((every - reference).norm() / reference.norm())
    kept_error = float((kept - reference).norm() / reference.norm())
    assert 0 < kept_error < 1.25 * euler_error
    assert kept_top < 1.01
