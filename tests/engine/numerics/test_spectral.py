"""Eigenpairs, Hessian sharpness and alignment against dense float64 references."""

from __future__ import annotations

import math

import pytest
import torch
from reference import TINY, dense_hessian, reference_ntk, tiny_setup

from ntk_core import empirical_ntk, hessian_sharpness, kernel_target_alignment, ntk_eigenpairs
from ntk_core.numerics.alignment import (
    centered_kernel_target_alignment,
    deflated_fro_norm,
    eigen_alignment,
    kernel_distance,
)
from ntk_core.numerics.eigensolver import (
    DEFAULT_TOL,
    choose_solver,
    explicit_matmat,
    kernel_eigenpairs,
    krylov_tol_floor,
    top_eigenpairs,
)


def _subspace_gap(U: torch.Tensor, V: torch.Tensor) -> float:
    """sin of the largest principal angle between two column spaces."""
    s = torch.linalg.svdvals(U.T @ V)
    return math.sqrt(max(0.0, 1.0 - float(s.min()) ** 2))


@pytest.mark.parametrize("arch", list(TINY))
@pytest.mark.parametrize("mode", ["exact", "matrix_free"])
@pytest.mark.parametrize("solver", ["dense", "krylov"])
def test_eigenpairs_match_dense_eigh(arch: str, mode: str, solver: str) -> None:
    """Both solvers, on both kernels: the block solver to a tight tol, dense exact."""
    _, data, model = tiny_setup(arch, n=16)
    K = reference_ntk(model, data.X)
    k = 4
    evals, evecs = torch.linalg.eigh(K)
    ref_vals, ref_vecs = evals.flip(0)[:k], evecs.flip(1)[:, :k]
    vals, vecs = ntk_eigenpairs(model, data.X, k, mode=mode, tol=1e-10, solver=solver)
    assert torch.all(vals[:-1] >= vals[1:]), "eigenvalues must be descending"
    rel = ((vals - ref_vals).abs() / ref_vals.abs()).max()
    assert rel <= (1e-10 if solver == "dense" else 1e-8), f"eigenvalue error {rel:.2e}"
    gap = float(evals.flip(0)[k - 1] - evals.flip(0)[k])
    if gap > 1e-6 * float(ref_vals[0]):  # the subspace is only defined when separated
        assert _subspace_gap(vecs, ref_vecs) < 1e-4


@pytest.mark.parametrize("arch", ["mlp", "vit"])
@pytest.mark.parametrize("mode", ["exact", "matrix_free"])
def test_default_eigenpairs_meet_the_documented_tolerance(arch: str, mode: str) -> None:
    """The default call, whichever path it takes, errs by at most DEFAULT_TOL (relative)."""
    _, data, model = tiny_setup(arch, n=16)
    ref = torch.linalg.eigvalsh(reference_ntk(model, data.X)).flip(0)[:6]
    vals, _ = ntk_eigenpairs(model, data.X, 6, mode=mode)
    assert float(((vals - ref).abs() / ref).max()) <= DEFAULT_TOL


def test_solver_choice_by_size_and_tolerance() -> None:
    f32, f64 = torch.float32, torch.float64
    assert choose_solver(300, 20, DEFAULT_TOL, f32, explicit=True) == "dense"  # small K
    assert choose_solver(1000, 20, DEFAULT_TOL, f32, explicit=True) == "krylov"
    assert choose_solver(1000, 100, DEFAULT_TOL, f32, explicit=True) == "dense"  # k ≥ m/10
    assert choose_solver(1000, 20, 1e-10, f32, explicit=True) == "dense"  # below float32
    assert choose_solver(1000, 20, 1e-10, f64, explicit=True) == "krylov"
    assert choose_solver(30, 4, DEFAULT_TOL, f32, explicit=False) == "dense"  # 30 products
    assert choose_solver(10000, 5, 1e-10, f32, explicit=False) == "krylov"  # no K to decompose
    assert krylov_tol_floor(f32) > DEFAULT_TOL / 10 and krylov_tol_floor(f64) < 1e-13


