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
from bokeh.models import Range1d
from bokeh.plotting import figure

PADDING = 0.05  # of the span, on each side (DataRange1d's default range_padding is 0.1 in all)


class FollowedRanges:
    """The x (step) and y ranges of one figure, following the extent of the streamed data."""

    def __init__(self, fig: figure, log_y: bool = False) -> None:
        fig.x_range = Range1d(0, 1)
        fig.y_range = Range1d(0.1, 1) if log_y else Range1d(0, 1)
        self.fig = fig
        self.log_y = log_y
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
        self.fig.x_range.update(**_padded(*self.x_extent, log=False))
        self.fig.y_range.update(**_padded(*self.y_extent, log=self.log_y))

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
