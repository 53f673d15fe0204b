"""Small helpers the test files share: free ports, waiting on background threads, and stopping
a server subprocess."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, pause: float = 0.02) -> None:
    """Wait for a background thread's effect (no UI locator exists at this level)."""
    deadline = time.monotonic() + timeout
    event = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        event.wait(pause)


def stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if the process is still there after ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


# Every Bokeh data source's column of that name, in the page (for ``page.evaluate``).
COLUMNS_JS = """
(column) => {
  const get = (d, k) => (d instanceof Map ? d.get(k) : d[k]);
  const out = [];
  for (const doc of Bokeh.documents) {
    for (const model of doc.all_models) {
      const data = model.data;
      if (data && typeof data === 'object') {
        const values = get(data, column);
        if (values !== undefined) out.push(Array.from(values));
      }
    }
  }
  return out;
}"""
# The longest of them: live curves stream into their source, so that one is the current run.
LONGEST_COLUMN_JS = (f"(column) => ({COLUMNS_JS})(column)"
                     ".reduce((a, b) => (b.length > a.length ? b : a), [])")


def send_upload(box: object, name: str, data: bytes, chunk: int | None = None) -> None:
    """Feed ``data`` to an ``app.views.upload.UploadBox`` as the browser does: the FileDropper's
    upload events, one per chunk of ``chunk`` bytes (the box's own chunk size by default)."""
    import math

    from panel.models.file_dropper import UploadEvent

    size = chunk or box.chunk_size  # type: ignore[attr-defined]
    total = math.ceil((len(data) + 1) / size)  # as the browser counts: +1 for empty files
    for i in range(total):
        box._process_event(UploadEvent(None, {  # type: ignore[attr-defined]
            "chunk": i + 1, "data": data[i * size:(i + 1) * size], "name": name,
            "total_chunks": total, "type": "application/x-netcdf"}))
