"""Training one step at a time, with a measurement every ``measure_every``.

Each step does a single full-batch forward pass: it yields the loss, the residual, the
per-layer signals for the exact NTK and the gradient graph for Hessian-vector products. The
measurement is taken at θ_t, then the update rule (``optimizers``) takes θ_t to θ_{t+1}: with
the full-batch gradient, or for ``sgd`` with the gradient of the step's mini-batch. Step t's
record describes θ_t, and its ``stability_threshold`` is the one of the rule that step uses.

Stopping: the step budget (``completed``), the target loss of the matched-loss protocol
(``reached_target``), or divergence (``diverged``: a non-finite loss, or a loss above
``divergence_factor`` times the first one). Every step before the stop is kept.
"""

from __future__ import annotations

import json
import math
import platform
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..config import DATA_OPTIONS, MODEL_OPTIONS, ConfigError, RunConfig
from ..data import Dataset, load_dataset
from ..data.arrays import from_arrays
from ..models import build_model
from ..numerics.losses import accuracy, divergence, gradient_norm, loss_value, residual
from ..numerics.ntk import LayerCapture
from ..numerics.stability import tracked_sharpness
from ..version import __version__
from ..vocabulary import RunStatus
from .buffer import RunBuffer, StepRecord
from .flows import Flows
from .measurer import Measurement, Measurer, kernel_rows, resolve_ntk_mode
from .optimizers import BatchOrder, UpdateRule
from .protocol import LoggedRun

KERNEL_KEEP_MAX_ROWS = 4096  # keep the explicit K in the log up to this size


def versions() -> dict[str, str]:
    return {"ntk_eos": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "xarray": xr.__version__, "python": platform.python_version()}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name} requested but no CUDA device is available")
    return torch.device(name)


def checked_lr(lr: float) -> float:
    """``lr`` as a float; ValueError unless it is a positive finite number."""
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr: the learning rate must be a positive number, got {lr!r}")
    return float(lr)


