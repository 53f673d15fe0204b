"""The linear2 lecture preset as a new user runs it: at its own η the sharpness rises to 2/η and
hovers there (the Edge of Stability), and the run ends at the final KTA and layer scale that the
two-layer linear theory predicts for that η."""

from __future__ import annotations

import numpy as np
import pytest

from ntk_core import Trainer
from ntk_core.data import load_dataset
from ntk_core.experiments import theory
from ntk_core.presets import load_preset

pytestmark = pytest.mark.timeout(300)

STEPS = 800  # the preset runs 1500; the edge is reached near step 100 and held from step 250


@pytest.fixture(scope="module")
def preset_run() -> tuple:
    config = load_preset("linear2-theory").config.replace(steps=STEPS)
    trainer = Trainer(config)
    ds = trainer.run()
    return config, trainer, ds


def test_the_sharpness_rises_to_two_over_lr_and_hovers_there(preset_run: tuple) -> None:
    config, _, ds = preset_run
    assert ds.attrs["status"] == "completed" and ds.sizes["step"] == STEPS
    sharpness, edge = ds.sharpness.values, 2 / config.lr
    assert np.isfinite(sharpness).all()
    assert sharpness[0] < 0.5 * edge, "it starts well below the edge"
    reached = np.flatnonzero(sharpness >= 0.95 * edge)
    assert reached.size, f"the sharpness peaked at {sharpness.max():.2f} against 2/η = {edge:.2f}"
    first = int(reached[0])
    assert 20 <= first <= STEPS // 4, f"it reached the edge at step {first}: a rise one can watch"
    late = sharpness[max(first, STEPS // 2):]
    assert abs(np.median(late) / edge - 1) < 0.1, np.median(late) / edge
    assert 0.8 * edge < late.min() and late.max() < 1.2 * edge, (late.min(), late.max())


def test_the_run_ends_where_the_theory_predicts(preset_run: tuple) -> None:
    config, trainer, ds = preset_run
    data = load_dataset(config)
    X, y = data.X.double().numpy(), data.Y.double().numpy()[:, 0]
    G = X @ X.T
    pred = theory.predict(G, y, [config.lr])
    # the sharpness cap binds at this η: the prediction is b_max(η), whatever gradient flow gives
    assert pred.a2_max.item() < 0.6 * pred.attrs["a2_flow"]
    a2 = float((trainer.model.v.weight.detach().double() ** 2).sum())
    assert a2 == pytest.approx(pred.a2_pred.item(), rel=0.05)
    assert float(ds.kta[-1]) == pytest.approx(pred.kta_pred.item(), abs=0.01)
    assert float(ds.kta[-1]) > pred.attrs["kta_flow"] + 0.05, "above gradient flow's KTA"
