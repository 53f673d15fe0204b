"""Server limits: settings from the environment, per-run caps, the training queue (order,
positions, time slices, release on pause/stop/close/error), torch threads per training thread,
idle pausing, and the session cap's busy page."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect
from support import fake_server, free_port, stop_process, wait_for

from app.cli import main as cli_main
from app.dashboard import Dashboard
from app.main import create_app
from app.server.browser_patches import MARKER
from app.server.launch import limits_env, serve_command
from app.session import limits as server_limits
from app.session.limits import HOSTED_CAPS, ServerLimits, SessionRegistry, TrainingSlots, has_viewers
from app.session.runner import RunController, TrainingRun, training_threads
from app.session.settings import RunSettings
from ntk_core.config import ConfigError, RunConfig

pytestmark = pytest.mark.timeout(120)

SMALL = RunConfig(dataset="digits", n=32, classes=(0, 1), width=16, k=4, steps=400)
SMALL_SETTINGS = {"n": 32, "classes": "0,1", "width": 16, "k": 4, "steps": 400}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def runs() -> Iterator[list[TrainingRun]]:
    """Runs made by a test; stopped and joined afterwards."""
    made: list[TrainingRun] = []
    yield made
    for run in made:
        run.stop()
    for run in made:
        run.thread.join(30)


@pytest.fixture
def process_limits() -> Iterator[Callable[[ServerLimits], ServerLimits]]:
    """Set this process's limits for one test, then read the environment again."""
    yield server_limits.configure
    server_limits.configure(None)


# ---- settings ------------------------------------------------------------------------------
def test_defaults_by_mode() -> None:
    local = ServerLimits.from_env({})
    hosted = ServerLimits.from_env({"NTK_EOS_MODE": "hosted"})
    assert local.mode == "local" and local.max_n == 0 and local.idle_minutes == 0
    assert hosted.mode == "hosted" and hosted.idle_minutes > 0
    assert {k: getattr(hosted, k) for k in HOSTED_CAPS} == HOSTED_CAPS
    assert hosted.max_trainings * hosted.torch_threads <= server_limits.cpu_count()
    assert local.max_trainings * local.torch_threads <= max(2, server_limits.cpu_count())
    assert hosted.pull_ms > local.pull_ms  # a class's tabs refresh less often than one's


def test_environment_overrides_and_errors() -> None:
    env = {"NTK_EOS_MODE": "hosted", "NTK_EOS_MAX_SESSIONS": "7", "NTK_EOS_MAX_N": "64",
           "NTK_EOS_IDLE_MINUTES": "2.5", "NTK_EOS_MAX_TRAININGS": "1"}
    limits = ServerLimits.from_env(env)
    assert (limits.max_sessions, limits.max_n, limits.idle_minutes) == (7, 64, 2.5)
    assert limits.torch_threads == server_limits.cpu_count()  # one training gets every core
    with pytest.raises(ConfigError, match="NTK_EOS_MAX_SESSIONS: expected an integer"):
        ServerLimits.from_env({"NTK_EOS_MAX_SESSIONS": "many"})
    with pytest.raises(ConfigError, match="NTK_EOS_MAX_TRAININGS: must be ≥ 1"):
        ServerLimits.from_env({"NTK_EOS_MAX_TRAININGS": "0"})
    with pytest.raises(ConfigError, match="NTK_EOS_MODE"):
        ServerLimits.from_env({"NTK_EOS_MODE": "public"})
    assert ServerLimits.from_env({"NTK_EOS_PULL_MS": "250"}).pull_ms == 250
    with pytest.raises(ConfigError, match="NTK_EOS_PULL_MS: must be ≥ 1"):
        ServerLimits.from_env({"NTK_EOS_PULL_MS": "0"})


