"""Reading a run file that comes from outside (an upload, the server's run folder) in a child
process, by a strict reader that only knows the run schema.

HDF5 is C code that trusts the file it reads: a damaged file can make it loop forever (a run file
with a few changed bytes hangs in ``H5DSget_num_scales``), crash, or read data from other files
through external links, external storage or virtual datasets. So the file is read in a child
process (forked, one per file, by a long-lived reader process that imports only numpy and h5py)
with a deadline and a memory limit; a file that hangs or crashes it costs the server nothing but
a restart of that process. The reader there

* opens the bytes in memory (the file never reaches the disk) with h5py, not the netCDF layer,
  and touches only the datasets the schema names, through hard links;
* refuses external links, external storage, virtual datasets and unknown filters;
* checks dtypes and shapes, and caps every dimension and the total decompressed size, before
  reading any data;
* sends back plain numeric arrays (``.npz`` read with ``allow_pickle=False``), and the file's
  attributes and its few text labels (a run with flows names its processes) as JSON. Nothing
  from the file is ever unpickled.

``app.files.runs.read_run_bytes`` then builds the Dataset and checks its meaning (steps, indices, the
config).
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import math
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

READ_SECONDS = 30.0  # a file that takes longer is refused (and its reader killed)
MAX_ATTRIBUTES = 128
MAX_ATTR_CHARS = 65_536
MAX_ATTR_VALUES = 16
MAX_LINKS = 512
MAX_LABEL_CHARS = 64  # one text label (a process name)
FILTERS = {1: "gzip", 2: "shuffle", 3: "fletcher32", 32000: "lzf"}  # what HDF5 may decode
PHONY_DIM = b"This is a netCDF dimension but not a netCDF variable"


class RunFileError(ValueError):
    """A file that is not a readable ntk-eos run; the message says why."""


@dataclass(frozen=True)
class Schema:
    """What a run file may hold: variable -> (dims, kind 'f' or 'i'), the required variables in
    the order a message lists them, caps per dimension and on the total bytes."""

    variables: dict[str, tuple[tuple[str, ...], str]]
    required: tuple[str, ...]
    dim_caps: dict[str, int]
    max_bytes: int
    inf_ok: frozenset[str] = field(default_factory=frozenset)  # may hold ±inf (a diverged loss)
    var_attrs: dict[str, tuple[str, ...]] = field(default_factory=dict)  # attributes kept
    # optional variables left out, unread, when they hold more values than this (the viewer's
    # picture of an 11,000-row NTK is not worth a gigabyte of server memory)
    leave_out_over: dict[str, int] = field(default_factory=dict)
    # the dims a variable may have instead, told apart by their number (a run with flows
    # stacks its processes: loss is (process, step) there)
    alternatives: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # coordinates of text labels, read as short strings (at most the cap of their dimension)
    labels: tuple[str, ...] = ()

    def dims(self, name: str, ndim: int) -> tuple[str, ...] | None:
        """The dims of variable ``name`` when it has ``ndim`` of them; None when it may not."""
        for dims in (self.variables[name][0], self.alternatives.get(name)):
            if dims is not None and len(dims) == ndim:
                return dims
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"variables": self.variables, "required": self.required,
                "dim_caps": self.dim_caps, "max_bytes": self.max_bytes,
                "inf_ok": sorted(self.inf_ok), "var_attrs": self.var_attrs,
                "leave_out_over": self.leave_out_over, "alternatives": self.alternatives,
                "labels": self.labels}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schema:
        return cls({k: (tuple(dims), kind) for k, (dims, kind) in d["variables"].items()},
                   tuple(d["required"]), d["dim_caps"], d["max_bytes"], frozenset(d["inf_ok"]),
                   {k: tuple(v) for k, v in d["var_attrs"].items()},
                   {k: int(v) for k, v in d["leave_out_over"].items()},
                   {k: tuple(v) for k, v in d.get("alternatives", {}).items()},
                   tuple(d.get("labels", ())))


@dataclass
class FileContents:
    """What the reader sends back: plain arrays, the file's attributes, the kept variable
    attributes, the shapes of the variables it left out (``Schema.leave_out_over``) and the
    text labels (``Schema.labels``)."""

    arrays: dict[str, np.ndarray]
    attrs: dict[str, Any]
    var_attrs: dict[str, dict[str, Any]]
    left_out: dict[str, tuple[int, ...]]
    labels: dict[str, list[str]] = field(default_factory=dict)


def read_isolated(data: bytes, schema: Schema, timeout: float = READ_SECONDS) -> FileContents:
    """The run file ``data`` as read in a child process. Raises RunFileError with a message
    for people."""
    with _worker_lock:
        worker = _worker()
        stdin, stdout = worker.stdin, worker.stdout
        assert stdin is not None and stdout is not None  # _worker opens both as pipes
        deadline = time.monotonic() + timeout
        try:
            _write_frame(stdin, json.dumps(schema.to_dict()).encode())
            _write_frame(stdin, data)
            stdin.flush()
            head = json.loads(_read_frame(stdout, MAX_ATTR_CHARS * MAX_ATTRIBUTES, deadline))
            ok = isinstance(head, dict) and head.get("ok") is True
            blob = _read_frame(stdout, schema.max_bytes + 2**20, deadline) if ok else b""
        except TimeoutError:
            _stop_worker()
            raise RunFileError(f"reading the file took longer than {timeout:g} s") from None
        except (OSError, ValueError):  # the reader process itself died
            _stop_worker()
            raise RunFileError("the file could not be read: the reader stopped") from None
    if not ok:
        error = head.get("error") if isinstance(head, dict) else None
        raise RunFileError(str(error or "the file could not be read")[:500])
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise RunFileError(f"the reader sent damaged data ({type(exc).__name__})") from None
    attrs, var_attrs, left_out = head.get("attrs"), head.get("var_attrs"), head.get("left_out")
    labels = head.get("labels", {})
    if not all(isinstance(d, dict) for d in (attrs, var_attrs, left_out, labels)):
        raise RunFileError("the reader sent damaged data")
    check_shapes(arrays, schema)  # again, outside the child
    return FileContents(arrays, attrs, var_attrs,
                        {str(k): tuple(int(n) for n in v) for k, v in left_out.items()},
                        check_labels(labels, schema))


# ---- the reader process ------------------------------------------------------------------------
# One long-lived process (``python -m app.files.runfile``, numpy and h5py only) forks a child per
# file: a fresh, single-threaded copy for each file, without paying for the imports again.
_worker_lock = threading.Lock()
_worker_process: subprocess.Popen | None = None


def _worker() -> subprocess.Popen:
    global _worker_process
    if _worker_process is None or _worker_process.poll() is not None:
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
        _worker_process = subprocess.Popen(
            [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env=env, start_new_session=True)
    return _worker_process


@atexit.register
def _stop_worker() -> None:
    """Kill the reader and any child it has (they share a process group)."""
    global _worker_process
    process, _worker_process = _worker_process, None
    if process is None:
        return
    with contextlib.suppress(OSError):
        os.killpg(process.pid, signal.SIGKILL)
    process.kill()
    process.wait(5)
    for pipe in (process.stdin, process.stdout):
        with contextlib.suppress(OSError):
            if pipe is not None:
                pipe.close()


def _write_frame(out: Any, payload: bytes) -> None:
    out.write(struct.pack(">Q", len(payload)))
    out.write(payload)


def _read_frame(inp: Any, max_bytes: int, deadline: float | None = None) -> bytes:
    """One length-prefixed message; TimeoutError past ``deadline``, EOFError at the end."""
    size = struct.unpack(">Q", _read_exact(inp, 8, deadline))[0]
    if size > max_bytes:
        raise ValueError(f"a message of {size} bytes; at most {max_bytes} expected")
    return _read_exact(inp, size, deadline)


def _read_exact(inp: Any, size: int, deadline: float | None) -> bytes:
    fd = inp.fileno()
    chunks, left = [], size
    while left:
        if deadline is not None:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError
        chunk = os.read(fd, min(left, 2**20))
        if not chunk:
            raise EOFError("the reader closed its output")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def main() -> None:
    """The reader process: for each (schema, file) request, fork, read, reply."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            schema = Schema.from_dict(json.loads(_read_frame(stdin, 2**20)))
            data = _read_frame(stdin, 2**40)
        except EOFError:
            return
        stdout.write(_serve_forked(data, schema) if hasattr(os, "fork") else
                     _serve(data, schema))
        stdout.flush()


