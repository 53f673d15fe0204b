"""The user's own model and data: modules the engine has never seen (a residual block with a
LayerNorm, a GRU) against float64 references built with plain autograd, one output at a time;
arrays of every accepted target shape; and every bad input refused with its reason."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import Residual
from torch import nn
from torch.func import functional_call

from ntk_core import (
    ConfigError,
    RunConfig,
    Trainer,
    empirical_ntk,
    hessian_sharpness,
    ntk_eigenpairs,
    run,
)
from ntk_core.data.arrays import from_arrays, read_npz
from ntk_core.data.common import DataError
from ntk_core.models.factory import model_from_factory


class Recurrent(nn.Module):
    """A GRU over the sequence, then a wide read-out: the exact kernel's per-sample Jacobians
    cannot go through the GRU, and the cost model still prefers them (the fallback's case)."""

    def __init__(self, d: int, width: int, outputs: int, head: int = 256) -> None:
        super().__init__()
        self.rnn = nn.GRU(d, width, batch_first=True)
        self.a, self.b = nn.Linear(width, head), nn.Linear(head, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.b(torch.tanh(self.a(out[:, -1])))


def jacobian(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """(n·C, p) sample-major, one autograd backward per output entry."""
    f = model(X)
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(f.shape[0]):
        for c in range(f.shape[1]):
            g = torch.autograd.grad(f[i, c], params, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1)
                                   for x, p in zip(g, params, strict=True)]))
    return torch.stack(rows)


def hessian(model: nn.Module, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for k, p in model.named_parameters() if p.requires_grad]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])

    def loss(theta: torch.Tensor) -> torch.Tensor:
        params, i = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            params[name] = theta[i:i + shape.numel()].view(shape)
            i += shape.numel()
        return 0.5 * ((functional_call(model, params, (X,)) - Y) ** 2).sum() / X.shape[0]

    return torch.autograd.functional.hessian(loss, flat)


def cases() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    return {
        "residual+layernorm": (Residual(5, 12, 3).double(),
                               torch.randn(10, 5, generator=g, dtype=torch.float64)),
        "gru": (Recurrent(3, 4, 3, head=16).double(),
                torch.randn(10, 4, 3, generator=g, dtype=torch.float64)),
    }


