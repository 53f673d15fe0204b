"""Serve the dashboard: ``panel serve app/main.py`` as a subprocess with sensible defaults.

``ntk-eos serve`` calls ``serve``. Defaults: localhost only; browser origins limited to the
address and port served (extend with ``allow_websocket_origin`` or ``BOKEH_ALLOW_WS_ORIGIN``);
a small thread pool so one slow download or file upload never freezes the other tabs (training
runs in its own threads either way); a closed tab's session is culled within
``(UNUSED_SESSION_LIFETIME_MS + CHECK_UNUSED_SESSIONS_MS) / 1000`` seconds, which stops its
training; ``/liveness`` answers health checks; uploads arrive in chunks, so a websocket
message is at most ``app.views.upload.WEBSOCKET_MAX_BYTES``. The server limits
(``app.session.limits``) travel as ``NTK_EOS_*`` environment variables and are applied by the
``--setup`` script ``app/server/startup.py``; so do a local server's own model and data
(``own_inputs_env``, read by ``app/main.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from ntk_core.config import ConfigError
from ntk_core.presets import DEFAULT_PRESET, load_preset

from ..session.limits import ENV_PREFIX, ServerLimits
from ..session.own_inputs import ARCH_ENV, DATA_ENV, HOSTED_REFUSAL, OwnInputs
from ..views.upload import WEBSOCKET_MAX_BYTES

APP_PATH = Path(__file__).parents[1] / "main.py"
SETUP_PATH = Path(__file__).with_name("startup.py")
NUM_THREADS = 4
# long enough for a slow first page load (the websocket opens after the page's scripts);
# short enough that a closed tab frees its training slot soon
UNUSED_SESSION_LIFETIME_MS = 30_000
CHECK_UNUSED_SESSIONS_MS = 5_000


def limits_env(hosted: bool = False, max_sessions: int | None = None,
               max_trainings: int | None = None, torch_threads: int | None = None,
               idle_minutes: float | None = None, training: str | None = None,
               scheduler: str | None = None,
               environ: dict[str, str] | None = None) -> dict[str, str]:
    """The ``NTK_EOS_*`` variables for these options on top of ``environ`` (default: this
    process's environment); raises ConfigError when the result is not a valid ServerLimits."""
    env = dict(os.environ if environ is None else environ)
    options = {"MODE": "hosted" if hosted else None, "MAX_SESSIONS": max_sessions,
               "MAX_TRAININGS": max_trainings, "TORCH_THREADS": torch_threads,
               "IDLE_MINUTES": idle_minutes, "TRAINING": training, "SCHEDULER": scheduler}
    env.update({ENV_PREFIX + k: str(v) for k, v in options.items() if v is not None})
    ServerLimits.from_env(env)
    return env


def own_inputs_env(arch: str | None, data: str | None, env: dict[str, str]) -> dict[str, str]:
    """``env`` with ``NTK_EOS_ARCH`` and ``NTK_EOS_DATA`` for ``serve --arch --data``. Checked
    here, so that a bad name or file is a one-line error before the server starts: the data is
    read and the model built once, as ``ntk-eos run`` does. ConfigError on a hosted server,
    before anything is imported or read."""
    given = [flag for flag, value in (("--arch", arch), ("--data", data)) if value]
    if not given:
        return env
    if ServerLimits.from_env(env).mode == "hosted":
        raise ConfigError(f"{' and '.join(given)}: {HOSTED_REFUSAL}")
    if arch and ":" not in arch:
        raise ConfigError(f"--arch: serve takes a 'package.module:factory' name (the page "
                          f"chooses among the built-in architectures), got {arch!r}")
    path = str(Path(data).resolve()) if data else ""
    own = OwnInputs.of(arch, path or None)
    if own is not None:
        own.build(load_preset(DEFAULT_PRESET).config)
    return {**env, ARCH_ENV: arch or "", DATA_ENV: path}


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
           "--setup", str(SETUP_PATH),
           "--num-threads", str(NUM_THREADS),
           "--check-unused-sessions", str(CHECK_UNUSED_SESSIONS_MS),
           "--unused-session-lifetime", str(UNUSED_SESSION_LIFETIME_MS),
           # uploads arrive in chunks (app.views.upload): no message needs more than two chunks
           "--websocket-max-message-size", str(WEBSOCKET_MAX_BYTES),
           "--liveness"]
    for origin in origins:
        cmd += ["--allow-websocket-origin", origin]
    if show:
        cmd.append("--show")
    return cmd + list(extra_args or [])


def serve(port: int = 5006, address: str = "localhost", show: bool = False,
          allow_websocket_origin: list[str] | None = None,
          extra_args: list[str] | None = None, limits: dict[str, str] | None = None) -> int:
    """Run the dashboard server until interrupted; returns ``panel serve``'s exit code.

    ``address="0.0.0.0"`` listens on every interface (containers); pass the public
    ``host:port`` names in ``allow_websocket_origin`` so browsers there may connect.
    ``limits``: the environment from ``limits_env`` (default: this process's).
    """
    cmd = serve_command(port, address, show, allow_websocket_origin, extra_args)
    root = str(APP_PATH.parent.parent)
    base = limits if limits is not None else limits_env()
    env = {**base, "PYTHONPATH": os.pathsep.join(
        p for p in (root, base.get("PYTHONPATH", "")) if p)}
    proc = subprocess.Popen(cmd, env=env)
    # ``docker stop`` or a supervisor sends SIGTERM to this process: pass it on, or the
    # ``panel serve`` child would outlive its parent and keep the port.
    forwarded = (signal.SIGTERM, signal.SIGHUP)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, lambda signum, _: proc.send_signal(signum))
                    for sig in forwarded}
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            proc.terminate()
