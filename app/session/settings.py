"""The dashboard's run settings: a param.Parameterized mirror of the RunConfig fields a lecturer
changes, plus the preset they start from.

The parameters are generated from ``RunConfig``'s type hints and defaults (one source of truth);
the app only adds bounds that keep a shared server responsive. Options the dashboard does not
show (``input_dim``, ``kernel`` ...) come from the selected preset. The optimiser's options
(``OPTIMIZER_FIELDS``) reach the run only for the optimiser that reads them: the others take
their ``RunConfig`` defaults, so switching to Adam and back keeps the momentum typed for GD.
``to_config`` builds the ``RunConfig`` and lets the engine validate it: every message shown is
the engine's. The flows beside GD (``flows``, the Flows control) reach the run only with plain
gradient descent (GD without momentum), the one optimiser whose central flow and gradient flow
the engine runs; the choice is kept while another optimiser is selected.
"""

from __future__ import annotations

import math
from typing import Any, get_args

import param

from ntk_core.config import (
    MAX_DEPTH,
    MAX_K,
    ConfigError,
    RunConfig,
    flows_possible,
    option_base_type,
    option_choices,
    option_type,
)
from ntk_core.grid import grid_configs
from ntk_core.presets import DEFAULT_PRESET, Preset, load_preset, preset_names

# The RunConfig fields that get a control, in the order they appear in the sidebar.
CONTROL_FIELDS: tuple[str, ...] = (
    "dataset", "n", "classes", "target", "arch", "width", "depth", "activation",
    "optimizer", "lr", "momentum", "nesterov", "beta1", "beta2", "eps", "batch_size",
    "steps", "target_loss", "measure_every", "k", "seed",
)
# The Flows control: RunConfig.flows as the text a link carries, by the name the control shows
FLOW_CHOICES: dict[str, str] = {"Off": "", "Central flow": "central",
                                "Central flow + gradient flow": "central,stable"}
# Every RunConfig field the settings hold: the generated controls, and the flows
SETTING_FIELDS: tuple[str, ...] = (*CONTROL_FIELDS, "flows")
# Changing one of these keeps the weights and the optimiser's state (the trainer continues from
# the next step: set_lr, set_hyper); any other field resets the run.
LIVE_FIELDS = frozenset({"lr", "momentum", "beta1"})
# The options each optimiser reads (numerics.stability gives the threshold they set).
OPTIMIZER_FIELDS: dict[str, tuple[str, ...]] = {
    "gd": ("momentum", "nesterov"),
    "sgd": ("momentum", "nesterov", "batch_size"),
    "adam": ("beta1", "beta2", "eps"),
    "rmsprop": ("beta2", "eps"),
}
ALL_OPTIMIZER_FIELDS = ("momentum", "nesterov", "beta1", "beta2", "eps", "batch_size")
# What the batch-size box holds before SGD is chosen (the engine's own example)
DEFAULT_BATCH_SIZE = 64

# Bounds a served dashboard accepts (tighter than the engine's hard limits: one run per tab).
BOUNDS: dict[str, tuple[float, float]] = {
    "n": (2, 4096),
    "width": (1, 2048),
    "depth": (1, min(16, MAX_DEPTH)),
    "lr": (1e-3, 10.0),
    "momentum": (0.0, 0.99),
    "beta1": (0.0, 0.99),
    "beta2": (0.0, 0.9999),
    "eps": (1e-12, 0.1),
    "batch_size": (1, 4096),
    "steps": (1, 100_000),
    "target_loss": (0.0, 100.0),
    "measure_every": (1, 10_000),
    "k": (1, min(50, MAX_K)),
    "seed": (0, 2**31 - 1),
}
# Slider ranges where a slider is used (the URL may still ask for anything inside BOUNDS).
SLIDER_RANGES: dict[str, tuple[int, int]] = {"n": (16, 1024), "width": (4, 512),
                                             "depth": (1, 6), "k": (1, 50)}
LABELS: dict[str, str] = {
    "dataset": "Dataset", "n": "Training examples n", "classes": "Classes (e.g. 0,1,2,3)",
    "target": "Targets", "arch": "Architecture", "width": "Width", "depth": "Depth",
    "activation": "Activation", "optimizer": "Optimizer", "lr": "Learning rate η",
    "momentum": "Momentum β", "nesterov": "Nesterov momentum", "beta1": "β₁ (first moment)",
    "beta2": "β₂ (second moment)", "eps": "ε (preconditioner floor)", "batch_size": "Batch size",
    "steps": "Steps",
    "target_loss": "Stop at loss (empty: never)", "measure_every": "Measure every",
    "k": "Top-k eigenpairs", "seed": "Seed", "flows": "Flows beside GD",
}


