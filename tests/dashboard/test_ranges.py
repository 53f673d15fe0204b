"""Where the server puts tick labels and legends on the streamed figures."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.views.ranges import (
    LINE_CLEARANCE,
    MAX_LOG_LABELS,
    OUTSIDE,
    RETURN_CLEARANCE,
    SPOTS,
    font_pixels,
    legend_place,
    legend_size,
    log_ticks,
    points_under,
    text_width,
    to_pixels,
)


def test_a_loss_range_of_two_decades_is_labelled_1_2_3_5_down_to_its_bottom() -> None:
    # The range the default preset's loss curve spans at the Edge of Stability: BokehJS's own
    # log ticker labelled 0.1 … 0.7 linearly (overlapping at the top) and nothing below 0.1.
    assert log_ticks(0.012, 0.75) == [0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5]


def test_many_decades_get_one_label_per_few_decades() -> None:
    assert log_ticks(1e-8, 1.0) == [1e-8, 1e-6, 1e-4, 1e-2, 1.0]


def test_a_range_inside_one_decade_gets_evenly_spaced_labels() -> None:
    assert log_ticks(0.031, 0.039) == [0.032, 0.034, 0.036, 0.038]


def test_an_empty_or_invalid_range_gets_no_labels() -> None:
    assert log_ticks(0.0, 1.0) == [] and log_ticks(1.0, 1.0) == [] and log_ticks(1, math.inf) == []


@given(st.floats(-250, 50), st.floats(1e-6, 250))
def test_ticks_lie_inside_increase_and_are_few_but_at_least_two(exponent: float,
                                                                 decades: float) -> None:
    low = 10.0**exponent
    high = low * 10.0**decades
    ticks = log_ticks(low, high)
    assert 2 <= len(ticks) <= max(MAX_LOG_LABELS, 9)  # the linear fallback gives 3 to 9
    assert all(low * (1 - 1e-11) <= t <= high * (1 + 1e-11) for t in ticks)
    assert all(a < b for a, b in zip(ticks, ticks[1:], strict=False))


def test_legend_size_grows_with_its_labels_and_entries() -> None:
    style = {"font_px": 12.0, "glyph": (20, 20), "standoff": 5, "padding": 4, "spacing": 0}
    short, long = legend_size(["2/η"], **style), legend_size(["2/η" * 4], **style)
    assert long[0] > short[0] + 3 * text_width("2/η", 12.0) - 1 and long[1] == short[1]
    three = legend_size(["a", "b", "c"], **style)
    assert three[1] == 3 * 20 + 2 * 4  # one 20 px row per entry, plus the padding
    row = legend_size(["a", "b", "c"], **style, horizontal=True)
    assert row[0] > three[0] and row[1] < three[1]
    assert text_width("mmmm", 10) > text_width("abcd", 10) > text_width("illi", 10) > 0
    assert font_pixels("9pt") == 12 and font_pixels("12px") == 12
    with pytest.raises(ValueError, match="font size"):
        font_pixels("large")


FRAME, BOX, MARGIN = (260.0, 220.0), (80.0, 46.0), 6.0


def pixels(x: np.ndarray, y: np.ndarray, y_range: tuple[float, float] = (0, 1),
           log_y: bool = False) -> tuple[np.ndarray, np.ndarray]:
    return to_pixels(x, y, (0, 100), y_range, log_y, FRAME)


def test_the_legend_goes_to_a_spot_the_curves_leave_free() -> None:
    x = np.linspace(0, 100, 201)
    falling = pixels(x, 1 - x / 100)  # top left to bottom right: both other corners are free
    assert legend_place(*falling, FRAME, BOX, MARGIN, "top_left") == "top_right"
    assert legend_place(*falling, FRAME, BOX, MARGIN, "bottom_left") == "bottom_left"  # kept
    hovering_low = pixels(x, np.full_like(x, 0.1))  # a sharpness hovering at the bottom
    assert legend_place(*hovering_low, FRAME, BOX, MARGIN, "bottom_right") == "top_right"
    # a log axis: the position is judged in decades (1 → 0.01, a straight falling line)
    loss = pixels(x, 10.0 ** (-2 * x / 100), (0.01, 1), log_y=True)
    assert legend_place(*loss, FRAME, BOX, MARGIN, "bottom_left") == "bottom_left"
    assert legend_place(*loss, FRAME, BOX, MARGIN, "top_left") == "top_right"
    # every chosen spot is free of points, the line's width included
    for px, py in (falling, hovering_low, loss):
        spot = legend_place(px, py, FRAME, BOX, MARGIN, "top_right")
        assert points_under(px, py, spot, FRAME, BOX, MARGIN, LINE_CLEARANCE) == 0


def test_the_legend_leaves_the_frame_when_no_spot_is_free() -> None:
    """Lines along the top, across the middle and along the bottom (thresholds 2/η before and
    after a change, a curve hovering low): every corner and side is covered."""
    x = np.linspace(0, 100, 401)
    curves = [pixels(x, np.full_like(x, level)) for level in (0.03, 0.5, 0.97)]
    px, py = (np.concatenate(c) for c in zip(*curves, strict=True))
    assert legend_place(px, py, FRAME, BOX, MARGIN, "top_right") == OUTSIDE
    for spot in SPOTS:
        assert points_under(px, py, spot, FRAME, BOX, MARGIN) > 0
    # too large for the frame at all
    assert legend_place(px[:0], py[:0], (60.0, 40.0), BOX, MARGIN, "top_right") == OUTSIDE


def test_an_outside_legend_returns_only_to_a_spot_well_clear_of_the_curves() -> None:
    """No hopping in and out while a curve grazes the edge of the best spot."""
    x = np.linspace(0, 100, 201)
    # a flat line just under where a top-right box of 46 px (6 px margin) ends
    edge = (FRAME[1] - MARGIN - BOX[1] - (LINE_CLEARANCE + RETURN_CLEARANCE) / 2) / FRAME[1]
    curves = [pixels(x, np.full_like(x, level)) for level in (edge, 0.5, 0.03)]  # the rest full
    px, py = (np.concatenate(c) for c in zip(*curves, strict=True))
    assert legend_place(px, py, FRAME, BOX, MARGIN, "top_right") == "top_right"
    assert legend_place(px, py, FRAME, BOX, MARGIN, OUTSIDE) == OUTSIDE
