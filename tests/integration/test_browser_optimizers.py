"""The optimiser controls in headless Chromium: choosing Adam draws the preconditioned sharpness
against its own threshold line, labelled "38/η (Adam, β₁ = 0.9)"; a momentum typed mid-run moves
the threshold line from the next step on, in the same run.

What the page draws is read from the Bokeh document in the page (``window.Bokeh``), as
``test_browser`` does. Set ``NTK_EOS_SCREENSHOT=1`` to also regenerate ``docs/optimizers.png``
(an Adam run half-way) and a momentum run's screenshot beside the test's files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from support import serve_dashboard
from test_browser import (
    DOCS,
    SMALL,
    at_least,
    column,
    open_app,
    press,
    status,
    wait_column,
)

from app.dashboard import Dashboard

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

WAIT_MS = 60_000
expect.set_options(timeout=WAIT_MS)

# The labels of every legend in the page, one list per legend.
LEGENDS_JS = """() => {
  const out = [];
  for (const doc of Bokeh.documents) for (const m of doc.all_models)
    if (m.constructor.__name__ === 'Legend') out.push(m.items.map((i) => i.label?.value));
  return out;
}"""
# Whether the streamed line drawing column ``field`` is visible.
LINE_VISIBLE_JS = """(field) => {
  for (const doc of Bokeh.documents) for (const m of doc.all_models)
    if (m.constructor.__name__ === 'GlyphRenderer' && m.glyph.y?.field === field
        && m.data_source.data.step?.length > 0) return m.visible;
  return null;
}"""


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    yield from serve_dashboard(Dashboard)


def sharpness_legend(page: Page) -> list[str]:
    """The legend that names the sharpness (the sharpness figure's)."""
    legends = [labels for labels in page.evaluate(LEGENDS_JS) if "sharpness λ_max(H)" in labels]
    assert len(legends) == 1, legends
    return legends[0]


def test_choosing_adam_draws_the_preconditioned_sharpness_against_38_over_eta(
        server: str, page: Page) -> None:
    open_app(page, f"{server}?{SMALL}&lr=0.01")
    page.get_by_label("Optimizer").select_option(label="Adam")
    expect(page.get_by_text("38/η = 3800")).to_be_visible()
    expect(page.get_by_label("β₁ (first moment)")).to_be_visible()
    expect(page.get_by_label("Momentum β")).to_be_hidden()
    press(page, "Play")
    expect(status(page, at_least(3), "running")).to_be_visible()
    wait_column(page, "preconditioned_sharpness",
                "return c.length >= arg && c.every((v) => v > 0);", 3)
    assert all(abs(v - 3800) < 1e-6 for v in column(page, "stability_threshold"))
    expect(page).to_have_url(re.compile(r"optimizer=adam"))
    labels = sharpness_legend(page)
    assert labels[:2] == ["preconditioned sharpness λ_max(P⁻¹H)", "38/η (Adam, β₁ = 0.9)"]
    assert "2/η" not in labels, "plain GD's line is not Adam's edge"
    for field in ("preconditioned_sharpness", "stability_threshold", "sharpness"):
        assert page.evaluate(LINE_VISIBLE_JS, field) is True, field
    assert page.evaluate(LINE_VISIBLE_JS, "batch_sharpness") is False


def test_a_momentum_typed_mid_run_moves_the_threshold_line(server: str, page: Page) -> None:
    open_app(page, f"{server}?{SMALL}&momentum=0.5")
    expect(page.get_by_text("(2+2β)/η = 30")).to_be_visible()
    press(page, "Play")
    wait_column(page, "stability_threshold", "return c.length >= arg;", 3)
    assert column(page, "stability_threshold")[:3] == [30, 30, 30]
    assert "(2+2β)/η, β = 0.5" in sharpness_legend(page)
    beta = page.get_by_label("Momentum β")
    beta.fill("0.8")
    beta.press("Enter")
    expect(page.get_by_text("(2+2β)/η = 36")).to_be_visible()
    wait_column(page, "stability_threshold",
                "return Math.abs(c[c.length - 1] - 36) < 1e-9;")
    threshold = column(page, "stability_threshold")
    assert threshold[0] == 30, "the steps before the change stay: no reset"
    assert set(column(page, "two_over_lr")) == {20}, "2/η itself does not move"
    assert page.evaluate(LINE_VISIBLE_JS, "two_over_lr") is True  # grey, for comparison
    labels = sharpness_legend(page)
    assert "(2+2β)/η, β = 0.8" in labels and "(2+2β)/η, β = 0.5" not in labels
    expect(page).to_have_url(re.compile(r"momentum=0\.8"))


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(not os.environ.get("NTK_EOS_SCREENSHOT"), reason="set NTK_EOS_SCREENSHOT=1")
@pytest.mark.parametrize("preset", ["adam-edge", "momentum-edge"])
def test_screenshots_half_way(server: str, page: Page, preset: str, tmp_path: Path) -> None:
    """Each lecture preset 400 steps in (half its budget), as a lecturer would project it."""
    page.set_viewport_size({"width": 1600, "height": 1000})
    open_app(page, f"{server}?preset={preset}")
    press(page, "Play")
    expect(status(page, at_least(400), "running")).to_be_visible(timeout=800_000)
    page.wait_for_function("""() => [...Bokeh.documents[0].all_models].some(
        m => typeof m.text === 'string' && /^NTK at step (4\\d\\d)/.test(m.text))""")
    path = DOCS / "optimizers.png" if preset == "adam-edge" else tmp_path / f"{preset}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
