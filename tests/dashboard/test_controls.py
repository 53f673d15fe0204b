"""The η box without a browser: a value the run cannot take is reported on the page, through the
same alert as any invalid setting, and the run keeps its η until the box holds one it can."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import panel as pn
import pytest
from playwright.sync_api import Page, expect
from support import free_port, steps_done, wait_for

from app.dashboard import Dashboard
from app.session.runner import stop_all, training_threads
from app.session.settings import RunSettings

pytestmark = pytest.mark.timeout(120)

SMALL = {"n": 32, "classes": "0,1", "width": 16, "k": 4, "steps": 200}


@pytest.fixture
def dash() -> Iterator[Dashboard]:
    board = Dashboard(settings=RunSettings(**SMALL))
    yield board
    board.close()
    for thread in training_threads():
        thread.join(30)


@pytest.mark.parametrize(("typed", "message"), [
    (-1.0, "lr: the learning rate must be positive, got -1.0"),  # the engine's words
    (0.0, "lr: the learning rate must be positive, got 0.0"),
    (20.0, "lr: the dashboard allows 0.001 to 10, got 20"),  # the served dashboard's bound
])
def test_an_eta_the_run_cannot_take_is_reported_and_the_run_keeps_its_eta(
        dash: Dashboard, typed: float, message: str) -> None:
    steps_done(dash, 2)
    run = dash.controller.run
    box = dash.lr_control.input
    assert box.start is None and box.end is None  # the browser's spinner drops values outside
    box.value = typed
    assert box.value == typed, "the box keeps what was typed"
    assert dash.config_alert.visible and message in dash.config_alert.object
    assert dash.controller.run is run and run.lr == 0.1 and dash.settings.lr == 0.1
    dash.reset()  # the page refuses to start a run while the message stands
    assert dash.controller.run is run
    box.value = 0.05
    assert not dash.config_alert.visible
    assert dash.controller.run is run and run.lr == 0.05, "a valid η continues the same run"
    steps_done(dash, 1)
    assert run.buffer.rows(0)["lr"].tolist() == [0.1, 0.1, 0.05]


def test_typing_back_the_current_eta_or_moving_the_slider_clears_the_message(
        dash: Dashboard) -> None:
    box = dash.lr_control.input
    box.value = -1.0
    assert dash.config_alert.visible
    box.value = 0.1  # the η the run has: nothing to change, but the message goes
    assert not dash.config_alert.visible and dash.settings.rejected == {}
    box.value = -1.0
    dash.settings.lr = 0.2  # what the slider writes
    assert not dash.config_alert.visible and dash.controller.run.lr == 0.2
    assert box.value == 0.2


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.mark.browser
def test_a_negative_eta_typed_in_the_browser_shows_the_engine_message(page: Page) -> None:
    """The η box in Chromium: the spinner once dropped −1 without a word (its lower bound), and
    the page kept training at 0.1 while the box showed −1."""
    port = free_port()
    server = pn.serve({"main": Dashboard}, port=port, address="127.0.0.1", threaded=True,
                      show=False, websocket_origin=[f"127.0.0.1:{port}"])
    try:
        wait_for(lambda: _listening(port), timeout=60)
        page.set_default_timeout(60_000)
        page.goto(f"http://127.0.0.1:{port}/main?n=32&classes=0,1&width=16&k=4")
        eta = page.get_by_label("η", exact=True)
        eta.fill("-1")
        eta.press("Enter")
        expect(page.get_by_text(re.compile("lr: the learning rate must be positive, got -1.0"))
               ).to_be_visible()
        expect(page.get_by_text("2/η = 20", exact=True)).to_be_visible()
        eta.fill("0.05")
        eta.press("Enter")
        expect(page.get_by_text("2/η = 40", exact=True)).to_be_visible()
        expect(page.get_by_text(re.compile("These settings cannot run"))).to_be_hidden()
    finally:
        server.stop()
        server.join(20)
        stop_all()
