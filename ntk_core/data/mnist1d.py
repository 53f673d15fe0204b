"""MNIST-1D, generated offline.

Greydanus, S. & Kobak, D. (2020/2024), "Scaling down deep learning with MNIST-1D",
https://github.com/greydanus/mnist1d. Each example is one of ten hand-written 1-D digit
templates (12 points) passed through the published pipeline: pad with 36..60 zeros, stretch to
72 points, random scale, circular translation, correlated noise in the empty region, white
noise, random shear and linear interpolation down to 40 points; finally the whole set is
shuffled and standardised by its global mean and std. Default arguments are the reference's
(``mnist1d/data.py::get_dataset_args``), and the random draws are made in the reference's order
with a legacy ``RandomState``, so ``load_mnist1d_raw(5000, seed=42)`` follows the reference
generator (which splits those 5000 into 4000 train / 1000 test). Nothing is downloaded.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter1d

CLASS_NAMES = [str(i) for i in range(10)]
DEFAULT_NUM_SAMPLES = 4000

# The reference's get_dataset_args(), minus bookkeeping (split, url, seed).
TEMPLATE_LEN = 12
PADDING = (36, 60)
SCALE_COEFF = 0.4
MAX_TRANSLATION = 48
CORR_NOISE_SCALE = 0.25
IID_NOISE_SCALE = 2e-2
SHEAR_SCALE = 0.75
FINAL_SEQ_LENGTH = 40

_RAW_TEMPLATES = [
    [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
    [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
    [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
    [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
    [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
    [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
    [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
    [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
]


def templates() -> np.ndarray:
    """The ten (10, 12) templates, whitened and shifted to start and end at 0, scaled by 1/6."""
    x = np.asarray(_RAW_TEMPLATES, dtype=np.float64)
    x = x - x.mean(1, keepdims=True)
    x = x / x.std(1, keepdims=True)
    x = x - x[:, :1]
    return x / 6.0


def _interpolate(x: np.ndarray, length: int) -> np.ndarray:
    # Linear resampling on [0, 1], as the reference's interp1d(kind="linear").
    return np.interp(np.linspace(0, 1, length), np.linspace(0, 1, len(x)), x)


def _transform(x: np.ndarray, rng: np.random.RandomState, eps: float = 1e-8) -> np.ndarray:
    """One noisy example from one template; random draws in the reference's order."""
    low, high = PADDING
    pad = low + int(rng.rand() * (high - low + 1))
    # eps keeps the template itself non-zero so the noise mask below only hits the padding
    new_x = np.concatenate([x + eps, np.zeros(pad)])
    new_x = _interpolate(new_x, TEMPLATE_LEN + PADDING[-1])
    new_x = new_x * (1 + SCALE_COEFF * (rng.rand() - 0.5))
    k = rng.choice(MAX_TRANSLATION)
    new_x = np.concatenate([new_x[-k:], new_x[:-k]])  # k == 0 leaves x unchanged

    mask = new_x != 0
    corr = gaussian_filter1d(CORR_NOISE_SCALE * rng.randn(*new_x.shape), 2)
    new_x = mask * new_x + (1 - mask) * corr
    new_x = new_x + IID_NOISE_SCALE * rng.randn(*new_x.shape)

    coeff = SHEAR_SCALE * (rng.rand() - 0.5)
    new_x = new_x - coeff * np.linspace(-0.5, 0.5, len(new_x))
    return _interpolate(new_x, FINAL_SEQ_LENGTH)


@lru_cache(maxsize=8)
def _mnist1d_cached(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    temps = templates()
    per_class = num_samples // len(temps)
    xs = [_transform(temps[c], rng) for c in range(len(temps)) for _ in range(per_class)]
    ys = np.repeat(np.arange(len(temps), dtype=np.int64), per_class)
    shuffle = rng.permutation(len(ys))
    x = np.stack(xs)[shuffle]
    y = ys[shuffle]
    x = (x - x.mean()) / x.std()
    x = x[:, None, :]
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def load_mnist1d_raw(
    num_samples: int = DEFAULT_NUM_SAMPLES, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``num_samples`` MNIST-1D examples (``num_samples // 10`` per digit), shape (N, 1, 40)."""
    if num_samples < 10:
        raise ValueError(f"num_samples must be at least 10, got {num_samples}")
    x, y = _mnist1d_cached(int(num_samples), int(seed))
    return x.copy(), y.copy(), list(CLASS_NAMES)