def _serve_forked(data: bytes, schema: Schema) -> bytes:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: read one file, write the reply, exit
        os.close(read_end)
        code = 1
        try:
            _limit_memory(len(data) + 3 * schema.max_bytes + 2**29)
            reply = _serve(data, schema)
            with os.fdopen(write_end, "wb") as out:
                out.write(reply)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as inp:
        reply = inp.read()
    _, status = os.waitpid(pid, 0)
    if status != 0:
        why = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
               else f"exit code {os.WEXITSTATUS(status)}")
        return _error_reply(f"the file could not be read: the reader crashed ({why})")
    return reply


def _serve(data: bytes, schema: Schema) -> bytes:
    """The reply frames for one file: a JSON head, then (on success) the arrays as .npz."""
    try:
        contents = read_run_file(data, schema)
        head = json.dumps({"ok": True, "attrs": contents.attrs, "var_attrs": contents.var_attrs,
                           "left_out": contents.left_out, "labels": contents.labels}).encode()
        out = io.BytesIO()
        np.savez(out, allow_pickle=False, **contents.arrays)  # numbers only, as the parent reads
    except RunFileError as exc:
        return _error_reply(str(exc))
    except MemoryError:
        return _error_reply("the file needs too much memory")
    except Exception as exc:  # whatever HDF5 raises on a damaged file
        return _error_reply(f"not a readable NetCDF-4 run file ({type(exc).__name__})")
    frames = io.BytesIO()
    _write_frame(frames, head)
    _write_frame(frames, out.getvalue())
    return frames.getvalue()


