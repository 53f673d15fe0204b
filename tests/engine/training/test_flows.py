"""Gradient descent's central flow and gradient flow beside it: the log's layout, seeding, the
GD run left as it was, a flow that fails ending alone, files and the command line."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from app.cli import main
from ntk_core import ConfigError, RunBuffer, RunConfig, Trainer, load_run, save_run
from ntk_core.numerics import central_flow

SMALL = dict(dataset="digits", classes=(0, 1, 2), n=24, width=16, depth=2, k=4, lr=0.5,
             steps=12, seed=3, threads=1)
CLOCKS = ("time_step", "time_measure")


def without_clocks(ds: xr.Dataset) -> xr.Dataset:
    return ds.drop_vars([v for v in CLOCKS if v in ds]).assign_attrs(created="")


@pytest.fixture(scope="module")
def with_flows() -> xr.Dataset:
    return Trainer(RunConfig(**SMALL, flows=("central", "stable"))).run()


def test_the_file_layout_names_every_process(with_flows: xr.Dataset) -> None:
    ds = with_flows
    assert list(ds.process.values) == ["gd", "central", "stable"]
    for name in ("loss", "sharpness", "kta"):
        assert ds[name].dims == ("process", "step")
    assert ds.eigenvalues.dims == ("process", "step", "eig")
    assert ds.predicted_loss.dims == ("step",) and ds.distance_to_gd.dims == ("process", "step")
    assert np.all(ds.distance_to_gd.sel(process="gd") == 0)
    for flow in ("central", "stable"):
        # from the same weights, then apart: GD takes steps of η, the flows follow their ODEs
        distance = ds.distance_to_gd.sel(process=flow).values
        assert distance[0] == 0 and np.all(distance[2:] > 0)
        assert np.isfinite(ds.loss.sel(process=flow).values).all()
        assert np.isfinite(ds.kta.sel(process=flow).values).all()
    # the predicted loss is the central flow's loss plus tr Σ/η, never below it
    central_loss = ds.loss.sel(process="central").values
    assert np.all(ds.predicted_loss.values >= central_loss - 1e-12)
    assert np.allclose(ds.predicted_loss.values,
                       central_loss + ds.sigma_sq_trace.values / ds.lr.values, rtol=1e-10)
    assert ds.attrs["flows"] == "central,stable" and ds.attrs["flow_status"] == ""


def test_a_seeded_run_with_flows_reruns_identically_and_leaves_gd_as_it_was(
        with_flows: xr.Dataset) -> None:
    again = Trainer(RunConfig(**SMALL, flows=("central", "stable"))).run()
    xr.testing.assert_identical(without_clocks(again), without_clocks(with_flows))
    alone = Trainer(RunConfig(**SMALL)).run()
    gd = with_flows.sel(process="gd")
    for name in ("loss", "sharpness", "kta", "topk_mass", "grad_norm"):
        np.testing.assert_array_equal(gd[name].values, alone[name].values, err_msg=name)
    np.testing.assert_array_equal(gd.eigenvalues.values, alone.eigenvalues.values)


def test_flows_on_worker_threads_log_what_they_log_in_turn(with_flows: xr.Dataset,
                                                           monkeypatch) -> None:
    from ntk_core.training import flows

    assert flows._concurrent()  # one torch thread (conftest) on a machine with more cores
    monkeypatch.setattr(flows, "_concurrent", lambda: False)
    in_turn = Trainer(RunConfig(**SMALL, flows=("central", "stable"))).run()
    xr.testing.assert_identical(without_clocks(in_turn), without_clocks(with_flows))


def test_the_file_reads_back_with_its_flows(with_flows: xr.Dataset, tmp_path) -> None:
    path = save_run(with_flows, tmp_path / "flows.nc")
    loaded = load_run(path)
    xr.testing.assert_allclose(without_clocks(loaded).drop_vars("process"),
                               without_clocks(with_flows).drop_vars("process"))
    assert list(loaded.process.values) == ["gd", "central", "stable"]
    restored = RunBuffer.from_dataset(loaded)
    assert restored.flows == ("central", "stable")
    rows = restored.rows()
    np.testing.assert_array_equal(rows["loss@central"],
                                  with_flows.loss.sel(process="central").values)
    np.testing.assert_array_equal(rows["predicted_loss"], with_flows.predicted_loss.values)
    np.testing.assert_array_equal(restored.snapshot().kta.values, with_flows.kta.values)


def test_a_failing_flow_ends_alone(monkeypatch) -> None:
    calls = {"n": 0}
    original = central_flow.CentralFlowField.__call__

    def failing(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] > 9:
            raise FloatingPointError("no eigenpair")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(central_flow.CentralFlowField, "__call__", failing)
    ds = Trainer(RunConfig(**SMALL, flows=("central", "stable"))).run()
    assert ds.attrs["status"] == "completed" and ds.sizes["step"] == SMALL["steps"]
    assert "central: failed at step 2 (FloatingPointError: no eigenpair)" in ds.attrs["flow_status"]
    central = ds.loss.sel(process="central").values
    assert np.isfinite(central[:3]).all() and np.isnan(central[3:]).all()
    assert np.isfinite(ds.loss.sel(process="stable").values).all()


def test_flows_are_plain_gradient_descent_only() -> None:
    for options in (dict(momentum=0.9), dict(optimizer="adam"),
                    dict(optimizer="sgd", batch_size=8)):
        with pytest.raises(ConfigError, match="flows: the central flow and gradient flow"):
            RunConfig(**SMALL, flows=("central",), **options)
    with pytest.raises(ConfigError, match="'midpoint' is not one of central, stable"):
        RunConfig.from_dict({"flows": "central,midpoint"})


def test_the_command_line_writes_the_processes(tmp_path, capsys) -> None:
    out = tmp_path / "flows.nc"
    code = main(["run", "--dataset", "digits", "--classes", "0,1,2", "--n", "24", "--width", "16",
                 "--k", "3", "--steps", "6", "--flows", "central,stable", "--out", str(out),
                 "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "flows        central,stable" in printed and "  central" in printed
    ds = load_run(out)
    assert list(ds.process.values) == ["gd", "central", "stable"]
    assert ds.loss.dims == ("process", "step") and ds.predicted_loss.dims == ("step",)
    assert main(["run", "--flows", "central", "--momentum", "0.9", "--steps", "2"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "flows: the central flow and gradient flow" in error[0]


def test_the_central_flow_is_pinned_at_the_edge() -> None:
    """The default preset's data and model, shrunk (n = 64, width 32) at η = 0.2, where GD
    reaches 2/η near step 40: from there on, the central flow's sharpness (logged every step
    from its own eigensolve) stays within 2 % of 2/η, while it rose freely before."""
    from ntk_core.presets import DEFAULT_PRESET, load_preset

    config = load_preset(DEFAULT_PRESET).config.replace(
        n=64, width=32, lr=0.2, k=4, steps=90, measure_every=10**6, flows=("central",),
        threads=1)
    ds = Trainer(config).run()
    ratio = ds.sharpness.sel(process="central").values * config.lr / 2
    reached = np.flatnonzero(ratio >= 0.98)
    assert len(reached) and 10 < reached[0] < 70, ratio
    assert ratio[0] < 0.9  # it starts well below the edge ...
    assert np.all(np.abs(ratio[reached[0]:] - 1) <= 0.02), ratio[reached[0]:]  # ... then stays
    assert (ds.critical_count.values[reached[0]:] >= 1).all()
    assert ds.flow_kkt_residual.values[reached[0]:].max() <= 1e-8


def test_the_central_flows_logged_sharpness_is_the_dense_hessians_at_its_weights() -> None:
    """On a measured step the central flow's sharpness comes from its own eigensolve at the
    weights just measured (its measurement leaves the Hessian out): it must be λ_max of the
    dense float64 Hessian there, to the solve's 1e-6."""
    import copy

    import torch
    from reference import dense_hessian

    trainer = Trainer(RunConfig(**SMALL, flows=("central", "stable")))
    central = trainer.flows.processes[0]
    assert central.name == "central" and not central.measurer.config.sharpness
    for _ in range(5):
        trainer.step()
    weights = copy.deepcopy(central.model).double()
    trainer.step()
    row = trainer.buffer.rows(0)
    H = dense_hessian(weights, central.X.double(), central.Y.double())
    expected = float(torch.linalg.eigvalsh(H)[-1])
    logged = float(row["sharpness@central"][5])
    assert abs(logged - expected) <= 2e-6 * expected, (logged, expected)
    assert row["hessian_residual@central"][5] <= 1e-6
