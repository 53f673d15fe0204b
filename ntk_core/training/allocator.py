"""Keep freed memory in the process instead of handing it back to the kernel after every step.

glibc serves allocations above a threshold (128 kB at first) with fresh ``mmap`` pages and
returns the top of its heap once more than 128 kB lie free there. A training step allocates and
frees the same few hundred such arrays every step (kernel blocks, eigensolver bases of 25 000
parameters), so each step faulted in about 400 fresh pages, at several microseconds each on a
virtual machine. Raising both thresholds makes later steps reuse the memory the first one
freed: about 30 page faults a step instead. The price is that a process keeps its peak heap
until it exits, so this is for processes that train one run (the CLI's, a run's child process).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 256 << 20


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where there is no glibc
    (macOS, Windows, musl) or it refused, which leaves the allocator as it was."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
