"""The page builder: queued pages are built one at a time, in order, in stages; a tab that
closes before or during its build costs nothing afterwards; one failing build does not stop
the pages behind it."""

from __future__ import annotations

import threading
from typing import Any

import panel as pn
import pytest
from bokeh.document import Document
from support import wait_for

from app.server.page_loading import PageBuilder, PageJob, wait_for_loop


class LoopDoc(Document):
    """A document whose 'event loop' runs next-tick callbacks at once, counting them."""

    def __init__(self) -> None:
        super().__init__()
        self.turns = 0

    def add_next_tick_callback(self, callback: Any) -> Any:
        self.turns += 1
        callback()


class Page:
    """A page that records its stages and whether it was closed. (Not a subclass of a Panel
    pane: Panel would register it and try it on every object it is given, in every test.)"""

    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.label, self.closed = log, name, False

    def __panel__(self) -> pn.pane.Markdown:
        return pn.pane.Markdown(self.label)

    def stages(self) -> Any:
        for i in range(3):
            self.log.append(f"{self.label}:{i}")
            yield

    def close(self) -> None:
        self.closed = True


def job(log: list[str], name: str, build: Any = None) -> PageJob:
    def default_build() -> Page:
        log.append(f"{name}:build")
        return Page(log, name)

    return PageJob(LoopDoc(), pn.Column(), build or default_build, Page.stages)


def test_pages_build_in_order_one_at_a_time_with_a_loop_turn_per_stage() -> None:
    log: list[str] = []
    builder = PageBuilder()
    jobs = [job(log, name) for name in "abc"]
    ahead = [builder.submit(j) for j in jobs]
    wait_for(lambda: len(log) == 12, 30)
    assert log == [f"{n}:{s}" for n in "abc" for s in ("build", 0, 1, 2)]
    assert ahead[0] == 0 and ahead[2] >= 1  # the third page was told of the pages before it
    assert [j.holder.objects[0].object for j in jobs] == ["a", "b", "c"]  # each tab its page
    for j in jobs:
        assert j.doc.turns == 4  # once after the build, once after each stage


def test_a_tab_closed_before_its_turn_is_never_built() -> None:
    log: list[str] = []
    gate = threading.Event()
    builder = PageBuilder()
    first = job(log, "a", build=lambda: (gate.wait(30), Page(log, "a"))[1])
    second = job(log, "b")
    builder.submit(first)
    builder.submit(second)
    second.closed.set()
    gate.set()
    wait_for(lambda: log == ["a:0", "a:1", "a:2"], 30)
    third = job(log, "c")
    builder.submit(third)
    wait_for(lambda: "c:2" in log, 30)
    assert not any(entry.startswith("b") for entry in log)
    assert second.holder.objects == []


def test_a_tab_closed_during_its_build_has_its_page_closed() -> None:
    log: list[str] = []
    pages: list[Page] = []
    closing = job(log, "a")

    def build() -> Page:
        page = Page(log, "a")
        pages.append(page)
        closing.closed.set()  # the session ends while the page is being built
        return page

    closing.build = build
    builder = PageBuilder()
    builder.submit(closing)
    wait_for(lambda: bool(pages) and pages[0].closed, 30)
    assert log == []  # no stages for a closed tab


def test_a_failing_build_does_not_stop_the_pages_behind_it() -> None:
    log: list[str] = []

    def broken() -> Page:
        raise RuntimeError("model failed to build")

    builder = PageBuilder()
    builder.submit(job(log, "a", build=broken))
    builder.submit(job(log, "b"))
    wait_for(lambda: "b:2" in log, 30)
    assert log == ["b:build", "b:0", "b:1", "b:2"]


def test_waiting_for_a_loop_that_never_runs_gives_up() -> None:
    assert not wait_for_loop(Document(), timeout=0.2)  # no server runs this document's loop


def test_a_deferred_page_needs_a_server_session() -> None:
    from app.server.page_loading import deferred_page

    with pytest.raises(RuntimeError, match="server session"):
        deferred_page(lambda: Page([], "a"), Page.stages)
