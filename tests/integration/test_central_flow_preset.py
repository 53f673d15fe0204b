"""The central-flow lecture preset as a lecturer runs it: what its paragraph tells the class to
watch holds for the run it starts. GD reaches 2/η and oscillates around it while the central
flow's sharpness stays pinned there and gradient flow's climbs through it; GD stays nearer the
central flow than gradient flow; KTA is higher along the central flow than along gradient flow;
the predicted time-averaged loss lies near GD's averaged loss."""

from __future__ import annotations

import numpy as np
import pytest

from app.session.settings import RunSettings
from ntk_core import Trainer
from ntk_core.presets import load_preset

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def rows() -> dict[str, np.ndarray]:
    trainer = Trainer(load_preset("central-flow").config)
    while not trainer.finished:
        trainer.step()
    assert trainer.buffer.status == "completed" and trainer.buffer.attrs["flow_status"] == ""
    return trainer.buffer.rows(0)


def test_the_dashboard_starts_the_preset_with_both_flows() -> None:
    settings = RunSettings(preset="central-flow")
    assert settings.flows == "central,stable" and settings.to_config().flows == ("central",
                                                                                 "stable")
    assert settings.overrides() == {}
    assert "central flow" in load_preset("central-flow").description


def test_gd_oscillates_around_two_over_eta_and_the_central_flow_is_pinned_on_it(
        rows: dict[str, np.ndarray]) -> None:
    edge = 2 / 0.15
    gd, central, stable = (rows[k] for k in ("sharpness", "sharpness@central",
                                             "sharpness@stable"))
    assert len(gd) == 80 and np.isfinite(central).all() and np.isfinite(stable).all()
    reached = int(np.flatnonzero(gd >= edge)[0])
    assert reached <= 15, reached  # "reaches 2/η at step 14"
    after = gd[reached:]
    assert after.max() > 1.1 * edge and after.min() < 0.95 * edge, "over and below the line"
    assert after[-1] > edge, "and back over it by step 80"
    pinned = int(np.flatnonzero(np.abs(central / edge - 1) < 1e-3)[0])
    assert pinned <= 13, pinned  # "at step 12"
    assert np.abs(central[pinned:] / edge - 1).max() < 0.02
    assert stable[-1] > 1.25 * edge and np.all(np.diff(stable[20:]) > 0), "climbs through"


def test_gd_stays_near_the_central_flow_and_drifts_from_gradient_flow(
        rows: dict[str, np.ndarray]) -> None:
    central, stable = rows["distance_to_gd@central"], rows["distance_to_gd@stable"]
    assert central.max() < 0.015 and central[40:].max() < 0.01
    assert np.all(stable[40:] > 0.018) and np.all(central[40:] < stable[40:] / 2)


def test_kta_is_higher_along_the_central_flow_than_along_gradient_flow(
        rows: dict[str, np.ndarray]) -> None:
    gd, central, stable = (rows[k] for k in ("kta", "kta@central", "kta@stable"))
    assert gd[20] < gd[0] and central[20] < central[0] and stable[20] < stable[0]
    assert np.all(central[14:] > stable[14:])
    assert stable[-1] < gd[-1] < central[-1]
    assert central[-1] - stable[-1] > 0.005
    assert gd[20:30].min() < 0.116 and gd[35:45].max() > 0.124, "GD's jump with the spike"


def test_the_predicted_loss_lies_near_gds_averaged_loss(rows: dict[str, np.ndarray]) -> None:
    loss, predicted = rows["loss"], rows["predicted_loss"]
    # GD's loss over one period of its two-step oscillation, centred on each step
    averaged = (loss[39:75] + loss[40:76]) / 2
    excess = predicted[40:76] / averaged - 1
    assert 0.0 < np.median(excess) < 0.2, np.median(excess)  # "about 10 % above"
    assert np.all(predicted >= rows["loss@central"] - 1e-12)
