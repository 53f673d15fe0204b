"""The optimisers' lecture presets show what their paragraphs promise: the tracked sharpness
hovers at the optimiser's own stability threshold."""

from __future__ import annotations

import numpy as np
import pytest

from ntk_core import run
from ntk_core.numerics.stability import tracked_sharpness
from ntk_core.presets import load_preset

PRESETS = {"momentum-edge": "gd", "adam-edge": "adam", "sgd-edge": "sgd"}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_tracked_sharpness_hovers_at_the_presets_threshold(name: str) -> None:
    """Median over the second half of the run within ±10 % of ``stability_threshold``."""
    preset = load_preset(name)
    assert preset.config.optimizer == PRESETS[name]
    ds = run(preset.config)
    assert ds.attrs["status"] == "completed"
    tracked = tracked_sharpness(preset.config.optimizer)
    measured = ds.measured.values == 1
    values = ds[tracked].values[measured]
    thresholds = ds.stability_threshold.values[measured]
    half = len(values) // 2
    ratio = float(np.median(values[half:] / thresholds[half:]))
    assert abs(ratio - 1) <= 0.10, f"{name}: {tracked} sits at {ratio:.3f} × its threshold"
    if name != "sgd-edge":  # the gradient-descent edge: above 2/η for momentum, far below for Adam
        plain = float(np.median(ds.sharpness.values[measured][half:] * ds.lr.values[0] / 2))
        assert plain > 1.2 if name == "momentum-edge" else plain < 0.5
