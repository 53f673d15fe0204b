"""Axis ranges of the streamed curve figures, set by the server from the data it sends.

Bokeh's default ``DataRange1d`` is computed in the browser after every data change, which
repaints the figure a second time and sends the new start and end back to the server: at 4 Hz
and five figures, twenty patches a second that the event loop must apply. Here the server
keeps the extent of what it streamed and sends it with the data, so each update is one paint
and nothing comes back. A pan or zoom in the browser stops the following (the user is looking
at something); the figure's reset tool resumes it.
"""

from __future__ import annotations

import math

import numpy as np
from bokeh.events import RangesUpdate, Reset
from bokeh.models import FixedTicker, Range1d
from bokeh.plotting import figure

PADDING = 0.05  # of the span, on each side (DataRange1d's default range_padding is 0.1 in all)
MAX_LOG_LABELS = 8


class FollowedRanges:
    """The x (step) and y ranges of one figure, following the extent of the streamed data."""

    def __init__(self, fig: figure, log_y: bool = False) -> None:
        fig.x_range = Range1d(start=0, end=1)
        fig.y_range = Range1d(start=0.1, end=1) if log_y else Range1d(start=0, end=1)
        self.fig = fig
        self.log_y = log_y
        # BokehJS's log ticker falls back to linear ticks on a range under a few decades, which
        # crowd the top of a log axis (0.3 … 0.7 overlapping) and leave its bottom unlabelled.
        self.y_ticker = FixedTicker(ticks=[]) if log_y else None
        if self.y_ticker is not None:
            fig.yaxis[0].ticker = self.y_ticker
        self.following = True
        self.stale = False  # the reset tool was used: apply the extent even without new data
        self.clear()
        fig.on_event(RangesUpdate, self._moved)
        fig.on_event(Reset, self._reset)

    def clear(self) -> None:
        self.x_extent = [math.inf, -math.inf]
        self.y_extent = [math.inf, -math.inf]

    def include(self, x: np.ndarray, *ys: np.ndarray) -> None:
        """Widen the extent to cover these points (non-finite values, and non-positive ones on
        a log axis, are not drawn and so not counted)."""
        _widen(self.x_extent, np.asarray(x, dtype=float))
        for y in ys:
            y = np.asarray(y, dtype=float)
            _widen(self.y_extent, y[y > 0] if self.log_y else y)

    def apply(self) -> None:
        """Send the padded extent to the browser, unless the user has moved the view."""
        self.stale = False
        if not self.following or self.x_extent[0] > self.x_extent[1] \
                or self.y_extent[0] > self.y_extent[1]:
            return
        x_low, x_high = self.x_extent
        y_low, y_high = self.y_extent
        self.fig.x_range.update(**_padded(x_low, x_high, log=False))
        y = _padded(y_low, y_high, log=self.log_y)
        self.fig.y_range.update(**y)
        if self.y_ticker is not None:
            ticks = log_ticks(y["start"], y["end"])
            if ticks != self.y_ticker.ticks:  # an equal assignment would still be sent
                self.y_ticker.ticks = ticks

    def _moved(self, event: RangesUpdate) -> None:
        self.following = False

    def _reset(self, event: Reset) -> None:
        self.following = True
        self.stale = True


def _widen(extent: list[float], values: np.ndarray) -> None:
    finite = values[np.isfinite(values)]
    if finite.size:
        extent[0] = min(extent[0], float(finite.min()))
        extent[1] = max(extent[1], float(finite.max()))


def _padded(low: float, high: float, log: bool) -> dict[str, float]:
    if log:
        lo, hi = _padded(math.log10(low), math.log10(high), log=False).values()
        return {"start": 10.0**lo, "end": 10.0**hi}
    span = high - low
    pad = PADDING * span if span > 0 else max(0.5, 0.1 * abs(low))
    return {"start": low - pad, "end": high + pad}


def log_ticks(low: float, high: float) -> list[float]:
    """Tick positions for a log axis on [low, high]: 1-2-3-5 or 1-2-5 in each decade when the
    range spans a few decades, one per decade (or per few decades) when it spans more, and
    evenly spaced ticks inside a single narrow decade: at least two, at most about
    ``MAX_LOG_LABELS``."""
    if not (0 < low < high and math.isfinite(high)):
        return []
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    for mantissas in ((1, 2, 3, 5), (1, 2, 5), (1, 3), (1,)):
        ticks = _in_range(low, high, [m * 10.0**e for e in range(first, last + 1)
                                      for m in mantissas])
        if len(ticks) <= MAX_LOG_LABELS:
            break
    else:  # many decades: every few powers of ten
        every = math.ceil(len(ticks) / MAX_LOG_LABELS)
        ticks = _in_range(low, high, [10.0**e for e in range(first, last + 1) if e % every == 0])
    return ticks if len(ticks) >= 2 else _linear_ticks(low, high)


def _linear_ticks(low: float, high: float, count: int = 3) -> list[float]:
    """At least ``count`` ticks (at most 2.5 times as many) at a 1-2-5 step, for a range too
    narrow for powers of ten."""
    raw = (high - low) / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (5, 2, 1) if m * magnitude <= raw)
    start = math.ceil(low / step)
    return _in_range(low, high, [(start + i) * step
                                 for i in range(int((high - low) / step) + 2)])


def _in_range(low: float, high: float, values: list[float]) -> list[float]:
    # Rounded to 12 significant digits so 3 × 0.1 is labelled 0.3, not 0.30000000000000004.
    return [float(f"{v:.12g}") for v in values if low <= v <= high]

