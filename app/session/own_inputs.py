"""The user's own model and data for the dashboard's runs: a notebook's ``nn.Module`` and (X, y)
arrays, or a local server's ``ntk-eos serve --arch package.module:factory --data file.npz``.

Each run trains a fresh model: a module is deep-copied from the copy taken when it was given,
so Reset starts again from its initial weights; a factory is called again with the run's data
shapes and seed. A module defined in a notebook cell cannot be pickled into a training process,
so these runs train in a thread of the page's process (``app.session.runner``).

A hosted server takes neither: ``served`` refuses ``NTK_EOS_ARCH`` / ``NTK_EOS_DATA`` there, and
nothing a visitor sends names a module (the page's ``arch`` is a choice among the built-in
architectures).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ntk_core.config import ConfigError, RunConfig
from ntk_core.data import Dataset
from ntk_core.data.arrays import from_arrays, read_npz
from ntk_core.models.factory import is_factory_name, user_inputs
from ntk_core.training.trainer import ignored_options

from .limits import ENV_PREFIX, ServerLimits

ARCH_ENV = ENV_PREFIX + "ARCH"  # package.module:factory, set by ``ntk-eos serve --arch``
DATA_ENV = ENV_PREFIX + "DATA"  # a .npz file with X and y, set by ``ntk-eos serve --data``
HOSTED_REFUSAL = "hosted mode never imports code or reads the server's files for a page"

Model = nn.Module | str  # a module, or a factory's "package.module:factory" name
Data = Dataset | tuple[Any, Any] | str | os.PathLike


@dataclass(frozen=True)
class OwnInputs:
    """What replaces the preset's model and/or data in every run of one dashboard."""

    model: nn.Module | None = None  # the copy taken when given; runs train copies of it
    factory: str | None = None
    data: Dataset | tuple[Any, Any] | None = None
    data_name: str = "arrays"

    @classmethod
    def of(cls, model: Model | None = None, data: Data | None = None) -> OwnInputs | None:
        """Checked inputs (None when neither is given): DataError for arrays the engine cannot
        train on, ConfigError for a model that is neither a module nor a factory's name."""
        if model is None and data is None:
            return None
        name = "arrays"
        if isinstance(data, str | os.PathLike):
            name, data = Path(data).name, read_npz(data)
        if isinstance(data, list | tuple):
            if len(data) != 2:
                raise ConfigError(f"data: expected (X, y), got {len(data)} items")
            data = tuple(data)
            from_arrays(*data, name=name)  # the engine's checks, at once rather than at Play
        elif data is not None and not isinstance(data, Dataset):
            raise ConfigError(f"data: expected (X, y), a Dataset or a .npz file, got a "
                              f"{type(data).__name__}")
        if model is not None and not isinstance(model, nn.Module | str):
            raise ConfigError(f"model: expected an nn.Module or a 'package.module:factory' "
                              f"name, got a {type(model).__name__}")
        if isinstance(model, str) and not is_factory_name(model):
            raise ConfigError(f"model: {model!r} is not a 'package.module:factory' name")
        return cls(model=copy.deepcopy(model) if isinstance(model, nn.Module) else None,
                   factory=model if isinstance(model, str) else None, data=data, data_name=name)

    def build(self, config: RunConfig) -> tuple[Dataset | None, nn.Module | None]:
        """The data and a fresh model for a run of ``config`` (None: the config's own)."""
        data, built = user_inputs(config, self.data, self.factory, self.data_name)
        return data, built if self.factory is not None else copy.deepcopy(self.model)

    @property
    def has_model(self) -> bool:
        return self.model is not None or self.factory is not None

    @property
    def ignored(self) -> frozenset[str]:
        """The RunConfig fields the runs do not read."""
        return frozenset(ignored_options(data=self.data is not None, model=self.has_model))

    def describe(self) -> str:
        """'your model `Residual` on your data (200 examples, X (200, 10))' (Markdown)."""
        parts = []
        if self.has_model:
            name = self.factory or type(self.model).__name__
            parts.append(f"your model `{name}`")
        if isinstance(self.data, Dataset):
            parts.append(f"your data `{self.data.name}` ({self.data.n} examples)")
        elif self.data is not None:
            x = self.data[0]
            shape = tuple(getattr(x, "shape", ()))
            parts.append(f"your data `{self.data_name}` ({len(x)} examples, X {shape})")
        return " on ".join(parts)


def served(environ: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """The model factory and data file a served page trains (``NTK_EOS_ARCH``,
    ``NTK_EOS_DATA``; None where unset); ConfigError when either is set on a hosted server."""
    env = os.environ if environ is None else environ
    arch, data = (env.get(var, "").strip() or None for var in (ARCH_ENV, DATA_ENV))
    if (arch or data) and ServerLimits.from_env(env).mode == "hosted":
        names = [var for var, value in ((ARCH_ENV, arch), (DATA_ENV, data)) if value]
        raise ConfigError(f"{' and '.join(names)}: {HOSTED_REFUSAL}")
    return arch, data
