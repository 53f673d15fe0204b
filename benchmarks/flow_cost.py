"""The cost of the flows beside gradient descent, in GD steps, measured side by side in one process.

For each setting: train GD alone to ``--edge-step`` (where it oscillates at 2/η), start a
central flow and a gradient flow from those weights, then time, interleaved over ``--units``
rounds: one plain GD step, one unit of central flow, one unit of gradient flow, and one full
measurement of a flow. Started at the edge, the central flow has eigenvalues in its problem,
which is where its cost is paid. From these, a full step at the edge with both flows: GD's
step, three full measurements (GD's and each flow's) and one unit of each flow, as GD steps per
second if done in turn; beside it the trainer's own rate at the edge, where with one torch
thread the flows run on worker threads beside GD's step. Also runs the setting with both flows
from initialisation for ``--steps`` and reports
GD steps per second with flows off and on (measuring every step).

    python -m benchmarks.flow_cost --settings default W1 --units 8 --threads 1
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from ntk_core import RunConfig, Trainer
from ntk_core.presets import DEFAULT_PRESET, load_preset
from ntk_core.training.flows import Flows

from .workloads import SPECS

W1_LR = 0.4  # W1 at an η whose edge (2/η = 5) it reaches within a thousand steps


def settings() -> dict[str, RunConfig]:
    return {"default": load_preset(DEFAULT_PRESET).config,
            "W1": SPECS["W1"].config.replace(lr=W1_LR)}


def timed(action) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    action()
    return time.perf_counter() - t0


def unit_costs(config: RunConfig, edge_step: int, units: int) -> dict[str, float]:
    trainer = Trainer(config.replace(measure_every=10**6, steps=edge_step + units + 10))
    for _ in range(edge_step):
        trainer.step()
    flows = Flows(config.replace(flows=("central", "stable")), trainer.model, trainer.X,
                  trainer.Y, trainer.mode)
    central, stable = flows.processes
    stable.measure()  # its sharpness sets gradient flow's substeps
    times: dict[str, list[float]] = {"gd": [], "central": [], "stable": [], "measure": [],
                                     "measure_central": []}
    critical = []
    for _ in range(units):
        times["gd"].append(timed(trainer.step))
        times["central"].append(timed(lambda: central.advance(trainer.lr)))
        times["stable"].append(timed(lambda: stable.advance(trainer.lr)))
        times["measure"].append(timed(stable.measure))
        times["measure_central"].append(timed(central.measure))
        assert central.pending is not None
        critical.append(central.pending.X.shape[0])
    gd = statistics.median(times["gd"])
    medians = {name: statistics.median(t) for name, t in times.items()}
    # GD's own measurement costs what a flow's does (the same Measurer on the same model)
    full_step = (medians["gd"] + 2 * medians["measure"] + medians["measure_central"]
                 + medians["central"] + medians["stable"])
    return {"gd_ms": 1e3 * gd, "edge_steps_per_s": 1 / full_step,
            **{name: t / gd for name, t in medians.items() if name != "gd"},
            "critical": statistics.mean(critical), "sharpness_over_edge":
            central.pending.eigenvalues[0] * trainer.lr / 2 if central.pending else float("nan")}


def edge_trainer_steps_per_second(config: RunConfig, edge_step: int, steps: int) -> float:
    """The trainer's own steps per second at the edge with both flows measured every step, the
    flows started there from GD's weights: with one torch thread they run beside GD's step on
    worker threads (``training.flows``), which the sum of unit costs does not show."""
    trainer = Trainer(config.replace(measure_every=10**6, steps=edge_step + steps + 10))
    for _ in range(edge_step):
        trainer.step()
    trainer.config = trainer.config.replace(measure_every=1)
    trainer.flows = Flows(config.replace(flows=("central", "stable")), trainer.model, trainer.X,
                          trainer.Y, trainer.mode)
    trainer.step()  # the cold first solves
    return steps / sum(timed(trainer.step) for _ in range(steps))


def steps_per_second(config: RunConfig, steps: int) -> tuple[float, float]:
    out = []
    for flows in ((), ("central", "stable")):
        trainer = Trainer(config.replace(flows=flows, steps=steps + 2))
        trainer.step()
        out.append(steps / sum(timed(trainer.step) for _ in range(steps)))
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["default", "W1"])
    parser.add_argument("--edge-step", type=int, default=1000)
    parser.add_argument("--units", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} torch "
          f"thread(s), torch {torch.__version__}")
    print("| setting | GD step | central unit | gradient-flow unit | flow measurement | "
          "critical eigenvalues | S·η/2 | steps/s at the edge, both flows (sum of units) | "
          "steps/s at the edge, both flows (trainer) | "
          "steps/s from init, no flows | steps/s from init, both flows |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.settings:
        config = settings()[name].replace(threads=args.threads)
        c = unit_costs(config, args.edge_step, args.units)
        trainer_rate = edge_trainer_steps_per_second(config, args.edge_step, args.steps)
        plain, both = steps_per_second(config, args.steps)
        print(f"| {name} | {c['gd_ms']:.1f} ms | {c['central']:.1f} | {c['stable']:.1f} | "
              f"{c['measure']:.1f} | {c['critical']:.1f} | {c['sharpness_over_edge']:.3f} | "
              f"{c['edge_steps_per_s']:.2f} | {trainer_rate:.2f} | {plain:.1f} | {both:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
