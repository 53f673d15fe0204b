"""The two-layer linear network's predicted final KTA on the dashboard: the dashed level at the
run's η on the live alignment plot (it follows η when η changes mid-run), the predicted curve
against η beside the kept runs, and no line where the theory does not describe the run. The
expected values are computed here from the theory's functions on the preset's data. The browser
test plays the preset in Chromium; with ``NTK_EOS_SCREENSHOT=1`` it also writes
``docs/linear2-theory.png``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Page, expect
from support import serve_dashboard, steps_done

from app.dashboard import Dashboard
from app.session import theory_lines
from app.session.runner import training_threads
from app.session.settings import RunSettings
from ntk_core.data import load_dataset
from ntk_core.experiments import theory
from ntk_core.presets import load_preset

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def preset_theory() -> tuple[np.ndarray, np.ndarray, float]:
    """G = XXᵀ, y and the balanced interpolant's a² of the linear2 preset (small init: gradient
    flow ends within 0.5 % of it)."""
    data = load_dataset(load_preset("linear2-theory").config)
    X, y = data.X.double().numpy(), data.Y.double().numpy()[:, 0]
    G = X @ X.T
    return G, y, theory.balanced_flow_a2(G, y)


def expected_kta(preset_theory: tuple, lrs: list[float] | np.ndarray) -> np.ndarray:
    G, y, a2_flow = preset_theory
    return theory.predict(G, y, lrs, a2_flow=a2_flow).kta_pred.values


@pytest.fixture
def linear2_dash() -> Iterator[Dashboard]:
    board = Dashboard(settings=RunSettings(preset="linear2-theory"))
    yield board
    board.close()
    for thread in training_threads():
        thread.join(30)


def ready(board: Dashboard) -> None:
    """Wait for the background theory, then let the page draw it."""
    assert theory_lines._shared.wait(120)
    board.tick()


def legend_label(board: Dashboard) -> str | None:
    item = board.plots._theory_target_item
    return item.label.value if item.visible else None


def test_the_alignment_plot_shows_the_predicted_final_kta_at_the_runs_eta(
        linear2_dash: Dashboard, preset_theory: tuple) -> None:
    steps_done(linear2_dash, 2)
    ready(linear2_dash)
    plots = linear2_dash.plots
    want = expected_kta(preset_theory, [0.15])[0]
    assert plots.theory_target.visible and plots.theory_target.line_dash == [6]  # "dashed"
    assert plots.theory_target.location == pytest.approx(want, abs=1e-3)
    assert want == pytest.approx(0.455, abs=0.002)  # the value the preset's paragraph quotes
    assert legend_label(linear2_dash) == f"theory: final KTA {want:.3f} at η = 0.15"
    y_range = plots.alignment_fig.y_range
    assert y_range.start < want < y_range.end

    linear2_dash.settings.lr = 0.2  # mid-run: the run goes on with the new η, and so does the line
    steps_done(linear2_dash, 1)
    linear2_dash.tick()
    want = expected_kta(preset_theory, [0.2])[0]
    assert plots.theory_target.location == pytest.approx(want, abs=1e-3)
    assert legend_label(linear2_dash) == f"theory: final KTA {want:.3f} at η = 0.2"

    linear2_dash.settings.lr = 0.3  # 2/η below the flattest interpolant's sharpness
    linear2_dash.tick()
    assert not plots.theory_target.visible
    assert legend_label(linear2_dash) == "theory: no stable fit at η = 0.3"


def test_a_saved_linear2_run_shows_the_level_at_its_last_eta(
        linear2_dash: Dashboard, preset_theory: tuple) -> None:
    steps_done(linear2_dash, 1)
    linear2_dash.settings.lr = 0.25
    steps_done(linear2_dash, 1)
    data = linear2_dash._download_netcdf().getvalue()
    linear2_dash.settings.lr = 0.1  # the controls' η is not the file's
    linear2_dash.open_bytes("saved.nc", data)
    assert linear2_dash.controller.viewed is not None
    ready(linear2_dash)
    want = expected_kta(preset_theory, [0.25])[0]
    assert linear2_dash.plots.theory_target.location == pytest.approx(want, abs=1e-3)
    assert legend_label(linear2_dash) == f"theory: final KTA {want:.3f} at η = 0.25"


def test_the_compare_tab_draws_the_predicted_curve_beside_kept_linear2_runs(
        linear2_dash: Dashboard, preset_theory: tuple) -> None:
    steps_done(linear2_dash, 2)
    linear2_dash.keep()
    linear2_dash.settings.lr = 0.25
    steps_done(linear2_dash, 2)
    linear2_dash.keep()
    ready(linear2_dash)
    plots = linear2_dash.plots
    curve = plots.theory_curve.data
    assert plots._theory_curve_entry.visible
    lrs, kta = np.asarray(curve["lr"]), np.asarray(curve["kta"])
    assert lrs.min() < 0.15 and lrs.max() > 0.25 and {0.15, 0.25} <= set(lrs)
    np.testing.assert_allclose(kta, expected_kta(preset_theory, lrs), atol=2e-3)
    assert np.isnan(kta[lrs > 0.28]).all(), "no stable fit: a gap"
    finite = np.isfinite(kta)
    assert (np.diff(kta[finite]) >= -1e-9).all(), "the predicted KTA rises with η"

    linear2_dash.clear_kept()
    linear2_dash.tick()
    assert not plots._theory_curve_entry.visible and not len(plots.theory_curve.data["lr"])


def test_other_runs_get_no_theory_line() -> None:
    board = Dashboard(settings=RunSettings(dataset="digits", n=32, classes="0,1", width=16,
                                           k=4, steps=20))
    try:
        steps_done(board, 2)
        board.keep()
        board.tick()
        plots = board.plots
        assert board.controller.run.config.arch == "mlp"
        assert not plots.theory_target.visible and legend_label(board) is None
        assert not plots._theory_curve_entry.visible
    finally:
        board.close()


def test_inputs_that_cannot_fit_their_targets_get_no_prediction() -> None:
    # 128 examples in 16 dimensions (the preset before): no weights interpolate, and the theory,
    # which describes interpolants, draws nothing
    config = load_preset("linear2-theory").config.replace(
        dataset="synthetic", n=128, input_dim=16)
    assert theory_lines.linear2_theory(config) is None
    assert theory_lines.linear2_theory(config.replace(arch="mlp")) is None


# ---- in the browser ------------------------------------------------------------------------------
DOCS = Path(__file__).resolve().parents[2] / "docs"
# The theory's level as BokehJS holds it: [location, visible] of the page's dashed Span
LEVEL_JS = """() => {
  for (const doc of Bokeh.documents) for (const m of doc.all_models)
    if (m.constructor.__name__ === 'Span' && m.location !== null && m.location !== 0)
      return [m.location, m.visible];
  return null;
}"""


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    yield from serve_dashboard(Dashboard)


@pytest.mark.browser
def test_the_served_preset_draws_the_level_and_the_run_meets_it(
        server: str, page: Page, preset_theory: tuple) -> None:
    page.set_viewport_size({"width": 1600, "height": 1000})
    page.set_default_timeout(120_000)
    with page.expect_console_message(lambda m: "is now open" in m.text, timeout=120_000):
        page.goto(f"{server}?preset=linear2-theory")
    page.get_by_role("button", name="Play", exact=True).click()
    want = expected_kta(preset_theory, [0.15])[0]
    label = f"theory: final KTA {want:.3f} at η = 0.15"
    page.wait_for_function(f"() => {{ const s = ({LEVEL_JS})(); return s !== null && s[1]; }}")
    location, visible = page.evaluate(LEVEL_JS)
    assert visible and location == pytest.approx(want, abs=1e-3)
    assert page.evaluate("""(label) => [...Bokeh.documents[0].all_models].some(
        m => m.constructor.__name__ === 'LegendItem' && m.label?.value === label
             && m.visible)""", label)
    expect(page.get_by_text("step 1500 · completed")).to_be_visible(timeout=240_000)
    page.wait_for_timeout(2500)  # the slow curves and matrices follow within a second
    if os.environ.get("NTK_EOS_SCREENSHOT"):
        page.screenshot(path=str(DOCS / "linear2-theory.png"), full_page=True)
