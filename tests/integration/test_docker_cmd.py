"""The Dockerfile's command line, run here (Docker itself cannot run on the test machines):
it must serve a healthy app, answering the same health check the image declares."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from support import free_port, stop_process

ROOT = Path(__file__).resolve().parents[2]


def _dockerfile_instruction(name: str) -> str:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if line.startswith(name + " ")]
    assert lines, f"the Dockerfile has no {name}"
    return lines[-1][len(name) + 1:].strip()


def _image_env() -> dict[str, str]:
    """The image's ENV values (one ENV instruction of KEY=VALUE pairs)."""
    return dict(item.split("=", 1) for item in shlex.split(_dockerfile_instruction("ENV")))


def _get(url: str, timeout: float = 5) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read().decode("utf-8", "replace")


def test_dockerfile_declares_what_hosting_needs() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.12-slim" in text
    assert re.search(r"^USER (?!root)\w+", text, re.M), "the image must not run as root"
    assert "whl/cpu" in text, "the image must take the CPU build of torch"
    assert "/liveness?endpoint=/main" in _dockerfile_instruction("HEALTHCHECK")
    assert "--address" in json.loads(_dockerfile_instruction("CMD"))
    assert _image_env().get("NTK_EOS_MODE") == "hosted", "a public image runs in hosted mode"


@pytest.mark.timeout(180)
def test_dockerfile_command_serves_a_healthy_app(tmp_path) -> None:
    cmd = json.loads(_dockerfile_instruction("CMD"))
    port = free_port()
    cmd[cmd.index("--port") + 1] = str(port)
    # the console script installed beside this interpreter, as on the image's PATH
    cmd[0] = str(Path(sys.executable).parent / cmd[0])
    image_env = {k: v for k, v in _image_env().items() if k.startswith("NTK_EOS_")}
    env = {**os.environ, **image_env, "BOKEH_ALLOW_WS_ORIGIN": f"localhost:{port}",
           "OMP_NUM_THREADS": "1"}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 150
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, _ = _get(f"http://127.0.0.1:{port}/liveness?endpoint=/main")
                break
            except OSError:
                time.sleep(0.5)
        assert status == 200, (tmp_path / "serve.log").read_text()[-3000:]
        # the first page builds a session (imports, data, model): allow a slow, busy machine
        status, page = _get(f"http://127.0.0.1:{port}/main", timeout=90)
        assert status == 200 and "bokeh" in page.lower()
        # the --setup script applied the server limits of the image's mode
        log_text = (tmp_path / "serve.log").read_text()
        assert '"mode": "hosted"' in log_text and "Traceback" not in log_text, log_text[-3000:]
    finally:
        stop_process(proc)
        log.close()
    # `docker stop` sends SIGTERM to the CMD: the server itself must end, not only its wrapper
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            _get(f"http://127.0.0.1:{port}/liveness", timeout=2)
        except OSError:
            break
        time.sleep(0.5)
    else:
        pytest.fail("panel serve kept serving after its CMD process was terminated")
