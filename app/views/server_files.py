"""'Save to server' and 'Open from server': the dashboard's view of a ``RunStore``.

Shown only when the server has a runs folder (``NTK_EOS_RUNS_DIR``). Visitors pick names, never
paths; every message goes through ``report(text, kind)`` with untrusted parts escaped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import panel as pn

from ntk_core.training.buffer import RunBuffer

from ..files.runs import RunFileError
from ..files.storage import MAX_NAME, RunStore, visitor_of
from .untrusted import file_name, plain


class ServerFiles(pn.viewable.Viewer):
    """A name box with a save button, and a list of saved runs with an open button."""

    def __init__(self, store: RunStore, current: Callable[[], RunBuffer | None],
                 open_bytes: Callable[[str, bytes], None],
                 report: Callable[[str, str], None]) -> None:
        super().__init__()
        self.store, self._current, self._open_bytes, self._report = (store, current,
                                                                     open_bytes, report)
        doc = pn.state.curdoc
        context = doc.session_context if doc is not None else None
        # the per-visitor caps count by client address; a notebook has none
        self.visitor = (visitor_of(context.request)
                        if context is not None else "")
        self.name_input = pn.widgets.TextInput(placeholder="name, e.g. catapult-lr0.3",
                                               max_length=MAX_NAME, sizing_mode="stretch_width")
        self.save_button = pn.widgets.Button(label="Save to server", sizing_mode="stretch_width")
        self.save_button.on_click(self.save)
        self.select = pn.widgets.Select(options=store.list(), sizing_mode="stretch_width")
        self.open_button = pn.widgets.Button(label="Open from server",
                                             sizing_mode="stretch_width")
        self.open_button.on_click(self.open)

    def save(self, *_: Any) -> None:
        buffer = self._current()
        if buffer is None or len(buffer) == 0:
            self._report("**Nothing to save yet:** take a step first.", "warning")
            return
        try:
            name = self.store.save(buffer, self.name_input.value or "", visitor=self.visitor)
        except RunFileError as exc:
            self._report(f"**Could not save to the server:** {plain(exc, 300)}.", "danger")
            return
        self.refresh()
        self._report(f"**Saved on the server** as {file_name(name)}.", "success")

    def open(self, *_: Any) -> None:
        name = self.select.value
        if not name:
            self._report("**No saved run to open** on the server yet.", "warning")
            return
        try:
            data = self.store.read_bytes(name)
        except RunFileError as exc:
            self._report(f"**Could not open {file_name(name)}:** {plain(exc, 300)}.", "danger")
            self.refresh()
            return
        self._open_bytes(name, data)

    def refresh(self) -> None:
        self.select.options = self.store.list()

    def __panel__(self) -> pn.Column:
        return pn.Column(pn.pane.Markdown("Runs on this server:", margin=(5, 10, 0, 10)),
                         self.select, self.open_button, self.name_input, self.save_button,
                         sizing_mode="stretch_width")
