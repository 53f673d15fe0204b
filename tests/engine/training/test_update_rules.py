"""The update rules against torch.optim and against their own stability thresholds, and the
preconditioned and batch sharpness against dense float64 Hessians."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntk_core import ConfigError, RunBuffer, RunConfig, Trainer, run
from ntk_core.numerics.hessian import (
    HessianOperator,
    PreconditionedHessian,
    batch_sharpness,
    top_hessian_eigenpair,
)
from ntk_core.numerics.losses import loss_value
from ntk_core.numerics.stability import stability_threshold, threshold_label
from ntk_core.training.optimizers import BatchOrder, UpdateRule
from tests.reference import dense_hessian, tiny_setup

# ---- thresholds on the 1-D quadratic L = λw²/2 ------------------------------------------------


class FrozenPreconditioner(UpdateRule):
    """The adaptive rules with P held at 0.5: their threshold is stated for a frozen P (on a
    live one, a step's overshoot raises √v̂ and steadies it, Cohen et al. 2022)."""

    def _scale(self, second: list[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.full_like(v, 0.5) for v in second]


def growth(rule: UpdateRule, curvature: float, lr: float, steps: int) -> float:
    """|w| after ``steps`` updates on λw²/2, from w = 1."""
    w = torch.tensor([1.0], dtype=torch.float64)
    for _ in range(steps):
        rule.update([w], [curvature * w], lr)
    return abs(float(w[0]))


RULES = {  # name: (options, curvature scale: P for the adaptive rules, whose threshold is on λ/P)
    "gd": (dict(optimizer="gd"), 1.0),
    "heavy ball": (dict(optimizer="gd", momentum=0.9), 1.0),
    "heavy ball, β = 0.5": (dict(optimizer="gd", momentum=0.5), 1.0),
    "nesterov": (dict(optimizer="gd", momentum=0.9, nesterov=True), 1.0),
    "nesterov, β = 0.3": (dict(optimizer="sgd", momentum=0.3, nesterov=True), 1.0),
    "rmsprop": (dict(optimizer="rmsprop"), 0.5),
    "adam": (dict(optimizer="adam", beta1=0.9), 0.5),
    "adam, β₁ = 0.5": (dict(optimizer="adam", beta1=0.5), 0.5),
}


@pytest.mark.parametrize("name", RULES)
def test_threshold_splits_divergence_from_convergence(name: str) -> None:
    options, scale = RULES[name]
    rule = FrozenPreconditioner if options["optimizer"] in ("adam", "rmsprop") else UpdateRule
    lr = 0.1
    edge = scale * stability_threshold(options["optimizer"], lr, options.get("momentum", 0.0),
                                       options.get("nesterov", False), options.get("beta1", 0.9))
    above = growth(rule(**options), 1.01 * edge, lr, 3000)
    below = growth(rule(**options), 0.99 * edge, lr, 3000)
    assert above > 1e3, f"{name}: at 1.01 × the threshold |w| grew only to {above:.3g}"
    assert below < 1e-3, f"{name}: at 0.99 × the threshold |w| shrank only to {below:.3g}"


def test_threshold_formulas_and_labels() -> None:
    assert stability_threshold("gd", 0.01) == pytest.approx(200)
    assert stability_threshold("gd", 0.01, momentum=0.9) == pytest.approx(380)
    assert stability_threshold("gd", 0.01, momentum=0.9, nesterov=True) == pytest.approx(380 / 2.8)
    assert stability_threshold("adam", 0.001, beta1=0.9) == pytest.approx(38_000)
    assert stability_threshold("rmsprop", 0.001) == pytest.approx(2000)
    assert threshold_label("adam", beta1=0.9) == "38/η (Adam, β₁ = 0.9)"
    assert threshold_label("gd", momentum=0.9) == "(2+2β)/η, β = 0.9"
    assert threshold_label("gd") == threshold_label("sgd") == "2/η"
    with pytest.raises(ValueError, match="learning rate"):
        stability_threshold("gd", 0.0)


# ---- the rules against torch.optim -----------------------------------------------------------


@pytest.mark.parametrize("options, reference", [
    (dict(optimizer="gd", momentum=0.8), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8)),
    (dict(optimizer="gd", momentum=0.8, nesterov=True),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, nesterov=True)),
    (dict(optimizer="adam", beta1=0.8, beta2=0.99, eps=1e-6),
     lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.8, 0.99), eps=1e-6)),
])
def test_rules_match_torch_optim(options, reference) -> None:
    torch.manual_seed(0)
    A = torch.randn(6, 6, dtype=torch.float64)
    H = A @ A.T / 6
    mine = torch.randn(6, dtype=torch.float64)
    theirs = mine.clone().requires_grad_(True)
    rule, opt = UpdateRule(**options), reference([theirs])
    for _ in range(40):
        rule.update([mine], [H @ mine + 0.1], 0.05)
        opt.zero_grad()
        theirs.grad = (H @ theirs + 0.1).detach()
        opt.step()
    torch.testing.assert_close(mine, theirs.detach(), rtol=1e-12, atol=1e-12)