def _psd(dim: int, decay: float = 1.0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    U = torch.linalg.qr(torch.randn(dim, dim, dtype=torch.float64, generator=g))[0]
    spectrum = 1.0 / torch.arange(1, dim + 1, dtype=torch.float64) ** decay
    return ((U * spectrum) @ U.T).to(dtype)


def test_widely_spread_float32_spectrum_converges() -> None:
    """The spectrum of the benchmark's CNN traced kernel (λ₁/λ₂₀ ≈ 3800, its top eigenvector
    near constant) in float32: residual norms from sᵀGs − θ² drown in float64 rounding there
    (this matrix stalled at the 1,400-product cap); formed where they cancel, it converges."""
    head = torch.tensor([24903.0, 232, 115, 96, 58, 36, 31, 21, 18.7, 13.5, 12.4, 12.1, 10.3, 10.0,
                         8.8, 8.4, 7.9, 7.6, 6.7, 6.6], dtype=torch.float64)
    tail = 6.3 * torch.linspace(1, 0.001, 580, dtype=torch.float64) ** 2
    spectrum = torch.cat([head, tail])
    g = torch.Generator().manual_seed(6)
    W = torch.randn(600, 600, dtype=torch.float64, generator=g)
    W[:, 0] = 1.0  # the constant direction carries λ₁
    U = torch.linalg.qr(W)[0]
    K = ((U * spectrum) @ U.T).float()
    g = torch.Generator().manual_seed(0)
    res = top_eigenpairs(explicit_matmat(K), 600, 20, tol=1e-4, guard=8, generator=g)
    assert res.converged and res.products < 400, res.products
    ref = torch.linalg.eigvalsh(K.double()).flip(0)[:20]
    assert float(((res.values - ref).abs() / ref).max()) <= 1e-4


def test_a_float32_pair_split_below_the_tolerance_converges_as_a_cluster() -> None:
    """Two eigenvalues 1e-6 apart, the central flow's pair pinned at 2/η, behind float32
    products: no Ritz gap separates them, and each vector's residual stalls at the float32
    floor above tol·θ (this solve spent its 200-product cap unconverged). Bounded together by
    their block residual over the gap around them, they converge, to the dense eigenvalues."""
    g = torch.Generator().manual_seed(0)
    n = 600
    U = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=g))[0]
    values = 0.5 * torch.rand(n, dtype=torch.float64, generator=g)
    values[:3] = torch.tensor([20.0, 20.0 * (1 - 1e-6), 18.2], dtype=torch.float64)
    K = ((U * values) @ U.T).float()
    alone = top_eigenpairs(explicit_matmat(K), n, 3, tol=1e-6, guard=1,
                           generator=torch.Generator().manual_seed(1))
    assert not alone.converged  # one by one, the pair's bounds never reach 1e-6
    res = top_eigenpairs(explicit_matmat(K), n, 3, tol=1e-6, guard=1, generator=g,
                         cluster_width=1e-2)
    assert res.converged and res.products < 60, res.products
    ref = torch.linalg.eigvalsh(K.double()).flip(0)[:3]
    assert float(((res.values - ref).abs() / ref).max()) <= 1e-6
    # the pair's subspace, not each vector, is what converged: it is the dense one
    dense = torch.linalg.eigh(K.double())[1].flip(1)
    assert _subspace_gap(res.vectors[:, :2], dense[:, :2]) < 1e-3
    assert _subspace_gap(res.vectors[:, 2:3], dense[:, 2:3]) < 1e-3


def test_block_path_on_a_large_explicit_kernel_meets_its_tolerance() -> None:
    K = _psd(600)
    res = kernel_eigenpairs(10, K=K)
    assert res.method == "krylov" and res.converged
    ref = torch.linalg.eigvalsh(K).flip(0)[:10]
    assert float(((res.values - ref).abs() / ref).max()) <= DEFAULT_TOL
    again = kernel_eigenpairs(10, K=K)  # a private generator: the same call, the same answer
    assert torch.equal(res.values, again.values) and res.products == again.products


def test_stalled_block_solve_on_an_explicit_kernel_finishes_densely() -> None:
    """float32 products cannot certify 1e-9: the forced block solve stalls and dense eigh
    finishes the job instead of returning an unconverged answer."""
    K = _psd(500, dtype=torch.float32)
    res = kernel_eigenpairs(5, K=K, tol=1e-9, solver="krylov")
    assert res.method == "dense" and res.converged
    ref = torch.linalg.eigvalsh(K.double()).flip(0)[:5]
    torch.testing.assert_close(res.values, ref, rtol=1e-12, atol=0)