def _error_reply(message: str) -> bytes:
    frames = io.BytesIO()
    _write_frame(frames, json.dumps({"ok": False, "error": message}).encode())
    return frames.getvalue()


def _limit_memory(extra: int) -> None:
    """Cap the child's address space at what it has now plus ``extra`` bytes."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (current + extra, current + extra))
    except (ImportError, OSError, ValueError):  # not Linux: the deadline still applies
        pass


# ---- the reader (runs in the child) ------------------------------------------------------------
def read_run_file(data: bytes, schema: Schema) -> FileContents:
    """Read ``data`` strictly by ``schema``. In-process use is for tests: a damaged file can hang
    HDF5 here."""
    try:
        f = h5py.File(io.BytesIO(data), "r", locking=False)
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError, but damaged headers vary
        raise RunFileError(f"not a readable NetCDF-4 (HDF5) file ({type(exc).__name__})") from None
    with f:
        datasets = _datasets(f, schema)
        missing = [name for name in schema.required if name not in datasets]
        if missing:
            raise RunFileError("not an ntk-eos run: missing " + ", ".join(missing))
        left_out = {name: tuple(datasets.pop(name).shape)
                    for name, most in schema.leave_out_over.items()
                    if name in datasets and math.prod(datasets[name].shape) > most}
        _check_sizes(datasets, schema)
        arrays = {name: _read(name, dset, schema) for name, dset in datasets.items()}
        check_shapes(arrays, schema)
        attrs = _attributes(f.attrs)
        var_attrs = {name: _attributes(datasets[name].attrs, keep)
                     for name, keep in schema.var_attrs.items() if name in datasets}
        labels = {name: _read_labels(name, f[name], schema) for name in schema.labels
                  if name in f and not _is_phony(f[name])}
    return FileContents(arrays, attrs, var_attrs, left_out, check_labels(labels, schema))


def _datasets(f: h5py.File, schema: Schema) -> dict[str, h5py.Dataset]:
    """The schema's variables in the file: hard links to plain datasets only."""
    for count, name in enumerate(f):
        if count >= MAX_LINKS:
            raise RunFileError(f"the file holds more than {MAX_LINKS} objects")
        if not isinstance(f.get(name, getlink=True), h5py.HardLink):
            raise RunFileError(f"{_name(name)} is a link; links are not allowed in a run file")
    found = {}
    for name, (dims, _) in schema.variables.items():
        if name not in f:
            continue
        dset = f[name]
        if not isinstance(dset, h5py.Dataset):
            raise RunFileError(f"{name} is not a variable")
        if _is_phony(dset):
            continue
        _check_storage(name, dset)
        found_dims = schema.dims(name, dset.ndim)
        # the stacked dims of a run with flows need their labels (a 2-D loss is not one alone)
        unlabelled = [d for d in found_dims or () if d in schema.labels and d not in f]
        if found_dims is None or unlabelled:
            raise RunFileError(f"{name} has {dset.ndim} dimensions, expected {len(dims)} "
                               f"({', '.join(dims)})")
        found[name] = dset
    return found


