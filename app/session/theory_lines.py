"""The two-layer linear network's predicted final KTA for the dashboard's runs
(``ntk_core.experiments.theory``; Jiang, Cohen, Li 2025, Sec. 4): the target at the run's η on
the live alignment plot, and the predicted curve against η beside the kept runs.

The prediction needs a run's data (the Gram matrix G = X Xᵀ and the ±1 targets y) and the layer
scale a²_flow that gradient flow reaches from the run's initial weights. That flow takes tens of
thousands of RK4 steps (2 to 5 s on the linear2 preset with two busy cores), so it runs once per
data and initialisation in one background thread per server, shared by all its tabs, and the
page draws the line once it is ready. Each η then costs one ``predict`` (about 10 ms), once.

The theory describes interpolating solutions: a run whose inputs cannot fit its targets exactly
(fewer input dimensions than examples) gets no line, and neither does a run of your own model or
data, nor one whose flow does not converge within a few seconds' work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # sklearn's, untyped

from ntk_core.config import DATA_OPTIONS, MODEL_OPTIONS, RunConfig
from ntk_core.data import load_dataset
from ntk_core.experiments.theory import (
    FLOW_TIME,
    balanced_flow_a2,
    gradient_flow,
    initial_weights,
    linear2_ntk,
    predict,
    rank_one_sharpness,
)
from ntk_core.training.buffer import RunBuffer
from ntk_core.training.schema import RunSchemaError, config_from_attrs

from .kept_runs import KeptRun
from .runner import RunController

# Gradient flow stops at this loss: a² is then within 0.3 % of its limit (0.7945 against 0.7963
# at 1e-9 on the linear2 preset) in 60 % of the time.
FLOW_TARGET_LOSS = 1e-7
# RK4 step as a fraction of 1/sharpness: its stability interval on the negative axis is 2.78,
# so this leaves room for the sharpness along the flow to exceed the larger of its start and end.
FLOW_STEP = 1.0
# Work budget of one flow, in RK4 steps times n · d · width: a step costs about 0.2 ms at the
# preset's size (2¹⁶) and 1 ms at 2²¹, so a flow stays under about 15 s. The preset needs 25 000.
MAX_FLOW_STEPS = 60_000
MAX_FLOW_WORK = 2**32
MIN_FLOW_STEPS = 1_000  # a budget below this converges nowhere: no line
CURVE_POINTS = 32
CURVE_MARGIN = 1.5  # the curve spans the kept runs' η divided and multiplied by this
MAX_CACHED = 16
# The fields a prediction depends on: the data, the initial weights and the targets
THEORY_FIELDS = (*DATA_OPTIONS, *MODEL_OPTIONS, "target", "seed", "dtype")


@dataclass(frozen=True)
class Linear2Theory:
    """The theory's view of one run: its data and where gradient flow from its initial weights
    ends. ``final_kta`` is cached per η."""

    G: np.ndarray  # (n, n) X Xᵀ
    y: np.ndarray  # (n,) ±1 targets
    a2_flow: float  # ‖v‖² at the end of gradient flow
    _kta: dict[float, float] = field(default_factory=dict, compare=False, repr=False)

    def final_kta(self, lrs: Sequence[float] | np.ndarray) -> np.ndarray:
        """The predicted final KTA at each η; NaN where 2/η is below the sharpness of the
        flattest interpolant (gradient descent has no stable fit there)."""
        missing = sorted({float(lr) for lr in lrs} - set(self._kta))
        if missing:
            kta = predict(self.G, self.y, missing, a2_flow=self.a2_flow).kta_pred.values
            self._kta.update(zip(missing, map(float, kta), strict=True))
        return np.array([self._kta[float(lr)] for lr in lrs])


def linear2_theory(config: RunConfig) -> Linear2Theory | None:
    """The theory for a run of ``config`` on its own data from its own initial weights; None
    when it does not apply (not linear2, no interpolating fit, a flow too large or that does not
    reach ``FLOW_TARGET_LOSS``)."""
    if config.arch != "linear2":
        return None
    data = load_dataset(config)
    X = data.X.reshape(data.n, -1).double()
    steps = min(MAX_FLOW_STEPS, MAX_FLOW_WORK // (data.n * X.shape[1] * config.width))
    if steps < MIN_FLOW_STEPS:
        return None
    y = data.Y.double().numpy()[:, 0]
    G = (X @ X.T).numpy()
    fit = np.linalg.lstsq(G, y, rcond=None)[0]
    if np.linalg.norm(G @ fit - y) > 1e-6 * np.linalg.norm(y):
        return None  # y is not in the span of the inputs: no weights fit it exactly
    W0, v0 = initial_weights(data, config)
    start = float(torch.linalg.eigvalsh(
        linear2_ntk(X, torch.as_tensor(W0).double(), torch.as_tensor(v0).double()))[-1]) / data.n
    dt = FLOW_STEP / max(rank_one_sharpness(G, y, balanced_flow_a2(G, y)), start)
    flow = gradient_flow(X.numpy(), y, W0, v0, time=min(FLOW_TIME, steps * dt), dt=dt,
                         target_loss=FLOW_TARGET_LOSS)
    # The log keeps every tenth step, so its last loss is up to ten steps before the one that
    # met the target; NaN fails the test too (the integration blew up).
    if not flow.loss[-1] <= 2 * FLOW_TARGET_LOSS:
        return None
    theory = Linear2Theory(G, y, float(flow.a2[-1]))
    theory.final_kta([config.lr])  # here rather than on the page's thread (the first costs 0.3 s)
    return theory


def theory_key(config: RunConfig) -> tuple:
    """What a prediction depends on: runs that differ only in η, steps or measurements share it."""
    return tuple(getattr(config, name) for name in THEORY_FIELDS)


class TheoryCache:
    """Theories by ``theory_key``, computed one at a time by a daemon thread, the most recently
    asked first (the run on screen); ``version`` counts the computations finished, so that a
    page can tell when to look again."""

    def __init__(self, compute: Callable[[RunConfig], Linear2Theory | None] = linear2_theory
                 ) -> None:
        self.compute = compute
        self.version = 0
        self._done: dict[tuple, Linear2Theory | None] = {}
        self._asked: dict[tuple, RunConfig] = {}  # waiting, oldest first
        self._working = False
        self._lock = threading.Lock()
        self._finished = threading.Condition(self._lock)

    def get(self, config: RunConfig) -> Linear2Theory | None:
        """The theory of ``config``'s data and initial weights, or None while it is computed
        (it is asked for now) or when it does not apply."""
        if config.arch != "linear2":
            return None
        key = theory_key(config)
        with self._lock:
            if key in self._done:
                return self._done[key]
            self._asked.pop(key, None)
            self._asked[key] = config  # last: next in line
            if not self._working:
                self._working = True
                threading.Thread(target=self._work, name="ntk-eos-theory", daemon=True).start()
        return None

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._asked:
                    self._working = False
                    self._finished.notify_all()
                    return
                key, config = self._asked.popitem()
            try:
                # OpenBLAS's threads on busy cores made one RK4 step of a 64 × 128 × 64 flow
                # 140 times slower (65 ms against 0.46 ms): one thread does it
                with threadpool_limits(limits=1, user_api="blas"):
                    theory = self.compute(config)
            except Exception:  # a data folder gone, a model that cannot be built: no line
                theory = None
            with self._lock:
                while len(self._done) >= MAX_CACHED:
                    self._done.pop(next(iter(self._done)))
                self._done[key] = theory
                self.version += 1

    def wait(self, timeout: float) -> bool:
        """Block until nothing is left to compute (for scripts and tests); False on timeout."""
        with self._finished:
            return self._finished.wait_for(lambda: not self._working, timeout)


_shared = TheoryCache()


@dataclass(frozen=True)
class TheoryTarget:
    """The predicted final KTA of the run on screen at its current η (NaN: no stable fit)."""

    lr: float
    kta: float


@dataclass(frozen=True, eq=False)  # arrays: equal when the same object
class TheoryCurve:
    """The predicted final KTA on a log grid of η around the kept runs' (NaN: no stable fit)."""

    lr: np.ndarray
    kta: np.ndarray