def test_matrix_free_dense_path_builds_the_kernel_from_products() -> None:
    K = _psd(40)
    res = kernel_eigenpairs(6, matmat=explicit_matmat(K), dim=40, dtype=torch.float64)
    assert res.method == "dense" and res.products == 40  # fewer than a cold block solve
    torch.testing.assert_close(res.values, torch.linalg.eigvalsh(K).flip(0)[:6], rtol=1e-12,
                               atol=0)


def test_unconverged_matrix_free_solve_warns() -> None:
    _, data, model = tiny_setup("mlp", n=16, dtype="float32")
    with pytest.warns(RuntimeWarning, match="block solver stopped"):
        ntk_eigenpairs(model, data.X, 4, mode="matrix_free", tol=1e-13, solver="krylov")


def test_block_solver_warm_start_saves_products() -> None:
    g = torch.Generator().manual_seed(0)
    A = torch.randn(300, 300, dtype=torch.float64, generator=g)
    K = A @ A.T / 300
    cold = top_eigenpairs(explicit_matmat(K), 300, 10, tol=1e-6, generator=g)
    P = torch.randn(300, 300, dtype=torch.float64, generator=g) * 1e-4
    warm = top_eigenpairs(explicit_matmat(K + P + P.T), 300, 10, start=cold.vectors, tol=1e-6,
                          generator=g)
    assert cold.converged and warm.converged
    assert warm.products * 2 <= cold.products
    ref = torch.linalg.eigvalsh(K + P + P.T).flip(0)[:10]
    torch.testing.assert_close(warm.values, ref, rtol=1e-6, atol=0)  # tol bounds the eigenvalue error


@pytest.mark.parametrize("arch", ["mlp", "cnn", "linear2"])
def test_hessian_sharpness_matches_dense_hessian(arch: str) -> None:
    _, data, model = tiny_setup(arch, n=10)
    H = dense_hessian(model, data.X, data.Y)
    ref = float(torch.linalg.eigvalsh(H)[-1])
    got = hessian_sharpness(model, data.X, data.Y)
    assert abs(got - ref) / abs(ref) <= 1e-4, (got, ref)


def test_sharpness_that_cannot_reach_its_tolerance_warns() -> None:
    _, data, model = tiny_setup("mlp", n=10, dtype="float32")
    with pytest.warns(RuntimeWarning, match="hessian_sharpness: the solver stopped"):
        hessian_sharpness(model, data.X, data.Y, tol=1e-13)


def test_kta_identity_over_all_eigenpairs() -> None:
    """KTA = Σ λ̃_i a_i over all eigenpairs, for a single target vector."""
    _, data, model = tiny_setup("mlp", n=15)
    K = empirical_ntk(model, data.X)
    y = data.Y.reshape(-1)
    vals, vecs = torch.linalg.eigh(K)
    lam_tilde = vals / torch.linalg.matrix_norm(K)
    identity = float((lam_tilde * eigen_alignment(vecs, y)).sum())
    assert abs(kernel_target_alignment(K, y) - identity) <= 1e-10
    assert abs(float(eigen_alignment(vecs, y).sum()) - 1.0) <= 1e-12


def test_kta_against_its_definition() -> None:
    g = torch.Generator().manual_seed(3)
    A = torch.randn(20, 20, dtype=torch.float64, generator=g)
    K, y = A @ A.T, torch.randn(20, dtype=torch.float64, generator=g)
    T = torch.outer(y, y)
    assert math.isclose(kernel_target_alignment(K, y),
                        float((K * T).sum() / (K.norm() * T.norm())), rel_tol=1e-12)
    H = torch.eye(20, dtype=torch.float64) - 1.0 / 20
    Kc, yc = H @ K @ H, H @ y
    Tc = torch.outer(yc, yc)
    assert math.isclose(centered_kernel_target_alignment(K, y),
                        float((Kc * Tc).sum() / (Kc.norm() * Tc.norm())), rel_tol=1e-10)
    Y = torch.randn(20, 3, dtype=torch.float64, generator=g)  # matrix targets: T = YYᵀ
    T = Y @ Y.T
    assert math.isclose(kernel_target_alignment(K, Y),
                        float((K * T).sum() / (K.norm() * T.norm())), rel_tol=1e-12)
    assert kernel_distance(K, K) == pytest.approx(0.0, abs=1e-12)
    assert kernel_distance(K, torch.eye(20, dtype=torch.float64)) > 0.1


