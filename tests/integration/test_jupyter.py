"""The dashboard inside JupyterLab: a notebook cell shows it, Play trains and the plots stream.

A real JupyterLab server, a real kernel and Chromium, as a lecturer would use them offline:
``pn.extension(inline=True)`` puts BokehJS and Panel's JavaScript in the notebook itself, since
the default loads them from a CDN.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from support import LONGEST_COLUMN_JS, free_port, stop_process, wait_for

pytest.importorskip("jupyterlab")
pytestmark = [pytest.mark.browser, pytest.mark.timeout(420)]

CELLS = [
    "import panel as pn\npn.extension(inline=True)",
    "from app.dashboard import Dashboard\nfrom app.session.settings import RunSettings\n"
    "dashboard = Dashboard(settings=RunSettings(n=64, classes='0,1', width=32, k=6,"
    " steps=100000), columns=2)\ndashboard",
]


def _notebook(cells: list[str]) -> dict:
    return {"nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                        "language": "python"}},
            "cells": [{"cell_type": "code", "id": f"c{i}", "metadata": {}, "outputs": [],
                       "execution_count": None, "source": src} for i, src in enumerate(cells)]}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("lab")
    (root / "dashboard.ipynb").write_text(json.dumps(_notebook(CELLS)))
    port = free_port()
    log = (root / "lab.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", "--IdentityProvider.token=", "--ServerApp.password=",
         f"--ServerApp.root_dir={root}", "--LabApp.news_url=",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=root, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/api/status", timeout=2):
                return True
        except OSError:
            return proc.poll() is not None  # died: stop waiting, the test then fails

    try:
        wait_for(answers, timeout=90, pause=0.5)
        assert proc.poll() is None, Path(log.name).read_text()
        yield url
    finally:
        stop_process(proc)
        log.close()


def _step(page: Page) -> int:
    text = page.get_by_text(re.compile(r"^step \d+ · ")).inner_text()
    return int(re.search(r"step (\d+)", text).group(1))


def test_a_notebook_cell_shows_the_dashboard_and_play_streams_the_run(lab: str,
                                                                     page: Page) -> None:
    page.set_default_timeout(120_000)
    page.set_viewport_size({"width": 1600, "height": 1000})  # a laptop's or projector's width
    expect.set_options(timeout=120_000)
    page.goto(f"{lab}/lab/tree/dashboard.ipynb?reset")
    # the notebook names its kernel (python3, this interpreter's); wait until it is idle
    expect(page.get_by_text(re.compile(r"Python 3 \(ipykernel\) \| Idle"))).to_be_visible()
    page.get_by_text("Run", exact=True).first.click()
    page.get_by_text("Run All Cells", exact=True).click()
    status = page.get_by_text(re.compile(r"^step \d+ · "))
    expect(status).to_have_text(re.compile(r"^step 0 · ready$"))
    # columns=2: inside the notebook beside the sidebar, each plot gets half the width (three
    # a row left 279 px each), and none reaches past the notebook's right edge
    notebook = page.locator(".jp-NotebookPanel").first.bounding_box()
    figures = [c.bounding_box() for c in page.locator("canvas").all()]
    figures = [box for box in figures if box and box["width"] > 100]
    assert len(figures) >= 9, "the Live tab's plots are drawn"
    assert min(b["width"] for b in figures) >= 380
    assert max(b["x"] + b["width"] for b in figures) <= notebook["x"] + notebook["width"]
    page.get_by_role("button", name="Play", exact=True).click()
    expect(status).to_have_text(re.compile(r"· running$"))
    first = _step(page)
    wait_for(lambda: _step(page) >= first + 20, timeout=120, pause=0.5)
    # the live curves reach the browser through the kernel's comm, not only the status text
    wait_for(lambda: len(page.evaluate(LONGEST_COLUMN_JS, "sharpness")) >= 10, timeout=60,
             pause=0.5)
    page.get_by_role("button", name="Pause", exact=True).click()
    expect(status).to_have_text(re.compile(r"· paused$"))
    paused = _step(page)
    time.sleep(1.5)
    assert _step(page) == paused, "a paused run stays paused"