class Trainer(LoggedRun):
    """Trains ``config`` step by step in this process and logs every step into ``self.buffer``
    (a ``SteppableRun``).

    ``step()`` advances one step and returns its record; ``run()`` loops until a stop;
    ``stop()`` (thread-safe) ends a running loop after the current step. ``dataset`` is the
    xarray snapshot of the log so far; ``data`` is the training set.

    Your own model and data: ``model`` is any ``nn.Module`` mapping a batch of X to (batch, C)
    outputs; ``data`` is a ``Dataset`` or a pair ``(X, Y)`` of arrays or tensors, Y of shape
    (n,) or (n, C) (``data.arrays.from_arrays``). The config's data fields (with ``model``,
    its architecture fields too) are then not used, and the log's ``ignored_options``
    attribute lists them. The model is trained in place, in the config's dtype and device.
    """

    def __init__(self, config: RunConfig, data: Dataset | tuple[Any, Any] | None = None,
                 model: nn.Module | None = None) -> None:
        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = resolve_device(config.device)
        dtype = torch.float64 if config.dtype == "float64" else torch.float32
        if isinstance(data, tuple):
            data = from_arrays(*data, dtype=dtype, target=config.target)
        self.data = data or load_dataset(config)
        self.X = self.data.X.to(self.device)
        self.Y = self.data.Y.to(self.device, self.data.X.dtype)
        self.user_parts = {"data": data is not None and data.layout == "user",
                           "model": model is not None}
        if model is None:
            model = build_model(config, tuple(self.X.shape[1:]), self.Y.shape[1])
        else:
            model = checked_model(model.to(self.device, dtype), self.X, self.Y.shape[1])
        self.model = model.to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.mode, self.cost_estimate = resolve_ntk_mode(config, self.model, self.X,
                                                         self.Y.shape[1])
        self.measurer = Measurer(config, self.Y, self.mode)
        # the flows start from the initial weights, before any step
        self.flows = (Flows(config, self.model, self.X, self.Y, self.mode) if config.flows
                      else None)
        self.lr = config.lr
        self.rule = UpdateRule.from_config(config)
        self.batches = (BatchOrder(self.data.n, config.batch_size, config.seed, self.device)
                        if config.optimizer == "sgd" and config.batch_size is not None else None)
        self._stop_event = threading.Event()
        self.step_index = 0
        self.initial_loss: float | None = None
        # False: records carry no kernel copy; ``latest_kernel`` still points at the last
        # measured step's (a view of the measurement's workspace, valid until the next step)
        # for a reader that copies it out on demand, as ``ProcessTrainer``'s child does
        self.copy_kernels = True
        self.latest_kernel: tuple[int, torch.Tensor, int] | None = None
        self.buffer = RunBuffer(self.measurer.k, self._row_data(), self._attrs(),
                                eigvec_every=config.eigvec_every,
                                max_snapshots=config.eigvec_max_snapshots,
                                capacity=min(config.steps, 4096))

    # ---- setup ---------------------------------------------------------------------------
    def _row_data(self) -> dict[str, np.ndarray]:
        n, C = self.Y.shape
        m = kernel_rows(n, C, self.config.kernel)
        per_output = m == n * C and C > 1
        sample_index = np.repeat(np.arange(n), C) if per_output else np.arange(n)
        labels = self.data.labels.cpu().numpy()[sample_index]
        target = self.measurer.targets.sum(1).cpu().numpy() if per_output or C == 1 else labels
        return {"label": labels.astype(np.int64), "target": np.asarray(target, np.float64),
                "sample_index": sample_index.astype(np.int64),
                "output_index": (np.tile(np.arange(C), n) if per_output
                                 else np.zeros(n, np.int64)).astype(np.int64)}

    def _attrs(self) -> dict[str, object]:
        cfg = self.config
        n_params = sum(p.numel() for p in self.params)
        return {
            "title": f"ntk-eos run: {cfg.arch} on {cfg.dataset}, η = {cfg.lr:g}",
            "Conventions": "CF-1.8",
            "config": cfg.to_json(),
            "lr": cfg.lr,
            "model": (f"user module {type(self.model).__name__}" if self.user_parts["model"]
                      else cfg.arch),
            "data": (f"{self.data.name} (user arrays: X {tuple(self.X.shape)}, "
                     f"Y {tuple(self.Y.shape)})"
                     if self.user_parts["data"] else cfg.dataset),
            "ignored_options": ", ".join(ignored_options(**self.user_parts)),
            "optimizer": cfg.optimizer,
            "tracked_sharpness": tracked_sharpness(cfg.optimizer),
            "ntk_mode": self.mode,
            **({"flows": ",".join(cfg.flows), "flow_status": ""} if cfg.flows else {}),
            **self.cost_estimate.as_attrs(),
            "kernel": "full" if self.measurer.full else "traced",
            "loss_definition": "L = (1/2n) sum ||f - y||^2" if cfg.loss == "mse" else "mean CE",
            "n_params": int(n_params),
            "class_names": json.dumps(self.data.class_names),
            "versions": json.dumps(versions()),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    # ---- the run as state (``run_state``) ---------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        """Everything the next step needs, and an empty log in place of this one: the rows
        already logged stay with whoever holds the log."""
        state = dict(self.__dict__)
        state["buffer"] = self.buffer.empty_like()
        state["_stop_event"] = None
        state["latest_kernel"] = None  # a view of scratch space
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._stop_event = threading.Event()

    # ---- control -------------------------------------------------------------------------
    @property
    def size(self) -> tuple[int, int]:
        """(training examples, trainable parameters)."""
        return self.data.n, sum(p.numel() for p in self.params)

    @property
    def dataset(self) -> xr.Dataset:
        return self.buffer.snapshot()

    def set_lr(self, lr: float) -> None:
        """Change η from the next step on, keeping the current weights."""
        self.lr = checked_lr(lr)

    def set_hyper(self, momentum: float | None = None, beta1: float | None = None) -> None:
        """Change the momentum β (gd, sgd) or Adam's β₁ from the next step on, keeping the
        weights and the optimiser's state; the stability threshold follows (ValueError when
        the optimiser has no such option or the value is outside [0, 1))."""
        self.rule.set_hyper(momentum=momentum, beta1=beta1)

    def stop(self) -> None:
        self._stop_event.set()

    def sync(self) -> None:
        """Nothing to collect: a step in this process is in the log when ``step`` returns."""

    def close(self) -> None:
        """Nothing to free: the model and the log are this process's objects."""

    # ---- one step ------------------------------------------------------------------------
    def step(self, *, ahead: int = 0) -> StepRecord:
        """One step. Any error inside it ends the run as ``failed`` with the error as its reason
        and the traceback in the ``traceback`` attribute; every step before it is kept (a failed
        measurement keeps its step's loss too). ``ahead`` is for runs in a child process, which
        can queue steps; here every step happens in the call."""
        if self.finished:
            raise RuntimeError(f"the run has ended ({self.status}); reset to start again")
        t = self.step_index
        try:
            return self._step()
        except Exception as exc:  # a bug, out of memory, a bad kernel: the log so far stays
            self.buffer.set_attr("traceback", traceback.format_exc(limit=8))
            self.buffer.set_status(RunStatus.FAILED,
                                   f"step {t} failed: {type(exc).__name__}: {exc}")
            return StepRecord(t, {})
        finally:
            if self.flows is not None:
                self.flows.finish()  # a step that ended early still waits for its flows

    def _step(self) -> StepRecord:
        t0 = time.perf_counter()
        t = self.step_index
        measuring = t % self.config.measure_every == 0
        wants_vectors = measuring and self.buffer.wants_eigenvectors(t)
        if self.flows is not None:  # from θ_t, beside GD's own step (``Flows``)
            self.flows.start(self.model, measuring, self.lr, t)
        capture = self.measurer.capture(self.model) if measuring else None
        try:
            f = self.model(self.X)
        finally:
            if capture is not None:
                capture.close()
        L = loss_value(f, self.Y, self.config.loss)
        loss = float(L.detach())
        if self.initial_loss is None:
            self.initial_loss = loss
        scalars: dict[str, float] = {"loss": loss, "lr": self.lr, "two_over_lr": 2.0 / self.lr,
                                     "stability_threshold": self.rule.threshold(self.lr),
                                     "accuracy": accuracy(f.detach(), self.Y), "measured": 0.0}
        record = StepRecord(t, scalars)
        diverged = self._diverged(loss)
        if diverged:
            return self._finish(record, t0, RunStatus.DIVERGED, diverged)
        grads = torch.autograd.grad(L, self.params, create_graph=measuring and
                                    self.config.sharpness, retain_graph=measuring)
        if measuring:
            tm = time.perf_counter()
            try:
                r = residual(f.detach(), self.Y, self.config.loss)
                m = self._measure(f, r, grads, capture)
            except Exception as exc:  # a failed measurement ends the run; the log so far is kept
                reason = f"measurement failed at step {t}: {type(exc).__name__}: {exc}"
                self.buffer.set_attr("traceback", traceback.format_exc(limit=8))
                return self._finish(record, t0, RunStatus.FAILED, reason)
            scalars.update(m.scalars)
            scalars["measured"] = 1.0
            scalars["time_measure"] = time.perf_counter() - tm
            record.spectrum = m.spectrum
            kept = (m.kernel if m.kernel is not None and m.kernel.shape[0] <= KERNEL_KEEP_MAX_ROWS
                    else None)
            if kept is not None:  # every measured step: a training process sends it when asked
                self.latest_kernel = (t, kept.detach(), m.output_major)
            if wants_vectors:
                record.eigenvectors = m.vectors.T.float().cpu().numpy()
                if kept is not None and self.copy_kernels:  # the workspace is overwritten next step
                    record.kernel = kept.detach().to("cpu", torch.float32, copy=True).numpy()
                    record.kernel_outputs = m.output_major
        else:
            scalars["grad_norm"] = gradient_norm(grads)
        self.rule.update(self.params, self._update_gradient(grads), self.lr)
        if self.flows is not None:
            record.flows = self.flows.finish()
            if self.flows.status != self.buffer.attrs.get("flow_status"):
                self.buffer.set_attr("flow_status", self.flows.status)
        self.step_index += 1
        scalars["time_step"] = time.perf_counter() - t0
        self.buffer.append(record)
        if self.config.target_loss is not None and loss <= self.config.target_loss:
            self.buffer.set_status(RunStatus.REACHED_TARGET,
                                   f"loss {loss:.4g} ≤ target {self.config.target_loss:g} at "
                                   f"step {t}")
        elif self.step_index >= self.config.steps:
            self.buffer.set_status(RunStatus.COMPLETED,
                                   f"step budget of {self.config.steps} reached")
        return record

    def _diverged(self, loss: float) -> str:
        assert self.initial_loss is not None
        return divergence(loss, self.initial_loss, self.config.divergence_factor,
                          self.step_index)

    def _finish(self, record: StepRecord, t0: float, status: RunStatus, reason: str
                ) -> StepRecord:
        record.scalars["time_step"] = time.perf_counter() - t0
        self.buffer.append(record)
        self.buffer.set_status(status, reason)
        return record

    def _measure(self, f: torch.Tensor, r: torch.Tensor, grads: tuple[torch.Tensor, ...],
                 capture: LayerCapture | None) -> Measurement:
        preconditioner = self.rule.preconditioner(grads)
        batches = self.batches.epoch() if self.batches is not None else None
        try:
            return self.measurer.measure(self.model, self.X, f, r, grads, self.params, capture,
                                         preconditioner, batches)
        except Exception as exc:
            # The exact kernel takes per-sample Jacobians of the layers its rules do not cover
            # (vmap over jacrev), which some layers cannot do (a GRU): in auto mode such a
            # model falls back to matrix-free products, once, and the log says why.
            if not (self.config.ntk_mode == "auto" and self.mode == "exact"
                    and self.cost_estimate.other_layers):
                raise
            self.mode = "matrix_free"
            self.measurer = Measurer(self.config, self.Y, self.mode)
            self.buffer.set_attr("ntk_mode", self.mode)
            self.buffer.set_attr("ntk_fallback", f"exact kernel failed at step {self.step_index}"
                                 f" ({type(exc).__name__}: {exc}); matrix-free from then on")
            return self.measurer.measure(self.model, self.X, f, r, grads, self.params, None,
                                         preconditioner, batches)

    def _update_gradient(self, grads: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The gradient the update takes: the full batch's, or the next mini-batch's (SGD)."""
        if self.batches is None:
            return grads
        batch = self.batches.take()
        L = loss_value(self.model(self.X[batch]), self.Y[batch], self.config.loss)
        return torch.autograd.grad(L, self.params)

    # ---- loop ----------------------------------------------------------------------------
    def run(self, callback: Callable[[StepRecord], object] | None = None) -> xr.Dataset:
        """Step until a stop condition (or ``stop()``); returns the log. ``callback(record)``
        after each step may return False to stop early."""
        self._stop_event.clear()
        if not self.finished:
            self.buffer.set_status(RunStatus.RUNNING)
        while not self.finished:
            if self._stop_event.is_set():
                self.buffer.set_status(RunStatus.STOPPED,
                                       f"stopped by request at step {self.step_index}")
                break
            record = self.step()
            if self.status == RunStatus.FAILED:
                break
            if callback is not None and callback(record) is False:
                self.buffer.set_status(RunStatus.STOPPED,
                                       f"stopped by callback at step {record.step}")
                break
        return self.dataset


def run(config: RunConfig, callback: Callable[[StepRecord], object] | None = None, *,
        model: nn.Module | None = None,
        data: Dataset | tuple[Any, Any] | None = None) -> xr.Dataset:
    """Train ``config`` (or your ``model`` on your ``data``, as for ``Trainer``) to its stop
    and return the full xarray log."""
    return Trainer(config, data=data, model=model).run(callback)


def checked_model(model: nn.Module, X: torch.Tensor, num_outputs: int) -> nn.Module:
    """``model`` if it maps X to (n, num_outputs) trainable outputs; ConfigError otherwise."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model: expected a torch nn.Module, got {type(model).__name__}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("model: it has no trainable parameters")
    try:
        with torch.no_grad():
            out = model(X[:2])
    except Exception as exc:
        raise ConfigError(f"model: it fails on a batch of X of shape {tuple(X[:2].shape)} "
                          f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (min(2, len(X)), num_outputs):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model: its output for 2 examples must be (2, {num_outputs}) to "
                          f"match Y's {num_outputs} column(s), got {shape}")
    return model


def ignored_options(data: bool, model: bool) -> list[str]:
    """The RunConfig fields a run with the user's own data and/or model does not read."""
    names = list(DATA_OPTIONS) if data else []
    return names + list(MODEL_OPTIONS) if model else names
