"""Processes that run beside gradient descent: its central flow and gradient flow.

Each starts from GD's initial weights (a copy of the model, with LayerNorms in plain operations
so third derivatives are right: ``numerics.third_order``) and advances one unit of time per GD
step, at the η of that step. On a measured step each is measured as GD is (its own
``Measurer``, with its own warm starts), and every step logs its distance to GD's weights,
‖w_p − w_gd‖/‖w_gd‖. The central flow also logs what it predicts for GD: the time-averaged
loss L + tr(Σ)/η, the variances σ_i² of GD's oscillation and tr Σ.

A process that fails or diverges ends alone, with the reason in the log's ``flow_status``
attribute, and logs NaN from then on; gradient descent goes on.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..config import RunConfig
from ..numerics.central_flow import (
    TRACKED,
    CentralFlowField,
    CentralVelocity,
    gradient_flow_substeps,
    gradient_flow_velocity,
    move,
)
from ..numerics.losses import accuracy, divergence, loss_value, residual
from ..numerics.third_order import flat, third_order_safe
from ..vocabulary import NTKMethod
from .buffer import FlowRecord
from .measurer import Measurer

CENTRAL_SUBSTEPS = 4  # Euler substeps per unit of time, as in the public code


@dataclass
class FlowProcess:
    """One flow beside GD (``name`` ``central`` or ``stable``)."""

    name: str
    model: nn.Module
    measurer: Measurer
    config: RunConfig
    X: torch.Tensor
    Y: torch.Tensor
    flow_field: CentralFlowField | None = None
    ended: str = ""  # why this process stopped, "" while it runs
    sharpness: float = math.nan  # the last measured, for gradient flow's substeps
    initial_loss: float | None = None
    start_loss: float = math.nan  # the loss where the last unit of time began
    pending: CentralVelocity | None = field(default=None, repr=False)

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def loss(self) -> torch.Tensor:
        return loss_value(self.model(self.X), self.Y, self.config.loss)

    def measure(self) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """The full measurement at this process's weights, as GD's."""
        capture = self.measurer.capture(self.model)
        try:
            f = self.model(self.X)
        finally:
            if capture is not None:
                capture.close()
        L = loss_value(f, self.Y, self.config.loss)
        params = self.params
        grads = torch.autograd.grad(L, params, create_graph=self.measurer.config.sharpness,
                                    retain_graph=True)
        r = residual(f.detach(), self.Y, self.config.loss)
        m = self.measurer.measure(self.model, self.X, f, r, grads, params, capture)
        self.sharpness = m.scalars.get("sharpness", math.nan)
        scalars = {"loss": float(L.detach()), "accuracy": accuracy(f.detach(), self.Y),
                   "measured": 1.0, **m.scalars}
        return scalars, m.spectrum

    def advance(self, lr: float) -> dict[str, float]:
        """One unit of time at η = ``lr``; returns what the flow found at its starting point."""
        params = self.params
        if self.flow_field is None:
            substeps = gradient_flow_substeps(lr, self.sharpness)
            for s in range(substeps):
                velocity, loss = gradient_flow_velocity(self.loss, params, lr)
                if s == 0:
                    self.start_loss = loss
                move(params, velocity, 1.0 / substeps)
            return {}
        found: dict[str, float] = {}
        for s in range(CENTRAL_SUBSTEPS):
            v = self.flow_field(self.loss, params, lr, 1.0 / CENTRAL_SUBSTEPS, resolve=s == 0)
            if s == 0:
                self.pending, self.start_loss = v, v.loss
                found = {"predicted_loss": v.predicted_loss(lr),
                         "sigma_sq_trace": float(np.trace(v.X)) if v.X.size else 0.0,
                         "critical_count": float(v.X.shape[0]),
                         "flow_kkt_residual": v.kkt_residual}
            move(params, v.velocity, 1.0 / CENTRAL_SUBSTEPS)
        return found


def flow_processes(config: RunConfig, model: nn.Module, X: torch.Tensor, Y: torch.Tensor,
                   mode: NTKMethod) -> list[FlowProcess]:
    """The processes ``config.flows`` names, each from a copy of ``model``'s current weights."""
    return [FlowProcess(name, third_order_safe(model), _measurer(name, config, Y, mode), config,
                        X, Y, flow_field=(CentralFlowField(seed=config.seed + 2,
                                                           samples=X.shape[0])
                                          if name == "central" else None))
            for name in config.flows]


