"""The allocator setting of training processes: freed memory is reused, not faulted in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys, torch
from ntk_core.training.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
def cycle():  # a step's worth of 2 MB arrays, all freed at its end
    arrays = [torch.ones(1 << 18, dtype=torch.float64) for _ in range(10)]
    del arrays
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    cycle()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused_without_page_faults() -> None:
    applied, kept = _faults("keep")
    assert applied == "True"
    # Ten cycles touch 51 200 pages of 4 kB; reused memory faults in less than one cycle's
    # worth (512-2561 in repeated runs). The default allocator, which trims the heap's top and
    # maps large arrays afresh, fails the same check: 6 083-50 861 faults in seven runs.
    one_cycle = 10 * (2 << 20) // 4096
    assert kept < one_cycle, kept
