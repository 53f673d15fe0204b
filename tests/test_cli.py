"""The ntk-eos command line, as a user runs it, and the presets it reads."""

from __future__ import annotations

import pytest

from ntk_core import load_run
from ntk_core.cli import main
from ntk_core.presets import load_preset, preset_names


def test_presets_load_and_validate() -> None:
    names = preset_names()
    assert {"eos-mlp-digits", "eta-ladder", "linear2-theory", "catapult"} <= set(names)
    for name in names:
        preset = load_preset(name)
        assert len(preset.description) > 200, f"{name} needs its lecture paragraph"
    ladder = load_preset("eta-ladder").configs()
    assert len(ladder) >= 4 and len({c.lr for c in ladder}) == len(ladder)


def test_run_with_overrides_saves_and_info_reads(tmp_path, capsys) -> None:
    out = tmp_path / "run.nc"
    code = main(["run", "--preset", "eos-mlp-digits", "--n", "32", "--width", "16", "--steps",
                 "5", "--k", "3", "--lr", "0.05", "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "status       completed" in printed and "sharpness" in printed
    ds = load_run(out)
    assert ds.sizes["step"] == 5 and ds.attrs["lr"] == 0.05
    assert main(["info", str(out)]) == 0
    assert "steps        5" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["run", "--lr", "-1"], "lr: the learning rate must be positive"),
    (["run", "--preset", "nope"], "unknown preset"),
    (["run", "--n", "many"], "cannot read 'many' as an integer"),
    (["info", "missing.nc"], "no such file"),
])
def test_bad_input_gives_one_clear_line(argv, message, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_info_refuses_a_file_that_is_not_a_run(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.nc"
    bad.write_bytes(b"not netcdf at all")
    assert main(["info", str(bad)]) == 2
    assert "is not an ntk-eos run file" in capsys.readouterr().err


def test_divergence_is_a_result_with_its_own_exit_code(capsys) -> None:
    code = main(["run", "--n", "32", "--width", "16", "--lr", "20", "--steps", "50", "--k", "2",
                 "--quiet"])
    assert code == 3
    assert "diverged at step" in capsys.readouterr().out
