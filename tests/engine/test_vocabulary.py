"""Run statuses are one enum whose members are their file text: they compare, hash, format and
pickle as the strings that files and sweeps hold."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from ntk_core.config import RunConfig, option_choices
from ntk_core.vocabulary import TERMINAL, RunStatus


def test_a_status_is_interchangeable_with_its_text() -> None:
    assert RunStatus.REACHED_TARGET == "reached_target" and f"{RunStatus.FAILED}" == "failed"
    assert str(RunStatus.DIVERGED) == "diverged" and json.dumps([RunStatus.READY]) == '["ready"]'
    assert {RunStatus.FAILED: 1}["failed"] == 1 and {"failed": 2}[RunStatus.FAILED] == 2
    assert "stopped" in TERMINAL and "paused" not in TERMINAL
    statuses = np.array(["failed", "completed", "diverged"])
    assert np.isin(statuses, (RunStatus.DIVERGED, RunStatus.FAILED)).tolist() == [True, False, True]
    assert pickle.loads(pickle.dumps(RunStatus.STOPPED)) is RunStatus.STOPPED


def test_the_terminal_statuses_end_a_run() -> None:
    ended = {s for s in RunStatus if s.terminal}
    assert ended == {"completed", "reached_target", "diverged", "stopped", "failed"}
    with pytest.raises(ValueError):
        RunStatus("exploded")


def test_the_kernel_choices_are_the_config_fields_choices() -> None:
    assert option_choices("ntk_mode") == ("auto", "exact", "matrix_free")
    assert option_choices("kernel") == ("full", "traced")
    assert RunConfig(ntk_mode="matrix_free").ntk_mode == "matrix_free"