def config_parameter(name: str) -> param.Parameter:
    """A param.Parameter for the RunConfig field ``name``: type, default and choices from the
    dataclass, bounds from ``BOUNDS``."""
    hint = option_type(name)
    default = getattr(RunConfig(), name)
    optional = type(None) in get_args(hint)
    label = LABELS.get(name, name)
    doc = f"RunConfig.{name}"
    choices = option_choices(name)
    if choices:
        return param.Selector(default=default, objects=list(choices), label=label, doc=doc)
    base = option_base_type(name)
    if base is bool:
        return param.Boolean(default=default, label=label, doc=doc)
    if getattr(base, "__origin__", None) is tuple:
        text = "" if default is None else ",".join(map(str, default))
        return param.String(default=text, label=label, doc=doc)
    bounds = BOUNDS.get(name)
    if base is int:
        int_bounds = None if bounds is None else (int(bounds[0]), int(bounds[1]))
        return param.Integer(default=default, bounds=int_bounds, allow_None=optional, label=label,
                             softbounds=SLIDER_RANGES.get(name), doc=doc)
    if base is float:
        inclusive = (name != "target_loss", True)
        return param.Number(default=default, bounds=bounds, allow_None=optional, label=label,
                            inclusive_bounds=inclusive, doc=doc)
    raise TypeError(f"no control for RunConfig.{name} of type {hint}")


def _preset_values(preset: Preset) -> dict[str, Any]:
    """The preset's config as values of the control parameters."""
    values = {}
    for name in CONTROL_FIELDS:
        value = getattr(preset.config, name)
        if name == "classes":
            value = "" if value is None else ",".join(map(str, value))
        if name == "batch_size" and value is None:
            value = DEFAULT_BATCH_SIZE
        values[name] = value
    values["flows"] = ",".join(preset.config.flows)
    return values


