"""The update rules a run can take, each with the stability threshold it trains against.

The rules update the parameters in place from a gradient the trainer hands them: the full-batch
gradient for ``gd``, ``adam`` and ``rmsprop``, a mini-batch one for ``sgd`` (``BatchOrder``).
Their hyperparameters can change between steps (``set_hyper``), and the threshold follows from
that step on. The thresholds themselves are ``numerics.stability``'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..config import ConfigError, RunConfig
from ..numerics.stability import stability_threshold, threshold_label
from ..vocabulary import OptimizerName


class UpdateRule:
    """θ ← θ − η·(direction), with ``momentum`` (heavy ball, or Nesterov's) for ``gd``/``sgd``
    and a diagonal preconditioner P = √v̂ + ε for ``adam`` and ``rmsprop``.

    Adam: m ← β₁m + (1 − β₁)g, v ← β₂v + (1 − β₂)g², θ ← θ − η m̂/(√v̂ + ε), with m̂ and v̂
    bias-corrected; RMSProp is Adam with β₁ = 0 (as in Cohen et al. 2022), so its first steps
    are not inflated by a v still near zero."""

    def __init__(self, optimizer: OptimizerName, momentum: float = 0.0, nesterov: bool = False,
                 beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        self.optimizer = optimizer
        self.momentum, self.nesterov = momentum, nesterov
        self.beta1 = 0.0 if optimizer == "rmsprop" else beta1
        self.beta2, self.eps = beta2, eps
        self.updates = 0  # updates taken: Adam's bias correction counts them
        self._first: list[torch.Tensor] | None = None  # velocity, or Adam's m
        self._second: list[torch.Tensor] | None = None  # Adam's v

    @property
    def adaptive(self) -> bool:
        return self.optimizer in ("adam", "rmsprop")

    @classmethod
    def from_config(cls, config: RunConfig) -> UpdateRule:
        return cls(config.optimizer, config.momentum, config.nesterov, config.beta1,
                   config.beta2, config.eps)

    def set_hyper(self, momentum: float | None = None, beta1: float | None = None) -> None:
        """Change β (``gd``/``sgd``) or β₁ (``adam``) from the next update on; the state is kept."""
        if momentum is not None:
            if not (math.isfinite(momentum) and 0 <= momentum < 1):
                raise ValueError(f"momentum: must be in [0, 1), got {momentum!r}")
            if self.adaptive:
                raise ValueError(f"momentum: {self.optimizer} takes beta1, not momentum")
            self.momentum = float(momentum)
        if beta1 is not None:
            if not (math.isfinite(beta1) and 0 <= beta1 < 1):
                raise ValueError(f"beta1: must be in [0, 1), got {beta1!r}")
            if self.optimizer != "adam":
                raise ValueError(f"beta1: only adam takes beta1, not {self.optimizer}")
            self.beta1 = float(beta1)

    def threshold(self, lr: float) -> float:
        return stability_threshold(self.optimizer, lr, self.momentum, self.nesterov, self.beta1)

    def threshold_label(self) -> str:
        return threshold_label(self.optimizer, self.momentum, self.nesterov, self.beta1)

    # ---- the preconditioner ------------------------------------------------------------------
    def _second_moments(self, grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """v after this step's gradient, without storing it."""
        if self._second is None:
            return [(1 - self.beta2) * g.detach() ** 2 for g in grads]
        return [self.beta2 * v + (1 - self.beta2) * g.detach() ** 2
                for v, g in zip(self._second, grads, strict=True)]

    def _scale(self, second: list[torch.Tensor]) -> list[torch.Tensor]:
        correction = 1 - self.beta2 ** (self.updates + 1)
        return [(v / correction).sqrt() + self.eps for v in second]

    def preconditioner(self, grads: Sequence[torch.Tensor]) -> torch.Tensor | None:
        """The diagonal P this step's update will divide by, flat in float64 (None for GD and
        SGD): the preconditioned sharpness λ_max(P⁻¹H) is measured with it."""
        if not self.adaptive:
            return None
        return torch.cat([p.reshape(-1) for p in self._scale(self._second_moments(grads))]
                         ).to(torch.float64)

    # ---- the update --------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
               lr: float) -> None:
        grads = [g.detach() for g in grads]
        if self.adaptive:
            self._adaptive_update(params, grads, lr)
        else:
            self._momentum_update(params, grads, lr)
        self.updates += 1

    def _momentum_update(self, params: Sequence[torch.Tensor], grads: list[torch.Tensor],
                         lr: float) -> None:
        beta = self.momentum
        if beta and self._first is None:
            self._first = [torch.zeros_like(p) for p in params]
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            if beta:
                assert self._first is not None
                v = self._first[i]
                v.mul_(beta).add_(g)
                g = g + beta * v if self.nesterov else v
            p.sub_(lr * g)

    def _adaptive_update(self, params: Sequence[torch.Tensor], grads: list[torch.Tensor],
                         lr: float) -> None:
        second = self._second_moments(grads)
        scale = self._scale(second)
        if self._first is None:
            self._first = [torch.zeros_like(p) for p in params]
        first_correction = 1 - self.beta1 ** (self.updates + 1)
        for p, m, g, s in zip(params, self._first, grads, scale, strict=True):
            m.mul_(self.beta1).add_((1 - self.beta1) * g)
            p.sub_(lr * (m / first_correction) / s)
        self._second = second


class BatchOrder:
    """Mini-batches for SGD: each epoch a seeded permutation of the n examples, cut into
    consecutive batches of ``batch_size`` (the last one shorter when it does not divide n)."""

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device) -> None:
        if not 1 <= batch_size <= n:
            raise ConfigError(f"batch_size: must be between 1 and n = {n}, got {batch_size}")
        self.n, self.batch_size = n, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.device = device
        self._epoch: list[torch.Tensor] = []
        self._next = 0

    @property
    def per_epoch(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def epoch(self) -> list[torch.Tensor]:
        """The batches of the epoch the next ``take`` draws from."""
        if self._next >= len(self._epoch):
            order = torch.randperm(self.n, generator=self.generator).to(self.device)
            self._epoch = list(order.split(self.batch_size))
            self._next = 0
        return self._epoch

    def take(self) -> torch.Tensor:
        """The next batch's example indices."""
        batch = self.epoch()[self._next]
        self._next += 1
        return batch
