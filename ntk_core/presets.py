"""Named, documented run configurations read from TOML files in ``data/presets/``.

A preset file has a ``title``, a one-paragraph ``description`` (shown in the dashboard), a
``[config]`` table of RunConfig options and, for ladders, a ``[sweep]`` table of lists
(e.g. ``lr = [0.02, 0.05, 0.1]``). ``NTK_EOS_PRESETS`` points at another folder.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ConfigError, RunConfig
from .grid import grid_configs

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_PRESET = "eos-mlp-digits"


@dataclass(frozen=True)
class Preset:
    """A named run for a lecture: its ``title``, the ``description`` paragraph the dashboard
    shows, the ``config`` and, for a ladder of runs, the ``sweep`` grid over it."""

    name: str
    title: str
    description: str
    config: RunConfig
    sweep: dict[str, list[Any]] = field(default_factory=dict)

    def configs(self) -> list[RunConfig]:
        """One config per point of the preset's sweep (just the config when there is none)."""
        return grid_configs(self.config, self.sweep)


def preset_dir() -> Path:
    env = os.environ.get("NTK_EOS_PRESETS")
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parents[1] / "data" / "presets",
                   Path(sys.prefix) / "share" / "ntk-eos" / "presets"]
    for path in candidates:
        if path.is_dir():
            return path
    raise ConfigError("no preset folder found; set NTK_EOS_PRESETS to a folder of .toml presets")


def preset_names() -> list[str]:
    return sorted(p.stem for p in preset_dir().glob("*.toml"))


def load_preset(name: str) -> Preset:
    names = preset_names()
    if name not in names:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(names)}")
    with open(preset_dir() / f"{name}.toml", "rb") as fh:
        raw = tomllib.load(fh)
    try:
        config = RunConfig.from_dict(raw.get("config", {}))
        sweep = {k: list(v) for k, v in raw.get("sweep", {}).items()}
        grid_configs(config, sweep)  # every ladder point is valid, up front
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"preset {name}: {exc}") from exc
    return Preset(name, raw.get("title", name), " ".join(raw.get("description", "").split()),
                  config, sweep)