def for_optimizer(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with the optimiser options that ``values["optimizer"]`` does not read set to
    their RunConfig defaults (the engine refuses, say, a batch size for full-batch GD), and no
    flows unless the run is plain gradient descent (``plain_gd``)."""
    used = OPTIMIZER_FIELDS.get(values["optimizer"], ())
    defaults = RunConfig()
    out = {**values, **{name: getattr(defaults, name) for name in ALL_OPTIMIZER_FIELDS
                        if name not in used}}
    if "flows" in out and not plain_gd(out):
        out["flows"] = ""
    return out


def plain_gd(values: dict[str, Any]) -> bool:
    """Whether ``values`` train with plain gradient descent (full batch, no momentum): the
    optimiser whose central flow and gradient flow the engine runs beside it."""
    return flows_possible(values["optimizer"], values.get("momentum") or 0.0)


class RunSettings(param.Parameterized):
    """What the next run trains: a preset plus the user's overrides of its control fields.

    Choosing a preset applies its values, except for fields set in the same update (so that a URL
    ``?preset=catapult&lr=0.3`` gives the catapult run at η = 0.3). After every coherent change the
    ``changed`` event fires with ``last_changed`` holding the names that changed.

    A value typed into a control that the settings cannot take (see ``propose``) leaves them as
    they were; ``rejected`` holds why until the control gets a value they take.
    """

    preset: param.Selector[str] = param.Selector(default=DEFAULT_PRESET, objects=[], label="Preset")
    flows: param.Selector[str] = param.Selector(
        default="", objects=list(FLOW_CHOICES.values()), label=LABELS["flows"],
        doc="RunConfig.flows, comma-separated: the processes that run beside GD")
    changed = param.Event(doc="Fires once after each coherent change of the settings.")
    # The control fields, added below from RunConfig (``config_parameter``), hold these types:
    dataset: str
    n: int
    classes: str  # comma-separated, "" for all
    target: str
    arch: str
    width: int
    depth: int
    activation: str
    optimizer: str
    lr: float
    momentum: float
    nesterov: bool
    beta1: float
    beta2: float
    eps: float
    batch_size: int | None
    steps: int
    target_loss: float | None
    measure_every: int
    k: int
    seed: int

    def __init__(self, **params: Any) -> None:
        names = preset_names()
        self.param.preset.objects = names
        preset = params.get("preset", DEFAULT_PRESET if DEFAULT_PRESET in names else names[0])
        self.preset_info: Preset = load_preset(preset)
        initial = {**_preset_values(self.preset_info), **params, "preset": preset}
        super().__init__(**initial)
        self.last_changed: frozenset[str] = frozenset()
        self.rejected: dict[str, str] = {}  # control -> the message for the value typed there
        self._applying = False
        self.param.watch(self._on_change, ["preset", *SETTING_FIELDS])

    # ---- changes -------------------------------------------------------------------------
    def _on_change(self, *events: param.parameterized.Event) -> None:
        if self._applying:
            return
        names = {e.name for e in events}
        for name in names:  # a value set from elsewhere (slider, preset, link) replaces it
            self.rejected.pop(name, None)
        if "preset" in names:
            self.preset_info = load_preset(self.preset)
            values = _preset_values(self.preset_info)
            self._applying = True
            try:
                self.param.update(**{k: v for k, v in values.items() if k not in names})
            finally:
                self._applying = False
            names |= set(SETTING_FIELDS)
            self.rejected.clear()
        self._announce(names)

    def _announce(self, names: set[str]) -> None:
        self.last_changed = frozenset(names)
        self.param.trigger("changed")

    def propose(self, name: str, value: Any) -> None:
        """Set control ``name`` to a value typed into its widget. A value the settings cannot
        take (the engine refuses it, or it lies outside the dashboard's ``BOUNDS``) leaves them
        unchanged: ``validate`` then returns its message, the engine's where the engine refuses
        it, until the control gets a value they take. ``changed`` fires either way, so the page
        shows the message the way it shows any invalid setting."""
        message = self._refusal(name, value)
        if message:
            self.rejected[name] = message
            self._announce({name})
        elif getattr(self, name) != value:
            setattr(self, name, value)  # _on_change clears the rejection and announces it
        elif self.rejected.pop(name, None) is not None:  # back to the value the run has
            self._announce({name})

    def _refusal(self, name: str, value: Any) -> str:
        """Why control ``name`` cannot take ``value`` ('' when it can)."""
        try:
            RunConfig.from_dict({**self.preset_info.config.to_dict(),
                                 **self.values({name: value})})
        except ConfigError as exc:
            if str(exc).startswith(f"{name}:"):  # another field's message is validate's job
                return str(exc)
        bounds = BOUNDS.get(name)
        if bounds is not None and not bounds[0] <= value <= bounds[1]:
            return f"{name}: the dashboard allows {bounds[0]:g} to {bounds[1]:g}, got {value:g}"
        return ""

    # ---- derived -------------------------------------------------------------------------
    def values(self, changes: dict[str, Any] | None = None) -> dict[str, Any]:
        """The control fields (with ``changes``) as RunConfig.from_dict input, the optimiser's
        options only where it reads them (strings are coerced by the engine)."""
        values = {name: getattr(self, name) for name in SETTING_FIELDS} | (changes or {})
        values["classes"] = values["classes"].strip() or None
        return for_optimizer(values)

    def used(self, name: str) -> bool:
        """Whether the run reads control ``name`` (the optimiser's options depend on it, the
        flows need plain gradient descent)."""
        if name == "flows":
            return self.flows_available
        return name not in ALL_OPTIMIZER_FIELDS or name in OPTIMIZER_FIELDS.get(self.optimizer, ())

    @property
    def flows_available(self) -> bool:
        """Whether the selected optimiser can run flows beside it (``plain_gd``)."""
        return plain_gd({"optimizer": self.optimizer, "momentum": self.momentum})

    def to_config(self) -> RunConfig:
        """The run config: the preset's, overridden by the controls. Raises ConfigError."""
        return RunConfig.from_dict({**self.preset_info.config.to_dict(), **self.values()})

    def to_configs(self) -> list[RunConfig]:
        """One config per point of the preset's sweep (the ladder), with the controls applied to
        every field the sweep does not vary."""
        return grid_configs(self.to_config(), self.preset_info.sweep)

    def validate(self) -> str:
        """'' when the settings make a valid run, else the engine's message (or the message for
        a value a control could not take, first)."""
        if self.rejected:
            return next(iter(self.rejected.values()))
        try:
            self.to_config()
        except ConfigError as exc:
            return str(exc)
        return ""

    def overrides(self) -> dict[str, tuple[Any, Any]]:
        """Control fields set away from the preset: name -> (preset's value, current value).
        Fields the preset sweeps (a ladder's η) vary by design and are left out."""
        preset = _preset_values(self.preset_info)
        out = {}
        for name in SETTING_FIELDS:
            if name in self.preset_info.sweep or not self.used(name):
                continue
            ours, theirs = getattr(self, name), preset[name]
            if name == "classes":  # "0, 1" and "0,1" are the same classes
                ours, theirs = ours.replace(" ", ""), theirs.replace(" ", "")
            if ours != theirs:
                out[name] = (theirs, ours)
        return out

    def url_parameters(self) -> dict[str, str]:
        """Parameter name -> URL query name for pn.state.location.sync."""
        return {name: name for name in ("preset", *SETTING_FIELDS)}


for _name in CONTROL_FIELDS:
    RunSettings.param.add_parameter(_name, config_parameter(_name))


def round_lr(lr: float, digits: int = 3) -> float:
    """η rounded to ``digits`` significant digits (what a log slider should write)."""
    if lr <= 0 or not math.isfinite(lr):
        return lr
    return round(lr, digits - 1 - math.floor(math.log10(lr)))