def test_deflated_frobenius_estimate_is_close_with_honest_error() -> None:
    g = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(400, 400, dtype=torch.float64, generator=g))[0]
    spectrum = 1.0 / torch.arange(1, 401, dtype=torch.float64) ** 0.8
    K = (U * spectrum) @ U.T
    eig = top_eigenpairs(explicit_matmat(K), 400, 10, tol=1e-6, generator=g)
    est = deflated_fro_norm(explicit_matmat(K), eig.basis, eig.basis_image, probes=16, generator=g)
    exact = float(K.norm())
    assert abs(est.value - exact) / exact < 0.05
    assert est.stderr > 0
    assert abs(est.value - exact) < 5 * est.stderr + 1e-12


def test_single_seed_without_guard_does_not_stop_early() -> None:
    """One seed and no guard leave a single Ritz value with no gap estimate: the solver must
    keep iterating on ‖r‖ rather than accept the seed's Rayleigh quotient."""
    g = torch.Generator().manual_seed(1)
    A = torch.randn(80, 80, dtype=torch.float64, generator=g)
    K = A @ A.T / 80
    top = torch.linalg.eigvalsh(K)[-1]
    seed = torch.randn(80, 1, dtype=torch.float64, generator=g)
    res = top_eigenpairs(explicit_matmat(K), 80, 1, start=seed, tol=1e-6, guard=0, generator=g)
    assert res.products > 1
    assert abs(float(res.values[0] - top)) / float(top) <= 1e-6


