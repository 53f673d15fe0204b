"""The Flows control in headless Chromium: with Flows turned on and Play pressed, the central
flow's and gradient flow's curves fill beside GD's on the loss, sharpness and alignment plots,
with their legend entries, and the distance plot appears and fills; without flows it is not on
the page.

What the page draws is read from the Bokeh document in the page (``window.Bokeh``), as
``test_browser`` does. Set ``NTK_EOS_SCREENSHOT=1`` to also regenerate ``docs/flows.png`` (the
central-flow preset at its end, step 80).
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
from app.views.plots import DISTANCE_TITLE

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

WAIT_MS = 120_000
expect.set_options(timeout=WAIT_MS)

# The labels of every legend entry the page shows.
LEGEND_LABELS_JS = """() => {
  const out = [];
  for (const doc of Bokeh.documents) for (const m of doc.all_models)
    if (m.constructor.__name__ === 'Legend')
      for (const item of m.items) if (item.visible) out.push(item.label?.value);
  return out;
}"""
# The on-screen size of the figure titled ``title`` (0 × 0 when hidden or not drawn).
FIGURE_SIZE_JS = """(title) => {
  let size = [0, 0];
  const walk = (view) => {
    if (view.model?.title?.text === title) {
      const box = view.el.getBoundingClientRect();
      size = [Math.max(size[0], box.width), Math.max(size[1], box.height)];
    }
    for (const child of view.child_views ?? []) walk(child);
  };
  for (const view of Object.values(Bokeh.index)) walk(view);
  return size;
}"""
# Whether every line drawing column ``field`` is visible (null when none draws it).
LINES_VISIBLE_JS = """(field) => {
  const seen = [];
  for (const doc of Bokeh.documents) for (const m of doc.all_models)
    if (m.constructor.__name__ === 'GlyphRenderer' && m.glyph.y?.field === field)
      seen.push(m.visible);
  return seen.length ? seen.every((v) => v) : null;
}"""
FLOW_COLUMNS = ("loss_central", "loss_stable", "predicted_loss", "sharpness_central",
                "sharpness_stable", "kta_central", "kta_stable", "distance_central",
                "distance_stable")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    yield from serve_dashboard(Dashboard)


def figure_shown(page: Page, title: str) -> bool:
    width, height = page.evaluate(FIGURE_SIZE_JS, title)
    return width > 50 and height > 50


def test_turning_flows_on_and_pressing_play_fills_the_overlays_and_the_distances(
        server: str, page: Page, tmp_path: Path) -> None:
    page.set_viewport_size({"width": 1600, "height": 1000})
    open_app(page, f"{server}?{SMALL}")
    expect(status(page, "0", "ready")).to_be_visible()
    assert figure_shown(page, "Training loss") and not figure_shown(page, DISTANCE_TITLE)
    assert page.evaluate(LINES_VISIBLE_JS, "loss_central") is False
    page.get_by_label("Flows beside GD").select_option(label="Central flow + gradient flow")
    expect(page.get_by_text("measured as GD is")).to_be_visible()
    press(page, "Play")
    expect(status(page, at_least(4), "running")).to_be_visible()
    for name in FLOW_COLUMNS:
        wait_column(page, name, "return c.length >= arg && c.every(Number.isFinite);", 3)
        assert page.evaluate(LINES_VISIBLE_JS, name) is True, name
    distances = column(page, "distance_stable")
    assert distances[0] == 0 and distances[-1] > 0
    expect(page).to_have_url(re.compile(r"flows=central(%2C|,)stable"))
    assert figure_shown(page, DISTANCE_TITLE)
    labels = page.evaluate(LEGEND_LABELS_JS)
    for label in ("central flow", "predicted time-averaged loss", "gradient flow",
                  "KTA, central flow", "KTA, gradient flow", "to the central flow",
                  "to the gradient flow"):
        assert label in labels, label
    page.screenshot(path=str(tmp_path / "flows.png"), full_page=True)
    assert (tmp_path / "flows.png").stat().st_size > 50_000


def test_with_momentum_the_control_is_off_and_says_so(server: str, page: Page) -> None:
    open_app(page, f"{server}?{SMALL}&flows=central&momentum=0.5")
    select = page.get_by_label("Flows beside GD")
    expect(select).to_be_disabled()
    expect(page.get_by_text("Flows: plain gradient descent only")).to_be_visible()
    expect(page.get_by_text("These settings cannot run")).to_be_hidden()
    press(page, "Play")
    expect(status(page, at_least(3), "running")).to_be_visible()
    assert not figure_shown(page, DISTANCE_TITLE)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(not os.environ.get("NTK_EOS_SCREENSHOT"), reason="set NTK_EOS_SCREENSHOT=1")
def test_screenshot_of_the_central_flow_preset(server: str, page: Page) -> None:
    """The central-flow preset run to its end (80 steps), as a lecturer would project it."""
    page.set_viewport_size({"width": 1600, "height": 1000})
    open_app(page, f"{server}?preset=central-flow")
    press(page, "Play")
    expect(status(page, "80", "completed")).to_be_visible(timeout=800_000)
    wait_column(page, "kta_stable", "return c.length >= arg;", 80)
    page.wait_for_timeout(2000)
    page.screenshot(path=str(DOCS / "flows.png"), full_page=True)