def test_hyperparameters_change_mid_run_and_refuse_nonsense() -> None:
    rule = UpdateRule("gd", momentum=0.5)
    assert rule.threshold(0.1) == pytest.approx(30)
    rule.set_hyper(momentum=0.9)
    assert rule.threshold(0.1) == pytest.approx(38)
    with pytest.raises(ValueError, match="only adam"):
        rule.set_hyper(beta1=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        rule.set_hyper(momentum=1.0)
    adam = UpdateRule("adam")
    with pytest.raises(ValueError, match="beta1, not momentum"):
        adam.set_hyper(momentum=0.5)
    adam.set_hyper(beta1=0.5)
    assert adam.threshold(0.01) == pytest.approx(600)


# ---- the preconditioned and the batch sharpness ----------------------------------------------


def test_preconditioned_sharpness_matches_dense_eigensolve() -> None:
    _, data, model = tiny_setup("mlp", n=10)
    X, Y = data.X, data.Y
    params = list(model.parameters())
    H = dense_hessian(model, X, Y)
    P = torch.rand(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.05
    scaled = H / P.sqrt()[:, None] / P.sqrt()[None, :]
    expected = float(torch.linalg.eigvalsh(scaled)[-1])
    # λ_max(P⁻¹H) from the nonsymmetric product too: the same number
    nonsymmetric = np.linalg.eigvals((H / P[:, None]).numpy()).real.max()
    assert expected == pytest.approx(nonsymmetric, rel=1e-9)
    L = loss_value(model(X), Y)
    grads = torch.autograd.grad(L, params, create_graph=True)
    res = top_hessian_eigenpair(PreconditionedHessian(grads, params, P), tol=1e-10,
                                generator=torch.Generator().manual_seed(0))
    assert float(res.values[0]) == pytest.approx(expected, rel=1e-8)
    plain = top_hessian_eigenpair(HessianOperator(grads, params), tol=1e-10,
                                  generator=torch.Generator().manual_seed(0))
    assert float(plain.values[0]) != pytest.approx(expected, rel=1e-2)  # P matters here
    with pytest.raises(ValueError, match="positive"):
        PreconditionedHessian(grads, params, -P)
    with pytest.raises(ValueError, match="shape"):
        PreconditionedHessian(grads, params, P[:-1])


def test_batch_sharpness_matches_dense_hessians_over_every_batch() -> None:
    _, data, model = tiny_setup("mlp", n=12)
    X, Y = data.X, data.Y
    batches = BatchOrder(12, 5, seed=3, device=X.device).epoch()
    assert sorted(torch.cat(batches).tolist()) == list(range(12))
    assert [len(b) for b in batches] == [5, 5, 2]
    expected = []
    for b in batches:
        H = dense_hessian(model, X[b], Y[b])
        L = loss_value(model(X[b]), Y[b])
        g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(L, list(model.parameters()))])
        expected.append(float(g @ H @ g / (g @ g)))
    assert batch_sharpness(model, X, Y, batches) == pytest.approx(np.mean(expected), rel=1e-10)


# ---- runs ------------------------------------------------------------------------------------


def small(**overrides) -> RunConfig:
    options = dict(dataset="digits", classes=(0, 1, 2, 3), n=48, width=24, k=4, steps=12,
                   measure_every=4, seed=2)
    options.update(overrides)
    return RunConfig(**options)


