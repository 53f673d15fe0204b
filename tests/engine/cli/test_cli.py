"""The ntk-eos command line, as a user runs it (the console script, with the dashboard's
``serve``), and the presets it reads."""

from __future__ import annotations

import pytest

from app.cli import main
from ntk_core import load_run
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
    (["info", "."], "not a file"),
    (["run", "--dataset", "cifar10", "--data_dir", "/nonexistent", "--steps", "2"],
     "is not a cifar-10-batches-py folder"),
    (["run", "--classes", "0,99", "--steps", "2"], "class id(s) [99] do not exist"),
    (["serve", "--port", "-1"], "port: must be in 0..65535"),
    (["bench", "--steps", "0"], "--steps: at least 1"),
    (["bench", "--lead-in", "-1"], "--lead-in: at least 0"),
    (["sweep", "--grid", "nosuch=1,2"], "unknown option 'nosuch'"),
    (["sweep", "--grid", "lr=0.1,0.1"], "lists a value twice"),
    (["sweep", "--grid", "lr=0.1,0.2", "--workers", "0"], "--workers: at least 1"),
])
def test_bad_input_gives_one_clear_line(argv, message, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_the_summary_reads_measured_steps_without_spreading_the_snapshots(tmp_path,
                                                                          capsys) -> None:
    """``ds.where(measured)`` broadcast the eigenvector snapshots over every step: 42.9 GiB for
    the default preset's 1500 steps. The summary selects the measured steps instead."""
    import tracemalloc

    from ntk_core.cli.summary import summarize

    out = tmp_path / "run.nc"
    assert main(["run", "--n", "48", "--classes", "0,1,2,3", "--width", "16", "--k", "4",
                 "--steps", "200", "--measure_every", "2", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    ds = load_run(out).load()
    spread = ds.sizes["snapshot"] * ds.sizes["eig"] * ds.sizes["sample"] * ds.sizes["step"] * 4
    assert spread > 40e6  # what the broadcast would allocate
    tracemalloc.start()
    text = summarize(ds)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < spread / 10
    last = ds.isel(step=int(ds.measured.values.nonzero()[0][-1]))
    assert f"KTA          {float(last.kta):.4f}" in text


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
