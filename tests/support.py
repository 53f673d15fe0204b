"""Small helpers the test files share: free ports, waiting on background threads, stopping a
server subprocess, serving the dashboard, stepping it, a stand-in for panel serve, and a
module the structured NTK has no rule for."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn


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


def serve_dashboard(app: Callable[[], object]) -> Iterator[str]:
    """Serve ``app`` as /main on a free loopback port, in a thread, until the generator is
    closed (a module fixture's ``yield from``); then end every training it started."""
    import panel as pn

    from app.session.runner import stop_all

    port = free_port()
    thread = pn.serve({"main": app}, port=port, address="127.0.0.1", threaded=True,
                      show=False, websocket_origin=[f"127.0.0.1:{port}"],
                      check_unused_sessions_milliseconds=1000,
                      unused_session_lifetime_milliseconds=3000)
    try:
        yield f"http://127.0.0.1:{port}/main"
    finally:
        thread.stop()
        thread.join(20)
        stop_all()
        pn.state.reset()


def steps_done(dash: Any, count: int) -> None:
    """``count`` steps of a Dashboard's run, taken and collected."""
    for _ in range(count):
        dash.step()
    assert dash.controller.run.wait_idle(60)


def fake_server(called: list[dict]) -> type:
    """A stand-in for ``subprocess.Popen`` of ``panel serve``: it records the keyword arguments
    (the environment the server would get) and exits at once."""
    class FakeServer:
        def __init__(self, cmd: list[str], **kwargs: object) -> None:
            called.append(kwargs)

        def wait(self, timeout: float | None = None) -> int:
            return 0

        def poll(self) -> int:
            return 0

    return FakeServer


class Residual(nn.Module):
    """x → h = W x, h + tanh(V LayerNorm(h)) → outputs: a residual block with a LayerNorm, a
    layer the structured NTK has no rule for."""

    def __init__(self, d: int, width: int, outputs: int) -> None:
        super().__init__()
        self.inp, self.norm = nn.Linear(d, width), nn.LayerNorm(width)
        self.mix, self.out = nn.Linear(width, width), nn.Linear(width, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.out(h + torch.tanh(self.mix(self.norm(h))))


def assert_same_log(mirror: Any, reference: Any) -> None:
    """Two runs' logs are equal, value for value (wall times aside), snapshots included."""
    a, b = mirror.buffer.rows(0), reference.buffer.rows(0)
    assert a.keys() == b.keys()
    for name in a:
        if not name.startswith("time_"):  # wall times differ
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    va, vb = mirror.buffer.eigenvector_history(0), reference.buffer.eigenvector_history(0)
    np.testing.assert_array_equal(va[0], vb[0])
    np.testing.assert_array_equal(va[1], vb[1])