def test_warm_hessian_seed_reaches_dense_sharpness() -> None:
    """The trainer's path: one previous-step seed and no guard, checked against a dense Hessian."""
    from ntk_core.numerics.hessian import HessianOperator, top_hessian_eigenpair
    from ntk_core.numerics.losses import loss_value

    _, data, model = tiny_setup("mlp", n=10)
    H = dense_hessian(model, data.X, data.Y)
    ref = float(torch.linalg.eigvalsh(H)[-1])
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_value(model(data.X), data.Y, "mse"), params, create_graph=True)
    op = HessianOperator(grads, params)
    seed = torch.randn(op.dim, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    res = top_hessian_eigenpair(op, start=seed, tol=1e-4, guard=0)
    assert abs(float(res.values[0]) - ref) / abs(ref) <= 1e-4, (float(res.values[0]), ref)
    assert op.products == res.products


def _near_degenerate(dim: int = 200, gap: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """A symmetric matrix whose top two eigenvalues are 1 and 1 − gap, the rest in [0, 0.5]."""
    g = torch.Generator().manual_seed(3)
    U = torch.linalg.qr(torch.randn(dim, dim, dtype=torch.float64, generator=g))[0]
    values = torch.cat([torch.tensor([1.0, 1.0 - gap], dtype=torch.float64),
                        0.5 * torch.rand(dim - 2, dtype=torch.float64, generator=g)])
    seed = U[:, :1] + 0.3 * U[:, 1:2] + 0.05 * torch.randn(dim, 1, dtype=torch.float64,
                                                           generator=g)
    return (U * values) @ U.T, seed


def test_gap_cap_keeps_the_bound_honest_at_near_degenerate_top_eigenvalues() -> None:
    """With one seed, the Ritz values of a two-vector Krylov space put the second far below
    1 − gap, so the r²/gap bound accepts an eigenvalue that is off by far more than ``tol``;
    capping the gap at the true one restores the tolerance."""
    A, seed = _near_degenerate()
    tol = 1e-6
    loose = top_eigenpairs(explicit_matmat(A), 200, 1, start=seed, tol=tol, guard=0)
    capped = top_eigenpairs(explicit_matmat(A), 200, 1, start=seed, tol=tol, guard=0,
                            max_gap=1e-3)
    assert abs(float(loose.values[0]) - 1.0) > 10 * tol  # what the cap is for
    assert abs(float(capped.values[0]) - 1.0) <= tol
    assert capped.products > loose.products


def test_exact_seed_converges_on_its_first_product() -> None:
    """An eigenvector seed: one product, a one-vector basis, and a result built from it."""
    A, _ = _near_degenerate()
    top = torch.linalg.eigh(A)[1][:, -1:]
    res = top_eigenpairs(explicit_matmat(A), 200, 1, start=top, tol=1e-8, guard=0, max_gap=1e-3)
    assert res.products == 1 and res.converged
    assert abs(float(res.values[0]) - 1.0) <= 1e-12
    assert _subspace_gap(res.vectors, top) < 1e-6


def test_a_kept_workspace_gives_the_same_solves_and_reuses_its_buffers() -> None:
    """Warm solves one after another in one ``SolverWorkspace`` (the trainer's case): each
    result equals a solve with fresh buffers, the buffers are the same memory each time, and
    a pickled workspace carries none of them."""
    import pickle

    from ntk_core.numerics.eigensolver import SolverWorkspace

    g = torch.Generator().manual_seed(4)
    ws = SolverWorkspace()
    start, pointers = None, set()
    for step in range(3):
        A = torch.randn(150, 150, dtype=torch.float64, generator=g)
        K = A @ A.T / 150 + step * torch.eye(150, dtype=torch.float64)
        kept = top_eigenpairs(explicit_matmat(K), 150, 5, start=start, tol=1e-8, guard=2,
                              generator=torch.Generator().manual_seed(step), workspace=ws)
        fresh = top_eigenpairs(explicit_matmat(K), 150, 5, start=start, tol=1e-8, guard=2,
                               generator=torch.Generator().manual_seed(step))
        torch.testing.assert_close(kept.values, fresh.values, rtol=0, atol=0)
        torch.testing.assert_close(kept.values, torch.linalg.eigvalsh(K).flip(0)[:5],
                                   rtol=1e-8, atol=0)
        pointers.add(ws.get("Q", (1, 150), dtype=torch.float64, device="cpu").data_ptr())
        start = kept.block
    assert len(pointers) == 1
    assert pickle.loads(pickle.dumps(ws))._buffers == {}


def test_warm_sharpness_seeds_as_the_trainer_does_and_meets_the_dense_hessian() -> None:
    """``warm_sharpness`` for MSE on the full kernel (Jᵀu₁ with the Gauss–Newton gap) and
    without the Gauss–Newton structure (last step's vector and Jᵀu₁): both within the
    tolerance of the dense Hessian's top eigenvalue."""
    from ntk_core import empirical_ntk
    from ntk_core.numerics.hessian import HessianOperator, gauss_newton_gap, warm_sharpness
    from ntk_core.numerics.losses import loss_value

    _, data, model = tiny_setup("mlp", n=10)
    H = dense_hessian(model, data.X, data.Y)
    ref = float(torch.linalg.eigvalsh(H)[-1])
    params = [p for p in model.parameters() if p.requires_grad]
    f = model(data.X)
    grads = torch.autograd.grad(loss_value(f, data.Y, "mse"), params, create_graph=True)
    values, vectors = torch.linalg.eigh(empirical_ntk(model, data.X).double())
    values, u1 = values.flip(0), vectors[:, -1:]
    pull = torch.autograd.grad(f, params, grad_outputs=u1.to(f.dtype).reshape(f.shape),
                               retain_graph=True)
    pullback = torch.cat([x.reshape(-1) for x in pull]).double()[:, None]
    n = data.X.shape[0]
    gap = gauss_newton_gap(values, n, 1e-4)
    gn = warm_sharpness(HessianOperator(grads, params), 1e-6, pullback=pullback,
                        gauss_newton=True, gauss_newton_gap=gap)
    previous = torch.randn(pullback.shape[0], 1, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(5))
    plain = warm_sharpness(HessianOperator(grads, params), 1e-6, pullback=pullback,
                           previous=previous)
    for res in (gn, plain):
        assert abs(float(res.values[0]) - ref) / abs(ref) <= 1e-6, (float(res.values[0]), ref)


def test_hessian_blocks_batch_only_for_small_work_and_agree_with_columns() -> None:
    """A block of Hessian-vector products: one vmapped pass when parameters × samples is small,
    column by column otherwise (or when n is not given); the same products either way, against
    the dense Hessian."""
    from ntk_core.numerics.hessian import BATCH_WORK, HessianOperator
    from ntk_core.numerics.losses import loss_value

    _, data, model = tiny_setup("mlp", n=10)
    H = dense_hessian(model, data.X, data.Y)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_value(model(data.X), data.Y, "mse"), params, create_graph=True)
    V = torch.randn(H.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    small = HessianOperator(grads, params, samples=10)
    large = HessianOperator(grads, params, samples=BATCH_WORK)
    unknown = HessianOperator(grads, params)
    assert small.batched and not large.batched and not unknown.batched
    for op in (small, large, unknown):
        torch.testing.assert_close(op.matmat(V), H @ V, rtol=1e-4, atol=1e-5)
        assert op.products == 3
