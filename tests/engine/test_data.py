"""Tests for ntk_core.data: shapes, ordering, targets, standardisation, seeding, the MNIST-1D
generator, the CIFAR-10 reader (on tiny fake folders) and the error messages."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ntk_core.config import RunConfig
from ntk_core.data import DataError, Dataset, available_datasets, load_dataset
from ntk_core.data import cifar10 as cifar_mod
from ntk_core.data.common import balanced_subset, per_class_counts, standardize, to_layout
from ntk_core.data.mnist1d import load_mnist1d_raw, templates
from ntk_core.data.synthetic import gaussian, teacher

GENERATED = ["digits", "mnist1d", "synthetic", "teacher"]
# native shape of one example, for the default input_dim=32
NATIVE = {"digits": (1, 8, 8), "mnist1d": (1, 40), "synthetic": (32,), "teacher": (32,)}
ARCH_OF_LAYOUT = {"flat": "mlp", "image": "cnn", "sequence": "vit"}


def expected_shape(native: tuple[int, ...], layout: str, patch: int) -> tuple[int, ...]:
    if layout == "flat":
        return (int(np.prod(native)),)
    if layout == "image":
        return native if len(native) > 1 else (1, *native)
    if len(native) == 3:
        c, h, w = native
        return ((h // patch) * (w // patch), c * patch * patch)
    c, length = native if len(native) == 2 else (1, native[0])
    return (length // patch, c * patch)


def check_common(ds: Dataset, config: RunConfig, num_classes: int) -> None:
    n = config.n
    labels = ds.labels.numpy()
    assert ds.labels.dtype == torch.int64 and labels.shape == (n,)
    assert np.all(np.diff(labels) >= 0), "examples must be sorted by class"
    assert np.bincount(labels, minlength=num_classes).tolist() == per_class_counts(n, num_classes)
    assert len(ds.class_names) == num_classes
    assert ds.n == n and ds.layout == config.layout and ds.name == config.dataset
    assert torch.isfinite(ds.X).all()
    if config.target == "binary":
        assert ds.Y.shape == (n, 1) and ds.num_outputs == 1
        assert torch.equal(ds.Y[:, 0], torch.where(ds.labels == 0, 1.0, -1.0).to(ds.Y.dtype))
    else:
        assert ds.Y.shape == (n, num_classes) and ds.num_outputs == num_classes
        assert set(ds.Y.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(ds.Y.argmax(1), ds.labels)
        assert torch.equal(ds.Y.sum(1), torch.ones(n, dtype=ds.Y.dtype))


# ---- every dataset, every layout ------------------------------------------------------------


def test_available_datasets() -> None:
    assert set(available_datasets()) == {"digits", "mnist1d", "synthetic", "teacher", "cifar10"}


@pytest.mark.parametrize("layout", ["flat", "image", "sequence"])
@pytest.mark.parametrize("dataset", GENERATED)
@pytest.mark.parametrize("target", ["onehot", "binary"])
def test_layouts_shapes_and_targets(dataset: str, layout: str, target: str) -> None:
    config = RunConfig(dataset=dataset, arch=ARCH_OF_LAYOUT[layout], n=103, target=target)
    ds = load_dataset(config)
    assert ds.X.dtype == torch.float32 and ds.Y.dtype == torch.float32
    assert ds.X.device.type == "cpu"
    assert ds.input_shape == expected_shape(NATIVE[dataset], layout, config.patch)
    check_common(ds, config, config.num_classes)


def test_float64_and_explicit_classes() -> None:
    config = RunConfig(dataset="digits", n=60, classes=(3, 8), target="binary", dtype="float64")
    ds = load_dataset(config)
    assert ds.X.dtype == torch.float64 and ds.Y.dtype == torch.float64
    assert ds.class_names == ["3", "8"]
    # first chosen class (3) -> +1 and comes first
    assert ds.Y[:30, 0].eq(1).all() and ds.Y[30:, 0].eq(-1).all()
    check_common(ds, config, 2)


def test_onehot_class_subset_maps_positions() -> None:
    config = RunConfig(dataset="mnist1d", n=90, classes=(7, 2, 5))
    ds = load_dataset(config)
    assert ds.class_names == ["7", "2", "5"]
    assert ds.Y.shape == (90, 3)
    check_common(ds, config, 3)


def test_subset_matches_source_digits() -> None:
    from sklearn.datasets import load_digits

    config = RunConfig(dataset="digits", n=40, classes=(4, 9), target="binary",
                       standardize=False, arch="cnn")
    ds = load_dataset(config)
    bunch = load_digits()
    rows = {bytes(img.astype(np.float64).tobytes()): int(t)
            for img, t in zip(bunch.images, bunch.target, strict=True)}
    for x, label in zip(ds.X.double().numpy(), ds.labels.tolist(), strict=True):
        assert rows[x[0].tobytes()] == (4, 9)[label]
    assert float(ds.X.max()) <= 16 and float(ds.X.min()) >= 0


# ---- standardisation ------------------------------------------------------------------------


def test_standardize_flat_per_feature() -> None:
    ds = load_dataset(RunConfig(dataset="synthetic", n=200, input_dim=16, dtype="float64"))
    x = ds.X.numpy()
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(x.std(0), 1, atol=1e-10)


def test_standardize_image_per_channel() -> None:
    ds = load_dataset(RunConfig(dataset="digits", n=300, arch="cnn", dtype="float64"))
    x = ds.X.numpy()
    assert abs(x.mean()) < 1e-10 and abs(x.std() - 1) < 1e-10
    # per channel, not per pixel: border pixels that are always 0 stay constant
    assert x[:, 0, 0, 0].std() < 1e-10
    raw = load_dataset(RunConfig(dataset="digits", n=300, arch="cnn", standardize=False))
    assert float(raw.X.mean()) > 1  # raw values are 0..16


def test_standardize_guards_constant_features() -> None:
    x = np.zeros((5, 3))
    x[:, 1] = np.arange(5)
    out = standardize(x)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[:, 0], 0)
    np.testing.assert_allclose(out[:, 1].std(), 1)


# ---- token layouts --------------------------------------------------------------------------


def test_image_patches_row_major() -> None:
    x = np.arange(2 * 3 * 4 * 6, dtype=float).reshape(2, 3, 4, 6)
    tokens = to_layout(x, "sequence", patch=2)
    assert tokens.shape == (2, 6, 12)
    k = 0
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(
                tokens[:, k], x[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(2, -1))
            k += 1


def test_sequence_chunks_1d_and_flat() -> None:
    x = np.arange(2 * 2 * 6, dtype=float).reshape(2, 2, 6)
    tokens = to_layout(x, "sequence", patch=3)
    assert tokens.shape == (2, 2, 6)
    np.testing.assert_array_equal(tokens[:, 1], x[:, :, 3:6].reshape(2, -1))
    flat = np.arange(12, dtype=float).reshape(2, 6)
    np.testing.assert_array_equal(to_layout(flat, "sequence", patch=2)[1, 2], [10, 11])
    assert to_layout(flat, "image", patch=2).shape == (2, 1, 6)


# ---- seeding and caching --------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["synthetic", "teacher", "mnist1d"])
def test_seed_determinism(dataset: str) -> None:
    a = load_dataset(RunConfig(dataset=dataset, n=80, seed=1))
    b = load_dataset(RunConfig(dataset=dataset, n=80, seed=1))
    c = load_dataset(RunConfig(dataset=dataset, n=80, seed=2))
    assert torch.equal(a.X, b.X) and torch.equal(a.Y, b.Y)
    assert a.X.shape == c.X.shape and not torch.allclose(a.X, c.X)


RAW = {
    "synthetic": lambda seed: gaussian(20, 8, 4, seed=seed)[0],
    "teacher": lambda seed: teacher(20, 8, 4, seed=seed)[0],
    "mnist1d": lambda seed: load_mnist1d_raw(4000, seed=seed)[0],
}


@pytest.mark.parametrize("dataset", sorted(RAW))
def test_generator_seed_determinism(dataset: str) -> None:
    # the generated data itself, not only the subset drawn from it, follows the seed
    make = RAW[dataset]
    np.testing.assert_array_equal(make(3), make(3))
    assert not np.allclose(make(3), make(4))


def test_balanced_subset_order() -> None:
    labels = np.array([2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    index, new_labels = balanced_subset(labels, (2, 0), n=7, seed=0)
    assert new_labels.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert np.all(labels[index[:4]] == 2) and np.all(labels[index[4:]] == 0)
    # within a class, by original index
    assert np.all(np.diff(index[:4]) > 0) and np.all(np.diff(index[4:]) > 0)
    other, _ = balanced_subset(labels, (2, 0), n=7, seed=1)
    assert not np.array_equal(index, other)


def test_digits_seed_changes_subset() -> None:
    a = load_dataset(RunConfig(dataset="digits", n=50, seed=0))
    b = load_dataset(RunConfig(dataset="digits", n=50, seed=5))
    assert torch.equal(a.labels, b.labels) and not torch.equal(a.X, b.X)


def test_cache_is_not_corrupted_by_callers() -> None:
    config = RunConfig(dataset="teacher", n=40)
    first = load_dataset(config)
    reference = first.X.clone()
    first.X.mul_(0).add_(123)
    assert torch.equal(load_dataset(config).X, reference)
    x, _, _ = gaussian(5, 4, 3, seed=0)
    x[:] = 7
    assert not np.all(gaussian(5, 4, 3, seed=0)[0] == 7)


def test_synthetic_controls_and_separation() -> None:
    x, y, names = gaussian(100, 20, 3, seed=4)
    assert x.shape == (300, 20) and names == ["0", "1", "2"]
    means = np.stack([x[y == c].mean(0) for c in range(3)])
    pred = ((x[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == y).mean() > 0.9
    ds = load_dataset(RunConfig(dataset="synthetic", n=60, input_dim=12, classes=(0, 1, 2)))
    assert ds.input_shape == (12,) and ds.num_outputs == 3


def test_teacher_every_class_populated() -> None:
    for seed in range(3):
        x, y, _ = teacher(30, 8, 5, seed=seed)
        assert x.shape[1] == 8 and np.bincount(y, minlength=5).min() >= 30
    ds = load_dataset(RunConfig(dataset="teacher", n=100, classes=(1, 4), input_dim=6))
    check_common(ds, RunConfig(dataset="teacher", n=100, classes=(1, 4)), 2)


# ---- MNIST-1D -------------------------------------------------------------------------------


def test_mnist1d_templates() -> None:
    t = templates()
    assert t.shape == (10, 12)
    np.testing.assert_allclose(t[:, 0], 0)  # signals start at 0
    assert len({tuple(np.round(row, 6)) for row in t}) == 10


def test_mnist1d_raw_set_is_learnable() -> None:
    x, y, names = load_mnist1d_raw(4000, seed=0)
    assert x.shape == (4000, 1, 40) and names == [str(i) for i in range(10)]
    assert np.bincount(y).tolist() == [400] * 10
    assert abs(x.mean()) < 1e-8 and abs(x.std() - 1) < 1e-8  # reference's global scaling
    # Nearest class mean, trained on 3200 and tested on 800. Chance is 10%; this generator
    # gives 26-30% across seeds (logistic regression: 33%, the paper's figure is 32%).
    flat = x.reshape(len(x), -1)
    means = np.stack([flat[:3200][y[:3200] == c].mean(0) for c in range(10)])
    pred = ((flat[3200:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == y[3200:]).mean() > 0.2


# ---- CIFAR-10 from fake folders -------------------------------------------------------------

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_fake_cifar(root: Path, per_batch: int = 20, batches: int = 6,
                     protocol: int = pickle.HIGHEST_PROTOCOL) -> tuple[Path, np.ndarray, list]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    all_data, all_labels = [], []
    for name in cifar_mod.BATCH_FILES[:batches]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [i % 10 for i in range(per_batch)]
        with (folder / name).open("wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels,
                         b"filenames": [b"x.png"] * per_batch}, f, protocol=protocol)
        all_data.append(data)
        all_labels += labels
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in NAMES], b"num_vis": 3072}, f,
                    protocol=protocol)
    return folder, np.concatenate(all_data), all_labels


@pytest.mark.parametrize("protocol", [2, 4, pickle.HIGHEST_PROTOCOL])
def test_cifar10_via_data_dir(tmp_path: Path, protocol: int) -> None:
    folder, data, labels = write_fake_cifar(tmp_path, protocol=protocol)
    config = RunConfig(dataset="cifar10", n=30, classes=(3, 5, 9), data_dir=str(folder),
                       standardize=False, arch="cnn")
    ds = load_dataset(config)
    assert ds.input_shape == (3, 32, 32) and ds.class_names == ["cat", "dog", "truck"]
    check_common(ds, config, 3)
    rows = {data[i].tobytes(): labels[i] for i in range(len(labels))}
    for x, label in zip(ds.X.numpy().astype(np.uint8), ds.labels.tolist(), strict=True):
        assert rows[x.reshape(-1).tobytes()] == (3, 5, 9)[label]


def test_cifar10_via_env_var_and_layouts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fake_cifar(tmp_path)
    monkeypatch.setenv(cifar_mod.ENV_VAR, str(tmp_path))  # the parent folder also works
    flat = load_dataset(RunConfig(dataset="cifar10", n=40, dtype="float64"))
    assert flat.input_shape == (3072,) and flat.num_outputs == 10
    check_common(flat, RunConfig(dataset="cifar10", n=40), 10)
    image = load_dataset(RunConfig(dataset="cifar10", n=40, arch="cnn", dtype="float64"))
    x = image.X.numpy()
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0, atol=1e-10)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1, atol=1e-10)
    seq = load_dataset(RunConfig(dataset="cifar10", n=40, arch="vit", dtype="float64"))
    assert seq.input_shape == (64, 48)
    torch.testing.assert_close(seq.X[:, 0], image.X[:, :, :4, :4].reshape(40, -1))


def test_cifar10_reads_only_needed_batches(tmp_path: Path) -> None:
    folder, _, _ = write_fake_cifar(tmp_path, per_batch=20, batches=1)  # 2 per class
    ds = load_dataset(RunConfig(dataset="cifar10", n=20, data_dir=str(folder)))
    assert ds.n == 20
    with pytest.raises(DataError, match="data_batch_2"):
        load_dataset(RunConfig(dataset="cifar10", n=30, data_dir=str(folder)))


def test_cifar10_too_few_examples(tmp_path: Path) -> None:
    folder, _, _ = write_fake_cifar(tmp_path, per_batch=10)  # 6 per class in all
    with pytest.raises(DataError, match="only 6 examples"):
        load_dataset(RunConfig(dataset="cifar10", n=14, classes=(0, 1), data_dir=str(folder)))


def test_cifar10_missing_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cifar_mod.ENV_VAR, raising=False)
    with pytest.raises(DataError, match=cifar_mod.ENV_VAR):
        load_dataset(RunConfig(dataset="cifar10", n=20))
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=cifar_mod.ENV_VAR) as info:
        load_dataset(RunConfig(dataset="cifar10", n=20, data_dir=str(missing)))
    assert str(missing) in str(info.value)
    monkeypatch.setenv(cifar_mod.ENV_VAR, str(missing))
    with pytest.raises(DataError, match="nowhere"):
        load_dataset(RunConfig(dataset="cifar10", n=20))


class _Exploit:
    def __init__(self, func: object, args: tuple) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


@pytest.mark.parametrize("func", ["system", "mkdir"])
def test_cifar10_refuses_foreign_globals(tmp_path: Path, func: str) -> None:
    folder, _, _ = write_fake_cifar(tmp_path, batches=1)
    marker = tmp_path / "pwned"
    payload = _Exploit(os.system, (f"mkdir {marker}",)) if func == "system" else \
        _Exploit(os.mkdir, (str(marker),))
    with (folder / "data_batch_1").open("wb") as f:
        pickle.dump({b"data": payload, b"labels": [0]}, f)
    with pytest.raises(DataError, match="refusing"):
        load_dataset(RunConfig(dataset="cifar10", n=20, data_dir=str(folder)))
    assert not marker.exists()


# ---- impossible requests ------------------------------------------------------------------


def test_too_many_examples_per_class() -> None:
    # the rarest digit has 174 examples; 1790 over 10 classes needs 179 each
    with pytest.raises(DataError, match=r"only 1\d\d examples"):
        load_dataset(RunConfig(dataset="digits", n=1790))


def test_unknown_class_id() -> None:
    with pytest.raises(DataError, match="do not exist"):
        load_dataset(RunConfig(dataset="digits", n=20, classes=(0, 10)))
    with pytest.raises(DataError, match="do not exist"):
        load_dataset(RunConfig(dataset="mnist1d", n=20, classes=(2, 11)))


@pytest.mark.parametrize(("dataset", "patch"), [("digits", 3), ("mnist1d", 3), ("synthetic", 5)])
def test_patch_must_divide(dataset: str, patch: int) -> None:
    with pytest.raises(DataError, match="does not divide"):
        load_dataset(RunConfig(dataset=dataset, n=20, arch="vit", patch=patch, width=16,
                               heads=4))
