"""Hypothesis drives RunConfig and the CLI's run flags: only clear validation errors may result."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ntk_core import ConfigError, RunConfig
from ntk_core.cli import build_parser
from ntk_core.cli.options import config_from_args
from ntk_core.config import option_names

NAMES = option_names()
values = st.one_of(
    st.none(), st.booleans(), st.integers(-10**9, 10**9),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.lists(st.integers(-5, 20), max_size=5),
    st.sampled_from(["mlp", "cnn", "vit", "linear2", "binary", "onehot", "digits", "synthetic",
                     "mse", "ce", "auto", "exact", "matrix_free", "full", "traced", "0.1", "1e-3",
                     "3,8", "none", "true", "tanh", "float64"]),
)
keys = st.one_of(st.sampled_from(NAMES), st.text(min_size=1, max_size=10))
FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.dictionaries(keys, values, max_size=6))
def test_run_config_accepts_or_explains(options: dict) -> None:
    try:
        cfg = RunConfig.from_dict(options)
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert math.isfinite(cfg.lr) and cfg.lr > 0 and cfg.n >= 2
    assert RunConfig.from_json(cfg.to_json()) == cfg  # what validates also round-trips


def _argv(pairs: list[tuple[str, str]]) -> list[str]:
    argv = ["run"]
    for key, value in pairs:
        argv += [f"--{key}", value]
    return argv


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(NAMES), st.text(max_size=8).map(str)), max_size=5))
def test_cli_flags_accept_or_explain(pairs: list[tuple[str, str]]) -> None:
    parser = build_parser()
    try:
        args = parser.parse_args(_argv(pairs))
    except SystemExit as exc:  # argparse refuses, e.g. a value that looks like a flag
        assert exc.code == 2
        return
    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        assert str(exc)
        return
    assert isinstance(cfg, RunConfig)


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400", "0", "-0.0"])
def test_non_finite_and_zero_learning_rates_are_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="lr"):
        RunConfig.from_dict({"lr": value})
