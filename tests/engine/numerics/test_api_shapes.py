"""Target and output shapes across the public numerics, as a new user would pass them.

Targets may be (n,) or (n, C); a single-output model may return (n,). Every accepted shape is
checked against float64 references computed here without the engine's shape rules (dense
Hessians from torch.autograd.functional.hessian, jacrev Jacobians, numpy eigh); every rejected
shape for its message.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from reference import jacobian, tiny_setup
from torch import nn
from torch.func import functional_call

from ntk_core import empirical_ntk, hessian_sharpness, kernel_target_alignment, ntk_eigenpairs
from ntk_core.numerics.alignment import centered_kernel_target_alignment, eigen_alignment
from ntk_core.numerics.losses import accuracy, loss_value, residual
from ntk_core.numerics.ntk import NTKOperator

N = 12


class SqueezedOutput(nn.Module):
    """A single-output model that returns (n,), as users often write it."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)[:, 0]


def _one_output():
    _, data, model = tiny_setup("mlp", n=N, target="binary", classes=(0, 1))
    return data.X, data.Y, model


def _three_outputs():
    _, data, model = tiny_setup("mlp", n=N)
    return data.X, data.Y, model


def _loss_reference(f: np.ndarray, Y: np.ndarray, loss: str) -> float:
    """(1/2n) Σ‖f − y‖² or the mean cross-entropy, with Y (n, C) spelled out."""
    if loss == "mse":
        return 0.5 * float(((f - Y) ** 2).sum()) / f.shape[0]
    shifted = f - f.max(1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    return -float(log_softmax[np.arange(f.shape[0]), Y.argmax(1)].mean())


def _dense_sharpness(model: nn.Module, X: torch.Tensor, Y: torch.Tensor, loss: str) -> float:
    """λ_max of the dense float64 Hessian of the loss against Y (n, C), by eigh."""
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def L(theta: torch.Tensor) -> torch.Tensor:
        params, i = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            params[name] = theta[i:i + shape.numel()].view(shape)
            i += shape.numel()
        f = functional_call(model, params, (X,))
        if loss == "mse":
            return 0.5 * ((f - Y) ** 2).sum() / X.shape[0]
        return -torch.log_softmax(f, 1)[torch.arange(X.shape[0]), Y.argmax(1)].mean()

    H = torch.autograd.functional.hessian(L, flat, vectorize=True)
    return float(np.linalg.eigvalsh(H.numpy())[-1])


@functools.cache
def _reference_sharpness(outputs: int, loss: str) -> float:
    """Once per model and loss: the seeded tiny models are rebuilt identically by each test."""
    X, Y, model = _one_output() if outputs == 1 else _three_outputs()
    return _dense_sharpness(model, X, Y, loss)


# ---- losses -------------------------------------------------------------------------------

@pytest.mark.parametrize("target_shape", ["(n,)", "(n, 1)"])
@pytest.mark.parametrize("output_shape", ["(n,)", "(n, 1)"])
def test_single_output_losses_accept_vector_targets(target_shape: str, output_shape: str) -> None:
    g = torch.Generator().manual_seed(0)
    f2 = torch.randn(N, 1, dtype=torch.float64, generator=g)
    Y2 = torch.sign(torch.randn(N, 1, dtype=torch.float64, generator=g))
    f = f2[:, 0] if output_shape == "(n,)" else f2
    y = Y2[:, 0] if target_shape == "(n,)" else Y2
    ref = _loss_reference(f2.numpy(), Y2.numpy(), "mse")
    assert float(loss_value(f, y)) == pytest.approx(ref, rel=1e-12)
    torch.testing.assert_close(residual(f, y), f2 - Y2, rtol=0, atol=0)
    assert accuracy(f, y) == pytest.approx(float(((f2 > 0) == (Y2 > 0)).double().mean()))


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_integer_labels_are_one_hot_targets(loss: str) -> None:
    g = torch.Generator().manual_seed(1)
    f = torch.randn(N, 3, dtype=torch.float64, generator=g)
    labels = torch.arange(N) % 3
    onehot = torch.eye(3, dtype=torch.float64)[labels]
    ref = _loss_reference(f.numpy(), onehot.numpy(), loss)
    for Y in (labels, onehot):
        assert float(loss_value(f, Y, loss)) == pytest.approx(ref, rel=1e-12)
    torch.testing.assert_close(residual(f, labels, loss), residual(f, onehot, loss))
    assert accuracy(f, labels) == accuracy(f, onehot)


REJECTED = [  # (output shape, targets, loss, message)
    ((N, 3), torch.zeros(N), "mse", r"fits a single-output model.*\(12, 3\)"),
    ((N, 3), torch.zeros(N, 2), "mse", r"shape \(12, 2\) does not match model outputs \(12, 3\)"),
    ((N, 1), torch.zeros(N + 1), "mse", r"expected shape \(12,\) or \(12, 1\).*got \(13,\)"),
    ((N, 1), torch.zeros(N, 1, 1), "mse", r"expected shape .*got \(12, 1, 1\)"),
    ((N, 3), torch.full((N,), 3), "mse", r"class labels must lie in 0\.\.2"),
    ((N, 1), torch.zeros(N, 1), "ce", r"cross-entropy needs a model with at least two outputs"),
    ((N, 3, 1), torch.zeros(N, 3), "mse", r"model outputs: expected shape \(n,\) or \(n, C\)"),
    ((N, 3), torch.zeros(N, 3), "hinge", r"unknown loss 'hinge'"),
]


@pytest.mark.parametrize("fn", [loss_value, residual])
@pytest.mark.parametrize(("out_shape", "Y", "loss", "message"), REJECTED)
def test_losses_reject_shapes_that_do_not_fit(fn, out_shape, Y, loss, message) -> None:
    with pytest.raises(ValueError, match=message):
        fn(torch.zeros(out_shape), Y, loss)


# ---- sharpness ----------------------------------------------------------------------------

@pytest.mark.parametrize("squeezed", [False, True])
@pytest.mark.parametrize("target_shape", ["(n,)", "(n, 1)"])
def test_sharpness_single_output(target_shape: str, squeezed: bool) -> None:
    """y of shape (n,) used to broadcast (n, 1) − (n,) into an n × n residual: a sharpness many
    times the truth (55.1 against 1.88 on the report's model)."""
    X, Y, model = _one_output()
    ref = _reference_sharpness(1, "mse")
    y = Y[:, 0] if target_shape == "(n,)" else Y
    got = hessian_sharpness(SqueezedOutput(model) if squeezed else model, X, y)
    assert abs(got - ref) / ref <= 1e-5, (got, ref)


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("targets", ["one-hot (n, C)", "labels (n,)"])
def test_sharpness_multi_output(loss: str, targets: str) -> None:
    X, Y, model = _three_outputs()
    ref = _reference_sharpness(3, loss)
    given = Y if targets.startswith("one-hot") else Y.argmax(1)
    got = hessian_sharpness(model, X, given, loss=loss)
    assert abs(got - ref) / ref <= 1e-5, (got, ref)


@pytest.mark.parametrize(("make_y", "message"), [
    (lambda Y: Y[:, 0], r"fits a single-output model"),
    (lambda Y: Y[:-1], r"expected shape \(12,\) or \(12, 3\).*got \(11, 3\)"),
    (lambda Y: Y[:, :2], r"does not match model outputs \(12, 3\)"),
])
def test_sharpness_rejects_targets_that_do_not_fit(make_y, message) -> None:
    X, Y, model = _three_outputs()
    with pytest.raises(ValueError, match=message):
        hessian_sharpness(model, X, make_y(Y))


def test_sharpness_rejects_bad_arguments() -> None:
    X, Y, model = _three_outputs()
    with pytest.raises(ValueError, match="unknown loss 'l1'"):
        hessian_sharpness(model, X, Y, loss="l1")
    with pytest.raises(ValueError, match=r"tol: must be in \(0, 1\)"):
        hessian_sharpness(model, X, Y, tol=0.0)


# ---- kernels and spectra ------------------------------------------------------------------

def _kta(K: np.ndarray, Y: np.ndarray) -> float:
    """⟨K, YYᵀ⟩_F / (‖K‖_F ‖YYᵀ‖_F) with Y already (m, q) in K's rows."""
    T = Y @ Y.T
    return float((K * T).sum() / (np.linalg.norm(K) * np.linalg.norm(T)))


def _traced(K_full: np.ndarray, n: int, C: int) -> np.ndarray:
    return np.einsum("icjc->ij", K_full.reshape(n, C, n, C))


def test_full_kernel_with_one_hot_targets() -> None:
    """The report's case: the full (nC × nC) kernel and one-hot Y (n, C) raised a matmul error."""
    X, Y, model = _three_outputs()
    J = jacobian(model, X).numpy()
    K_ref = J @ J.T
    ref = _kta(K_ref, Y.numpy().reshape(-1, 1))  # vec(Y), sample-major
    K = empirical_ntk(model, X)
    assert K.shape == (3 * N, 3 * N)
    for given in (Y, Y.reshape(-1), Y.reshape(-1, 1)):
        assert kernel_target_alignment(K, given) == pytest.approx(ref, rel=1e-10)
    H = np.eye(3 * N) - 1.0 / (3 * N)
    centred = _kta(H @ K_ref @ H, H @ Y.numpy().reshape(-1, 1))
    assert centered_kernel_target_alignment(K, Y) == pytest.approx(centred, rel=1e-10)


def test_traced_kernel_with_matrix_targets() -> None:
    X, Y, model = _three_outputs()
    J = jacobian(model, X).numpy()
    K_ref = _traced(J @ J.T, N, 3)
    K = empirical_ntk(model, X, kernel="traced")
    np.testing.assert_allclose(K.numpy(), K_ref, rtol=1e-10, atol=1e-12)
    assert kernel_target_alignment(K, Y) == pytest.approx(_kta(K_ref, Y.numpy()), rel=1e-10)


@pytest.mark.parametrize("mode", ["exact", "matrix_free"])
def test_traced_eigenpairs_with_matrix_targets(mode: str) -> None:
    X, Y, model = _three_outputs()
    J = jacobian(model, X).numpy()
    values_ref, vectors_ref = np.linalg.eigh(_traced(J @ J.T, N, 3))
    vals, vecs = ntk_eigenpairs(model, X, 4, mode=mode, kernel="traced", solver="dense")
    assert vecs.shape == (N, 4)
    np.testing.assert_allclose(vals.numpy(), values_ref[::-1][:4], rtol=1e-10)
    Yn = Y.numpy()
    ref = ((vectors_ref[:, ::-1][:, :4].T @ Yn) ** 2).sum(1) / (Yn**2).sum()
    np.testing.assert_allclose(eigen_alignment(vecs, Y).numpy(), ref, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("squeezed", [False, True])
def test_single_output_kernel_with_vector_targets(squeezed: bool) -> None:
    X, Y, model = _one_output()
    J = jacobian(model, X).numpy()
    K_ref = J @ J.T
    K = empirical_ntk(SqueezedOutput(model) if squeezed else model, X)
    np.testing.assert_allclose(K.numpy(), K_ref, rtol=1e-10, atol=1e-12)
    ref = _kta(K_ref, Y.numpy())
    for given in (Y, Y[:, 0]):
        assert kernel_target_alignment(K, given) == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize("mode", ["exact", "matrix_free"])
def test_single_output_model_returning_a_vector(mode: str) -> None:
    """(n,) outputs: the same kernel, eigenpairs and operator as the (n, 1) model."""
    X, Y, model = _one_output()
    J = jacobian(model, X).numpy()
    values_ref, vectors_ref = np.linalg.eigh(J @ J.T)
    vals, vecs = ntk_eigenpairs(SqueezedOutput(model), X, 3, mode=mode, solver="dense")
    np.testing.assert_allclose(vals.numpy(), values_ref[::-1][:3], rtol=1e-10)
    a = eigen_alignment(vecs, Y[:, 0])
    y = Y.numpy()[:, 0]
    np.testing.assert_allclose(a.numpy(), (vectors_ref[:, ::-1][:, :3].T @ y) ** 2 / (y @ y),
                               rtol=1e-8, atol=1e-12)
    V = torch.randn(N, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    np.testing.assert_allclose(NTKOperator(SqueezedOutput(model), X).matmat(V).numpy(),
                               J @ (J.T @ V.numpy()), rtol=1e-10, atol=1e-12)


def test_eigen_alignment_of_full_kernel_eigenvectors_with_one_hot_targets() -> None:
    X, Y, model = _three_outputs()
    J = jacobian(model, X).numpy()
    values_ref, vectors_ref = np.linalg.eigh(J @ J.T)
    _, vecs = ntk_eigenpairs(model, X, 4, solver="dense")
    y = Y.numpy().reshape(-1)
    ref = (vectors_ref[:, ::-1][:, :4].T @ y) ** 2 / (y @ y)
    np.testing.assert_allclose(eigen_alignment(vecs, Y).numpy(), ref, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize(("K_shape", "Y", "message"), [
    ((3 * N, 3 * N), torch.ones(N), r"3 outputs per sample: pass \(12, 3\) targets"),
    ((3 * N, 3 * N), torch.ones(5, 2), r"shape \(5, 2\) does not fit a 36 × 36 kernel"),
    ((N, N), torch.ones(N + 1), r"shape \(13,\) does not fit a 12 × 12 kernel"),
    ((N, N + 1), torch.ones(N), r"kernel: expected a square matrix, got shape \(12, 13\)"),
])
def test_alignment_rejects_targets_that_do_not_fit(K_shape, Y, message) -> None:
    K = torch.eye(*K_shape, dtype=torch.float64)
    for fn in (kernel_target_alignment, centered_kernel_target_alignment):
        with pytest.raises(ValueError, match=message):
            fn(K, Y)


def test_eigen_alignment_rejects_targets_that_do_not_fit() -> None:
    vectors = torch.eye(3 * N, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"3 outputs per sample"):
        eigen_alignment(vectors, torch.ones(N))
    with pytest.raises(ValueError, match=r"vectors: expected \(m, k\) columns"):
        eigen_alignment(vectors[None], torch.ones(N, 3))


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(k=0), r"k: expected an integer in 1\.\.36 \(the full kernel has 36 rows: 12 samples"),
    (dict(k=13, kernel="traced"), r"k: expected an integer in 1\.\.12 \(the traced kernel"),
    (dict(k=4, kernel="diagonal"), r"kernel: expected full or traced, got 'diagonal'"),
    (dict(k=37), r"k: expected an integer in 1\.\.36"),
    (dict(k=2.5), r"k: expected an integer"),
    (dict(k=4, tol=0.0), r"tol: must be in \(0, 1\)"),
    (dict(k=4, solver="lanczos"), r"solver: expected auto, dense or krylov"),
    (dict(k=4, mode="jacobian"), r"mode: expected auto, exact or matrix_free"),
])
def test_eigenpairs_reject_bad_arguments(kwargs, message) -> None:
    X, _, model = _three_outputs()
    with pytest.raises(ValueError, match=message):
        ntk_eigenpairs(model, X, **kwargs)


def test_kernels_reject_an_unknown_kernel_kind() -> None:
    X, _, model = _three_outputs()
    with pytest.raises(ValueError, match=r"kernel: expected full or traced, got 'diagonal'"):
        empirical_ntk(model, X, kernel="diagonal")
    with pytest.raises(ValueError, match=r"kernel: expected full or traced, got 'diagonal'"):
        NTKOperator(model, X, kernel="diagonal")


def test_models_with_three_dimensional_outputs_are_refused() -> None:
    X, _, model = _three_outputs()

    class Unsqueezed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)[:, :, None]

    with pytest.raises(ValueError, match=r"model outputs: expected shape \(n,\) or \(n, C\), "
                                         r"got \(12, 3, 1\)"):
        empirical_ntk(Unsqueezed(), X)