class TheoryLines:
    """The predictions one dashboard draws: ``lines`` for the run on screen and the kept runs,
    ``stale`` when they would differ from what it returned last. Disabled for your own model
    or data, which the config does not describe."""

    def __init__(self, enabled: bool = True, cache: TheoryCache | None = None) -> None:
        self.enabled = enabled
        self.cache = cache or _shared
        self._viewed: tuple[RunBuffer, RunConfig | None] | None = None
        self._shown: tuple | None = None
        self._lines: tuple[TheoryTarget | None, TheoryCurve | None] = (None, None)

    def stale(self, controller: RunController) -> bool:
        """Whether ``lines`` would change: another run or η, other kept runs, a theory ready."""
        return self.enabled and self._signature(controller) != self._shown

    def lines(self, controller: RunController) -> tuple[TheoryTarget | None, TheoryCurve | None]:
        """(target of the run on screen, curve beside the kept runs); None for what has no
        prediction yet, or none at all."""
        if not self.enabled:
            return None, None
        signature = self._signature(controller)
        if signature != self._shown:
            self._shown = signature
            self._lines = (self._target(controller), self._curve(controller.kept))
        return self._lines

    def _signature(self, controller: RunController) -> tuple:
        run, viewed = controller.run, controller.viewed
        lr = run.lr if viewed is None and run is not None else None
        return (self.cache.version, id(viewed if viewed is not None else run), lr,
                tuple(id(k) for k in controller.kept))

    def _target(self, controller: RunController) -> TheoryTarget | None:
        run, viewed = controller.run, controller.viewed
        if viewed is not None:
            config, lr = self._viewed_config(viewed), _last_lr(viewed)
        elif run is not None:
            config, lr = run.config, run.lr
        else:
            return None
        theory = self.cache.get(config) if config is not None else None
        if theory is None or not np.isfinite(lr):
            return None
        return TheoryTarget(lr, float(theory.final_kta([lr])[0]))

    def _viewed_config(self, buffer: RunBuffer) -> RunConfig | None:
        if self._viewed is None or self._viewed[0] is not buffer:
            try:
                config: RunConfig | None = config_from_attrs(buffer.attrs)
            except RunSchemaError:
                config = None
            self._viewed = (buffer, config)
        return self._viewed[1]

    def _curve(self, kept: list[KeptRun]) -> TheoryCurve | None:
        """The curve when every kept run is linear2 on the same data and initial weights."""
        configs = [k.config for k in kept if k.config is not None and k.config.arch == "linear2"]
        if not configs or len(configs) < len(kept) \
                or len({theory_key(c) for c in configs}) > 1:
            return None
        theory = self.cache.get(configs[0])
        lrs = np.array([k.lr for k in kept], dtype=float)
        lrs = lrs[np.isfinite(lrs) & (lrs > 0)]
        if theory is None or not lrs.size:
            return None
        grid = np.geomspace(lrs.min() / CURVE_MARGIN, lrs.max() * CURVE_MARGIN, CURVE_POINTS)
        grid = np.unique(np.concatenate([grid, lrs]))
        return TheoryCurve(grid, theory.final_kta(grid))


def _last_lr(buffer: RunBuffer) -> float:
    if not len(buffer):
        return float("nan")
    return float(buffer.rows(len(buffer) - 1)["lr"][-1])
