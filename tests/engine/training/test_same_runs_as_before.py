"""Seeded runs saved by the engine before its restructuring and by the engine now hold identical
NetCDF variables.

The reference runs are made here, not stored. The same seeded run differs in the 7th significant
digit between torch's AVX2 kernels and its portable ones on one CPU (float64, measured with
``ATEN_CPU_CAPABILITY``), so a file made on one machine could only be compared loosely on
another. Instead both engines run on this machine, each in a fresh process with one thread: this
checkout's, and the one of ``REFERENCE_COMMIT`` taken out of git with ``git archive``. Every
variable, coordinate and attribute must then match bit for bit, except the wall-clock timings
(``time_step``, ``time_measure``) and the ``created`` time stamp, which are the clock's.

``REFERENCE_COMMIT`` is the newest commit of the flat layout, before the engine moved into
``numerics/``, ``training/`` and ``experiments/``; merging later work of the flat layout moves it
to that work's commit, and so does a deliberate change of the numbers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

ROOT = Path(__file__).resolve().parents[3]
REFERENCE_COMMIT = "8db4452ee96f52440226498ae7fddcc384c1702a"
CLOCK_VARIABLES = ("time_step", "time_measure")
CLOCK_ATTRIBUTES = ("created",)
# What the optimisers and users' own models added since: a threshold per step (for these GD
# runs (2 + 2β)/η), two sharpness variables that GD leaves empty, the attributes naming the
# optimiser, the model, the data and the NTK's rule coverage, and the options in ``config``
# (whose defaults are the GD of before).
ADDED_VARIABLES = ("stability_threshold", "preconditioned_sharpness", "batch_sharpness")
ADDED_ATTRIBUTES = {"optimizer": "gd", "tracked_sharpness": "sharpness", "data": "digits",
                    "ignored_options": ""}
# the layers outside the exact kernel's rules: none in the MLP; the ViT's LayerNorms and its
# own position and class embeddings
OTHER_LAYERS = {"mlp-exact": "", "vit-matrix-free": "LayerNorm, ViT"}
ADDED_OPTIONS = {"optimizer": "gd", "nesterov": False, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                 "batch_size": None, "flows": []}
# An exact multi-output kernel with thinned eigenvector snapshots, and a matrix-free binary ViT
# with momentum: between them every part of a measured and an unmeasured step is exercised.
CONFIGS = {
    "mlp-exact": dict(dataset="digits", classes=[0, 1, 2, 3], n=24, arch="mlp", width=8,
                      depth=2, lr=0.5, steps=10, measure_every=3, k=5, seed=3, dtype="float64",
                      eigvec_max_snapshots=2, threads=1),
    "vit-matrix-free": dict(dataset="digits", classes=[1, 7], target="binary", n=16, arch="vit",
                            width=8, depth=1, heads=2, patch=4, lr=0.2, momentum=0.5, steps=8,
                            measure_every=2, k=3, ntk_mode="matrix_free", seed=5,
                            dtype="float64", threads=1),
}
# Only the public surface, which both engines share.
SCRIPT = """\
import json, sys
import ntk_core
from ntk_core import RunConfig, run, save_run
print(ntk_core.__file__)
for name, values in json.loads(sys.argv[2]).items():
    save_run(run(RunConfig.from_dict(values)), f"{sys.argv[1]}/{name}.nc")
"""


def _reference_tree(tmp_path: Path) -> Path:
    """The engine of ``REFERENCE_COMMIT``, extracted into ``tmp_path``."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    found = subprocess.run(["git", "cat-file", "-e", f"{REFERENCE_COMMIT}^{{commit}}"],
                           cwd=ROOT, capture_output=True)
    if found.returncode != 0:
        pytest.skip(f"commit {REFERENCE_COMMIT[:10]} is not in this clone (a shallow clone?)")
    archive = tmp_path / "reference.tar"
    subprocess.run(["git", "archive", "-o", str(archive), REFERENCE_COMMIT, "ntk_core"],
                   cwd=ROOT, check=True)
    tree = tmp_path / "reference"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


def _save_runs(tree: Path, out: Path) -> None:
    """Run ``CONFIGS`` with the engine in ``tree`` and save them in ``out``."""
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(out), json.dumps(CONFIGS)],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    engine = Path(done.stdout.splitlines()[0]).resolve()
    assert engine.is_relative_to(tree.resolve()), f"ran the engine at {engine}, not {tree}"


@pytest.fixture(scope="module")
def saved_runs(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("same-runs")
    before, now = tmp / "before", tmp / "now"
    _save_runs(_reference_tree(tmp), before)
    _save_runs(ROOT, now)
    return before, now


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_seeded_run_saves_the_same_variables_as_before(saved_runs, name) -> None:
    before_dir, now_dir = saved_runs
    before = xr.load_dataset(before_dir / f"{name}.nc", engine="h5netcdf", decode_times=False)
    now = xr.load_dataset(now_dir / f"{name}.nc", engine="h5netcdf", decode_times=False)
    assert now.attrs["status"] == "completed" and now.sizes["step"] == CONFIGS[name]["steps"]
    assert sorted(now.variables) == sorted([*before.variables, *ADDED_VARIABLES])
    momentum = CONFIGS[name].get("momentum", 0.0)
    np.testing.assert_allclose(now.stability_threshold.values,
                               (2 + 2 * momentum) / before.lr.values, rtol=1e-15)
    assert np.isnan(now.preconditioned_sharpness.values).all()
    assert np.isnan(now.batch_sharpness.values).all()
    assert dict(now.sizes) == dict(before.sizes)
    for var in before.variables:
        if var in CLOCK_VARIABLES:
            continue
        assert now[var].dims == before[var].dims, var
        assert now[var].dtype == before[var].dtype, var
        np.testing.assert_array_equal(now[var].values, before[var].values, err_msg=var)
        assert now[var].attrs == before[var].attrs, var
    config_now = json.loads(now.attrs["config"])
    assert {k: config_now.pop(k) for k in ADDED_OPTIONS} == ADDED_OPTIONS
    assert config_now == json.loads(before.attrs["config"])
    assert {k: now.attrs[k] for k in ADDED_ATTRIBUTES} == ADDED_ATTRIBUTES
    assert now.attrs["model"] == CONFIGS[name]["arch"]
    assert now.attrs["ntk_other_layers"] == OTHER_LAYERS[name]
    coverage = float(now.attrs["ntk_rule_coverage"])
    assert coverage == 1.0 if not OTHER_LAYERS[name] else 0 < coverage < 1
    compared_apart = (*CLOCK_ATTRIBUTES, "config", "model", "ntk_other_layers",
                      "ntk_rule_coverage", *ADDED_ATTRIBUTES)
    clock_free = {k: v for k, v in before.attrs.items() if k not in compared_apart}
    assert {k: v for k, v in now.attrs.items() if k not in compared_apart} == clock_free
