"""The trainer end to end: EoS physics, stopping rules, failures, and the run log."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from ntk_core import ConfigError, RunConfig, Trainer, load_run, run, save_run
from ntk_core.training.schema import SCALARS, SPECTRUM

SMALL = dict(dataset="digits", n=64, classes=(0, 1, 2, 3), width=32, depth=2, k=5)


def small(**overrides) -> RunConfig:
    return RunConfig(**{**SMALL, **overrides})


@pytest.mark.slow
@pytest.mark.parametrize("lr", [0.1, 0.2])
def test_edge_of_stability(lr: float) -> None:
    """The sharpness reaches 2/η within 10 % and its median over the second half of training
    stays within ±10 % of 2/η (Cohen et al. 2021), at two learning rates."""
    cfg = RunConfig(dataset="digits", n=128, classes=(0, 1, 2, 3), width=64, depth=2, lr=lr,
                    steps=500, k=2, eigvec_every=100)
    ds = run(cfg)
    assert ds.attrs["status"] == "completed"
    sharp, threshold = ds.sharpness.values, 2.0 / lr
    assert sharp.max() >= 0.9 * threshold
    second_half = sharp[len(sharp) // 2:]
    assert abs(np.median(second_half) / threshold - 1.0) <= 0.10
    # the Gauss–Newton sharpness λ₁(K)/n tracks the Hessian's (performance notes: ≈ 0.1 %)
    gn = ds.gn_sharpness.values[len(sharp) // 2:]
    assert np.median(np.abs(gn / second_half - 1.0)) < 0.05


def test_step_record_and_schema() -> None:
    trainer = Trainer(small(steps=4, lr=0.05))
    record = trainer.step()
    assert record.step == 0 and record.scalars["measured"] == 1.0
    assert record.spectrum["eigenvalues"].shape == (5,)
    ds = trainer.run()
    assert ds.attrs["status"] == "completed" and ds.sizes["step"] == 4
    assert set(SCALARS) <= set(ds.data_vars) and set(SPECTRUM) <= set(ds.data_vars)
    for name, var in ds.variables.items():
        assert "long_name" in var.attrs and "units" in var.attrs, name
    assert ds.sizes["sample"] == 64 * 4  # full kernel: one row per sample and output
    assert np.all(np.diff(ds.label.values) >= 0), "kernel rows must be sorted by class"
    eig = ds.eigenvalues.values
    assert np.all(eig[:, :-1] >= eig[:, 1:])
    assert RunConfig.from_json(ds.attrs["config"]) == trainer.config
    # sign convention: every stored eigenvector has u_iᵀy ≥ 0
    y = ds.target.values
    assert np.all(ds.eigenvectors.values @ y >= -1e-6)


def test_target_loss_stops_and_says_so() -> None:
    ds = run(small(lr=0.1, steps=2000, target_loss=0.2, sharpness=False))
    assert ds.attrs["status"] == "reached_target"
    assert ds.loss.values[-1] <= 0.2 < ds.loss.values[-2]


def test_divergence_keeps_every_step() -> None:
    cfg = small(lr=5.0, steps=200)
    trainer = Trainer(cfg)
    seen = []
    ds = trainer.run(callback=lambda r: seen.append(r.scalars["loss"]))
    assert ds.attrs["status"] == "diverged"
    assert "diverged at step" in ds.attrs["status_reason"]
    assert ds.sizes["step"] == len(seen) >= 2
    assert seen[-1] > 1e3 * seen[0] or not np.isfinite(seen[-1])
    assert np.isfinite(ds.sharpness.values[:-1]).all()  # the measured steps are all kept
    with pytest.raises(RuntimeError, match="has ended"):
        trainer.step()


def test_lr_change_mid_run_keeps_weights() -> None:
    trainer = Trainer(small(lr=0.05, steps=10, sharpness=False))
    for _ in range(3):
        trainer.step()
    before = [p.detach().clone() for p in trainer.params]
    trainer.set_lr(0.02)
    trainer.step()
    ds = trainer.dataset
    assert ds.lr.values.tolist() == [0.05, 0.05, 0.05, 0.02]
    assert ds.two_over_lr.values[-1] == pytest.approx(100.0)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.params, strict=True))
    with pytest.raises(ValueError):
        trainer.set_lr(-1.0)


def test_measure_every_and_momentum() -> None:
    ds = run(small(lr=0.02, momentum=0.9, steps=6, measure_every=3))
    assert ds.measured.values.tolist() == [1, 0, 0, 1, 0, 0]
    assert np.isnan(ds.kta.values[1]) and np.isfinite(ds.kta.values[3])
    assert np.isfinite(ds.grad_norm.values).all()


def test_matrix_free_run_reports_estimates() -> None:
    cfg = small(lr=0.05, steps=3, ntk_mode="matrix_free")
    exact = run(cfg.replace(ntk_mode="exact"))
    free = run(cfg)
    assert free.attrs["ntk_mode"] == "matrix_free"
    np.testing.assert_allclose(free.eigenvalues.values, exact.eigenvalues.values, rtol=1e-3)
    np.testing.assert_allclose(free.sharpness.values, exact.sharpness.values, rtol=1e-3)
    # KTA from the deflated Frobenius estimate: close, with a stated standard error
    assert np.all(free.kta_stderr.values > 0)
    assert np.all(np.abs(free.kta.values - exact.kta.values) <= 0.1 * exact.kta.values)


def test_cross_entropy_and_traced_kernel() -> None:
    ds = run(small(lr=0.5, steps=3, loss="ce", kernel="traced"))
    assert ds.attrs["kernel"] == "traced" and ds.sizes["sample"] == 64
    assert np.isnan(ds.gn_sharpness.values).all()  # λ₁(K)/n is not the GN sharpness here
    assert np.isfinite(ds.sharpness.values).all() and np.isfinite(ds.kta.values).all()


def test_stop_from_another_thread() -> None:
    trainer = Trainer(small(lr=0.05, steps=100_000, sharpness=False, k=2))
    thread = threading.Thread(target=trainer.run)
    thread.start()
    while len(trainer.buffer) < 3:
        thread.join(0.05)
    trainer.stop()
    thread.join(30)
    assert not thread.is_alive() and trainer.status == "stopped"


def test_save_and_load_roundtrip(tmp_path) -> None:
    ds = run(small(lr=0.05, steps=3))
    path = save_run(ds, tmp_path / "run.nc")
    back = load_run(path)
    assert back.attrs["status"] == "completed"
    np.testing.assert_array_equal(back.loss.values, ds.loss.values)
    np.testing.assert_array_equal(back.eigenvectors.values, ds.eigenvectors.values)
    assert back.kernel.shape == ds.kernel.shape
    assert not list(tmp_path.glob(".tmp-*")), "the atomic write left a temporary file"


def test_buffer_readers_see_consistent_rows_while_writing() -> None:
    trainer = Trainer(small(lr=0.05, steps=40, sharpness=False, k=2))
    errors = []
    reads = [0]

    def reader() -> None:
        while not trainer.finished:
            reads[0] += 1
            rows = trainer.buffer.rows(0)
            lengths = {len(v) for v in rows.values()}
            if len(lengths) != 1:
                errors.append(lengths)
            snap = trainer.buffer.snapshot()
            if snap.sizes["step"] != len(snap.loss):
                errors.append("snapshot")
            # a pause, not a spin: a spinning reader keeps the GIL from the trainer between
            # its torch calls, and on a loaded 2-core machine 40 steps took minutes
            time.sleep(0.001)

    t = threading.Thread(target=reader)
    t.start()
    trainer.run()
    t.join(30)
    assert not errors and reads[0] > 10  # the reader did read while the trainer wrote
    assert len(trainer.buffer.rows(35)["loss"]) == 5


def test_eigenvector_memory_is_bounded_by_thinning() -> None:
    cfg = small(lr=0.05, steps=40, sharpness=False, k=2, eigvec_max_snapshots=8)
    ds = run(cfg)
    snaps = ds.snapshot_step.values
    assert 4 <= len(snaps) <= 8
    assert snaps[0] == 0 and snaps[-1] >= 32  # thinning keeps the whole run covered


@pytest.mark.parametrize("bad,match", [
    (dict(lr=-0.1), "lr"),
    (dict(lr=float("nan")), "lr"),
    (dict(arch="resnet"), "arch"),
    (dict(target="binary"), "binary"),
    (dict(n=1), "n"),
    (dict(k=0), "k"),
    (dict(momentum=1.0), "momentum"),
    (dict(loss="ce", target="binary", classes=(0, 1)), "cross-entropy"),
    (dict(arch="vit", width=10, heads=4), "divisible"),
    (dict(steps=0), "steps"),
    (dict(dtype="float16"), "dtype"),
])
def test_invalid_configs_raise_clear_errors(bad: dict, match: str) -> None:
    options = {**SMALL, **bad}
    with pytest.raises(ConfigError, match=match):
        RunConfig(**options)


def test_from_dict_rejects_unknown_and_unreadable_values() -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        RunConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ConfigError, match="cannot read 'abc' as an integer"):
        RunConfig.from_dict({"n": "abc"})
    cfg = RunConfig.from_dict({"lr": "0.5", "classes": "3,8", "target": "binary",
                               "sharpness": "false", "target_loss": "none"})
    assert cfg.lr == 0.5 and cfg.classes == (3, 8) and cfg.sharpness is False


@pytest.mark.parametrize("mode", ["exact", "matrix_free"])
def test_step_measurements_match_dense_references(mode: str) -> None:
    """One measured step of a 3-output MLP (full kernel) against float64 autograd references:
    the logged kernel, eigenpairs, KTA, u₁ᵀr, λ₁/n and the sharpness. The exact path builds K
    output-major internally, so this also checks every vector is mapped back to the log's
    sample-major rows."""
    import copy

    from reference import dense_hessian, reference_ntk

    from ntk_core.numerics.alignment import kernel_target_alignment

    cfg = RunConfig(dataset="digits", n=24, classes=(0, 1, 2), width=16, depth=2, k=4,
                    dtype="float64", ntk_mode=mode, kernel="full", eig_tol=1e-10, lr=0.05,
                    steps=5)
    trainer = Trainer(cfg)
    model = copy.deepcopy(trainer.model)  # the weights the first step measures
    trainer.step()
    K = reference_ntk(model, trainer.X)
    y = trainer.Y.reshape(-1)  # sample-major, like the log's rows
    r = (model(trainer.X) - trainer.Y).detach().reshape(-1)
    evals, evecs = torch.linalg.eigh(K)
    top, U = evals.flip(0)[:4], evecs.flip(1)[:, :4]
    U = U * torch.where(U.T @ y < 0, -1.0, 1.0)  # the log's orientation: u_iᵀy ≥ 0
    rows = trainer.buffer.rows(0)
    np.testing.assert_allclose(rows["eigenvalues"][0], top.numpy(), rtol=1e-8)
    vectors = trainer.buffer.latest_eigenvectors()[1]
    np.testing.assert_allclose(np.abs(vectors @ U.numpy()).diagonal(), 1.0, atol=1e-6)
    # matrix-free KTA estimates ‖K‖_F (deflated Hutchinson) and reports its standard error
    kta_error = abs(rows["kta"][0] - kernel_target_alignment(K, y))
    assert kta_error <= 1e-8 + 4 * rows["kta_stderr"][0], (kta_error, rows["kta_stderr"][0])
    np.testing.assert_allclose(trainer.buffer.row_data["target"], y.numpy())
    assert rows["u1_residual"][0] == pytest.approx(float(U[:, 0] @ r), rel=1e-6, abs=1e-10)
    assert rows["gn_sharpness"][0] == pytest.approx(float(top[0]) / 24, rel=1e-8)
    H = dense_hessian(model, trainer.X, trainer.Y)
    assert rows["sharpness"][0] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-4)
    if mode == "exact":
        # the log keeps K in float32
        np.testing.assert_allclose(trainer.buffer.latest_kernel()[1], K.numpy(), rtol=1e-6,
                                   atol=1e-6)


def test_gauss_newton_gap_skips_eigenvalues_within_the_tolerance() -> None:
    """The Hessian bound's gap cap: λ₁ − λⱼ over n to the first eigenvalue of K more than the
    tolerance below λ₁; a near-copy of λ₁ (a C-output MLP at initialisation) is skipped."""
    from ntk_core.numerics.hessian import gauss_newton_gap

    values = torch.tensor([10.0, 10.0 - 1e-5, 9.0, 5.0], dtype=torch.float64)
    assert gauss_newton_gap(values, 16, 1e-4) == pytest.approx(1.0 / 16)
    values = torch.tensor([10.0, 9.5, 9.0, 5.0], dtype=torch.float64)
    assert gauss_newton_gap(values, 16, 1e-4) == pytest.approx(0.5 / 16)
    assert gauss_newton_gap(torch.full((4,), 10.0, dtype=torch.float64), 16, 1e-4) is None


def test_the_logged_threshold_plots_with_its_own_axis_label() -> None:
    """``2 / ds.lr`` keeps lr's attributes in xarray arithmetic and so was plotted as a
    "learning rate η"; the log's ``two_over_lr`` is 2/η with a label of its own."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trainer = Trainer(small(lr=0.05, steps=4, sharpness=False))
    for _ in range(2):
        trainer.step()
    trainer.set_lr(0.04)
    ds = trainer.run()
    np.testing.assert_allclose(ds.two_over_lr.values, 2 / ds.lr.values)
    fig, ax = plt.subplots()
    try:
        ds.two_over_lr.plot(ax=ax)
        label = ax.get_ylabel().replace("\n", " ")
    finally:
        plt.close(fig)
    assert label == "stability threshold 2/η [1]"