@pytest.mark.parametrize("options, tracked, threshold", [
    (dict(optimizer="gd", momentum=0.9, lr=0.05), "sharpness", 3.8 / 0.05),
    (dict(optimizer="adam", lr=0.001), "preconditioned_sharpness", 38 / 0.001),
    (dict(optimizer="rmsprop", lr=0.001), "preconditioned_sharpness", 2 / 0.001),
    (dict(optimizer="sgd", batch_size=16, lr=0.05), "batch_sharpness", 2 / 0.05),
])
def test_runs_log_their_threshold_and_tracked_sharpness(options, tracked, threshold) -> None:
    ds = run(small(**options))
    assert ds.attrs["status"] == "completed" and ds.attrs["tracked_sharpness"] == tracked
    np.testing.assert_allclose(ds.stability_threshold.values, threshold, rtol=1e-12)
    np.testing.assert_allclose(ds.two_over_lr.values, 2 / options["lr"], rtol=1e-12)
    measured = ds.measured.values == 1
    assert np.isfinite(ds[tracked].values[measured]).all()
    assert np.isnan(ds[tracked].values[~measured]).all()
    assert np.isfinite(ds.sharpness.values[measured]).all()  # the Hessian's, always
    for other in {"preconditioned_sharpness", "batch_sharpness"} - {tracked}:
        assert np.isnan(ds[other].values).all()


def test_sgd_batch_order_is_seeded() -> None:
    a = run(small(optimizer="sgd", batch_size=10, lr=0.05))
    b = run(small(optimizer="sgd", batch_size=10, lr=0.05))
    c = run(small(optimizer="sgd", batch_size=10, lr=0.05, seed=3))
    np.testing.assert_array_equal(a.loss.values, b.loss.values)
    full = run(small(lr=0.05))
    assert not np.array_equal(a.loss.values[1:], full.loss.values[1:])  # mini-batches, not the full
    assert not np.array_equal(a.loss.values, c.loss.values)


def test_momentum_change_mid_run_moves_the_threshold() -> None:
    trainer = Trainer(small(momentum=0.5, lr=0.1))
    for _ in range(3):
        trainer.step()
    trainer.set_hyper(momentum=0.9)
    for _ in range(3):
        trainer.step()
    values = trainer.dataset.stability_threshold.values
    np.testing.assert_allclose(values[:3], 30)
    np.testing.assert_allclose(values[3:], 38)
    with pytest.raises(ValueError, match="only adam"):
        trainer.set_hyper(beta1=0.5)


@pytest.mark.parametrize("options, message", [
    (dict(optimizer="sgd"), "sgd needs a batch size"),
    (dict(optimizer="sgd", batch_size=1000), "between 1 and n"),
    (dict(batch_size=8), "only sgd takes mini-batches"),
    (dict(optimizer="adam", momentum=0.9), "its β₁ is beta1"),
    (dict(nesterov=True), "nesterov: needs a momentum"),
    (dict(optimizer="adam", beta1=1.0), "beta1"),
    (dict(optimizer="adam", eps=0.0), "eps"),
    (dict(optimizer="lion"), "not one of gd, sgd, adam, rmsprop"),
])
def test_bad_optimizer_options_are_refused(options, message) -> None:
    with pytest.raises(ConfigError, match=message):
        small(**options)


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_a_steps_preconditioned_sharpness_uses_that_steps_preconditioner(optimizer: str) -> None:
    trainer = Trainer(small(optimizer=optimizer, lr=0.002, n=12, width=6, dtype="float64",
                            measure_every=1, eig_tol=1e-9))
    for _ in range(3):
        trainer.step()
    H = dense_hessian(trainer.model, trainer.X, trainer.Y)
    L = loss_value(trainer.model(trainer.X), trainer.Y)
    P = trainer.rule.preconditioner(torch.autograd.grad(L, trainer.params))
    assert P is not None
    expected = float(torch.linalg.eigvalsh(H / P.sqrt()[:, None] / P.sqrt()[None, :])[-1])
    record = trainer.step()
    assert record.scalars["preconditioned_sharpness"] == pytest.approx(expected, rel=1e-7)
    assert record.scalars["stability_threshold"] == pytest.approx(
        stability_threshold(optimizer, 0.002))


def test_a_file_from_before_thresholds_reads_back_with_its_momentum_threshold() -> None:
    ds = run(small(momentum=0.5, lr=0.1, steps=4))
    old = ds.drop_vars(["stability_threshold", "preconditioned_sharpness", "batch_sharpness"])
    back = RunBuffer.from_dataset(old).snapshot()
    np.testing.assert_allclose(back.stability_threshold.values, 30)
    assert np.isnan(back.preconditioned_sharpness.values).all()
