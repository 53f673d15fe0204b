"""The reproduction's experiments: three architectures on one dataset, each with an η grid
from gradient-flow-like runs to strong Edge of Stability and a common target loss, at the full
scale of the committed report or a quick one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...config import ConfigError, RunConfig

PATCH = {"digits": 2, "mnist1d": 4, "cifar10": 4, "synthetic": 4, "teacher": 4}


@dataclass(frozen=True)
class Experiment:
    """One architecture's sweep: its base config, the η grid and the seeds."""

    name: str
    title: str
    config: RunConfig
    lrs: tuple[float, ...]
    highlight: float  # the η of panel (c) and of the EoS run measured at every step
    seeds: tuple[int, ...] = (0, 1)


@dataclass(frozen=True)
class Scale:
    """Sizes of one reproduction: ``full`` is what the committed report uses, ``quick`` a smoke test."""

    n_mlp: int
    n_cnn: int
    n_vit: int
    steps: int
    target_loss: float
    seeds: tuple[int, ...]
    width_mlp: int
    width_cnn: int
    width_vit: int
    theory_lrs: tuple[float, ...]
    theory_seeds: tuple[int, ...]


FULL = Scale(n_mlp=256, n_cnn=128, n_vit=64, steps=2000, target_loss=0.01,
             seeds=(0, 1),
             width_mlp=128, width_cnn=32, width_vit=32,
             theory_lrs=(0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6), theory_seeds=(0, 1))
QUICK = Scale(n_mlp=64, n_cnn=48, n_vit=32, steps=300, target_loss=0.05,
              seeds=(0, 1),
              width_mlp=32, width_cnn=8, width_vit=16, theory_lrs=(0.2, 0.3, 0.4),
              theory_seeds=(0,))


def experiments(dataset: str = "digits", quick: bool = False, data_dir: str | None = None,
                archs: Sequence[str] = ("mlp", "cnn", "vit")) -> list[Experiment]:
    """The three architectures on ``dataset`` (four balanced classes, one-hot MSE targets,
    output-traced kernel Σ_c K_cc against YYᵀ), each with an η grid that spans gradient-flow-like
    runs to strong Edge of Stability and a common target loss; and the MLP trained with SGD
    (``mlp-sgd``) and with Adam (``mlp-adam``)."""
    s = QUICK if quick else FULL
    common: dict[str, Any] = dict(
        dataset=dataset, data_dir=data_dir, classes=(0, 1, 2, 3), target="onehot", kernel="traced",
        k=20, target_loss=s.target_loss, steps=s.steps, eig_tol=1e-3, eigvec_every=10**6,
        patch=PATCH.get(dataset, 4))
    mlp: dict[str, Any] = dict(**common, arch="mlp", n=s.n_mlp, width=s.width_mlp, depth=2,
                               activation="tanh", measure_every=3)
    table = {
        "mlp": Experiment("mlp", f"MLP (2 hidden layers × {s.width_mlp}, tanh)", RunConfig(**mlp),
                          lrs=(0.05, 0.1, 0.15, 0.2), highlight=0.15, seeds=s.seeds),
        "cnn": Experiment("cnn", f"CNN (2 conv layers × {s.width_cnn} channels, tanh, avg-pool)",
                          RunConfig(**common, arch="cnn", n=s.n_cnn, width=s.width_cnn, depth=2,
                                    activation="tanh", measure_every=5),
                          lrs=(0.2, 0.4, 0.6, 0.8), highlight=0.6, seeds=s.seeds),
        "vit": Experiment("vit", f"ViT (depth 2, dim {s.width_vit}, 4 heads, GELU)", RunConfig(
            **common, arch="vit", n=s.n_vit, width=s.width_vit, depth=2, heads=4,
            activation="gelu", measure_every=20), lrs=(0.01, 0.02, 0.04, 0.06), highlight=0.04,
            seeds=s.seeds),
        # the MLP again with the other optimisers, each against its own threshold
        "mlp-sgd": Experiment("mlp-sgd", f"MLP with mini-batch SGD (batches of {s.n_mlp // 4})",
                              RunConfig(**mlp, optimizer="sgd", batch_size=s.n_mlp // 4),
                              lrs=(0.05, 0.1, 0.15, 0.2), highlight=0.15, seeds=s.seeds),
        "mlp-adam": Experiment("mlp-adam", "MLP with full-batch Adam (β₁ = 0.9, β₂ = 0.999)",
                               RunConfig(**mlp, optimizer="adam"),
                               lrs=(0.0005, 0.001, 0.002, 0.004), highlight=0.002,
                               seeds=s.seeds),
    }
    unknown = [a for a in archs if a not in table]
    if unknown:
        raise ConfigError(f"--archs: unknown architecture(s) {unknown}; choose from "
                          f"{', '.join(table)}")
    return [table[a] for a in archs]
