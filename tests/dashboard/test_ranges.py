"""The tick labels the server puts on the streamed figures' log axes."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from app.views.ranges import MAX_LOG_LABELS, log_ticks


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

