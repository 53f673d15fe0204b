"""Hypothesis drives the page's URL query and uploaded run files (500 cases each): only clear
messages may result, never an exception escaping, never a hang."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlencode

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from panel.io.location import Location

from app.dashboard import Dashboard
from app.files.runfile import READ_SECONDS
from app.files.runs import RunFileError, read_run_bytes
from app.session.runner import training_threads
from app.session.settings import BOUNDS, CONTROL_FIELDS, RunSettings
from ntk_core import RunConfig, Trainer
from ntk_core.training.buffer import RunBuffer
from ntk_core.training.netcdf import run_bytes

pytestmark = pytest.mark.timeout(900)
FUZZ = settings(max_examples=500, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
SMALL = {"n": 16, "classes": "0,1", "width": 8, "k": 2, "steps": 50}

# ---- URL query parameters ----------------------------------------------------------------------
KEYS = st.one_of(st.sampled_from(["preset", "speed", *CONTROL_FIELDS]), st.text(max_size=12))
VALUES = st.one_of(
    st.text(max_size=20), st.text(max_size=400),
    st.integers(-10**30, 10**30).map(str), st.floats().map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e309", "²", "١٢", "9" * 5000, "[1,2", "[[[[[[",
                     "{\"a\": 1}", "[1, 2, 3]", "true", "None", "0x10", "1_000",
                     "<img src=x onerror=alert(1)>", "**bold**", "catapult", "eta-ladder",
                     "cnn", "0,1", "3,x", "", " ", "\x00", "%00", "../../etc/passwd"]),
    st.lists(st.integers(-5, 2000), max_size=4).map(str),
)


@pytest.fixture(scope="module")
def dash() -> Iterator[Dashboard]:
    board = Dashboard(settings=RunSettings(**SMALL))
    board.controller.reset = lambda configs, play=False: board.applied.append(configs)
    board.applied = []
    yield board
    board.close()
    for thread in training_threads():
        thread.join(30)


def _apply(dash: Dashboard, search: str) -> None:
    dash._url_message = ""
    location = Location(search=search)
    started = time.perf_counter()
    dash.apply_url(location)  # must not raise
    dash.tick()
    assert time.perf_counter() - started < 10
    for obj in (dash.settings, dash):
        if any(entry[0] is obj for entry in location._synced):
            location.unsync(obj)
    for text in (dash._url_message, dash.config_alert.object, dash.run_alert.object):
        assert "<img" not in text and "\n" not in text  # quoted values are escaped, one line
    for name, (low, high) in BOUNDS.items():
        value = getattr(dash.settings, name)
        assert value is None or low <= value <= high or not np.isfinite(value)
    message = dash.settings.validate()
    assert isinstance(message, str)
    if not message:  # valid settings build configs the engine accepts
        assert all(isinstance(c, RunConfig) for c in dash.settings.to_configs())


@FUZZ
@given(st.dictionaries(KEYS, VALUES, max_size=6))
def test_url_query_dicts_apply_or_explain(dash: Dashboard, query: dict) -> None:
    _apply(dash, "?" + urlencode(query))


@FUZZ
@given(st.text(max_size=300))
def test_raw_url_query_strings_apply_or_explain(dash: Dashboard, search: str) -> None:
    _apply(dash, "?" + search)


# ---- uploaded files ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def valid_file() -> bytes:
    trainer = Trainer(RunConfig(dataset="digits", n=8, classes=(0, 1), width=4, k=2, steps=5))
    for _ in range(3):
        trainer.step()
    return run_bytes(trainer.buffer.snapshot())


def _read(data: bytes) -> None:
    started = time.perf_counter()
    try:
        ds = read_run_bytes(data)
    except RunFileError as exc:
        assert str(exc) and len(str(exc)) <= 500
    else:
        assert len(RunBuffer.from_dataset(ds)) == ds.sizes["step"]
    assert time.perf_counter() - started < READ_SECONDS + 5


@st.composite
def damaged(draw: st.DrawFn, valid: bytes) -> bytes:
    """A valid run with some bytes changed, then maybe cut short or extended."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 24))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    tail = draw(st.binary(max_size=64))
    return bytes(data[:cut]) + tail


@FUZZ
@given(data=st.data())
def test_uploaded_files_open_or_explain(valid_file: bytes, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["random", "hdf5-header", "truncated", "damaged"]))
    if kind == "random":
        blob = data.draw(st.binary(max_size=4096))
    elif kind == "hdf5-header":
        blob = valid_file[:8] + data.draw(st.binary(max_size=4096))
    elif kind == "truncated":
        blob = valid_file[: data.draw(st.integers(0, len(valid_file)))]
    else:
        blob = data.draw(damaged(valid_file))
    _read(blob)