def _measurer(name: str, config: RunConfig, Y: torch.Tensor, mode: NTKMethod) -> Measurer:
    """GD's measurement; the central flow's leaves the Hessian out, since its own eigensolve at
    the measured weights gives its sharpness, to 1e-6 (``_step_process``)."""
    return Measurer(config.replace(sharpness=False) if name == "central" else config, Y, mode)


def weight_vector(model: nn.Module) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    return flat([p.detach() for p in params], params)


def _concurrent() -> bool:
    """Whether the flows run on worker threads: with one intra-op thread they take the other
    cores; with more, the operations already use them, and more threads would oversubscribe."""
    return torch.get_num_threads() == 1 and (os.cpu_count() or 1) > 1


_POOL: ThreadPoolExecutor | None = None  # one per process, never pickled with a trainer


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ntk-eos-flow")
    return _POOL


class Flows:
    """The flows of one run, stepped by its trainer: ``start`` at θ_t, before GD moves, then
    ``finish`` for the step's rows. In between each process logs its distance to GD, is measured
    on a measured step, and advances one unit of time at that step's η; with one intra-op
    thread this runs on worker threads beside GD's own step (``_concurrent``). The processes
    share nothing but the read-only data, so the rows are the same either way."""

    def __init__(self, config: RunConfig, model: nn.Module, X: torch.Tensor, Y: torch.Tensor,
                 mode: NTKMethod) -> None:
        self.config = config
        self.processes = flow_processes(config, model, X, Y, mode)
        self._pending: list[Future[FlowRecord]] | None = None

    def __getstate__(self) -> dict[str, object]:
        if self._pending is not None:
            raise RuntimeError("flows: pickled between start and finish")
        return dict(self.__dict__)

    @property
    def status(self) -> str:
        """What ended any process, one clause each; "" while all run."""
        return "; ".join(f"{p.name}: {p.ended}" for p in self.processes if p.ended)

    def start(self, gd_model: nn.Module, measuring: bool, lr: float, step: int) -> None:
        """Begin this step for every process, from GD's weights as they are now."""
        gd = weight_vector(gd_model)
        scale = float(gd.norm()) or 1.0
        work = [(p, gd, scale, measuring, lr, step) for p in self.processes]
        if _concurrent() and len(work):
            self._pending = [_pool().submit(_step_process, *args) for args in work]
        else:
            done: list[Future[FlowRecord]] = []
            for args in work:
                future: Future[FlowRecord] = Future()
                future.set_result(_step_process(*args))
                done.append(future)
            self._pending = done

    def finish(self) -> dict[str, FlowRecord]:
        """The step's row of each process, once all are done (an error in one ends only it)."""
        pending, self._pending = self._pending, None
        if pending is None:  # nothing started, or already finished
            return {}
        return {p.name: future.result() for p, future in zip(self.processes, pending, strict=True)}


def _step_process(p: FlowProcess, gd: torch.Tensor, scale: float, measuring: bool, lr: float,
                  step: int) -> FlowRecord:
    """One process's step: its distance to GD and measurement at θ_t, then one unit of time.
    A failure or a divergence ends this process alone, with the reason in ``p.ended``."""
    row = FlowRecord({})
    if p.ended:
        return row
    try:
        row.scalars["distance_to_gd"] = float((weight_vector(p.model) - gd).norm()) / scale
        if measuring:
            scalars, row.spectrum = p.measure()
            row.scalars.update(scalars)
    except Exception as exc:
        p.ended = f"failed ({type(exc).__name__}: {exc})"
        return row
    try:
        found = p.advance(lr)
    except Exception as exc:
        p.ended = f"failed at step {step} ({type(exc).__name__}: {exc})"
        return row
    row.scalars.update(found)
    # free on every step: each flow's loss where its unit of time began, and the central
    # flow's sharpness from its own eigensolve at the weights just measured (to its
    # tolerance, 1e-6), which stands in for the measurement's
    row.scalars.setdefault("loss", p.start_loss)
    if p.pending is not None and len(p.pending.eigenvalues):
        row.scalars["sharpness"] = float(p.pending.eigenvalues[0])
        row.scalars["hessian_residual"] = p.pending.residual
    if p.pending is not None:
        sigma = np.full(TRACKED, np.nan)
        values = p.pending.sigma_sq[:TRACKED]
        sigma[:len(values)] = values
        row.sigma_sq = sigma
    if p.initial_loss is None:
        p.initial_loss = p.start_loss
    p.ended = divergence(p.start_loss, p.initial_loss, p.config.divergence_factor, step)
    return row
