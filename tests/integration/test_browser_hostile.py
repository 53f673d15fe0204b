"""A hostile visitor in headless Chromium, against the page as ``panel serve app/main.py`` builds
it (``app.main.create_app``): links whose values Panel's own parser raises on, an uploaded file
whose name carries markup, and an upload over the size limit."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import panel as pn
import pytest
from playwright.sync_api import Page, expect
from support import serve_dashboard

from app.files.runs import MAX_UPLOAD_MB
from app.main import create_app
from ntk_core import RunConfig, Trainer
from ntk_core.training.netcdf import run_bytes

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

SMALL = "n=32&classes=0,1&width=16&k=4&steps=5000"
WAIT_MS = 90_000
expect.set_options(timeout=WAIT_MS)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    pn.extension("filedropper", notifications=False)
    yield from serve_dashboard(create_app)


@pytest.fixture
def dialogs(page: Page) -> list[str]:
    """Every JavaScript dialog the page opens (dismissed): there must be none."""
    seen: list[str] = []
    page.on("dialog", lambda d: (seen.append(d.message), d.dismiss()))
    return seen


def status(page: Page, step: str = r"\d+") -> object:
    return page.get_by_text(re.compile(rf"^step {step} · [\w ]+"))


def open_files(page: Page) -> None:
    page.get_by_role("button", name="Files", exact=True).click()
    expect(page.locator("input[type=file]").first).to_be_attached()


@pytest.mark.parametrize("value", ["%C2%B2", "9" * 5000])
def test_links_panel_cannot_parse_still_build_the_page(server: str, page: Page,
                                                       dialogs: list[str], value: str) -> None:
    page.goto(f"{server}?{SMALL}&lr=0.05&n={value}")
    expect(status(page, "0")).to_be_visible()
    expect(page.get_by_text(re.compile(r"could not all be applied.*n=\(unreadable\)"))) \
        .to_be_visible()
    expect(page.get_by_text("2/η = 40")).to_be_visible()  # the good fields still apply
    page.get_by_role("button", name="Step", exact=True).click()
    expect(status(page, "1")).to_be_visible()
    assert dialogs == []


def test_a_file_name_with_markup_stays_text(server: str, page: Page, dialogs: list[str]) -> None:
    trainer = Trainer(RunConfig(dataset="digits", n=16, classes=(0, 1), width=8, k=2, steps=5))
    for _ in range(3):
        trainer.step()
    name = "<img src=x onerror=alert(1)><b id=injected>x</b>.nc"
    page.goto(f"{server}?{SMALL}")
    expect(status(page, "0")).to_be_visible()
    open_files(page)
    page.locator("input[type=file]").first.set_input_files(files=[{
        "name": name, "mimeType": "application/x-netcdf",
        "buffer": run_bytes(trainer.buffer.snapshot())}])
    expect(page.get_by_text(re.compile(r"^step 3 · .*<img src=x"))).to_be_visible()
    expect(page.get_by_text(re.compile(r"Viewing the saved run <img src=x"))).to_be_visible()
    assert page.locator("img").count() == 0 and page.locator("#injected").count() == 0
    assert dialogs == []


def test_an_upload_over_the_limit_is_refused_before_sending(server: str, page: Page,
                                                           tmp_path: Path) -> None:
    big = tmp_path / "big.nc"
    with open(big, "wb") as f:  # sparse: the browser checks the size before reading a byte
        f.truncate((MAX_UPLOAD_MB + 1) * 2**20)
    page.goto(f"{server}?{SMALL}")
    expect(status(page, "0")).to_be_visible()
    open_files(page)
    page.locator("input[type=file]").first.set_input_files(str(big))
    expect(page.get_by_text(f"Maximum file size is {MAX_UPLOAD_MB} MB").first).to_be_visible()
    page.get_by_role("button", name="Step", exact=True).click()  # the tab keeps working
    expect(status(page, "1")).to_be_visible()
