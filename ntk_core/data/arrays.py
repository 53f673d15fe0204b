"""A user's own arrays as a ``Dataset``: ``from_arrays(X, Y)`` and ``read_npz(path)``.

``X`` is (n, ...) in whatever layout the user's model takes. ``Y`` is one of:

* (n, C) float targets, taken as given (C outputs);
* (n,) float targets, one output;
* (n,) integer class labels, one-hot over the distinct labels (two labels with
  ``target="binary"``: one output, +1 for the smaller label and −1 for the other).

The rows are reordered, stably, by class (the argmax of an (n, C) target, the sign of a
one-output one) so that the kernel's rows are grouped by class, as for the built-in datasets.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import Dataset
from .common import DataError, make_targets

MAX_ROWS = 100_000


def _as_array(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name}: cannot read it as an array ({exc})") from exc
    if array.dtype.kind not in "biuf":
        raise DataError(f"{name}: expected numbers, got an array of dtype {array.dtype}")
    return array


def from_arrays(X: Any, Y: Any, dtype: torch.dtype = torch.float32, target: str = "onehot",
                name: str = "arrays") -> Dataset:
    """The ``Dataset`` of ``X`` and ``Y`` (see the module docstring); DataError for shapes or
    values it cannot take."""
    x, y = _as_array(X, "X"), _as_array(Y, "y")
    if x.ndim < 2:
        raise DataError(f"X: expected (n, features...) with one row per example, got shape "
                        f"{x.shape}")
    n = x.shape[0]
    if not 2 <= n <= MAX_ROWS:
        raise DataError(f"X: needs between 2 and {MAX_ROWS} examples, got {n}")
    if y.ndim not in (1, 2) or y.shape[0] != n:
        raise DataError(f"y: expected (n,) or (n, C) with n = {n} rows like X, got shape {y.shape}")
    if not np.isfinite(x).all():
        raise DataError("X: holds NaN or infinite values")
    if not np.isfinite(y).all():
        raise DataError("y: holds NaN or infinite values")
    if y.ndim == 1 and y.dtype.kind in "biu":
        classes, labels = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise DataError(f"y: class labels need at least two classes, got only {classes}")
        targets = make_targets(labels, len(classes), target if len(classes) == 2 else "onehot")
        names = [str(c) for c in classes]
    else:
        targets = y.astype(np.float64).reshape(n, -1)
        if targets.shape[1] == 1:
            labels = (targets[:, 0] < 0).astype(np.int64)  # +1 first, as binary targets are
            names = ["+", "−"]
        else:
            labels = targets.argmax(1)
            names = [str(c) for c in range(targets.shape[1])]
    order = np.argsort(labels, kind="stable")
    return Dataset(X=torch.as_tensor(np.ascontiguousarray(x[order]), dtype=dtype),
                   Y=torch.as_tensor(targets[order], dtype=dtype),
                   labels=torch.as_tensor(labels[order], dtype=torch.int64),
                   class_names=names, name=name, layout="user")


def read_npz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Arrays ``X`` and ``y`` from a NumPy ``.npz`` file, never unpickling objects."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("X", "y") if key not in archive.files]
            if missing:
                raise DataError(f"{path}: no array named {' or '.join(missing)} (it holds "
                                f"{', '.join(archive.files) or 'nothing'}); save with "
                                f"np.savez(path, X=..., y=...)")
            return archive["X"], archive["y"]
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    except (OSError, ValueError) as exc:  # not a zip, or an object array that needs pickle
        raise DataError(f"{path}: not a readable .npz of numeric arrays ({exc})") from exc
