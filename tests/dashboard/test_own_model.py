"""Your own model and data in the dashboard: a notebook's nn.Module and (X, y) arrays train in
place of the preset's, each Reset from the weights as given; a local server's --arch and --data
reach the page through its environment; a hosted server imports nothing, whatever the link."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from bokeh.document import Document
from panel.io.location import Location
from support import Residual, fake_server, steps_done
from torch import nn

from app.cli import main as cli_main
from app.dashboard import Dashboard
from app.session.limits import ServerLimits
from app.session.own_inputs import OwnInputs, served
from app.session.runner import RunController, training_threads
from app.session.settings import RunSettings
from ntk_core.config import ConfigError
from ntk_core.data.common import DataError
from ntk_core.training.trainer import Trainer

pytestmark = pytest.mark.timeout(120)

# a module that says when it is imported: the page must never get that far
PROBE = ("from pathlib import Path\n"
         "Path(__file__).with_name('imported.txt').write_text('imported')\n"
         "import torch\n"
         "def build(shape, outputs):\n"
         "    return torch.nn.Linear(shape[0], outputs)\n")


def arrays(n: int = 24, d: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)  # three classes


def end(dash: Dashboard) -> None:
    """Close ``dash`` and wait for its training thread."""
    run = dash.controller.run
    dash.close()
    if run is not None:
        run.thread.join(30)
        assert run.thread not in training_threads()


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``probe_models`` importable from ``tmp_path``; yields the file its import writes."""
    (tmp_path / "probe_models.py").write_text(PROBE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path / "imported.txt"
    sys.modules.pop("probe_models", None)


@pytest.fixture
def own() -> Iterator[Dashboard]:
    torch.manual_seed(3)
    board = Dashboard(settings=RunSettings(k=3, steps=100), model=Residual(5, 16, 3),
                      data=arrays())
    yield board
    end(board)


def test_a_dashboard_trains_your_module_on_your_arrays(own: Dashboard) -> None:
    steps_done(own, 2)
    trainer = own.controller.run.trainer
    assert isinstance(trainer, Trainer)  # a notebook's module cannot travel to a child process
    attrs = trainer.buffer.attrs
    assert attrs["model"] == "user module Residual"
    assert attrs["data"] == "arrays (user arrays: X (24, 5), Y (24, 3))"
    assert {"dataset", "n", "arch", "width"} <= set(attrs["ignored_options"].split(", "))
    assert len(trainer.buffer) == 2 and np.isfinite(trainer.buffer.rows(0)["loss"]).all()
    assert "LayerNorm" in attrs["ntk_other_layers"]


def test_the_page_says_it_trains_your_model_and_greys_out_what_it_replaces(own: Dashboard
                                                                          ) -> None:
    about = own._about()
    assert about.startswith("### Training your model `Residual` on your data `arrays` "
                            "(24 examples, X (24, 5))")
    widgets = {w.name: w for w in own._sidebar().select(lambda o: hasattr(o, "disabled"))
               if getattr(w, "name", None)}
    for label in ("Dataset", "Training examples n", "Architecture", "Width", "Depth"):
        assert widgets[label].disabled, label
    for label in ("Targets", "Steps", "Seed"):
        assert not widgets[label].disabled, label
    plain = Dashboard(settings=RunSettings(n=16, classes="0,1", width=8, k=2))
    try:
        assert not plain._about().startswith("### Training your")
        assert "Not used" not in str([w.object for w in plain._sidebar().select(
            lambda o: isinstance(getattr(o, "object", None), str))])
    finally:
        end(plain)


def test_reset_starts_again_from_the_weights_as_given(own: Dashboard) -> None:
    given = own.own.model
    before = [p.detach().clone() for p in given.parameters()]
    steps_done(own, 3)
    first = own.controller.run.trainer.buffer.rows(0)["loss"]
    assert first[2] < first[0]  # it trained
    assert own.controller.run.trainer.model is not given
    own.reset()
    steps_done(own, 1)
    again = own.controller.run.trainer.buffer.rows(0)["loss"]
    assert again[0] == first[0], "Reset starts from the same initial weights"
    own.settings.lr = own.settings.lr / 2  # continues the run from its weights: no reset
    own.settings.seed = 1  # resets
    steps_done(own, 1)
    assert own.controller.run.trainer.buffer.rows(0)["loss"][0] == first[0]
    assert all(torch.equal(a, b) for a, b in zip(before, given.parameters(), strict=True))


def test_the_module_is_copied_when_given() -> None:
    model = nn.Linear(5, 3)
    own = OwnInputs.of(model, arrays())
    with torch.no_grad():
        model.weight.zero_()  # the notebook changes its module after
    _, built = own.build(RunSettings().to_config())
    assert not torch.equal(built.weight, model.weight)
    assert built is not own.model


def test_bad_inputs_are_refused_when_given() -> None:
    X, y = arrays()
    with pytest.raises(DataError, match="rows like X"):
        OwnInputs.of(data=(X, y[:-1]))
    with pytest.raises(ConfigError, match="expected \\(X, y\\)"):
        OwnInputs.of(data=(X, y, y))
    with pytest.raises(ConfigError, match="nn.Module or a 'package.module:factory'"):
        OwnInputs.of(model=lambda x: x)
    with pytest.raises(ConfigError, match="not a 'package.module:factory' name"):
        OwnInputs.of(model="mlp")
    assert OwnInputs.of() is None


def test_a_factory_is_built_per_run_with_the_runs_data(probe: Path) -> None:
    own = OwnInputs.of("probe_models:build")
    assert not probe.exists(), "naming a factory imports nothing yet"
    data, model = own.build(RunSettings(n=16, classes="0,1,2").to_config())
    assert probe.exists() and isinstance(model, nn.Linear)
    assert model.out_features == 3 and data.n == 16  # the preset's data, its shapes
    assert own.ignored >= {"arch", "width"} and "dataset" not in own.ignored


# ---- a served page -----------------------------------------------------------------------------
def test_a_local_server_passes_arch_and_data_to_every_page(probe: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import app.main as main

    X, y = arrays()
    np.savez(tmp_path / "mine.npz", X=X, y=y)
    called: list[dict] = []
    monkeypatch.setattr("app.server.launch.subprocess.Popen", fake_server(called))
    assert cli_main(["serve", "--arch", "probe_models:build", "--data",
                     str(tmp_path / "mine.npz")]) == 0
    env = called[0]["env"]
    assert env["NTK_EOS_ARCH"] == "probe_models:build"
    assert env["NTK_EOS_DATA"] == str((tmp_path / "mine.npz").resolve())
    for name in ("NTK_EOS_ARCH", "NTK_EOS_DATA"):
        monkeypatch.setenv(name, env[name])
    dash = main.create_app()  # outside a server: the Dashboard itself
    try:
        assert isinstance(dash, Dashboard) and dash.own.factory == "probe_models:build"
        assert dash.own.data_name == "mine.npz" and dash._about().startswith(
            "### Training your model `probe_models:build` on your data `mine.npz`")
    finally:
        end(dash)


def test_serve_hosted_with_arch_or_data_is_refused_before_importing(
        probe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    called: list[dict] = []
    monkeypatch.setattr("app.server.launch.subprocess.Popen", fake_server(called))
    for argv in (["--hosted", "--arch", "probe_models:build"],
                 ["--hosted", "--data", str(tmp_path / "x.npz")],
                 ["--hosted", "--arch", "probe_models:build", "--data", "x.npz"]):
        assert cli_main(["serve", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "hosted mode never imports code" in err[0], err
    monkeypatch.setenv("NTK_EOS_MODE", "hosted")  # hosted by the environment, as in Docker
    assert cli_main(["serve", "--arch", "probe_models:build"]) == 2
    assert "hosted mode never imports code" in capsys.readouterr().err
    assert not called and not probe.exists() and "probe_models" not in sys.modules
    # a hosted server's environment given a model anyway: the page and the runs refuse it
    with pytest.raises(ConfigError, match="NTK_EOS_ARCH: hosted mode never imports code"):
        served({"NTK_EOS_MODE": "hosted", "NTK_EOS_ARCH": "probe_models:build"})
    assert served({"NTK_EOS_ARCH": "probe_models:build"}) == ("probe_models:build", None)
    with pytest.raises(ConfigError, match="hosted mode never imports code"):
        RunController(limits=ServerLimits.defaults("hosted", cores=2),
                      own=OwnInputs.of(nn.Linear(5, 3)))
    assert not probe.exists()


def test_a_link_cannot_name_a_module_to_import(probe: Path) -> None:
    dash = Dashboard(settings=RunSettings(n=16, classes="0,1", width=8, k=2))
    try:
        for query in ("?arch=os:system", "?arch=probe_models:build",
                      "?preset=catapult&arch=probe_models%3Abuild"):
            dash.apply_url(Location(search=query))
            assert dash.settings.arch in ("mlp", "cnn", "vit", "linear2"), query
            assert "arch=" in dash._url_message, query
            assert dash.settings.validate() == ""
        dash.reset()
        assert dash.controller.run.config.arch == dash.settings.arch
        assert dash.own is None and dash.controller.own is None
        for value in ("os:system", "probe_models:build"):
            with pytest.raises(ValueError):
                dash.settings.arch = value
            dash.settings.propose("arch", value)
            assert dash.settings.arch != value and dash.settings.validate()
    finally:
        end(dash)
    assert not probe.exists() and "probe_models" not in sys.modules


def test_the_own_model_page_renders(own: Dashboard) -> None:
    import panel as pn

    root = pn.panel(own).get_root(Document())
    labels = {m.label for m in root.references() if type(m).__name__ == "Button"}
    assert {"Play", "Pause", "Step", "Reset"} <= labels
