"""``panel serve --setup`` script: apply the server limits once, before the first tab opens.

Run as a script (``panel serve`` executes it in the server process), it reads ``app.session.limits``
from the environment, sets the process's torch threads (new training threads start from this
value; each also sets its own) and a short GIL switch interval, imports the page's modules and
freezes the objects alive at startup out of the garbage collector's scans, and prints the
limits; a hosted server given a model or data to import (``app.session.own_inputs``) stops
before it serves a page. When ``NTK_EOS_STATS_SECONDS`` is set, it also prints a JSON line of
load figures at that interval (sessions, trainings, queue, training threads, memory) for
monitoring and the load test. Imported, it only defines the functions.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import sys
import threading
from dataclasses import replace

import torch

from app.session.limits import (
    ENV_PREFIX,
    ServerLimits,
    configure,
    live_sessions,
    pool_workers,
    slice_pool,
    training_slots,
)
from app.session.own_inputs import served
from app.session.runner import training_threads
from ntk_core.training.process_trainer import prestart, training_processes

STATS_PREFIX = "ntk-eos stats "
LIMITS_PREFIX = "ntk-eos limits: "
# The training thread needs the GIL back after every torch call (about a thousand a step); while
# the event loop runs Python it waits up to one switch interval each time, so a page tick all but
# stops training at Python's 5 ms. 1 ms is kept: with a thread busy with Python 25 % of the time
# (``benchmarks/dashboard_speed.py --gil``, nine paired runs) 0.1 ms kept training at 0.83 of its
# speed against 0.70, but one run of three showed no difference, a served page's loop now needs
# only a tenth of a core, and a shorter interval multiplies the GIL hand-offs between twenty
# sessions' event loop and the training threads.
SWITCH_INTERVAL_S = 0.001


def rss_mb() -> float:
    """Resident memory of this process in MiB (Linux /proc; the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (2**20 if sys.platform == "darwin" else 2**10)


def stats() -> dict[str, float | int]:
    """Load figures of this process (counts only: nothing about users or runs)."""
    slots = training_slots()
    return {"sessions": live_sessions().count, "trainings": slots.running,
            "queued": slots.queued, "training_threads": len(training_threads()),
            "training_processes": len(training_processes()), "pool_workers": pool_workers(),
            "rss_mb": round(rss_mb(), 1)}


def apply_limits() -> ServerLimits:
    limits = configure()
    if limits.scheduler:
        limits = _cluster_sized(limits)
    torch.set_num_threads(limits.torch_threads)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    print(LIMITS_PREFIX + json.dumps(limits.summary()), file=sys.stderr, flush=True)
    return limits


def _cluster_sized(limits: ServerLimits) -> ServerLimits:
    """Connect to the Dask scheduler now (a wrong address stops the server here, with the
    reason) and, unless ``NTK_EOS_MAX_TRAININGS`` is set, train as many runs at once as the
    cluster has worker threads."""
    pool = slice_pool()
    if os.environ.get(ENV_PREFIX + "MAX_TRAININGS", "").strip():
        return limits
    return configure(replace(limits, max_trainings=pool.workers))


def freeze_startup_objects() -> int:
    """Import the page's modules, then move every object alive so far out of the collector's
    reach; returns how many were frozen. Panel runs a full ``gc.collect()`` after each closed
    document, ``/liveness?endpoint=`` checks included, and that pass holds the GIL: with torch,
    bokeh and panel loaded it scanned some 400 000 module-level objects that never die."""
    importlib.import_module("app.dashboard")
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def start_stats_log(seconds: float) -> threading.Thread | None:
    """Print ``stats()`` every ``seconds`` from a daemon thread; None when ``seconds <= 0``."""
    if seconds <= 0:
        return None
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(seconds):
            # one write, so that other threads' log lines cannot split it
            sys.stderr.write(STATS_PREFIX + json.dumps(stats()) + "\n")
            sys.stderr.flush()

    thread = threading.Thread(target=loop, name="ntk-eos-stats", daemon=True)
    thread.start()
    return thread


if __name__ != "app.server.startup":  # executed by panel serve --setup, not imported
    served()  # a hosted server given NTK_EOS_ARCH or NTK_EOS_DATA stops here, before any page
    if apply_limits().training in ("process", "pool"):
        prestart()  # the fork server's torch import, before the first Play rather than after
    freeze_startup_objects()
    start_stats_log(float(os.environ.get("NTK_EOS_STATS_SECONDS", "0") or 0))
