"""A hostile visitor of the hosted dashboard, without a browser: markup in file, run and sweep
names; query strings that Panel's own parser raises on; uploads over the limit or beyond the
server's memory; a file that declares a huge kernel; saved-run names and per-visitor quotas.
Hypothesis drives the names and the query strings (500 cases each)."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import h5py
import numpy as np
import panel as pn
import pytest
import xarray as xr
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from panel.pane.markup import HTMLBasePane
from support import send_upload

from app.dashboard import Dashboard
from app.files.runs import LEFT_OUT, MAX_KERNEL_ROWS, read_run_bytes
from app.files.storage import RunStore, StorageError
from app.session import limits as server_limits
from app.session.limits import OpenedRuns, ServerLimits
from app.session.settings import RunSettings
from app.views.sweep_view import SweepView
from app.views.untrusted import NO_LINKS, install_location
from app.views.upload import UploadBox
from ntk_core import RunConfig, Trainer
from ntk_core.training.netcdf import run_bytes

pytestmark = pytest.mark.timeout(900)
FUZZ = settings(max_examples=500, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SMALL = {"n": 16, "classes": "0,1", "width": 8, "k": 2, "steps": 50}
MARKUP = ["<img src=x onerror=alert(1)>.nc", "<script>alert(1)</script>", "\"><svg onload=alert(1)>",
          "<a href='javascript:alert(1)'>x</a>", "<iframe srcdoc='<script>x</script>'>",
          "[x](javascript:alert(1))", "<b>bold</b>", "&lt;img src=x&gt;", "<!-- -->",
          "<style>*{display:none}</style>", "</code><img src=x>"]
SAFE_TAGS = {("p", ()), ("strong", ()), ("code", ()), ("em", ())}  # what messages use
NAMES = st.one_of(st.sampled_from(MARKUP),
                  st.text(alphabet=st.sampled_from("<>\"'&/=` [](){}!*_x é²\u202e\u0000\n"),
                          max_size=40),
                  st.text(max_size=60))


# ---- what the page renders ---------------------------------------------------------------------
class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, tuple[str, ...]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, tuple(sorted(name for name, _ in attrs))))


def rendered_html(viewable: pn.viewable.Viewable) -> list[str]:
    """The HTML that every Markdown, HTML and Alert pane under ``viewable`` sends the browser
    (Markdown converted as Panel converts it)."""
    return [markdown_html(pane) for pane in viewable.select(HTMLBasePane)
            if isinstance(pane.object, str) and pane.object]


def markdown_html(pane: HTMLBasePane | str) -> str:
    """What the browser puts in the page for a pane (or a message text, in a pane like the
    dashboard's message panes): Panel sends the rendered HTML escaped, and its JavaScript
    unescapes it into ``innerHTML``."""
    pane = pn.pane.Markdown(pane, renderer_options=NO_LINKS) if isinstance(pane, str) else pane
    key = (type(pane), repr(getattr(pane, "renderer_options", None)), pane.object)
    if key not in _RENDERED:  # most panes never change: render each text once
        _RENDERED[key] = html.unescape(str(pane._transform_object(pane.object)["object"]))
    return _RENDERED[key]


_RENDERED: dict[tuple, str] = {}


def tags(texts: list[str]) -> list[tuple[str, tuple[str, ...]]]:
    parser = _Tags()
    for text in texts:
        parser.feed(text)
    return parser.tags


def assert_no_markup_from(name: str, page: list[str], benign_page: list[str]) -> None:
    """The page with ``name`` in it has the same elements and attributes as with a plain name,
    and ``name``'s markup characters only ever appear escaped."""
    assert tags(page) == tags(benign_page), name
    # a name that is itself a piece of the plain page's markup ("</", "<h") proves nothing
    if (re.search(r"<[A-Za-z!/]", name) and len(name) < 100
            and not any(name in text for text in benign_page)):
        assert all(name not in text for text in page)


@pytest.fixture(scope="module")
def run_file() -> bytes:
    trainer = Trainer(RunConfig(dataset="digits", n=8, classes=(0, 1), width=4, k=2, steps=5))
    for _ in range(3):
        trainer.step()
    return run_bytes(trainer.buffer.snapshot())


@pytest.fixture(scope="module")
def dash() -> Iterator[Dashboard]:
    board = Dashboard(settings=RunSettings(**SMALL))
    layout = board.__panel__()
    board.layout_for_tests = layout
    yield board
    board.close()


# ---- names that reach the page -----------------------------------------------------------------
@pytest.mark.parametrize("name", MARKUP)
def test_an_uploaded_file_name_never_reaches_the_page_as_markup(dash: Dashboard, run_file: bytes,
                                                               name: str) -> None:
    send_upload(dash.upload, "plain-name.nc", run_file)
    benign = rendered_html(dash.layout_for_tests)
    send_upload(dash.upload, name, run_file)
    assert dash.controller.viewed_name == name
    assert "<img" not in dash.status_pane.object and html.escape(name)[:60] in \
        dash.status_pane.object
    assert_no_markup_from(name, rendered_html(dash.layout_for_tests), benign)


@pytest.fixture(scope="module")
def run_ds(run_file: bytes) -> xr.Dataset:
    return read_run_bytes(run_file)


@FUZZ
@given(name=NAMES)
@example(name="</")  # a piece of every page's own markup: found by the fuzzer once
@example(name="<img src=x onerror=alert(1)>.nc")
def test_fuzzed_names_never_reach_the_page_as_markup(dash: Dashboard, run_ds: xr.Dataset,
                                                    name: str) -> None:
    ds = run_ds
    dash._view_dataset(ds, "plain-name.nc")
    dash.tick()
    benign = rendered_html(dash.layout_for_tests)
    dash._view_dataset(ds, name)  # an opened file, by upload or from the server folder
    dash.tick()
    assert_no_markup_from(name, rendered_html(dash.layout_for_tests), benign)


def test_the_markup_check_can_fail() -> None:
    name = "<img src=x onerror=alert(1)>"
    unescaped = markdown_html(f"**Could not open {name}**")
    with pytest.raises(AssertionError):
        assert_no_markup_from(name, [unescaped], [markdown_html("**Could not open x**")])


@FUZZ
@given(name=NAMES)
def test_fuzzed_sweep_and_saved_run_names_never_reach_the_page_as_markup(name: str) -> None:
    view = _sweep_view()
    view._fail("plain.nc", ValueError("bad"))
    benign = rendered_html(view.__panel__())
    view._fail(name, ValueError(name))
    assert_no_markup_from(name, rendered_html(view.__panel__()), benign)
    view.show(view.cube, "plain.nc")
    benign = rendered_html(view.__panel__())
    view.show(view.cube, name)
    assert_no_markup_from(name, rendered_html(view.__panel__()), benign)


_views: list[SweepView] = []


def _sweep_view() -> SweepView:
    """One view for all cases. Its plots are drawn from the sweep's numbers only (no name
    reaches them), so redrawing them for every name is skipped."""
    if not _views:
        view = SweepView()
        view.refresh = lambda *_: None
        _views.append(view)
    return _views[0]


def test_saved_run_messages_escape_the_name(tmp_path: Path, run_file: bytes) -> None:
    messages: list[str] = []
    from app.views.server_files import ServerFiles

    store = RunStore(tmp_path)
    trainer = Trainer(RunConfig(dataset="digits", n=8, classes=(0, 1), width=4, k=2, steps=5))
    trainer.step()
    files = ServerFiles(store, lambda: trainer.buffer, lambda name, data: None,
                        lambda text, kind: messages.append(text))
    for name in MARKUP:
        files.name_input.value = name
        files.save()
    files.select.options = MARKUP  # as if the folder listed them
    for name in MARKUP:
        files.select.value = name
        files.open()
    assert len(messages) == 2 * len(MARKUP)
    for text in messages:
        assert set(tags([markdown_html(text)])) <= SAFE_TAGS, text


# ---- query strings -----------------------------------------------------------------------------
class _Doc:
    """A served document as ``install_location`` sees it: a session whose request has a URI."""

    def __init__(self, uri: str) -> None:
        request = SimpleNamespace(_request=SimpleNamespace(uri=uri, remote_ip="10.0.0.1"))
        self.session_context = SimpleNamespace(request=request)


QUERIES = st.one_of(
    st.text(max_size=300),
    st.lists(st.tuples(st.sampled_from(["n", "lr", "width", "preset", "classes", "speed", "k",
                                        "x", "<b>", "é"]),
                       st.one_of(st.text(max_size=30), st.sampled_from(
                           ["²", "١٢", "9" * 5000, "<img src=x onerror=alert(1)>", "[[[", "1e999",
                            "nan", "-1", "0.05"]))), max_size=6)
    .map(lambda pairs: "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs)),
    st.sampled_from(["a?b?c", "n=%C2%B2", "n=" + "9" * 5000, "?", "&&&", "=x", "n", "#frag",
                     "n=1?n=2", "%", "%zz", "lr=0.05#x?y"]))


@FUZZ
@given(query=QUERIES)
def test_every_query_string_builds_a_page_naming_the_bad_fields(dash: Dashboard,
                                                               query: str) -> None:
    pn.state._locations.clear()
    doc = _Doc("/main?" + query)
    location = install_location(doc)  # what the served page does before servable()
    assert location is not None and location.query_params is not None
    dash._url_message = ""
    started = time.perf_counter()
    dash.apply_url(location)
    location.search = "?" + query.partition("#")[0]  # the browser sends its own search back
    dash.settings.width = 9 if dash.settings.width != 9 else 10  # a control moves: URL sync
    assert time.perf_counter() - started < 10
    for obj in (dash.settings, dash):
        if any(entry[0] is obj for entry in location._synced):
            location.unsync(obj)
    message = dash._url_message
    page = [markdown_html(message)] if message else []
    assert set(tags(page)) <= SAFE_TAGS  # no element from the link
    bad = [k for k, v in _pairs(query) if v == "²" or len(v) > 256]
    for key in bad:
        if key.isalnum():
            assert key in message


def _pairs(query: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    try:
        return parse_qsl(query.partition("#")[0], keep_blank_values=True, max_num_fields=64)
    except ValueError:
        return []


def test_panel_alone_raises_on_these_links() -> None:
    """The defect: Panel's own Location raises while it is built from such a request."""
    from panel.io.location import Location

    for search in ("?n=²", "?n=" + "9" * 5000):
        with pytest.raises(ValueError):
            Location().param.update(search=search)


# ---- uploads -----------------------------------------------------------------------------------
def test_an_upload_over_the_limit_is_dropped_on_the_server_too(run_file: bytes) -> None:
    """A client that skips the browser's size check: the chunks stop counting at the limit."""
    got, refused = [], []
    box = UploadBox(lambda name, data: got.append(name),
                    lambda name, why: refused.append((name, why)), max_mb=0.05)
    send_upload(box, "big.nc", b"x" * 200_000, chunk=20_000)
    assert got == [] and refused and "larger than 0.05 MB" in refused[0][1]
    assert box._file_buffer == {} and box.value == {}
    send_upload(box, "ok.nc", b"y" * 1000, chunk=300)
    assert got == ["ok.nc"] and box.value == {}  # nothing kept after it is handed on


def test_an_upload_beyond_the_servers_budget_is_refused(run_file: bytes) -> None:
    budget = OpenedRuns(total_mb=0.1)
    assert budget.hold("other", 90_000)
    got, refused = [], []
    box = UploadBox(lambda name, data: got.append(name),
                    lambda name, why: refused.append(why), max_mb=1,
                    room=lambda n: budget.hold("me", n))
    send_upload(box, "a.nc", b"x" * 50_000, chunk=5_000)
    assert got == [] and "as many files as it has memory for" in refused[0]
    budget.release("other")
    send_upload(box, "a.nc", b"x" * 50_000, chunk=5_000)
    assert got == ["a.nc"]


# ---- memory of opened runs ---------------------------------------------------------------------
def huge_kernel_file(path: Path, run_file: bytes, rows: int) -> bytes:
    """A valid run whose kernel variable is declared ``rows`` × ``rows`` float64 of zeros:
    gzip chunks never written, so the file stays small."""
    path.write_bytes(run_file)
    with h5py.File(path, "r+") as f:
        if "kernel" in f:
            del f["kernel"]
        sample = f["sample"]
        del f["sample"]
        f.create_dataset("sample", data=np.arange(rows))
        for name in ("label", "target", "sample_index", "output_index"):
            if name in f:
                old = f[name][()]
                del f[name]
                f.create_dataset(name, data=np.resize(old, rows))
        f.create_dataset("kernel", shape=(rows, rows), dtype="f8", chunks=(min(rows, 1000),) * 2,
                         compression="gzip")
        for name in ("eigenvectors",):
            if name in f:
                shape = f[name].shape
                del f[name]
                f.create_dataset(name, shape=(*shape[:2], rows), dtype="f4")
        del sample
    return path.read_bytes()


def test_a_small_file_declaring_a_huge_kernel_costs_neither_time_nor_memory(
        tmp_path: Path, run_file: bytes) -> None:
    rows = 11_000
    data = huge_kernel_file(tmp_path / "k.nc", run_file, rows)
    assert len(data) < 2 * 2**20
    started = time.perf_counter()
    try:
        ds = read_run_bytes(data)
    except ValueError as exc:  # a sample-size mismatch in the doctored file may be refused
        pytest.fail(f"refused: {exc}")
    assert time.perf_counter() - started < 10
    assert "kernel" not in ds.variables and ds.nbytes < 50 * 2**20
    assert "11,000 × 11,000" in ds.attrs[LEFT_OUT]
    small = huge_kernel_file(tmp_path / "s.nc", run_file, 64)
    assert read_run_bytes(small)["kernel"].shape == (64, 64)  # within the cap: kept
    assert MAX_KERNEL_ROWS >= 1024


def test_opened_runs_share_one_budget(run_file: bytes) -> None:
    ds = read_run_bytes(run_file)
    limits = ServerLimits(open_runs_mb=ds.nbytes * 1.5 / 2**20)
    server_limits.configure(limits)
    dash = Dashboard(settings=RunSettings(**SMALL))
    try:
        budget = server_limits.opened_runs()
        other = object()
        assert budget.hold(other, int(ds.nbytes))
        dash._view_dataset(ds, "second.nc")
        assert "as many opened runs" in dash.run_alert.object
        budget.release(other)
        dash._view_dataset(ds, "second.nc")
        assert dash.controller.viewed_name == "second.nc" and budget.held == ds.nbytes
        dash._view_dataset(ds, "third.nc")  # replaces this session's run: no more memory
        assert budget.held == ds.nbytes
        dash.reset()  # back to training: the viewed run goes
        assert budget.held == 0
    finally:
        dash.close()
        server_limits.configure(ServerLimits())


def test_hosted_mode_has_a_budget_and_local_mode_none() -> None:
    assert ServerLimits.defaults("hosted").open_runs_mb > 0
    assert ServerLimits.defaults("local").open_runs_mb == 0
    assert ServerLimits.from_env({"NTK_EOS_MODE": "hosted",
                                  "NTK_EOS_OPEN_RUNS_MB": "64"}).open_runs_mb == 64


# ---- saved runs --------------------------------------------------------------------------------
def test_every_listed_run_opens_and_double_suffixes_are_refused(tmp_path: Path,
                                                                run_file: bytes) -> None:
    store = RunStore(tmp_path)
    ds = read_run_bytes(run_file)
    with pytest.raises(StorageError, match="not ending in .nc twice"):
        store.save(ds, "x.nc.nc")
    assert store.save(ds, "x.nc") == "x"
    (tmp_path / "y.nc.nc").write_bytes(run_file)  # put there by hand
    assert store.list() == ["x"]
    for name in store.list():
        assert store.load(name).sizes["step"] == 3


def test_one_visitor_cannot_fill_the_folder(tmp_path: Path, run_file: bytes) -> None:
    ds = read_run_bytes(run_file)
    store = RunStore(tmp_path, runs_per_visitor=3, saves_per_minute=100)
    for i in range(3):
        store.save(ds, f"a{i}", visitor="10.0.0.1")
    with pytest.raises(StorageError, match="limit per visitor"):
        store.save(ds, "a3", visitor="10.0.0.1")
    assert store.save(ds, "b0", visitor="10.0.0.2") == "b0"  # others still can
    assert store.save(ds, "op", visitor="") == "op"  # the operator's scripts have no cap
    (tmp_path / "a0.nc").unlink()  # the operator removes one: room again
    assert store.save(ds, "a3", visitor="10.0.0.1") == "a3"
    ledger = (tmp_path / ".owners.json").read_text()
    assert "10.0.0.1" not in ledger  # addresses are hashed
    assert ".owners" not in " ".join(store.list())


def test_saves_are_rate_limited_per_visitor(tmp_path: Path, run_file: bytes) -> None:
    ds = read_run_bytes(run_file)
    store = RunStore(tmp_path, runs_per_visitor=100, saves_per_minute=2)
    store.save(ds, "a", visitor="v")
    store.save(ds, "b", visitor="v")
    with pytest.raises(StorageError, match=r"at most 2 saves a minute; try again in \d+ s"):
        store.save(ds, "c", visitor="v")
    assert store.save(ds, "c", visitor="w") == "c"


def test_the_websocket_limit_fits_a_chunk_not_a_file() -> None:
    from app.server.launch import serve_command
    from app.views.upload import CHUNK_BYTES, WEBSOCKET_MAX_BYTES

    cmd = serve_command()
    limit = int(cmd[cmd.index("--websocket-max-message-size") + 1])
    assert limit == WEBSOCKET_MAX_BYTES and CHUNK_BYTES < limit < 64 * 2**20
    assert UploadBox(lambda *_: None, lambda *_: None).chunk_size == CHUNK_BYTES
