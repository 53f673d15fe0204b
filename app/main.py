"""Entry point for ``panel serve app/main.py``: one Dashboard per browser tab.

The module stays importable (tests, ``app.server``): the app is only built when Panel serves it.
URL parameters (``?preset=catapult&lr=0.2``) set the run; see docs/dashboard.md.
"""

from __future__ import annotations

import panel as pn

from app.dashboard import Dashboard

TITLE = "ntk-eos: the Edge of Stability and the NTK, live"


def create_app() -> pn.viewable.Viewable:
    return Dashboard()


if pn.state.served:
    pn.extension(notifications=False)
    create_app().servable(title=TITLE)