def _is_phony(dset: h5py.Dataset | h5py.Group) -> bool:
    """A netCDF dimension without a coordinate variable."""
    if "NAME" not in dset.attrs:
        return False
    dtype = dset.attrs.get_id("NAME").dtype
    if h5py.check_string_dtype(dtype) is None:
        return False
    value = dset.attrs["NAME"]
    value = value.encode() if isinstance(value, str) else bytes(value)
    return value.startswith(PHONY_DIM)


def _check_storage(name: str, dset: h5py.Dataset) -> None:
    """Data stored in this file only, decoded by built-in filters only."""
    if dset.is_virtual:
        raise RunFileError(f"{name} is a virtual dataset; run files hold their own data")
    plist = dset.id.get_create_plist()
    if plist.get_external_count():
        raise RunFileError(f"{name} stores its data in another file; that is not allowed")
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        if code not in FILTERS:
            raise RunFileError(f"{name} uses HDF5 filter {code}; only "
                               f"{', '.join(FILTERS.values())} are read")
    kind = dset.dtype.kind
    if kind not in "iuf" or dset.dtype.itemsize > 8:
        raise RunFileError(f"{name} has type {dset.dtype}; a run holds numbers only")


def _check_sizes(datasets: dict[str, h5py.Dataset], schema: Schema) -> None:
    """Sizes from the shapes: consistent, within caps, and within the memory budget once read
    (before any data is read: a small compressed file can declare gigabytes)."""
    sizes: dict[str, int] = {}
    total = 0
    for name, dset in datasets.items():
        dims = schema.dims(name, dset.ndim)
        assert dims is not None  # _datasets keeps only these
        for dim, size in zip(dims, dset.shape, strict=True):
            key = "sample" if dim == "sample_col" else dim
            cap = schema.dim_caps.get(key, 0)
            if size > cap:
                raise RunFileError(f"{name}: dimension {dim} has {size} entries; the limit is "
                                   f"{cap}")
            if sizes.setdefault(key, size) != size:
                raise RunFileError(f"{name}: dimension {dim} has {size} entries, other variables "
                                   f"have {sizes[key]}")
        itemsize = 8 if schema.variables[name][1] == "i" or dset.dtype.itemsize > 4 else 4
        total += math.prod(dset.shape) * itemsize
        if total > schema.max_bytes:
            raise RunFileError(f"the run's data would take more than "
                               f"{schema.max_bytes / 2**20:.0f} MB of memory")


def _read(name: str, dset: h5py.Dataset, schema: Schema) -> np.ndarray:
    kind = schema.variables[name][1]
    values = np.asarray(dset[()])
    if kind == "i":
        if values.dtype.kind == "f":
            if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
                raise RunFileError(f"{name} must hold whole numbers")
        if values.size and (values.min() < -2**53 or values.max() > 2**53):
            raise RunFileError(f"{name} holds numbers too large for an index")
        return values.astype(np.int64)
    out = values.astype(np.float32 if values.dtype.itemsize <= 4 else np.float64)
    if name not in schema.inf_ok and np.isinf(out).any():
        raise RunFileError(f"{name} holds infinite values")
    return out


