"""Every Python snippet of the README runs as written.

The snippets are read from README.md itself, so an edit that breaks one fails here. Each known
snippet then has its results checked: the library snippet's kernel, spectrum and sharpness
against dense references, the notebook snippets' dashboards built (and closed) without a server.
A Python snippet this file does not know fails too, so that a new one gets a test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")  # the library snippet plots; no display here

README = Path(__file__).resolve().parents[1] / "README.md"
pytestmark = pytest.mark.timeout(300)


def python_snippets() -> dict[str, str]:
    """The README's ```python blocks, keyed by the heading they sit under."""
    snippets: dict[str, str] = {}
    heading = "top"
    fence: str | None = None  # the language of the code block we are in
    body: list[str] = []
    for line in README.read_text(encoding="utf-8").splitlines():
        if fence is None and line.startswith("```"):
            fence, body = line[3:].strip(), []
        elif fence is not None and line.strip() == "```":
            if fence == "python":
                key = heading if heading not in snippets else f"{heading} ({len(snippets)})"
                snippets[key] = "\n".join(body) + "\n"
            fence = None
        elif fence is not None:
            body.append(line)
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
    assert fence is None, "README.md ends inside a code block"
    return snippets


def test_the_readme_has_the_snippets_this_file_checks() -> None:
    assert set(python_snippets()) == set(CHECKS), "a README snippet without a check here"


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)  # the snippets write files where they run, as a user's would
    yield tmp_path


def run_snippet(name: str) -> dict:
    code = python_snippets()[name]
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(code, f"README.md: {name}", "exec"), namespace)
    return namespace


def check_library(ns: dict, folder: Path) -> None:
    import matplotlib.pyplot as plt

    from ntk_core import load_run

    cfg, ds, trainer = ns["cfg"], ns["ds"], ns["trainer"]
    n, C = ns["Y"].shape
    assert ns["model"] is trainer.model and (n, C) == (cfg.n, len(cfg.classes))
    assert ds.attrs["status"] == "completed" and ds.sizes["step"] == cfg.steps
    K = ns["K"].detach().double()
    assert K.shape == (n * C, n * C)
    torch.testing.assert_close(K, K.T, rtol=1e-5, atol=1e-5 * float(K.abs().max()))
    dense = torch.linalg.eigvalsh(K).flip(0)[:20]  # LAPACK on the snippet's own K
    vals, vecs = ns["vals"], ns["vecs"]
    torch.testing.assert_close(vals.double().cpu(), dense.cpu(), rtol=1e-5, atol=0.0)
    assert vecs.shape == (n * C, 20)
    # The snippet's run is long enough to show the story: at 300 steps the sharpness has
    # reached the stability threshold 2/η and hovers there
    S, threshold = ns["S"], 2 / cfg.lr
    assert 0.85 * threshold < S < 1.3 * threshold, S
    axes = plt.gca()
    assert len(axes.lines) == 2, "the snippet drew 2/η and the sharpness"
    np.testing.assert_allclose(axes.lines[0].get_ydata(), 2 / ds.lr.values)
    np.testing.assert_allclose(axes.lines[1].get_ydata(), ds.sharpness.values)
    label = axes.get_ylabel().replace("\n", " ")  # xarray wraps long labels
    assert label == f"{ds.sharpness.attrs['long_name']} [1]", "the axis says what it shows"
    saved = load_run(folder / "run.nc")
    np.testing.assert_array_equal(saved.sharpness.values, ds.sharpness.values)
    plt.close("all")


def check_notebook(ns: dict, folder: Path) -> None:
    """The notebook cell without a notebook: the dashboard is built, renders its run buttons
    into a Bokeh document, and closes without leaving its training behind."""
    import panel as pn
    from bokeh.document import Document

    from app.session.runner import training_threads

    dashboard = ns["dashboard"]
    try:
        assert dashboard.settings.preset == "catapult" and dashboard.columns == 2
        root = pn.panel(dashboard).get_root(Document())
        labels = {m.label for m in root.references() if type(m).__name__ == "Button"}
        assert {"Play", "Pause", "Step", "Reset"} <= labels
    finally:
        dashboard.close()
    for thread in training_threads():
        thread.join(30)
    assert not training_threads(), "closing the dashboard ends its training"


def check_own_model(ns: dict, folder: Path) -> None:
    """The user's module on the user's arrays: trained, measured, and said to be theirs."""
    ds = ns["ds"]
    assert ds.attrs["status"] == "completed" and ds.sizes["step"] == 100
    assert ds.attrs["model"] == "user module Residual"
    assert "LayerNorm" in ds.attrs["ntk_other_layers"] and "dataset" in ds.attrs["ignored_options"]
    assert ds.sizes["sample"] == 200 * 3 and np.isfinite(ds.sharpness.values).all()
    assert ds.loss.values[-1] < ds.loss.values[0]


def check_own_dashboard(ns: dict, folder: Path) -> None:
    """The notebook dashboard of the user's module and arrays: a step trains a copy of the
    module on them, and the header says so."""
    from app.session.runner import training_threads

    dashboard = ns["dashboard"]
    try:
        dashboard.step()
        run = dashboard.controller.run
        assert run.wait_idle(60) and len(run.buffer) == 1
        assert run.trainer.model is not ns["model"] and dashboard.columns == 2
        attrs = run.buffer.attrs
        assert attrs["model"] == "user module Sequential"
        assert attrs["data"] == "arrays (user arrays: X (200, 10), Y (200, 3))"
        assert dashboard._about().startswith("### Training your model `Sequential`")
    finally:
        dashboard.close()
    for thread in training_threads():
        thread.join(30)
    assert not training_threads(), "closing the dashboard ends its training"


CHECKS: dict[str, Callable[[dict, Path], None]] = {
    "In Jupyter": check_notebook,
    "Library": check_library,
    "Your own model and data": check_own_model,
    "Your own model and data in the dashboard": check_own_dashboard,
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_readme_snippet_runs(name: str, in_tmp: Path) -> None:
    import panel as pn

    inline = pn.config.inline  # the notebook snippet sets it for the whole process
    try:
        CHECKS[name](run_snippet(name), in_tmp)
    finally:
        pn.config.inline = inline
