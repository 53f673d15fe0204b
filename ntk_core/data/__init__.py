"""Datasets for the engine: ``load_dataset(config)`` turns a RunConfig into tensors.

Sources (one module each): scikit-learn's 8x8 ``digits``, ``mnist1d`` (Greydanus 2020, generated
offline), ``synthetic`` Gaussian mixtures, ``teacher`` (random tanh teacher network) and a local
``cifar10`` folder. Every dataset then goes through the same steps (see ``common``): class
selection, a seeded balanced subset sorted by class, optional standardisation, binary (±1) or
one-hot targets, and the layout the architecture needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import numpy as np
import torch

from ..config import DatasetName, RunConfig
from . import cifar10, digits, mnist1d, synthetic
from .common import (
    DataError,
    balanced_subset,
    check_classes,
    default_classes,
    make_targets,
    per_class_counts,
    standardize,
    to_layout,
)

__all__ = ["DataError", "Dataset", "available_datasets", "load_dataset"]


@dataclass
class Dataset:
    """A loaded, preprocessed dataset, sorted by class (all of class 0 first, ...)."""

    X: torch.Tensor  # inputs in the architecture's layout, dtype from the config
    Y: torch.Tensor  # (n, C) targets: ±1 with C = 1 (binary) or 0/1 one-hot
    labels: torch.Tensor  # (n,) int64 position of the class within class_names
    class_names: list[str]
    name: str
    layout: str  # "flat" | "image" | "sequence"

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def num_outputs(self) -> int:
        return int(self.Y.shape[1])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.X.shape[1:])


def available_datasets() -> list[str]:
    """Names accepted by ``RunConfig.dataset``."""
    return list(get_args(DatasetName))


def _native(
    config: RunConfig, classes: tuple[int, ...], counts: list[int]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Native examples, labels and class names; arrays may be read-only cache entries."""
    name = config.dataset
    per_class = max(counts)
    if name == "digits":
        check_classes(classes, digits.CLASS_NAMES, name)
        x, y = digits._digits_cached()
        return x, y, list(digits.CLASS_NAMES)
    if name == "mnist1d":
        check_classes(classes, mnist1d.CLASS_NAMES, name)
        # the default 4000 examples (400 per digit), more only if n needs them
        num = max(mnist1d.DEFAULT_NUM_SAMPLES, 10 * per_class)
        x, y = mnist1d._mnist1d_cached(num, config.seed)
        return x, y, list(mnist1d.CLASS_NAMES)
    if name in ("synthetic", "teacher"):
        # generate classes 0..max(classes); unselected ones are simply left out
        num_classes = max(max(classes) + 1, 2)
        if name == "synthetic":
            x, y = synthetic._gaussian_cached(per_class, config.input_dim, num_classes,
                                              config.seed, synthetic.RADIUS,
                                              synthetic.NOISE)
        else:
            x, y = synthetic._teacher_cached(per_class, config.input_dim, num_classes,
                                             config.seed)
        return x, y, synthetic.class_names(num_classes)
    if name == "cifar10":
        names = cifar10.read_class_names(config.data_dir)
        check_classes(classes, names, name)
        x, y, names = cifar10.read_batches(config.data_dir, dict(zip(classes, counts, strict=True)))
        return x, y, names
    raise DataError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")


def load_dataset(config: RunConfig) -> Dataset:
    """Load ``config.dataset`` as a balanced, class-sorted set of ``config.n`` examples.

    Steps: class selection (``config.classes``, else (0, 1) for binary targets or the first
    ``num_classes`` classes), a balanced subset drawn with ``config.seed``, standardisation,
    targets, layout (``config.layout`` with ``config.patch`` for tokens) and dtype. Tensors stay
    on the CPU. Raises DataError for missing files or impossible requests.
    """
    classes = config.classes or default_classes(config.target, config.num_classes)
    counts = per_class_counts(config.n, len(classes))
    x_all, y_all, names = _native(config, tuple(classes), counts)
    check_classes(classes, names, config.dataset)
    index, labels = balanced_subset(y_all, classes, config.n, config.seed, names, config.dataset)
    x = x_all[index].astype(np.float64)  # fancy indexing copies: the cache stays untouched
    if config.standardize:
        x = standardize(x)
    y = make_targets(labels, len(classes), config.target)
    x = to_layout(x, config.layout, config.patch, config.dataset)
    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    return Dataset(
        X=torch.as_tensor(np.ascontiguousarray(x), dtype=dtype),
        Y=torch.as_tensor(y, dtype=dtype),
        labels=torch.as_tensor(labels, dtype=torch.int64),
        class_names=[names[c] for c in classes],
        name=config.dataset,
        layout=config.layout,
    )

