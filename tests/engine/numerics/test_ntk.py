"""The exact and matrix-free NTK against a float64 jacrev Jacobian, for every architecture."""

from __future__ import annotations

import pytest
import torch
from reference import TINY, reference_ntk, tiny_setup

from ntk_core import empirical_ntk
from ntk_core.numerics.ntk import LayerCapture, NTKOperator, kernel_from_capture
from ntk_core.numerics.ntk.exact import output_major_order


@pytest.mark.parametrize("arch", list(TINY))
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float64", 1e-10)])
def test_exact_ntk_matches_jacobian(arch: str, dtype: str, tol: float) -> None:
    _, data, model = tiny_setup(arch, dtype)
    K = empirical_ntk(model, data.X)
    ref = reference_ntk(model.double(), data.X.double())
    err = float((K.double() - ref).norm() / ref.norm())
    assert K.shape == ref.shape
    assert err <= tol, f"{arch} {dtype}: relative error {err:.2e}"


@pytest.mark.parametrize("arch", list(TINY))
def test_traced_kernel_is_sum_of_output_blocks(arch: str) -> None:
    _, data, model = tiny_setup(arch)
    full = empirical_ntk(model, data.X, kernel="full")
    traced = empirical_ntk(model, data.X, kernel="traced")
    n, C = data.Y.shape
    blocks = full.view(n, C, n, C).diagonal(dim1=1, dim2=3).sum(-1)
    torch.testing.assert_close(traced, blocks, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("arch", list(TINY))
def test_output_major_kernel_is_the_jacobian_kernel_reordered(arch: str) -> None:
    """The trainer's row order (c·n + i), built with contiguous blocks and the readout layer's
    diagonal-block shortcut, against the float64 jacrev kernel (sample-major, i·C + c)."""
    _, data, model = tiny_setup(arch)
    ref = reference_ntk(model, data.X)
    n, C = data.Y.shape
    with LayerCapture(model) as capture:
        f = model(data.X)
        K = kernel_from_capture(model, data.X, f, capture, "full", output_major=C > 1)
    order = output_major_order(n, C)  # output-major row r holds sample-major row order[r]
    torch.testing.assert_close(K, ref[order][:, order], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("arch", list(TINY))
@pytest.mark.parametrize("kernel", ["full", "traced"])
def test_matrix_free_products_match_exact(arch: str, kernel: str) -> None:
    _, data, model = tiny_setup(arch)
    K = empirical_ntk(model, data.X, kernel=kernel)
    op = NTKOperator(model, data.X, kernel)
    V = torch.randn(K.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(op.matmat(V), K @ V, rtol=1e-9, atol=1e-10)
    assert op.products == 3


@pytest.mark.parametrize("arch", list(TINY))
def test_products_in_chunks_match_one_block(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A block larger than the memory budget allows runs in chunks (one vector each here, with
    an uneven last chunk); the products are the exact kernel's all the same."""
    from ntk_core.numerics.ntk import products

    _, data, model = tiny_setup(arch)
    K = empirical_ntk(model, data.X)
    V = torch.randn(K.shape[0], 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    whole = NTKOperator(model, data.X)
    assert whole.chunk >= 5 and whole.activation_bytes > 0
    monkeypatch.setattr(products, "BLOCK_BYTES", 3 * whole.activation_bytes * 2)
    chunked = NTKOperator(model, data.X)
    assert chunked.chunk == 2
    torch.testing.assert_close(chunked.matmat(V), K @ V, rtol=1e-9, atol=1e-10)


def test_linear2_closed_form() -> None:
    """K = X WᵀW Xᵀ + ‖v‖² X Xᵀ for f(x) = vᵀWx (Jiang, Cohen, Li 2025)."""
    _, data, model = tiny_setup("linear2")
    X = data.X.reshape(data.n, -1)
    W, v = model.W.weight, model.v.weight
    closed = X @ W.T @ W @ X.T + (v**2).sum() * X @ X.T
    torch.testing.assert_close(empirical_ntk(model, data.X), closed.detach(), rtol=1e-10,
                               atol=1e-10)


def test_shared_weights_fall_back_correctly() -> None:
    """A Linear applied twice breaks the per-layer rule; the fallback must still be exact."""

    class Twice(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)
            self.out = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.tanh(self.lin(torch.tanh(self.lin(x)))))

    torch.manual_seed(0)
    model = Twice().double()
    X = torch.randn(6, 4, dtype=torch.float64)
    torch.testing.assert_close(empirical_ntk(model, X), reference_ntk(model, X), rtol=1e-10,
                               atol=1e-12)


def test_auto_mode_follows_cost_and_memory() -> None:
    from ntk_core.numerics.ntk.cost import estimate_costs

    _, data, mlp = tiny_setup("mlp", dtype="float32", n=60)
    est = estimate_costs(mlp, data.X, data.Y.shape[1], "full", k=5)
    assert est.choice == "exact" and est.exact_flops < est.matrix_free_flops
    assert est.exact_bytes == 3 * (60 * 3) ** 2 * 4
    tight = estimate_costs(mlp, data.X, data.Y.shape[1], "full", k=5, memory_budget=1e3)
    assert tight.choice == "matrix_free"  # the kernel does not fit the budget
    _, data, vit = tiny_setup("vit", dtype="float32", n=60)
    vit_est = estimate_costs(vit, data.X, data.Y.shape[1], "full", k=5)
    # LayerNorm, positions and the class token have no per-layer rule: exact pays a Jacobian
    assert vit_est.exact_flops > est.exact_flops
