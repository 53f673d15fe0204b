"""The upload box for run and sweep files: refused in the browser when too large, sent in chunks.

Panel's ``FileInput`` reads the whole file in the browser and sends it base64-encoded in one
websocket message: a file near the stated limit (170 MB is 227 MB encoded) went over the
server's message limit, the server closed the connection and the tab died without a word.
``FileDropper`` checks the size in the browser before anything is sent (FilePond says "File is
too large" in the box) and sends the bytes in raw chunks of ``CHUNK_BYTES``, so the websocket
limit is a chunk's, whatever the file's size.

A client that skips the browser check can still send chunks; the server counts them and drops
a file as soon as it passes the limit, so no upload ever holds more than ``max_mb`` of memory,
and only one file is assembled at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import panel as pn
import param

CHUNK_BYTES = 4 * 2**20
WEBSOCKET_MAX_BYTES = 2 * CHUNK_BYTES  # ``panel serve --websocket-max-message-size``


class UploadBox(pn.widgets.FileDropper):
    """One file at a time, at most ``max_mb``; ``on_file(name, data)`` gets each complete file
    and ``on_refused(name, message)`` each refused one (plain text: the caller escapes)."""

    max_mb = param.Number(default=200.0, bounds=(0, None), constant=True)

    _rename = {**pn.widgets.FileDropper._rename, "max_mb": None}  # server-side only

    def __init__(self, on_file: Callable[[str, bytes], object],
                 on_refused: Callable[[str, str], object],
                 room: Callable[[int], bool] = lambda nbytes: True, **params: Any) -> None:
        """``room(nbytes)``: whether the file in flight may grow to ``nbytes`` (a server-wide
        memory budget); False refuses it."""
        max_mb = params.get("max_mb", self.param.max_mb.default)
        params.setdefault("max_file_size", f"{max_mb:g}MB")
        params.setdefault("chunk_size", CHUNK_BYTES)
        # no type filter: FilePond matches MIME types, and browsers give .nc files none or
        # several; the server's reader decides what a run file is
        super().__init__(multiple=False, layout="compact", **params)
        self._on_file, self._on_refused, self._room = on_file, on_refused, room
        self._received: dict[str, int] = {}

    def _process_event(self, event: Any) -> None:
        """Count the bytes of each chunk before Panel keeps it (Panel's own handler joins the
        chunks and sets ``value`` once the last one is in)."""
        if event.event_name != "upload_event":
            super()._process_event(event)
            return
        data = event.data
        name = str(data.get("name", ""))
        chunk = data.get("data") or b""
        if data.get("chunk") == 1:  # a new file: whatever was half-sent before is dropped
            self._file_buffer.clear()
            self._received = {name: 0}
        elif name not in self._received:
            return  # a chunk of a file already refused, or out of order
        self._received[name] += len(chunk)
        if self._received[name] > self.max_mb * 2**20:
            self._file_buffer.pop(name, None)
            self._received.pop(name, None)
            self._on_refused(name, f"the file is larger than {self.max_mb:g} MB, the limit")
            return
        if not self._room(self._received[name]):
            self._file_buffer.pop(name, None)
            self._received.pop(name, None)
            self._on_refused(name, "the server holds as many files as it has memory for; "
                                   "try again in a few minutes")
            return
        super()._process_event(event)
        if name in self.value:  # complete: hand it on, keep nothing here
            blob = self.value[name]
            self._received.pop(name, None)
            self.value.clear()
            self.mime_type.clear()
            self._on_file(name, blob if isinstance(blob, bytes) else blob.encode())
