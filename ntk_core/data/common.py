"""Dataset-independent steps of the data pipeline, applied by ``load_dataset`` in this order:

class selection -> balanced subset (sorted by class) -> standardisation -> targets -> layout.

Every step works on NumPy arrays in the dataset's native shape: ``(N, d)`` for flat data,
``(N, c, L)`` for 1-D signals and ``(N, c, h, w)`` for images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class DataError(ValueError):
    """A dataset request that cannot be served: missing files, impossible subsets, bad shapes."""


def default_classes(target: str, num_classes: int) -> tuple[int, ...]:
    """Binary targets use classes (0, 1); one-hot targets the first ``num_classes`` classes."""
    return (0, 1) if target == "binary" else tuple(range(num_classes))


def check_classes(classes: Sequence[int], class_names: Sequence[str], dataset: str) -> None:
    """Raise DataError unless every requested class id exists in the dataset."""
    missing = [c for c in classes if not 0 <= c < len(class_names)]
    if missing:
        raise DataError(
            f"{dataset}: class id(s) {missing} do not exist; "
            f"valid ids are 0..{len(class_names) - 1}"
        )


def per_class_counts(n: int, num_classes: int) -> list[int]:
    """n // C examples per class; the remainder goes to the first classes."""
    base, extra = divmod(n, num_classes)
    return [base + (1 if i < extra else 0) for i in range(num_classes)]


def balanced_subset(
    labels: np.ndarray,
    classes: Sequence[int],
    n: int,
    seed: int,
    class_names: Sequence[str] | None = None,
    dataset: str = "dataset",
) -> tuple[np.ndarray, np.ndarray]:
    """Pick a balanced random subset of ``n`` examples from ``classes``.

    Returns ``(index, new_labels)``: indices into the native arrays, sorted by class (in the
    order of ``classes``) and within a class by original index, and the position of each
    example's class within ``classes``. Downstream heatmaps rely on this block ordering.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    picks, new_labels = [], []
    counts = per_class_counts(n, len(classes))
    for pos, (cls, count) in enumerate(zip(classes, counts, strict=True)):
        pool = np.flatnonzero(labels == cls)
        if len(pool) < count:
            name = f" ({class_names[cls]!r})" if class_names is not None else ""
            raise DataError(
                f"{dataset}: class {cls}{name} has only {len(pool)} examples, but n={n} over "
                f"{len(classes)} classes needs {count}; lower n or choose other classes"
            )
        picks.append(np.sort(rng.choice(pool, size=count, replace=False)))
        new_labels.append(np.full(count, pos, dtype=np.int64))
    return np.concatenate(picks), np.concatenate(new_labels)


def standardize(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit std: per feature for flat ``(n, d)`` data, per channel otherwise.

    Features or channels with zero spread are only centred (dividing by 0 would give NaN).
    """
    x = np.asarray(x, dtype=np.float64)
    axes = (0,) if x.ndim == 2 else (0, *range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    std = x.std(axis=axes, keepdims=True)
    std = np.where(std > 1e-12, std, 1.0)
    return (x - mean) / std


def make_targets(labels: np.ndarray, num_classes: int, target: str) -> np.ndarray:
    """Binary: one column, +1 for the first chosen class and -1 for the second.
    One-hot: ``num_classes`` columns of 0/1."""
    labels = np.asarray(labels, dtype=np.int64)
    if target == "binary":
        if num_classes != 2:
            raise DataError(f"binary targets need exactly two classes, got {num_classes}")
        return np.where(labels == 0, 1.0, -1.0)[:, None]
    if target == "onehot":
        return np.eye(num_classes)[labels]
    raise DataError(f"unknown target kind {target!r}; expected binary or onehot")


def to_layout(x: np.ndarray, layout: str, patch: int, dataset: str = "dataset") -> np.ndarray:
    """Reshape native data for an architecture.

    ``flat``: ``(n, features)``. ``image``: images stay ``(n, c, h, w)``, 1-D signals stay
    ``(n, c, L)`` and flat data becomes ``(n, 1, d)``. ``sequence``: non-overlapping tokens of
    side ``patch`` -- ``(n, T, c*p*p)`` in row-major patch order for images, ``(n, T, c*p)``
    chunks along the last axis for 1-D or flat data.
    """
    n = x.shape[0]
    if layout == "flat":
        return x.reshape(n, -1)
    if layout == "image":
        return x[:, None, :] if x.ndim == 2 else x
    if layout != "sequence":
        raise DataError(f"unknown layout {layout!r}; expected flat, image or sequence")
    p = patch
    if x.ndim == 4:
        _, c, h, w = x.shape
        if h % p or w % p:
            raise DataError(
                f"{dataset}: patch={p} does not divide the {h}x{w} images; choose a divisor"
            )
        tokens = x.reshape(n, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5)
        return tokens.reshape(n, (h // p) * (w // p), c * p * p)
    if x.ndim == 2:
        x = x[:, None, :]
    if x.ndim != 3:
        raise DataError(f"{dataset}: cannot cut native shape {x.shape[1:]} into tokens")
    _, c, length = x.shape
    if length % p:
        raise DataError(
            f"{dataset}: patch={p} does not divide the sequence length {length}; choose a divisor"
        )
    return x.reshape(n, c, length // p, p).transpose(0, 2, 1, 3).reshape(n, length // p, c * p)
