"""The served dashboard in headless Chromium: run controls, live plots, η changes, URL presets,
NetCDF download, and the training thread ending with the browser session.

The server runs in this process (``pn.serve(..., threaded=True)``), so the tests can count its
training threads. Runs use a tiny network (``SMALL``) to keep the file well under two minutes.
Set ``NTK_EOS_SCREENSHOT=1`` to also regenerate ``docs/dashboard.png`` (several minutes).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import xarray as xr
from playwright.sync_api import Page, expect
from support import LONGEST_COLUMN_JS, serve_dashboard

from app.dashboard import Dashboard
from app.session.runner import training_threads
from ntk_core.training.process_trainer import training_processes

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

SMALL = "n=32&classes=0,1&width=16&k=4&steps=5000&speed=5"  # a small net, 5 steps/s at most
WAIT_MS = 60_000
DOCS = Path(__file__).resolve().parents[2] / "docs"
expect.set_options(timeout=WAIT_MS)

COLUMN_JS = LONGEST_COLUMN_JS


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    yield from serve_dashboard(Dashboard)


def open_app(page: Page, url: str) -> Page:
    """Load the page and wait until its websocket is open and the first status is shown."""
    page.set_default_timeout(WAIT_MS)
    with page.expect_console_message(lambda m: "is now open" in m.text, timeout=WAIT_MS):
        page.goto(url)
    expect(status(page)).to_be_visible()
    return page


def at_least(n: int) -> str:
    """A regex alternation matching the decimal integers ≥ n."""
    digits = str(n)
    options = [rf"[1-9]\d{{{len(digits)},}}", digits]
    for i, d in enumerate(digits):
        if d != "9":
            rest = len(digits) - i - 1
            options.append(rf"{digits[:i]}[{int(d) + 1}-9]\d{{{rest}}}")
    return "(?:" + "|".join(options) + ")"


def status(page: Page, step: str = r"\d+", state: str = r"[\w ]+") -> object:
    return page.get_by_text(re.compile(rf"^step {step} · {state}$"))


def column(page: Page, name: str) -> list[float]:
    return page.evaluate(COLUMN_JS, name)


def wait_column(page: Page, name: str, condition: str, arg: object = None) -> None:
    """Wait until ``condition`` (JS, on the column array ``c`` and ``arg``) holds."""
    page.wait_for_function(f"([arg]) => {{ const c = ({COLUMN_JS})({name!r}); {condition} }}",
                           arg=[arg])


def press(page: Page, label: str) -> None:
    page.get_by_role("button", name=label, exact=True).click()


def test_play_streams_rows_and_lr_changes_keep_training(server: str, page: Page) -> None:
    open_app(page, f"{server}?{SMALL}")
    press(page, "Play")
    expect(status(page, at_least(3), "running")).to_be_visible()
    wait_column(page, "sharpness", "return c.length >= arg;", 3)
    assert all(v > 0 for v in column(page, "loss"))
    eta = page.get_by_label("η", exact=True)
    eta.fill("0.05")
    eta.press("Enter")
    expect(page.get_by_text("2/η = 40")).to_be_visible()
    wait_column(page, "two_over_lr", "return c.length > 3 && c[c.length - 1] === 40;")
    assert column(page, "two_over_lr")[0] == 20, "the steps before the change stay: no reset"
    wait_column(page, "lam1", "return c.length >= arg;", 3)
    expect(page).to_have_url(re.compile(r"lr=0\.05"))
    # the legend's entry is a data-less twin of the streamed line; hiding it hides the line
    assert page.evaluate(HIDE_BY_LEGEND_JS, "sharpness λ_max(H)") is True
    page.wait_for_function("() => window.__line.visible === false")  # CustomJS runs async


HIDE_BY_LEGEND_JS = """(label) => {
  for (const doc of Bokeh.documents) for (const item of doc.all_models) {
    if (item.constructor.__name__ !== 'LegendItem' || item.label?.value !== label) continue;
    const twin = item.renderers[0];
    const line = [...doc.all_models].find((m) => m.constructor.__name__ === 'GlyphRenderer'
      && m !== twin && m.glyph.y?.field === 'sharpness');
    window.__line = line;
    const before = line.visible;
    twin.visible = false;
    return before;
  }
}"""


def test_pause_step_download_and_reset(server: str, page: Page, tmp_path: Path) -> None:
    open_app(page, f"{server}?{SMALL}")
    press(page, "Play")
    expect(status(page, at_least(2), "running")).to_be_visible()
    press(page, "Pause")
    paused = status(page, state="paused")
    expect(paused).to_be_visible()
    n = int(re.search(r"step (\d+)", paused.inner_text()).group(1))
    press(page, "Step")
    expect(status(page, str(n + 1), "paused")).to_be_visible()

    page.get_by_role("button", name="Files", exact=True).click()
    with page.expect_download() as download:
        page.get_by_text("Download run (NetCDF)").click()
    assert download.value.suggested_filename == "ntk-eos_eos-mlp-digits_lr0.1.nc"
    path = tmp_path / "run.nc"
    download.value.save_as(path)
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        assert {"loss", "sharpness", "eigenvalues", "alignment", "eigenvectors"} <= set(ds)
        assert ds.sizes["step"] == n + 1 and ds.sizes["eig"] == 4
        assert ds.attrs["status"] == "paused"

    press(page, "Reset")
    expect(status(page, "0", "ready")).to_be_visible()
    wait_column(page, "loss", "return c.length === 0;")


def test_preset_from_the_url(server: str, page: Page) -> None:
    open_app(page, f"{server}?preset=catapult")
    expect(page.get_by_text("The catapult: a learning rate above 2/λ₀")).to_be_visible()
    expect(page.get_by_text(re.compile("Lewkowycz et al"))).to_be_visible()
    expect(page.get_by_label("η", exact=True)).to_have_value("0.2")
    expect(page.get_by_text("2/η = 10")).to_be_visible()


def test_invalid_url_settings_show_a_message(server: str, page: Page) -> None:
    open_app(page, f"{server}?target=binary")
    expect(page.get_by_text(re.compile("binary targets need exactly two classes"))).to_be_visible()
    expect(page.get_by_text(re.compile("Traceback"))).to_have_count(0)


def test_closing_the_page_ends_its_training_thread(server: str, page: Page) -> None:
    before = set(training_threads())
    processes_before = set(training_processes())
    open_app(page, f"{server}?{SMALL}")
    press(page, "Play")
    expect(status(page, at_least(2), "running")).to_be_visible()
    ours = [t for t in training_threads() if t not in before]
    assert ours, "the session trains in a thread named ntk-eos-train-*"
    processes = [p for p in training_processes() if p not in processes_before]
    assert len(processes) == 1, "the run trains in a process named ntk-eos-trainer-*"
    page.close()
    for thread in ours:
        thread.join(WAIT_MS / 1000)
        assert not thread.is_alive(), f"{thread.name} still runs after its session ended"
    processes[0].join(10)
    assert not processes[0].is_alive(), f"{processes[0].name} still runs after its session ended"


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(not os.environ.get("NTK_EOS_SCREENSHOT"), reason="set NTK_EOS_SCREENSHOT=1")
def test_screenshot_for_the_docs(server: str, page: Page) -> None:
    """The default preset in the EoS regime (≥ 300 steps), as a lecturer would project it."""
    page.set_viewport_size({"width": 1600, "height": 1000})
    open_app(page, server)
    press(page, "Play")
    expect(status(page, at_least(320), "running")).to_be_visible(timeout=800_000)
    page.wait_for_function("""() => [...Bokeh.documents[0].all_models].some(
        m => typeof m.text === 'string' && /^NTK at step (3[2-9]\\d|[4-9]\\d\\d)/.test(m.text))""")
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "dashboard.png"), full_page=True)
