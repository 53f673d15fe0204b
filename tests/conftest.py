"""Shared test configuration: headless Chromium from the system package for the browser tests
(pytest-playwright's own browser download is never used), and one torch thread.

The test machines have 2 cores, shared with the browser, the servers the tests start and their
training threads. A second intra-op thread there oversubscribes the cores: a training step took
up to 14 times longer with two threads than with one. No test result depends on the count; the
tests that set thread counts (``test_limits``) set their own."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
import torch

torch.set_num_threads(1)

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        message = "chromium is not installed (apt-get install -y chromium)"
        if os.environ.get("NTK_EOS_REQUIRE_BROWSER"):  # CI: a missing browser is a failure
            pytest.fail(message)
        pytest.skip(message)
    return {**browser_type_launch_args, "executable_path": executable, "args": CHROMIUM_ARGS}


@pytest.fixture
def thread_training() -> Iterator[None]:
    """Runs train in this process (``ServerLimits.training = "thread"``), for tests that reach
    into the live trainer; the served default trains each run in a child process."""
    from app.session import limits

    limits.configure(limits.ServerLimits(training="thread"))
    yield
    limits.configure(None)
