"""The dashboard's Sweep tab in headless Chromium: it opens the example sweep and draws the
final-KTA-against-η plot from its data.

Set ``NTK_EOS_SCREENSHOT=1`` to also regenerate ``docs/sweep-view.png``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import panel as pn
import pytest
import xarray as xr
from playwright.sync_api import Page, expect
from support import COLUMNS_JS, free_port

from app.dashboard import Dashboard
from app.session.runner import stop_all
from app.views.sweep_view import example_sweep_path

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

WAIT_MS = 90_000  # the whole dashboard loads first; slow on a busy machine
DOCS = Path(__file__).resolve().parents[2] / "docs"

@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    port = free_port()
    thread = pn.serve({"main": Dashboard}, port=port, address="127.0.0.1", threaded=True,
                      show=False, websocket_origin=[f"127.0.0.1:{port}"])
    yield f"http://127.0.0.1:{port}/main"
    thread.stop()
    thread.join(20)
    stop_all()
    pn.state.reset()


def test_sweep_tab_draws_final_kta_against_lr(server: str, page: Page) -> None:
    page.set_default_timeout(WAIT_MS)
    page.set_viewport_size({"width": 1500, "height": 1500})
    with page.expect_console_message(lambda m: "is now open" in m.text, timeout=WAIT_MS):
        page.goto(server)
    page.get_by_text("Sweep", exact=True).click()  # waits for the page to render
    expect(page.get_by_text("Learning-rate sweep")).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_text("3 diverged (η = 0.4)", exact=False)).to_be_visible(timeout=WAIT_MS)
    page.wait_for_function(f"() => ({COLUMNS_JS})('mean').some(c => c.length > 0)")
    means = [c for c in page.evaluate(COLUMNS_JS, "mean") if c]

    cube = xr.open_dataset(example_sweep_path(), engine="h5netcdf")
    kta = np.where(cube.status.values == "diverged", np.nan, cube.final_kta.values)
    expected = np.nanmean(kta[:-1], axis=1)  # the last η diverged at every seed
    cube.close()
    assert any(len(c) == 5 and np.allclose(c[:4], expected) for c in means), means
    expect(page.locator(".bk-Canvas, canvas").first).to_be_visible()

    if os.environ.get("NTK_EOS_SCREENSHOT"):
        page.wait_for_timeout(1500)  # let the last plots paint before the picture
        page.screenshot(path=str(DOCS / "sweep-view.png"), full_page=True)
