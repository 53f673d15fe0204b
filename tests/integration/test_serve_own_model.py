"""``ntk-eos serve --arch package.module:factory --data file.npz`` as a user starts it: a local
server's page trains that model on those arrays (in chromium); with ``--hosted``, or on a server
whose environment says hosted, the command and ``panel serve`` stop with one line before
anything is imported."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import expect
from support import free_port, stop_process, wait_for

from app.server.launch import serve_command

ROOT = str(Path(__file__).resolve().parents[2])
# a factory whose import leaves a file behind: the test sees whether anything imported it
PROBE = ("from pathlib import Path\n"
         "Path(__file__).with_name('imported.txt').write_text('imported')\n"
         "import torch\n"
         "def build(shape, outputs):\n"
         "    return torch.nn.Sequential(torch.nn.Linear(shape[0], 16), torch.nn.LayerNorm(16),\n"
         "                               torch.nn.Tanh(), torch.nn.Linear(16, outputs))\n")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A user's folder: the factory's module and a .npz of X (40, 6) and three classes."""
    (tmp_path / "probe_models.py").write_text(PROBE)
    X = np.random.default_rng(0).normal(size=(40, 6))
    np.savez(tmp_path / "mine.npz", X=X, y=(X[:, 0] > 0).astype(int) + (X[:, 1] > 0))
    return tmp_path


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NTK_EOS_")}
    return {**env, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", **extra}


@pytest.mark.timeout(120)
def test_serve_hosted_with_a_model_or_data_stops_before_importing(folder: Path) -> None:
    cli = [sys.executable, "-m", "app.cli", "serve", "--port", str(free_port())]
    for argv, env in ([["--hosted", "--arch", "probe_models:build"], {}],
                      [["--hosted", "--data", "mine.npz"], {}],
                      [["--arch", "probe_models:build", "--data", "mine.npz"],
                       {"NTK_EOS_MODE": "hosted"}]):
        done = subprocess.run(cli + argv, cwd=folder, env=environment(**env), timeout=90,
                              capture_output=True, text=True)
        err = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(err) == 1, done.stderr
        assert err[0].startswith("error: --") and "hosted mode never imports code" in err[0]
    # ``panel serve`` started another way, with a hosted environment naming a model
    done = subprocess.run(serve_command(port=free_port(), address="127.0.0.1"), cwd=folder,
                          env=environment(NTK_EOS_MODE="hosted", NTK_EOS_ARCH="probe_models:build"),
                          timeout=90, capture_output=True, text=True)
    assert done.returncode != 0
    assert "NTK_EOS_ARCH: hosted mode never imports code" in done.stderr
    assert not (folder / "imported.txt").exists()


@pytest.fixture
def served_own(folder: Path) -> Iterator[str]:
    """``python -m app.cli serve --arch probe_models:build --data mine.npz`` in the folder."""
    port = free_port()
    log = (folder / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--address", "127.0.0.1",
         "--arch", "probe_models:build", "--data", "mine.npz", "--max-trainings", "1",
         "--torch-threads", "1"], cwd=folder, env=environment(), stdout=log,
        stderr=subprocess.STDOUT)

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/liveness", timeout=2):
                return True
        except OSError:
            return proc.poll() is not None

    try:
        wait_for(answers, timeout=120, pause=0.3)
        assert proc.poll() is None, (folder / "serve.log").read_text()[-3000:]
        yield f"http://127.0.0.1:{port}/main"
    finally:
        stop_process(proc)
        log.close()


@pytest.mark.browser
@pytest.mark.timeout(300)
def test_a_local_server_trains_the_model_and_data_it_was_given(served_own: str, browser) -> None:
    page = browser.new_page()
    page.set_default_timeout(120_000)
    page.goto(served_own)
    expect(page.get_by_text(re.compile(r"Training your model probe_models:build on your data "
                                       r"mine\.npz \(40 examples, X \(40, 6\)\)"))).to_be_visible()
    page.get_by_role("button", name="Step", exact=True).click()
    expect(page.get_by_text(re.compile(r"^step 1 · paused$"))).to_be_visible()
    expect(page.get_by_text("Not used (greyed out): the runs train your data.")).to_be_visible()
    page.close()
