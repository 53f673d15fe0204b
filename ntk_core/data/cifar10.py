"""CIFAR-10 (Krizhevsky 2009, "Learning Multiple Layers of Features from Tiny Images") from a
local ``cifar-10-batches-py`` folder: data_batch_1..5, test_batch and batches.meta.

The folder comes from ``config.data_dir`` or the environment variable ``NTK_EOS_CIFAR10_DIR``;
either may also name the folder that contains ``cifar-10-batches-py``. Nothing is downloaded.

The batch files are Python pickles, and unpickling can run arbitrary code, so they are read
with a restricted unpickler that only resolves the few globals a pickled dict of NumPy arrays
needs. Batches are read lazily, training batches first, only as many as the request needs.
"""

from __future__ import annotations

import codecs
import importlib
import os
import pickle
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .common import DataError

ENV_VAR = "NTK_EOS_CIFAR10_DIR"
FOLDER_NAME = "cifar-10-batches-py"
BATCH_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
META_FILE = "batches.meta"


def _numpy_global(module: str, name: str) -> Any:
    # NumPy 2 moved numpy.core to numpy._core; pickles written by either must resolve.
    try:
        core = importlib.import_module("numpy._core")
    except ImportError:  # NumPy < 2
        core = importlib.import_module("numpy.core")
    return getattr(getattr(core, module), name)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # stands in for _codecs.encode, which protocol-2 pickles use to rebuild bytes
    if encoding not in ("latin1", "latin-1"):
        raise DataError(f"refusing _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


@lru_cache(maxsize=1)
def _allowed_globals() -> dict[tuple[str, str], Any]:
    reconstruct = _numpy_global("multiarray", "_reconstruct")
    frombuffer = _numpy_global("numeric", "_frombuffer")
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy.core.numeric", "_frombuffer"): frombuffer,  # protocol 5
        ("numpy._core.numeric", "_frombuffer"): frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("builtins", "bytearray"): bytearray,
        ("__builtin__", "bytearray"): bytearray,
    }


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, bytes and NumPy arrays -- nothing that can run code."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_globals()
        if (module, name) not in allowed:
            raise DataError(
                f"refusing to unpickle global {module}.{name}: the CIFAR-10 files should only "
                "contain NumPy arrays, lists and dicts"
            )
        return allowed[(module, name)]


def _unpickle(path: Path) -> Any:
    try:
        with path.open("rb") as handle:
            # encoding="bytes": the official files were written by Python 2
            return RestrictedUnpickler(handle, encoding="bytes").load()
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: not a readable CIFAR-10 pickle ({exc})") from exc


def _get(record: Mapping[Any, Any], key: str, path: Path) -> Any:
    for k in (key.encode(), key):
        if k in record:
            return record[k]
    raise DataError(f"{path}: missing the {key!r} entry of a CIFAR-10 batch")


def resolve_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The ``cifar-10-batches-py`` folder from ``data_dir`` or ``$NTK_EOS_CIFAR10_DIR``."""
    source = "data_dir"
    if data_dir is None:
        data_dir, source = os.environ.get(ENV_VAR), ENV_VAR
    if not data_dir:
        raise DataError(
            f"cifar10: no data folder given; set data_dir or the environment variable {ENV_VAR} "
            f"to a local {FOLDER_NAME} folder (the python version of CIFAR-10)"
        )
    root = Path(data_dir).expanduser()
    for candidate in (root, root / FOLDER_NAME):
        if (candidate / META_FILE).is_file():
            return candidate
    raise DataError(
        f"cifar10: {root} (from {source}) is not a {FOLDER_NAME} folder: {META_FILE} not found "
        f"there or in {root / FOLDER_NAME}; point data_dir or {ENV_VAR} at the extracted folder"
    )


@lru_cache(maxsize=16)
def _read_batch_cached(path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    # mtime and size are in the key so that a replaced file is read again
    p = Path(path)
    record = _unpickle(p)
    if not isinstance(record, Mapping):
        raise DataError(f"{p}: expected a dict, got {type(record).__name__}")
    data = np.asarray(_get(record, "data", p))
    labels = np.asarray(_get(record, "labels", p), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{p}: expected uint8 data of shape (N, 3072), got {data.dtype} "
                        f"{data.shape}")
    if labels.shape != (data.shape[0],):
        raise DataError(f"{p}: {len(labels)} labels for {data.shape[0]} images")
    if labels.size and labels.min() < 0:
        raise DataError(f"{p}: negative class labels")
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32))
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _read_batch(path: Path, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"cifar10: {path.name} is missing from {data_dir} (the folder given by "
                        f"data_dir or {ENV_VAR})")
    stat = path.stat()
    return _read_batch_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def read_class_names(data_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """The ten label names from batches.meta."""
    folder = resolve_dir(data_dir)
    meta = _unpickle(folder / META_FILE)
    if not isinstance(meta, Mapping):
        raise DataError(f"{folder / META_FILE}: expected a dict")
    names = _get(meta, "label_names", folder / META_FILE)
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def read_batches(
    data_dir: str | os.PathLike[str] | None = None, need: Mapping[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Native uint8 images (N, 3, 32, 32), labels and class names.

    Reads data_batch_1..5 then test_batch, stopping as soon as every class in ``need`` has at
    least ``need[class]`` examples; ``need=None`` reads everything.
    """
    folder = resolve_dir(data_dir)
    names = read_class_names(folder)
    xs, ys = [], []
    counts = np.zeros(max([len(names), *(c + 1 for c in need or {})]), dtype=np.int64)
    for fname in BATCH_FILES:
        x, y = _read_batch(folder / fname, folder)
        xs.append(x)
        ys.append(y)
        counts += np.bincount(y, minlength=len(counts))[: len(counts)]
        if need is not None and all(counts[c] >= k for c, k in need.items()):
            break
    return np.concatenate(xs), np.concatenate(ys), names


def load_cifar10_raw(
    data_dir: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All 60000 examples as float (N, 3, 32, 32) in 0..255, labels 0..9, class names."""
    x, y, names = read_batches(data_dir)
    return x.astype(np.float32), y.copy(), names
