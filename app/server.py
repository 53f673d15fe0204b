"""Serve the dashboard: ``panel serve app/main.py`` as a subprocess with sensible defaults.

``ntk-eos serve`` calls ``serve``. Defaults: localhost only; browser origins limited to the
address and port served (extend with ``allow_websocket_origin`` or ``BOKEH_ALLOW_WS_ORIGIN``);
a small thread pool so one slow download or file upload never freezes the other tabs (training
runs in its own threads either way); idle sessions are culled after a minute, which stops their
training; ``/liveness`` answers health checks; websocket messages may carry uploads up to
``MAX_UPLOAD_MB``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .runs import MAX_UPLOAD_MB

APP_PATH = Path(__file__).with_name("main.py")
NUM_THREADS = 4
UNUSED_SESSION_LIFETIME_MS = 60_000
CHECK_UNUSED_SESSIONS_MS = 10_000


def serve_command(port: int = 5006, address: str = "localhost", show: bool = False,
                  allow_websocket_origin: list[str] | None = None,
                  extra_args: list[str] | None = None) -> list[str]:
    """The ``panel serve`` command line that ``serve`` runs."""
    if not 0 <= port <= 65535:
        raise ValueError(f"port: must be in 0..65535, got {port}")
    origins = list(allow_websocket_origin or [])
    if not origins and not os.environ.get("BOKEH_ALLOW_WS_ORIGIN"):
        hosts = {address, "localhost", "127.0.0.1"} if address in ("localhost", "127.0.0.1") \
            else {address}
        origins = sorted(f"{host}:{port}" for host in hosts if host not in ("0.0.0.0", "::"))
    cmd = [sys.executable, "-m", "panel", "serve", str(APP_PATH),
           "--port", str(port), "--address", address,
           "--num-threads", str(NUM_THREADS),
           "--check-unused-sessions", str(CHECK_UNUSED_SESSIONS_MS),
           "--unused-session-lifetime", str(UNUSED_SESSION_LIFETIME_MS),
           "--websocket-max-message-size", str((MAX_UPLOAD_MB + 20) * 2**20),
           "--liveness"]
    for origin in origins:
        cmd += ["--allow-websocket-origin", origin]
    if show:
        cmd.append("--show")
    return cmd + list(extra_args or [])


def serve(port: int = 5006, address: str = "localhost", show: bool = False,
          allow_websocket_origin: list[str] | None = None,
          extra_args: list[str] | None = None) -> int:
    """Run the dashboard server until interrupted; returns ``panel serve``'s exit code.

    ``address="0.0.0.0"`` listens on every interface (containers); pass the public
    ``host:port`` names in ``allow_websocket_origin`` so browsers there may connect.
    """
    cmd = serve_command(port, address, show, allow_websocket_origin, extra_args)
    root = str(APP_PATH.parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 130