def test_caps_in_hosted_mode_only() -> None:
    hosted = ServerLimits.defaults("hosted", cores=2)
    big = SMALL.replace(n=2048, classes=None)
    with pytest.raises(ConfigError, match=r"n: at most 1024 on this server \(hosted mode\), "
                                          r"got 2048"):
        hosted.check(big)
    with pytest.raises(ConfigError, match="steps: at most"):
        hosted.check(SMALL.replace(steps=hosted.max_steps + 1))
    hosted.check(SMALL)
    ServerLimits.defaults("local", cores=2).check(big)
    with pytest.raises(ConfigError, match="n·p: at most"):
        hosted.check_size(1000, hosted.max_np // 1000 + 1)
    hosted.check_size(1000, hosted.max_np // 1000)


def test_serve_flags_become_limits(monkeypatch) -> None:
    env = limits_env(hosted=True, max_trainings=3, idle_minutes=0, environ={})
    assert ServerLimits.from_env(env) == ServerLimits.from_env(
        {"NTK_EOS_MODE": "hosted", "NTK_EOS_MAX_TRAININGS": "3", "NTK_EOS_IDLE_MINUTES": "0"})
    cmd = serve_command()
    assert cmd[cmd.index("--setup") + 1].endswith("server/startup.py")
    called: list[dict] = []
    FakeServer = fake_server(called)

    monkeypatch.setattr("app.server.launch.subprocess.Popen", FakeServer)
    assert cli_main(["serve", "--max-trainings", "0"]) == 2 and not called
    assert cli_main(["serve", "--hosted", "--max-sessions", "5"]) == 0
    assert called[0]["env"]["NTK_EOS_MODE"] == "hosted"
    assert called[0]["env"]["NTK_EOS_MAX_SESSIONS"] == "5"
    assert ServerLimits.from_env(called[0]["env"]).training == "pool"  # the hosted default
    assert cli_main(["serve", "--training", "thread"]) == 0
    assert ServerLimits.from_env(called[1]["env"]).training == "thread"
    assert cli_main(["serve"]) == 0
    assert ServerLimits.from_env(called[2]["env"]).training == "process"  # the local default
    assert cli_main(["serve", "--scheduler", "tcp://10.0.0.5:8786"]) == 0
    with_cluster = ServerLimits.from_env(called[3]["env"])
    assert (with_cluster.training, with_cluster.scheduler) == ("pool", "tcp://10.0.0.5:8786")
    assert cli_main(["serve", "--scheduler", "10.0.0.5"]) == 2  # not an address
    assert cli_main(["serve", "--scheduler", "tcp://h:8786", "--training", "process"]) == 2
    assert len(called) == 4
    with pytest.raises(ConfigError, match="NTK_EOS_TRAINING: expected pool, process or thread"):
        ServerLimits.from_env({"NTK_EOS_TRAINING": "gpu"})


# ---- the queue -----------------------------------------------------------------------------
def _waiter(slots: TrainingSlots, ticket: str, got: list[str],
            wanted: Callable[[], bool] = lambda: True) -> threading.Thread:
    def take() -> None:
        if slots.acquire(ticket, wanted):
            got.append(ticket)
    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    return thread


def test_queue_is_fifo_with_positions() -> None:
    slots = TrainingSlots(1)
    assert slots.acquire("a")
    got: list[str] = []
    threads = []
    for ticket in "bcd":
        threads.append(_waiter(slots, ticket, got))
        wait_for(lambda t=ticket: slots.position(t) is not None, 10)
    assert [slots.position(t) for t in "abcd"] == [None, (1, 3), (2, 3), (3, 3)]
    for holder in "abc":
        slots.release(holder)
        wait_for(lambda h=holder: len(got) == "abc".index(h) + 1, 10)
    assert got == ["b", "c", "d"] and slots.position("d") is None and slots.holds("d")
    for thread in threads:
        thread.join(5)


def test_capacity_bounds_holders() -> None:
    slots = TrainingSlots(2)
    assert slots.acquire("a") and slots.acquire("b")
    assert not slots.acquire("c", timeout=0.05)
    assert slots.queued == 0 and slots.running == 2  # a timed-out ticket left the queue


def test_unwanted_ticket_leaves_the_queue() -> None:
    slots = TrainingSlots(1)
    slots.acquire("a")
    wanted = threading.Event()
    wanted.set()
    got: list[str] = []
    thread = _waiter(slots, "b", got, wanted.is_set)
    wait_for(lambda: slots.position("b") == (1, 1), 10)
    wanted.clear()
    slots.wake()
    thread.join(5)
    assert not thread.is_alive() and got == [] and slots.queued == 0


def test_slice_ends_only_when_others_wait() -> None:
    clock = Clock()
    slots = TrainingSlots(1, slice_seconds=2.0, clock=clock)
    slots.acquire("a")
    clock.now += 5
    assert not slots.should_yield("a")  # nobody waits: keep going
    got: list[str] = []
    thread = _waiter(slots, "b", got)
    wait_for(lambda: slots.queued == 1, 10)
    assert slots.should_yield("a")
    slots.release("a")
    thread.join(5)
    assert got == ["b"] and not slots.should_yield("b")


# ---- runs in the queue ---------------------------------------------------------------------
def test_runs_take_turns_and_never_exceed_capacity(runs: list[TrainingRun]) -> None:
    slots = TrainingSlots(1, slice_seconds=0.05)
    limits = ServerLimits(max_trainings=1)
    long = SMALL.replace(steps=100_000)  # no run may finish and free the slot for good
    runs += [TrainingRun(long, slots=slots, limits=limits) for _ in range(3)]
    wait_for(lambda: all(r.trainer is not None for r in runs))
    for run in runs:
        run.play()
    peak = 0
    deadline = time.monotonic() + 30
    while min(len(r.buffer) for r in runs) < 15 and time.monotonic() < deadline:
        peak = max(peak, slots.running)
        time.sleep(0.002)
    assert min(len(r.buffer) for r in runs) >= 15, "a queued run starved"
    assert peak == 1
    queued = [r.queue_position for r in runs if r.queue_position is not None]
    assert all(place <= total <= 2 for place, total in queued)


def test_slot_is_freed_on_pause_stop_and_error(runs: list[TrainingRun]) -> None:
    slots = TrainingSlots(1)
    limits = ServerLimits(max_trainings=1)
    run = TrainingRun(SMALL, slots=slots, limits=limits)
    runs.append(run)
    run.play()
    wait_for(lambda: run.buffer is not None and len(run.buffer) > 2)
    assert slots.holds(run)
    run.pause()
    wait_for(lambda: not slots.holds(run), 10)
    run.play()
    wait_for(lambda: slots.holds(run), 10)
    run.stop()
    run.thread.join(30)
    assert slots.running == 0
    # a run that fails to build gives the slot back
    broken = TrainingRun(SMALL.replace(dataset="cifar10", data_dir="/nonexistent"), slots=slots,
                         limits=limits)
    runs.append(broken)
    broken.thread.join(30)
    assert broken.error and slots.running == 0 and slots.queued == 0


def test_queued_run_stops_and_leaves_the_queue(runs: list[TrainingRun]) -> None:
    slots = TrainingSlots(1)
    slots.acquire("someone else")
    run = TrainingRun(SMALL, slots=slots, limits=ServerLimits(max_trainings=1))
    runs.append(run)
    wait_for(lambda: run.queue_position == (1, 1), 10)
    run.stop()
    run.thread.join(10)
    assert not run.thread.is_alive() and slots.queued == 0


def test_size_cap_is_checked_once_the_model_is_built(runs: list[TrainingRun]) -> None:
    slots = TrainingSlots(1)
    run = TrainingRun(SMALL, slots=slots, limits=ServerLimits(max_np=1000))
    runs.append(run)
    run.play()
    run.thread.join(30)
    assert run.error.startswith("n·p: at most 1,000") and run.trainer is None
    assert slots.running == 0


def test_each_training_thread_sets_its_torch_threads(runs: list[TrainingRun],
                                                      monkeypatch) -> None:
    import torch

    import app.session.runner

    seen: list[int] = []
    real = app.session.runner.Trainer

    def recording(config: RunConfig, **inputs: object) -> object:  # data=, model=: the run's own
        seen.append(torch.get_num_threads())
        return real(config, **inputs)

    monkeypatch.setattr(app.session.runner, "Trainer", recording)
    before = torch.get_num_threads()
    for threads in (1, 3):
        run = TrainingRun(SMALL, slots=TrainingSlots(1),
                          limits=ServerLimits(torch_threads=threads, training="thread"))
        runs.append(run)
        wait_for(lambda r=run: r.trainer is not None or bool(r.error))
    assert seen == [1, 3]
    assert torch.get_num_threads() == before  # this thread's setting is its own
    for threads in (1, 3):  # a training process sets its own count too
        run = TrainingRun(SMALL, slots=TrainingSlots(1),
                          limits=ServerLimits(torch_threads=threads, training="process"))
        runs.append(run)
        wait_for(lambda r=run: r.trainer is not None or bool(r.error))
        assert run.trainer.threads == threads


# ---- sessions --------------------------------------------------------------------------------
def test_status_line_shows_the_queue_position(process_limits) -> None:
    process_limits(ServerLimits(max_trainings=1))
    slots = server_limits.training_slots()
    slots.acquire("a long run")
    board = Dashboard(settings=RunSettings(**SMALL_SETTINGS))
    try:
        board.play()
        wait_for(lambda: board.controller.run.queue_position is not None, 10)
        board.tick()
        # one run ahead of it on one slot: its slice of 2 s
        assert board.status == "step 0 · queued: position 1 of 1 · steps again in about 2 s"
        slots.release("a long run")
        wait_for(lambda: board.controller.step_count > 0)
        board.tick()
        assert "queued" not in board.status
    finally:
        board.close()
        board.controller.run is None or board.controller.run.thread.join(30)


def test_caps_are_shown_before_a_run_starts(process_limits) -> None:
    process_limits(ServerLimits.defaults("hosted", cores=2))
    board = Dashboard(settings=RunSettings(**{**SMALL_SETTINGS, "n": 2048, "classes": ""}))
    try:
        assert board.controller.run is None
        assert "n: at most 1024" in board.config_alert.object and board.config_alert.visible
    finally:
        board.close()


def test_idle_run_is_paused_and_the_user_told(runs: list[TrainingRun]) -> None:
    clock = Clock()
    controller = RunController(ServerLimits(idle_minutes=1, max_trainings=1), clock=clock)
    controller.reset([SMALL], play=True)
    runs.append(controller.run)
    assert not controller.pause_if_idle()
    clock.now += 59
    assert not controller.pause_if_idle() and controller.run.playing
    clock.now += 2
    assert controller.pause_if_idle()
    assert not controller.run.playing and "Press Play" in controller.idle_note
    wait_for(lambda: not controller.run.slots.holds(controller.run), 30)
    controller.play()
    assert controller.idle_note == "" and controller.run.playing
    controller.close()


def test_session_cap_gives_the_busy_page() -> None:
    sessions = SessionRegistry(2)
    assert sessions.enter("x")
    page = create_app(sessions)
    assert isinstance(page, Dashboard) and sessions.count == 2
    try:
        busy = create_app(sessions)
        assert not isinstance(busy, Dashboard) and sessions.count == 2
        text = busy.objects[0].object
        assert "busy" in text and "2 places" in text
        sessions.leave("x")
        assert sessions.count == 1
    finally:
        page.close()
        for thread in training_threads():
            thread.join(30)


def test_stats_line_counts(process_limits) -> None:
    from app.server.startup import stats

    process_limits(ServerLimits(max_trainings=1, max_sessions=3))
    server_limits.live_sessions().enter("tab")
    figures = stats()
    assert figures["sessions"] == 1 and figures["trainings"] == 0 and figures["rss_mb"] > 10
    assert figures["training_threads"] == len(training_threads())


def test_startup_objects_are_frozen_out_of_the_collector() -> None:
    import gc

    from app.server.startup import freeze_startup_objects

    try:
        frozen = freeze_startup_objects()
        assert frozen == gc.get_freeze_count() > 100_000  # torch, bokeh, panel and the app
        assert "app.dashboard" in sys.modules
    finally:
        gc.unfreeze()  # this process goes on running other tests


def test_health_check_document_starts_no_training() -> None:
    from bokeh.document import Document
    from panel.io.state import set_curdoc

    sessions = SessionRegistry(1)
    before = len(training_threads())
    with set_curdoc(Document()):  # a document without a browser session, as /liveness builds
        page = create_app(sessions)
    assert not isinstance(page, Dashboard) and sessions.count == 0
    assert len(training_threads()) == before


class _Session:
    def __init__(self, id: str, connections: int) -> None:
        self.id, self.connection_count = id, connections


class _Context:
    def __init__(self, id: str, sessions: list[_Session]) -> None:
        self.id = id
        self.server_context = type("ServerContext", (), {"sessions": sessions})()


class _Doc:
    def __init__(self, context: _Context | None) -> None:
        self.session_context = context


def test_pages_without_viewers_are_recognised() -> None:
    sessions = [_Session("open", 1), _Session("closed", 0)]
    assert has_viewers(None) and has_viewers(_Doc(None))
    assert has_viewers(_Doc(_Context("open", sessions)))
    assert not has_viewers(_Doc(_Context("closed", sessions)))
    assert not has_viewers(_Doc(_Context("gone", sessions)))


# ---- served by ntk-eos serve's command line, in chromium -----------------------------------------
@pytest.fixture
def served_one_place(tmp_path) -> Iterator[tuple[str, Path]]:
    """``panel serve`` as ``ntk-eos serve`` runs it, with room for one tab: (url, log file)."""
    port = free_port()
    root = str(Path(__file__).resolve().parents[2])
    env = {**limits_env(max_sessions=1), "PYTHONPATH": root, "OMP_NUM_THREADS": "1",
           "BOKEH_ALLOW_WS_ORIGIN": f"127.0.0.1:{port}"}
    log = (tmp_path / "serve.log").open("w")
    cmd = serve_command(port=port, address="127.0.0.1")
    cmd[0] = sys.executable
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/liveness", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, \
                    (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/main", tmp_path / "serve.log"
    finally:
        stop_process(proc)
        log.close()


@pytest.mark.browser
@pytest.mark.timeout(300)
def test_served_page_builds_after_load_and_the_next_tab_is_told_busy(
        served_one_place: tuple[str, Path], browser) -> None:
    url, log = served_one_place
    first = browser.new_page()
    first.set_default_timeout(120_000)
    first.goto(f"{url}?preset=catapult&n=64&steps=300")
    # the deferred dashboard appears, with the URL's settings applied
    expect(first.get_by_text("The catapult: a learning rate above 2/λ₀")).to_be_visible(
        timeout=120_000)
    first.get_by_role("button", name="Play", exact=True).click()
    expect(first.get_by_text(re.compile(r"^step [1-9]\d* · running$"))).to_be_visible(
        timeout=120_000)
    second = browser.new_page()
    second.goto(url)
    expect(second.get_by_text("The server is busy")).to_be_visible(timeout=60_000)
    expect(second.get_by_role("button", name="Play", exact=True)).to_have_count(0)
    assert "Traceback" not in log.read_text()  # (closing pages may log dropped websockets)
    second.close()
    first.close()


LEGEND_JS = """() => { const labels = [];
  for (const doc of Bokeh.documents) for (const m of doc.all_models)
    if (m.constructor.__name__ === 'LegendItem' && m.visible && m.label) labels.push(m.label.value);
  return labels; }"""


@pytest.mark.browser
@pytest.mark.timeout(300)
def test_keep_run_on_the_served_page_draws_the_kept_run(
        served_one_place: tuple[str, Path], browser) -> None:
    """Buttons run on panel serve's worker threads there; the kept run's curves must still reach
    the page (changing Bokeh models outside the document lock raised in the server)."""
    url, log = served_one_place
    page = browser.new_page()
    page.set_default_timeout(120_000)
    page.goto(f"{url}?n=32&classes=0,1&width=16&k=4&steps=12&lr=0.05")
    page.get_by_role("button", name="Play", exact=True).click()
    expect(page.get_by_text("step 12 · completed")).to_be_visible(timeout=120_000)
    assert "η=0.05" not in page.evaluate(LEGEND_JS)
    page.get_by_role("button", name="Keep run", exact=True).click()
    wait_for(lambda: "η=0.05" in page.evaluate(LEGEND_JS), 60)
    page.get_by_role("button", name="Clear kept", exact=True).click()
    wait_for(lambda: "η=0.05" not in page.evaluate(LEGEND_JS), 60)
    assert "Traceback" not in log.read_text()
    page.close()


SAME_CSS_JS = """() => {
  const dom = Bokeh.require("core/dom");
  const sheet = new dom.InlineStyleSheet(":host { left: 1px; }");
  let writes = 0;
  new MutationObserver((records) => { writes += records.length; })
    .observe(sheet.el, {childList: true, characterData: true, subtree: true});
  sheet.replace(":host { left: 1px; }");  // the same text: nothing written
  const same = sheet.el.textContent;
  sheet.replace(":host { left: 2px; }");  // changed text: written as before
  return new Promise((resolve) => setTimeout(() => resolve(
    {marker: dom.InlineStyleSheet.prototype.MARKER === true, writes, same,
     changed: sheet.el.textContent}), 0));
}"""


@pytest.mark.browser
@pytest.mark.timeout(300)
def test_served_page_skips_rewriting_identical_bokeh_stylesheets(
        served_one_place: tuple[str, Path], browser) -> None:
    """``app.server.browser_patches``: an unchanged stylesheet is not written again (each write made
    Chromium recompute styles at every paint); a changed one still is."""
    url, _ = served_one_place
    page = browser.new_page()
    page.set_default_timeout(120_000)
    page.goto(f"{url}?n=32&classes=0,1&width=16&k=4&steps=12")
    expect(page.get_by_role("button", name="Play", exact=True)).to_be_visible(timeout=120_000)
    page.wait_for_function("() => Bokeh.require('core/dom').InlineStyleSheet.prototype"
                           f".{MARKER} === true")
    result = page.evaluate(SAME_CSS_JS.replace("MARKER", MARKER))
    assert result == {"marker": True, "writes": 1, "same": ":host { left: 1px; }",
                      "changed": ":host { left: 2px; }"}
    page.close()


def test_slices_shorten_so_a_turn_of_the_queue_stays_within_the_rotation() -> None:
    from app.session.limits import MIN_SLICE_S, ROTATION_S

    slots = TrainingSlots(2, slice_seconds=2.0)
    assert slots.slice == 2.0  # nobody waits
    for i in range(2):
        assert slots.acquire(f"holder {i}")
    done = threading.Event()
    waiting = [_waiter(slots, f"tab {i}", [], wanted=lambda: not done.is_set())
               for i in range(48)]
    wait_for(lambda: slots.queued == 48)
    assert slots.slice == pytest.approx(ROTATION_S * 2 / 50)  # 1.2 s: 50 runs, 2 slots
    assert 50 * slots.slice / 2 <= ROTATION_S
    many = TrainingSlots(1, slice_seconds=2.0)
    many._queue.extend(range(1000))
    assert many.slice == MIN_SLICE_S  # never shorter than what checking a state in costs
    done.set()
    slots.wake()
    for thread in waiting:
        thread.join(5)
    assert slots.queued == 0
