"""A grid of run options and the configurations it stands for: a preset's ladder, the
dashboard's ladder of runs and a sweep all expand one the same way.

A grid maps option names to lists of values (``{"lr": [0.05, 0.1], "seed": [0, 1]}``); its points
are every combination, in row-major order of its keys (the last key varies fastest).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from .config import RunConfig

Point = dict[str, Any]


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[Point]:
    """Every combination of the grid's values, in row-major order of its keys."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def point_config(base: RunConfig, point: Point) -> RunConfig:
    """``base`` with the point's options set (coerced and validated: ConfigError)."""
    return RunConfig.from_dict({**base.to_dict(), **point})


def grid_configs(base: RunConfig, grid: Mapping[str, Sequence[Any]]) -> list[RunConfig]:
    """One configuration per point of ``grid`` (just ``base`` for an empty grid)."""
    return [point_config(base, point) for point in grid_points(grid)]
