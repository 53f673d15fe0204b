"""A user's own model, named on the command line as ``package.module:factory``.

The factory is called as ``factory(input_shape, num_outputs)`` and must return an
``nn.Module`` whose output for a batch of inputs is (batch, num_outputs). Importing the module
runs its code: only the command line and a local session take such names, never a hosted page.
"""

from __future__ import annotations

import importlib
import re

import torch
from torch import nn

from ..config import ConfigError

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
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raises while importing
        raise ConfigError(f"arch: cannot import {module_name!r} ({type(exc).__name__}: {exc})"
                          ) from exc
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
