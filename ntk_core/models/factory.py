"""A user's own model, named on the command line as ``package.module:factory``.

The factory is called as ``factory(input_shape, num_outputs)`` and must return an
``nn.Module`` whose output for a batch of inputs is (batch, num_outputs). Importing the module
runs its code: only the command line and a local session take such names, never a hosted page.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any

import torch
from torch import nn

from ..config import ConfigError, RunConfig
from ..data import Dataset, load_dataset
from ..data.arrays import from_arrays

FACTORY_NAME = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_factory_name(text: str) -> bool:
    return bool(FACTORY_NAME.match(text))


def model_from_factory(name: str, input_shape: tuple[int, ...], num_outputs: int,
                       seed: int = 0) -> nn.Module:
    """Import ``package.module:factory`` and build the model (torch seeded with ``seed``);
    ConfigError naming what failed."""
    if not is_factory_name(name):
        raise ConfigError(f"arch: {name!r} is not a built-in architecture or a "
                          f"'package.module:factory' name")
    module_name, _, attr = name.partition(":")
    # as `python -m` would: a my_models.py in the working folder is found from the ntk-eos script
    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raises while importing
        raise ConfigError(f"arch: cannot import {module_name!r} ({type(exc).__name__}: {exc})"
                          ) from exc
    finally:
        if added:
            sys.path.remove(here)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"arch: {module_name!r} has no callable {attr!r}")
    torch.manual_seed(seed)
    try:
        model = factory(input_shape, num_outputs)
    except Exception as exc:
        raise ConfigError(f"arch: {name}{(input_shape, num_outputs)} raised "
                          f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"arch: {name} returned a {type(model).__name__}, not an nn.Module")
    return model


def user_inputs(config: RunConfig, arrays: tuple[Any, Any] | Dataset | None = None,
                factory: str | None = None, name: str = "arrays"
                ) -> tuple[Dataset | None, nn.Module | None]:
    """The data and model a run of ``config`` trains when the user brings their own: ``arrays``
    (X, Y) as a Dataset named ``name`` (None: the config's dataset), and the model of
    ``factory`` built for that data's shapes with the config's seed (None: the config's
    architecture, built by the trainer)."""
    data: Dataset | None
    if isinstance(arrays, tuple):
        dtype = torch.float64 if config.dtype == "float64" else torch.float32
        data = from_arrays(*arrays, dtype=dtype, target=config.target, name=name)
    else:
        data = arrays
    if factory is None:
        return data, None
    data = data or load_dataset(config)
    return data, model_from_factory(factory, data.input_shape, data.num_outputs, config.seed)