@pytest.mark.parametrize("name", ["residual+layernorm", "gru"])
def test_unknown_layers_match_float64_references(name: str) -> None:
    model, X = cases()[name]
    J = jacobian(model, X)
    K = J @ J.T
    torch.testing.assert_close(empirical_ntk(model, X), K, rtol=1e-9, atol=1e-9)
    values, vectors = ntk_eigenpairs(model, X, 4, tol=1e-10)
    ref_values, ref_vectors = torch.linalg.eigh(K)
    torch.testing.assert_close(values, ref_values.flip(0)[:4], rtol=1e-8, atol=1e-9)
    overlap = (vectors.T @ ref_vectors.flip(1)[:, :4]).abs().diagonal()
    assert (overlap > 1 - 1e-6).all(), overlap
    Y = torch.randn(X.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = float(torch.linalg.eigvalsh(hessian(model, X, Y))[-1])
    assert hessian_sharpness(model, X, Y, tol=1e-10) == pytest.approx(expected, rel=1e-7)


@pytest.mark.parametrize("name, mode", [("residual+layernorm", "exact"),
                                        ("residual+layernorm", "matrix_free"), ("gru", "auto")])
def test_a_training_run_of_a_user_model_measures_what_the_references_say(name, mode) -> None:
    model, X = cases()[name]
    labels = np.arange(X.shape[0]) % 3
    config = RunConfig(steps=2, k=4, lr=0.05, dtype="float64", eig_tol=1e-10, ntk_mode=mode)
    trainer = Trainer(config, model=model, data=(X, labels))
    Xs, Ys = trainer.X, trainer.Y  # sorted by class
    K = jacobian(trainer.model, Xs)
    K = K @ K.T
    sharpness = float(torch.linalg.eigvalsh(hessian(trainer.model, Xs, Ys))[-1])
    record = trainer.step()
    np.testing.assert_allclose(record.spectrum["eigenvalues"],
                               torch.linalg.eigvalsh(K).flip(0)[:4].numpy(), rtol=1e-7)
    assert record.scalars["sharpness"] == pytest.approx(sharpness, rel=1e-6)
    attrs = trainer.buffer.attrs
    assert attrs["model"] == f"user module {type(model).__name__}"
    assert "dataset" in attrs["ignored_options"] and "width" in attrs["ignored_options"]
    other = "LayerNorm" if name.startswith("residual") else "GRU"
    assert other in attrs["ntk_other_layers"]
    if name == "gru":  # the exact kernel was chosen, failed on the GRU, and the log says so
        assert attrs["cost_choice"] == "exact" and attrs["ntk_mode"] == "matrix_free"
        assert "GRU" in attrs["ntk_other_layers"] and "matrix-free" in attrs["ntk_fallback"]
    else:
        assert attrs["ntk_mode"] == mode


@pytest.mark.parametrize("y, outputs", [
    (np.arange(12) % 3, 3),  # class labels: one-hot
    ((np.arange(12) % 2) * 2.0 - 1, 1),  # ±1 floats: one output
    (np.eye(3)[np.arange(12) % 3] * 2.0, 3),  # (n, C) targets as given
])
def test_targets_as_n_or_n_by_c(y, outputs) -> None:
    X = np.random.default_rng(0).normal(size=(12, 4))
    data = from_arrays(X, y, dtype=torch.float64)
    assert data.Y.shape == (12, outputs) and data.n == 12
    assert (np.diff(data.labels.numpy()) >= 0).all()  # grouped by class
    ds = run(RunConfig(steps=3, k=3, width=8), data=(X, y))
    assert ds.attrs["status"] == "completed" and ds.attrs["model"] == "mlp"
    assert "dataset" in ds.attrs["ignored_options"] and "width" not in ds.attrs["ignored_options"]


def test_two_labels_with_binary_targets_make_one_output() -> None:
    data = from_arrays(np.ones((6, 2)) * np.arange(6)[:, None], np.array([3, 5, 3, 5, 3, 5]),
                       target="binary")
    assert data.Y.shape == (6, 1) and sorted(data.Y[:, 0].tolist()) == [-1, -1, -1, 1, 1, 1]


@pytest.mark.parametrize("X, y, message", [
    (np.ones((5, 3)), np.zeros(4), "n = 5 rows like X"),
    (np.ones(5), np.zeros(5), "one row per example"),
    (np.ones((5, 3)), np.full(5, np.nan), "NaN"),
    (np.ones((5, 3)), np.zeros(5, dtype=int), "at least two classes"),
    (np.array([["a", "b"]] * 3), np.arange(3), "expected numbers"),
])
def test_bad_arrays_are_refused(X, y, message) -> None:
    with pytest.raises(DataError, match=message):
        from_arrays(X, y)


def test_a_model_that_does_not_fit_the_data_is_refused() -> None:
    X, y = np.ones((6, 4)), np.arange(6) % 3
    with pytest.raises(ConfigError, match=r"must be \(2, 3\)"):
        Trainer(RunConfig(), model=nn.Linear(4, 2), data=(X, y))
    with pytest.raises(ConfigError, match="fails on a batch"):
        Trainer(RunConfig(), model=nn.Linear(5, 3), data=(X, y))
    frozen = nn.Linear(4, 3).requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        Trainer(RunConfig(), model=frozen, data=(X, y))


def test_npz_files_and_model_factories(tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "good.npz", X=rng.normal(size=(8, 3)), y=np.arange(8) % 2)
    np.savez(tmp_path / "nox.npz", Z=np.ones((8, 3)), y=np.arange(8))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    X, y = read_npz(tmp_path / "good.npz")
    assert X.shape == (8, 3) and y.shape == (8,)
    with pytest.raises(DataError, match="no array named X"):
        read_npz(tmp_path / "nox.npz")
    with pytest.raises(DataError, match="no such file"):
        read_npz(tmp_path / "missing.npz")
    with pytest.raises(DataError, match="not a readable .npz"):
        read_npz(tmp_path / "objects.npy")
    (tmp_path / "my_models.py").write_text(
        "import torch\n"
        "def wide(shape, outputs):\n    return torch.nn.Linear(shape[0], outputs)\n"
        "def broken(shape, outputs):\n    raise RuntimeError('needs a GPU')\n"
        "def not_a_module(shape, outputs):\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert isinstance(model_from_factory("my_models:wide", (3,), 2), nn.Linear)
    for name, message in [("my_models:broken", "raised RuntimeError: needs a GPU"),
                          ("my_models:not_a_module", "not an nn.Module"),
                          ("my_models:nothing", "no callable 'nothing'"),
                          ("no_such_module:f", "cannot import 'no_such_module'"),
                          ("os.system", "not a built-in architecture")]:
        with pytest.raises(ConfigError, match=message):
            model_from_factory(name, (3,), 2)


def test_the_command_line_takes_a_factory_and_an_npz(tmp_path, monkeypatch, capsys) -> None:
    from ntk_core.cli.main import main

    rng = np.random.default_rng(1)
    np.savez(tmp_path / "data.npz", X=rng.normal(size=(24, 5)), y=np.arange(24) % 3)
    np.savez(tmp_path / "short.npz", X=rng.normal(size=(24, 5)), y=np.arange(20) % 3)
    (tmp_path / "cli_models.py").write_text(
        "import torch\n"
        "def two_layer(shape, outputs):\n"
        "    return torch.nn.Sequential(torch.nn.Linear(shape[0], 16), torch.nn.Tanh(),\n"
        "                               torch.nn.LayerNorm(16), torch.nn.Linear(16, outputs))\n"
        "def broken(shape, outputs):\n    raise ValueError('bad width')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run.nc"
    assert main(["run", "--data", str(tmp_path / "data.npz"), "--arch", "cli_models:two_layer",
                 "--steps", "4", "--k", "3", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "user module Sequential on data.npz (user arrays: X (24, 5), Y (24, 3))" in printed.out
    for argv, message in [(["--arch", "cli_models:broken"], "raised ValueError: bad width"),
                          (["--data", str(tmp_path / "short.npz")], "n = 24 rows like X"),
                          (["--data", str(tmp_path / "none.npz")], "no such file")]:
        assert main(["run", *argv, "--steps", "2", "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err


def test_a_factory_in_the_working_folder_is_found(tmp_path, monkeypatch) -> None:
    """As with `python -m`: the ntk-eos script's own folder is on sys.path, the user's is not."""
    (tmp_path / "models_here.py").write_text(
        "import torch\ndef head(shape, outputs):\n    return torch.nn.Linear(shape[0], outputs)\n")
    monkeypatch.chdir(tmp_path)
    import sys

    assert str(tmp_path) not in sys.path
    assert isinstance(model_from_factory("models_here:head", (4,), 2), nn.Linear)
    assert str(tmp_path) not in sys.path, "the working folder is not left on the path"
