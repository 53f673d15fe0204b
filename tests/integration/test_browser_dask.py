"""Two Chromium tabs of a hosted dashboard whose trainings run on a Dask cluster (a
``LocalCluster`` of 2 worker processes on loopback, started here): Play on both, and both
stream. Set ``NTK_EOS_SCREENSHOT=1`` to also regenerate ``docs/pool-dask.png``."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect
from support import serve_dashboard
from test_browser import SMALL, WAIT_MS, at_least, open_app, press, status

from app.dashboard import Dashboard
from app.session import limits as server_limits
from app.session.limits import ServerLimits
from ntk_core.training.pooled_trainer import PooledTrainer

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def cluster_server() -> Iterator[tuple[str, object]]:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None,
                                  silence_logs=50) as cluster:
        previous = server_limits.current()
        server_limits.configure(ServerLimits(mode="hosted", training="pool",
                                             scheduler=cluster.scheduler_address,
                                             max_trainings=2, max_sessions=10))
        try:
            yield from ((url, cluster) for url in serve_dashboard(Dashboard))
        finally:
            server_limits.configure(previous)
            server_limits.close_slice_pool()


def test_play_on_two_tabs_streams_both_from_the_cluster(cluster_server: tuple[str, object],
                                                        browser: Browser) -> None:
    url, _ = cluster_server
    pages = [browser.new_page(viewport={"width": 1400, "height": 1000}) for _ in range(2)]
    try:
        for page in pages:
            open_app(page, f"{url}?{SMALL}")
            press(page, "Play")
        for page in pages:
            expect(status(page, at_least(15), "running")).to_be_visible(timeout=WAIT_MS)
        first = [int(re.search(r"step (\d+)", p.get_by_text(re.compile(r"^step \d+ · ")).
                               first.inner_text()).group(1)) for p in pages]
        for page, before in zip(pages, first, strict=True):  # both keep streaming
            expect(status(page, at_least(before + 10), "running")).to_be_visible(
                timeout=WAIT_MS)
        runs = [run for run in _live_runs() if isinstance(run.trainer, PooledTrainer)]
        assert len(runs) >= 2
        # the slices ran on the cluster's workers, not in the server process
        workers = set().union(*(run.trainer.workers_seen for run in runs))
        assert workers and not any(w.endswith(f":{os.getpid()}") for w in workers)
        if os.environ.get("NTK_EOS_SCREENSHOT"):
            pages[1].screenshot(path=str(DOCS / "pool-dask.png"), full_page=False)
    finally:
        for page in pages:
            page.close()


def _live_runs() -> list:
    from app.session.runner import _live_runs as runs

    return list(runs)
