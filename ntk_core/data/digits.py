"""The UCI optical-recognition handwritten digits (8x8 images, values 0..16), as shipped with
scikit-learn (``sklearn.datasets.load_digits``; Alpaydin & Kaynak 1998). No network needed."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

CLASS_NAMES = [str(i) for i in range(10)]


@lru_cache(maxsize=1)
def _digits_cached() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # deferred: sklearn import is slow

    bunch = load_digits()
    x = np.asarray(bunch.images, dtype=np.float64)[:, None, :, :]
    y = np.asarray(bunch.target, dtype=np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def load_digits_raw() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All 1797 digits: ``x`` of shape (1797, 1, 8, 8) in 0..16, labels 0..9, class names."""
    x, y = _digits_cached()
    return x.copy(), y.copy(), list(CLASS_NAMES)