def _read_labels(name: str, dset: Any, schema: Schema) -> list[str]:
    """A coordinate of text labels: a short 1-D array of strings, stored in this file."""
    if not isinstance(dset, h5py.Dataset) or h5py.check_string_dtype(dset.dtype) is None:
        raise RunFileError(f"{name} must hold text labels")
    if dset.is_virtual or dset.id.get_create_plist().get_external_count():
        raise RunFileError(f"{name} stores its data elsewhere; that is not allowed")
    if dset.ndim != 1 or dset.shape[0] > schema.dim_caps.get(name, 0):
        raise RunFileError(f"{name} must be a list of at most {schema.dim_caps.get(name, 0)} "
                           "labels")
    return [str(v) for v in dset.asstr(errors="replace")[()]]


def check_labels(labels: dict[str, Any], schema: Schema) -> dict[str, list[str]]:
    """Text labels as the schema allows them: lists of short strings within their dim's cap."""
    out = {}
    for name, values in labels.items():
        if name not in schema.labels or not isinstance(values, list) \
                or len(values) > schema.dim_caps.get(name, 0) \
                or not all(isinstance(v, str) and len(v) <= MAX_LABEL_CHARS for v in values):
            raise RunFileError(f"{_name(name)} must be a list of short text labels")
        out[name] = values
    return out


def check_shapes(arrays: dict[str, np.ndarray], schema: Schema) -> None:
    """Every array is a known, numeric variable with the dims the schema gives it, and sizes
    agree across variables."""
    sizes: dict[str, int] = {}
    for name, values in arrays.items():
        if name not in schema.variables:
            raise RunFileError(f"unexpected variable {_name(name)}")
        kind = schema.variables[name][1]
        dims = schema.dims(name, values.ndim)
        if values.dtype.kind not in ("i" if kind == "i" else "f") or dims is None:
            raise RunFileError(f"{name} has the wrong type or shape")
        for dim, size in zip(dims, values.shape, strict=True):
            key = "sample" if dim == "sample_col" else dim
            if sizes.setdefault(key, size) != size or size > schema.dim_caps.get(key, 0):
                raise RunFileError(f"{name}: dimension {dim} does not match the others")


def _attributes(attrs: h5py.AttributeManager, keep: tuple[str, ...] | None = None
                ) -> dict[str, Any]:
    """Strings and small numeric values; netCDF's own (``_...``) and reference-typed ones are
    skipped; anything else is an error."""
    out: dict[str, Any] = {}
    for count, name in enumerate(attrs):
        if count >= MAX_ATTRIBUTES:
            raise RunFileError(f"the file has more than {MAX_ATTRIBUTES} attributes")
        if name.startswith("_") or (keep is not None and name not in keep):
            continue
        if keep is None and name in ("DIMENSION_LIST", "REFERENCE_LIST", "CLASS", "NAME"):
            continue
        aid = attrs.get_id(name)
        if h5py.check_string_dtype(aid.dtype) is not None and aid.shape in ((), (1,)):
            value = attrs[name]
            value = value[0] if isinstance(value, np.ndarray) else value
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            if len(text) > MAX_ATTR_CHARS:
                raise RunFileError(f"attribute {_name(name)} is longer than {MAX_ATTR_CHARS} "
                                   "characters")
            out[name] = text
        elif aid.dtype.kind in "iuf" and aid.dtype.itemsize <= 8 \
                and math.prod(aid.shape or ()) <= MAX_ATTR_VALUES:
            value = np.asarray(attrs[name]).ravel()
            items = [v.item() for v in value]
            out[name] = items[0] if len(items) == 1 else items
        else:
            raise RunFileError(f"attribute {_name(name)} has an unsupported type")
    return out


def _name(name: str) -> str:
    """A file-supplied name, short and printable, for a message."""
    text = "".join(c if c.isprintable() else "?" for c in str(name))
    return repr(text[:40] + ("…" if len(text) > 40 else ""))


if __name__ == "__main__":
    main()
