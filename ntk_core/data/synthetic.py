"""Seeded synthetic classification data with controllable size, dimension and class count.

``gaussian`` (dataset "synthetic"): a Gaussian mixture -- C class means drawn uniformly on the
sphere of radius ``radius`` in R^d, isotropic noise of std ``noise`` around each.

``teacher`` (dataset "teacher"): the student-teacher setting of statistical learning theory
(e.g. Gardner & Derrida 1989; Saad & Solla 1995): standard Gaussian inputs labelled by the
argmax of the C outputs of a random two-layer tanh network. The teacher's output biases are
calibrated on a separate reference sample so that every class gets about 1/C of the mass;
inputs are drawn until every class has the requested number of examples.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .common import DataError

RADIUS = 3.0  # distance of the class means from the origin, in units of the noise std
NOISE = 1.0
TEACHER_HIDDEN = 64
_CALIBRATION_SAMPLES = 20_000
_MAX_TEACHER_ROUNDS = 16


def class_names(num_classes: int) -> list[str]:
    return [str(i) for i in range(num_classes)]


def _freeze(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.setflags(write=False)


@lru_cache(maxsize=16)
def _gaussian_cached(
    per_class: int, dim: int, num_classes: int, seed: int, radius: float, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    # Separate streams, so the class means do not depend on how many examples are drawn.
    mean_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    means = mean_rng.standard_normal((num_classes, dim))
    means *= radius / np.linalg.norm(means, axis=1, keepdims=True)
    x = means[:, None, :] + noise * noise_rng.standard_normal((num_classes, per_class, dim))
    x = x.reshape(num_classes * per_class, dim)
    y = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    _freeze(x, y)
    return x, y


def gaussian(
    per_class: int,
    dim: int,
    num_classes: int,
    seed: int = 0,
    radius: float = RADIUS,
    noise: float = NOISE,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A Gaussian mixture with ``per_class`` examples per class: x (C*per_class, dim)."""
    if per_class < 1 or dim < 1 or num_classes < 2:
        raise DataError(
            f"synthetic: need per_class >= 1, dim >= 1 and >= 2 classes, got "
            f"{per_class}, {dim}, {num_classes}"
        )
    x, y = _gaussian_cached(int(per_class), int(dim), int(num_classes), int(seed),
                            float(radius), float(noise))
    return x.copy(), y.copy(), class_names(num_classes)


def _teacher_logits(x: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    return np.tanh(x @ w1.T + b1) @ w2.T


def _calibrate_bias(
    logits: np.ndarray, steps: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
    """Output scale and bias that give each class about 1/C of the reference sample."""
    num_classes = logits.shape[1]
    # standardising the outputs first removes the bias towards high-variance outputs
    scale = logits.std(axis=0) + 1e-12
    z = logits / scale
    bias = -z.mean(axis=0)
    best, best_bias = -1.0, bias.copy()
    for step in range(steps):
        frac = np.bincount((z + bias).argmax(1), minlength=num_classes) / len(z)
        if frac.min() > best:
            best, best_bias = frac.min(), bias.copy()
        if frac.min() > 0.8 / num_classes:
            break
        # decaying steps: a constant step oscillates when the inputs are low-dimensional
        bias = bias + 0.5 * num_classes * (1.0 / num_classes - frac) / np.sqrt(1 + step / 20)
    return best_bias, scale


@lru_cache(maxsize=16)
def _teacher_cached(
    per_class: int, dim: int, num_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    net_rng, calib_rng, data_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    w1 = net_rng.standard_normal((TEACHER_HIDDEN, dim)) / np.sqrt(dim)
    b1 = 0.1 * net_rng.standard_normal(TEACHER_HIDDEN)
    w2 = net_rng.standard_normal((num_classes, TEACHER_HIDDEN)) / np.sqrt(TEACHER_HIDDEN)
    reference = calib_rng.standard_normal((_CALIBRATION_SAMPLES, dim))
    bias, scale = _calibrate_bias(_teacher_logits(reference, w1, b1, w2))

    # Oversample (4x) so that a balanced subset exists; draw more rounds if a class is short.
    chunk = 4 * per_class * num_classes
    xs, ys = [], []
    counts = np.zeros(num_classes, dtype=np.int64)
    for _ in range(_MAX_TEACHER_ROUNDS):
        x = data_rng.standard_normal((chunk, dim))
        y = (_teacher_logits(x, w1, b1, w2) / scale + bias).argmax(1).astype(np.int64)
        xs.append(x)
        ys.append(y)
        counts += np.bincount(y, minlength=num_classes)
        if counts.min() >= per_class:
            break
    else:
        raise DataError(
            f"teacher: class counts {counts.tolist()} after {_MAX_TEACHER_ROUNDS * chunk} draws "
            f"cannot give {per_class} examples per class; try another seed"
        )
    x_all, y_all = np.concatenate(xs), np.concatenate(ys)
    _freeze(x_all, y_all)
    return x_all, y_all


def teacher(
    per_class: int, dim: int, num_classes: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Inputs x ~ N(0, I_dim) labelled by a random tanh teacher; every class has at least
    ``per_class`` examples (about ``4 * per_class * num_classes`` examples in all)."""
    if per_class < 1 or dim < 1 or num_classes < 2:
        raise DataError(
            f"teacher: need per_class >= 1, dim >= 1 and >= 2 classes, got "
            f"{per_class}, {dim}, {num_classes}"
        )
    x, y = _teacher_cached(int(per_class), int(dim), int(num_classes), int(seed))
    return x.copy(), y.copy(), class_names(num_classes)
