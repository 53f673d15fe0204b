"""Building a tab's dashboard without stalling the server for everyone else.

Bokeh turns a page's Python objects into models and serializes them on the server's event loop,
the same loop that answers ``/liveness`` and sends every other tab its updates. A whole
dashboard takes a second or more of that loop's time on a busy 2-core machine, and twenty tabs
opened at once used to queue twenty such builds back to back: the loop went silent for tens of
seconds. So a tab's page is built after it has loaded, by one builder thread for the whole
server (one page at a time, in the order the tabs arrived), and in stages: the controls first,
then each live plot in an event-loop turn of its own, with the loop free to serve others in
between. The builder is a thread of its own, not one of ``panel serve``'s worker threads: those
run every tab's periodic updates, and pages waiting for their turn must not hold them.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import panel as pn
from bokeh.document import Document
from panel.io.state import set_curdoc

LOADING_HTML = "<p style='margin: 20px'>Loading the dashboard…{ahead}</p>"
LOOP_WAIT_S = 60.0  # how long a stage waits for its turn on the event loop before giving up

log = logging.getLogger(__name__)


def wait_for_loop(doc: Document, timeout: float = LOOP_WAIT_S) -> bool:
    """Block this thread until ``doc``'s event loop has run what is queued for it (model
    updates are queued as next-tick callbacks, in order). False if that did not happen in
    time: the session has gone or the loop is stuck."""
    done = threading.Event()
    try:
        doc.add_next_tick_callback(done.set)
    except Exception:  # a destroyed session takes no more callbacks
        return False
    return done.wait(timeout)


@dataclass
class PageJob:
    doc: Document
    holder: pn.Column
    build: Callable[[], Any]
    stages: Callable[[Any], Iterable[None]]
    closed: threading.Event = field(default_factory=threading.Event)


class PageBuilder:
    """One thread that builds queued pages one at a time."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[PageJob] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: PageJob) -> int:
        """Queue ``job``; returns how many pages are ahead of it."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="ntk-eos-pages",
                                                daemon=True)
                self._thread.start()
            ahead = self._jobs.qsize()
            self._jobs.put(job)
        return ahead

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                self._build(job)
            except Exception:  # one page's failure must not stop the pages behind it
                log.exception("building a dashboard page failed")

    @staticmethod
    def _build(job: PageJob) -> None:
        if job.closed.is_set():
            return  # the tab closed while it waited
        with set_curdoc(job.doc):
            page = job.build()
            job.holder.objects = [page]
        if job.closed.is_set():  # closed during the build: its end-of-session hook has run
            getattr(page, "close", lambda: None)()
            return
        if not wait_for_loop(job.doc):
            return
        for _ in job.stages(page):
            if job.closed.is_set() or not wait_for_loop(job.doc):
                return


_builder = PageBuilder()


def deferred_page(build: Callable[[], Any], stages: Callable[[Any], Iterable[None]]) -> pn.Column:
    """A placeholder that becomes ``build()`` once the browser has loaded the page.

    ``stages(page)`` then adds the rest of the page piece by piece; each iteration's changes
    get an event-loop turn of their own. For a served session only: elsewhere (a notebook, a
    test) nothing loads a page, so build it directly."""
    doc = pn.state.curdoc
    if doc is None or doc.session_context is None:
        raise RuntimeError("deferred_page needs a server session")
    loading = pn.pane.HTML(LOADING_HTML.format(ahead=""))
    holder = pn.Column(loading, sizing_mode="stretch_width")
    job = PageJob(doc, holder, build, stages)
    pn.state.on_session_destroyed(lambda _: job.closed.set())

    def queue_build() -> None:
        ahead = _builder.submit(job)
        if ahead:
            # the pane, not holder[0]: the builder may have put the page there already
            loading.object = LOADING_HTML.format(
                ahead=f" ({ahead} page{'s' if ahead > 1 else ''} ahead of this one)")

    pn.state.onload(queue_build)
    return holder
