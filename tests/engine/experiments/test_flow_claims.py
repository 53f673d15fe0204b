"""The central-flow claims of the reproduction, computed on runs whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from ntk_core import RunConfig, load_run
from ntk_core.experiments.reproduce import flow_claims
from ntk_core.experiments.reproduce.flow_claims import claims, period_average
from ntk_core.experiments.reproduce.grid import Experiment


def test_the_period_average_removes_a_period_two_oscillation() -> None:
    loss = 2.0 + np.array([1, -1, 1, -1, 1, -1.0])
    averaged = period_average(loss)
    assert math.isnan(averaged[0]) and math.isnan(averaged[-1])
    np.testing.assert_allclose(averaged[1:-1], 2.0)


def made_up_run(steps: int = 40, lr: float = 0.1) -> xr.Dataset:
    """GD oscillating ±0.1 around 1 − t/100, the central flow at 2/η from step 10 with the
    predicted loss 5 % above GD's mean, gradient flow sharpening past 2/η; the central flow
    twice as close to GD and ahead in KTA by 0.05 at matched loss."""
    t = np.arange(steps, dtype=float)
    mean = 1 - t / 100
    gd_loss = mean + 0.1 * (-1) ** t
    flow_loss = mean.copy()
    edge = 2 / lr
    central_s = np.where(t < 10, edge * (0.5 + 0.05 * t), edge * (1 + 0.01 * np.sin(t)))
    stable_s = edge * (0.5 + 0.05 * t)
    kta_central, kta_stable = 0.3 + t / 200, 0.25 + t / 200
    process = ["gd", "central", "stable"]
    def stack(*rows: np.ndarray) -> tuple[tuple[str, str], np.ndarray]:
        return ("process", "step"), np.stack(rows)
    return xr.Dataset({
        "loss": stack(gd_loss, flow_loss, flow_loss),
        "sharpness": stack(central_s, central_s, stable_s),
        "kta": stack(kta_central, kta_central, kta_stable),
        "measured": stack(*[np.ones(steps)] * 3),
        "distance_to_gd": stack(0 * t, 0.01 * t, 0.02 * t),
        "predicted_loss": ("step", 1.05 * mean),
        "lr": ("step", np.full(steps, lr)),
    }, coords={"process": process, "step": np.arange(steps)}, attrs={"flow_status": ""})


def test_the_claims_read_what_the_run_holds() -> None:
    found = claims(made_up_run())
    assert found["edge_step"] == 10
    assert found["loss_error_median"] == pytest.approx(0.05, rel=1e-9)
    assert found["flow_loss_error_median"] == pytest.approx(0.0, abs=1e-12)
    assert found["pin_within"] == 1.0 and found["pin_max"] <= 0.01
    assert found["distance_central"] == pytest.approx(0.39)
    assert found["distance_stable"] == pytest.approx(0.78)
    # both flows follow the same loss, so the matched level is their common final loss
    assert found["kta_central"] - found["kta_stable"] == pytest.approx(0.05)
    run = made_up_run()
    run["sharpness"].loc[{"process": "central", "step": 30}] = 2 / 0.1 * 1.1
    off = claims(run)
    assert off["pin_max"] == pytest.approx(0.1) and off["pin_within"] < 1
    assert off["pin_outside"] == (1, 30, 30) and off["pin_within_after"] == 1.0
    assert found["pin_outside"] == (0, -1, -1)
    # GD's sharpness as made up is the central flow's: its median ratio in the phase is 1
    assert found["gd_ratio_median"] == pytest.approx(1.0, abs=0.01)
    assert found["loss_error_thirds"] == pytest.approx([0.05] * 3, rel=1e-9)


def test_a_resume_folder_keeps_each_run_and_reads_it_back(tmp_path, monkeypatch) -> None:
    config = RunConfig(dataset="digits", classes=(0, 1), n=16, width=8, depth=1, k=3,
                       threads=1, measure_every=2)
    exp = Experiment("mlp", "tiny MLP", config, lrs=(0.5,), highlight=0.5, seeds=(4,))
    monkeypatch.setattr(flow_claims, "STEPS", {True: 6, False: 6})
    first = flow_claims.run_flow_claims([exp], quick=True, resume_dir=tmp_path)
    files = list(tmp_path.glob("flows-mlp_*.nc"))
    assert len(files) == 1
    ds = load_run(files[0])
    assert ds.sizes["step"] == 6 and list(ds.process.values) == ["gd", "central", "stable"]
    assert first[0][2] == pytest.approx(float(ds.time_step.values.sum())) and first[0][2] > 0

    def no_training(*args, **kwargs):
        raise AssertionError("the kept run should have been read")

    monkeypatch.setattr(flow_claims, "Trainer", no_training)
    again = flow_claims.run_flow_claims([exp], quick=True, resume_dir=tmp_path)
    assert again[0][1] == first[0][1] and again[0][2] == first[0][2]
    # another configuration is another file, never the kept one
    monkeypatch.setattr(flow_claims, "STEPS", {True: 7, False: 7})
    with pytest.raises(AssertionError, match="kept run"):
        flow_claims.run_flow_claims([exp], quick=True, resume_dir=tmp_path)
