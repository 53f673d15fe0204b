"""A cold ``ntk_eigenpairs`` call at its defaults, on the block path, against float64 dense eigh:
the accuracy its docstring states for a float32 model's kernel (eigenvalues to ``DEFAULT_TOL``,
the top-k subspace to about √tol)."""

from __future__ import annotations

import copy
import math

import torch
from reference import tiny_setup
from torch import nn
from torch.func import functional_call, jacrev, vmap

from ntk_core import empirical_ntk, ntk_eigenpairs
from ntk_core.numerics.eigensolver import DEFAULT_TOL, kernel_eigenpairs


def per_sample_jacrev_ntk(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """J Jᵀ for a one-output model from per-sample jacrev Jacobians (n small backward passes,
    where jacrev of the whole batch takes n full-batch ones)."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    jac = vmap(jacrev(lambda p, x: functional_call(model, p, (x[None],))[0, 0]), (None, 0))(params, X)
    J = torch.cat([j.reshape(X.shape[0], -1) for j in jac.values()], dim=1)  # (n, p)
    return J @ J.T


def largest_angle(U: torch.Tensor, V: torch.Tensor) -> float:
    """The largest principal angle between two orthonormal column spaces (arcsin form: exact
    for small angles)."""
    return math.asin(min(1.0, float(torch.linalg.matrix_norm(U - V @ (V.T @ U), ord=2))))


def test_default_block_solve_of_a_float32_mlp_kernel_meets_the_documented_accuracy() -> None:
    # A W1-like MLP (3 tanh layers, one output) shrunk to 500 rows: past the dense cut-off for
    # k = 20, so the default takes the block solver on the float32 K.
    _, data, model = tiny_setup("mlp", dtype="float32", n=500, dataset="synthetic", classes=(0, 1),
                                target="binary", input_dim=16, width=64, depth=3,
                                activation="tanh")
    k = 20
    solve = kernel_eigenpairs(k, K=empirical_ntk(model, data.X))
    assert solve.method == "krylov" and solve.converged and solve.products < 500

    values, vectors = ntk_eigenpairs(model, data.X, k)
    K = per_sample_jacrev_ntk(copy.deepcopy(model).double(), data.X.double())
    ref_values, ref_vectors = torch.linalg.eigh(K)
    ref_values, ref_vectors = ref_values.flip(0), ref_vectors.flip(1)
    assert float(((values - ref_values[:k]).abs() / ref_values[:k]).max()) <= DEFAULT_TOL
    assert float((ref_values[k - 1] - ref_values[k]) / ref_values[k - 1]) > 1e-3  # a subspace
    assert largest_angle(vectors, ref_vectors[:, :k]) <= math.sqrt(DEFAULT_TOL)
    torch.testing.assert_close(vectors.T @ vectors, torch.eye(k, dtype=torch.float64),
                               rtol=0, atol=1e-10)
