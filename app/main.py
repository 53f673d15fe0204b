"""Entry point for ``panel serve app/main.py``: one Dashboard per browser tab.

The module stays importable (tests, ``app.server.launch``): the app is only built when Panel
serves it. URL parameters (``?preset=catapult&lr=0.2``) set the run; see docs/dashboard.md.
Beyond the server's session cap (``app.session.limits``) a tab gets a short "busy" page and
starts no training. A document built without a browser session (``/liveness?endpoint=/main``
health checks, ``--warm``) gets a one-line page: a health check must not start a training or take
a place.

A served tab builds its Dashboard only once the page has loaded, off the event loop and in
stages (``app.server.page_loading``), so that twenty tabs opened at once do not stall the
server. A local server started with ``ntk-eos serve --arch package.module:factory --data
file.npz`` trains that model and data in every tab (``app.session.own_inputs.served``: the
server's environment, never the page's URL; refused in hosted mode).
"""

from __future__ import annotations

import panel as pn

from app.dashboard import Dashboard
from app.server import browser_patches
from app.server.page_loading import deferred_page
from app.session.limits import SessionRegistry, live_sessions
from app.session.own_inputs import served
from app.views.untrusted import install_location

TITLE = "ntk-eos: the Edge of Stability and the NTK, live"
BUSY_TEXT = """\
## The server is busy

All {capacity} places on this server are taken right now, so a new dashboard could not start.
Please try again in a few minutes: places free up as other tabs close.

If you run a class on this server, its administrator can raise the limit
(`NTK_EOS_MAX_SESSIONS`), or you can run ntk-eos on your own computer with `ntk-eos serve`.
"""


def busy_page(capacity: int) -> pn.viewable.Viewable:
    """What a tab shows when the session cap is reached: text only, no training."""
    return pn.Column(pn.pane.Markdown(BUSY_TEXT.format(capacity=capacity), width=640),
                     css_classes=["ntk-busy"])


def create_app(sessions: SessionRegistry | None = None) -> pn.viewable.Viewable | pn.viewable.Viewer:
    """A Dashboard for this tab, or the busy page when ``sessions`` is full."""
    sessions = sessions or live_sessions()
    doc = pn.state.curdoc
    context = doc.session_context if doc is not None else None
    if doc is not None and context is None:
        return pn.pane.Markdown(f"## {TITLE}")  # a health check: the app's code loads
    # before servable() or anything else reads pn.state.location: Panel's own parse of a
    # link such as ?n=² raises and leaves the page at "Loading"
    install_location(doc)
    key = context.id if context is not None else object()
    model, data = served()  # the server's --arch and --data: what every tab trains
    if not sessions.enter(key):
        return busy_page(sessions.capacity)
    if doc is None or context is None:  # outside a server nothing ends the session
        return Dashboard(model=model, data=data)  # the caller leaves
    pn.state.on_session_destroyed(lambda _: sessions.leave(key))
    browser_patches.install(doc)
    return deferred_page(lambda: Dashboard(staged=True, model=model, data=data), Dashboard.add_plots)


if pn.state.served:
    pn.extension("filedropper", notifications=False)  # the upload box (app.views.upload)
    create_app().servable(title=TITLE)
