"""Training speed of the default preset while a reader pulls new rows at the page's rate.

The dashboard's periodic callback reads ``buffer.rows(start)`` (curves) and the latest
eigenvectors / kernel (matrices) while the training thread steps. This script does the same
at 4 Hz in the main thread and reports GD steps/s with a full measurement every step, and the
reader's achieved update rate::

    python benchmarks/dashboard_speed.py --seconds 30
"""

from __future__ import annotations

import argparse
import json
import threading
import time

from ntk_core import Trainer
from ntk_core.presets import DEFAULT_PRESET, load_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--hz", type=float, default=4.0, help="reader polling rate")
    parser.add_argument("--preset", default=DEFAULT_PRESET)
    args = parser.parse_args()

    trainer = Trainer(load_preset(args.preset).config.replace(steps=1_000_000))
    trainer.step()  # the cold first solve is not what a running page sees
    done = threading.Event()

    def train() -> None:
        while not done.is_set() and not trainer.finished:
            trainer.step()

    thread = threading.Thread(target=train, daemon=True)
    start_steps, t0 = len(trainer.buffer), time.perf_counter()
    thread.start()
    polls, rows_seen, next_poll = 0, start_steps, t0
    while time.perf_counter() - t0 < args.seconds:
        next_poll += 1.0 / args.hz
        rows = trainer.buffer.rows(rows_seen)
        rows_seen += len(rows["step"])
        trainer.buffer.latest_eigenvectors()
        trainer.buffer.latest_kernel()
        polls += 1
        time.sleep(max(0.0, next_poll - time.perf_counter()))
    elapsed = time.perf_counter() - t0
    done.set()
    thread.join()
    result = {"preset": args.preset, "seconds": elapsed,
              "steps_per_s": (len(trainer.buffer) - start_steps) / elapsed,
              "updates_per_s": polls / elapsed, "status": trainer.status}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
