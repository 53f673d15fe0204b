"""Run configuration: the one source of truth for the engine, the CLI, sweeps and the dashboard.

Every option is a typed dataclass field with a documented default and a validation rule.
The field names double as CLI flags (``--lr 0.5``) and as URL parameters in the app.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args, get_type_hints

from .vocabulary import FlowName, KernelKind, NTKMode, OptimizerName

DatasetName = Literal["digits", "mnist1d", "synthetic", "teacher", "cifar10"]
ArchName = Literal["mlp", "cnn", "vit", "linear2"]
Activation = Literal["tanh", "relu", "elu", "gelu", "silu"]

# Hard limits that keep a single run from exhausting memory; hosted mode tightens them further.
MAX_N = 50_000
MAX_WIDTH = 8192
MAX_DEPTH = 32
MAX_STEPS = 1_000_000
MAX_K = 200


class ConfigError(ValueError):
    """A run configuration that cannot run; the message says which field and why."""


@dataclass(frozen=True)
class RunConfig:
    """A training run and what to measure along it.

    Data: ``dataset`` of ``n`` examples (balanced over ``classes``), targets ``binary`` (±1, one
    output; needs exactly two classes) or ``onehot`` (C outputs). Model: ``arch`` with ``width``,
    ``depth`` and ``activation``. Optimiser: ``optimizer`` at the constant learning rate ``lr``:
    full-batch ``gd`` with optional heavy-ball (or ``nesterov``) ``momentum``, mini-batch ``sgd``
    with ``batch_size``, or ``adam`` / ``rmsprop`` (``beta1``, ``beta2``, ``eps``). Loss: ``mse``
    is L = (1/2n) Σ‖f − y‖². Measurements every ``measure_every`` steps: the top-``k`` NTK
    eigenpairs (``ntk_mode``), Hessian sharpness (and the optimiser's own: preconditioned for
    Adam and RMSProp, batch sharpness for SGD), and alignment.
    """

    # data
    dataset: DatasetName = "digits"
    n: int = 500
    classes: tuple[int, ...] | None = None
    target: Literal["binary", "onehot"] = "onehot"
    standardize: bool = True
    data_dir: str | None = None
    input_dim: int = 32  # synthetic / teacher only
    # model
    arch: ArchName = "mlp"
    width: int = 128
    depth: int = 2
    activation: Activation = "tanh"
    bias: bool = True
    init_scale: float = 1.0
    pooling: Literal["avg", "max", "none"] = "avg"  # cnn
    patch: int = 4  # vit (and the token length for 1-D data)
    heads: int = 4  # vit
    # optimisation
    optimizer: OptimizerName = "gd"
    lr: float = 0.1
    momentum: float = 0.0  # gd, sgd: heavy ball, or Nesterov's with ``nesterov``
    nesterov: bool = False
    beta1: float = 0.9  # adam
    beta2: float = 0.999  # adam, rmsprop
    eps: float = 1e-8  # adam, rmsprop
    batch_size: int | None = None  # sgd
    loss: Literal["mse", "ce"] = "mse"
    steps: int = 1000
    target_loss: float | None = None
    divergence_factor: float = 1e3
    # processes beside GD from the same initial weights: "central" (its central flow) and
    # "stable" (gradient flow); plain gradient descent only
    flows: tuple[FlowName, ...] = ()
    # measurement
    measure_every: int = 1
    k: int = 20
    ntk_mode: NTKMode = "auto"
    kernel: KernelKind = "full"
    sharpness: bool = True
    eig_tol: float = 1e-4
    eigvec_every: int = 1
    eigvec_max_snapshots: int = 512
    # runtime
    seed: int = 0
    device: str = "cpu"
    dtype: Literal["float32", "float64"] = "float32"
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.classes is not None and not isinstance(self.classes, tuple):
            object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))
        if not isinstance(self.flows, tuple):
            object.__setattr__(self, "flows", tuple(self.flows))
        _validate(self)

    # ---- derived -------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        if self.classes is not None:
            return len(self.classes)
        return 2 if self.target == "binary" else _DEFAULT_CLASS_COUNT.get(self.dataset, 10)

    @property
    def num_outputs(self) -> int:
        return 1 if self.target == "binary" else self.num_classes

    @property
    def layout(self) -> str:
        return {"mlp": "flat", "linear2": "flat", "cnn": "image", "vit": "sequence"}[self.arch]

    # ---- conversions ---------------------------------------------------------------------
    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        if out["classes"] is not None:
            out["classes"] = list(out["classes"])
        out["flows"] = list(out["flows"])
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Build from plain values (TOML, JSON, URL strings), coercing types and rejecting unknowns."""
        known = {f.name for f in fields(cls)} - {"extra"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown option(s): {', '.join(map(repr, unknown))}")
        return cls(**{name: coerce(name, value) for name, value in values.items()})

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls.from_dict(json.loads(text))


# The fields a run with the user's own data, or model, does not read (the log lists them).
DATA_OPTIONS = ("dataset", "n", "classes", "standardize", "data_dir", "input_dim")
MODEL_OPTIONS = ("arch", "width", "depth", "activation", "bias", "init_scale", "pooling", "patch",
                 "heads")

_DEFAULT_CLASS_COUNT = {"digits": 10, "mnist1d": 10, "cifar10": 10, "synthetic": 4, "teacher": 4}


def flows_possible(optimizer: str, momentum: float) -> bool:
    """Whether a run with ``optimizer`` and ``momentum`` may have flows beside it: the central
    flow and gradient flow are those of plain, full-batch gradient descent."""
    return optimizer == "gd" and not momentum


def option_names() -> list[str]:
    return [f.name for f in fields(RunConfig) if f.name != "extra"]


def option_type(name: str) -> Any:
    return get_type_hints(RunConfig)[name]


def option_base_type(name: str) -> Any:
    """The field's type without its ``| None``."""
    hint = option_type(name)
    args = [a for a in get_args(hint) if a is not type(None)]
    return args[0] if args and type(None) in get_args(hint) else hint


def option_choices(name: str) -> tuple[Any, ...]:
    """The Literal choices of a (possibly optional) field, or ()."""
    hint = option_type(name)
    for arg in (hint, *get_args(hint)):
        values = get_args(arg)
        if values and all(isinstance(v, str) for v in values):
            return values
    return ()


def coerce(name: str, value: Any) -> Any:
    """Convert a CLI/URL/TOML value to the field's type; raise ConfigError on nonsense."""
    if name not in option_names():
        raise ConfigError(f"unknown option: {name}")
    hint = option_type(name)
    optional = type(None) in get_args(hint)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("", "none")):
        if not optional:
            raise ConfigError(f"{name}: a value is required")
        return None
    base = [a for a in get_args(hint) if a is not type(None)] if optional else [hint]
    target = base[0]
    try:
        if target is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if isinstance(value, (bool, int)) and value in (0, 1):
                return bool(value)
            raise ValueError(value)
        if target is int:
            if isinstance(value, bool):
                raise ValueError(value)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if target is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if target is str:
            return str(value)
        if getattr(target, "__origin__", None) is Literal or get_args(target) and all(
            isinstance(a, str) for a in get_args(target)
        ):
            return str(value)
        if getattr(target, "__origin__", None) is tuple:
            if isinstance(value, str):
                value = [v for v in value.replace(" ", "").split(",") if v != ""]
            if not isinstance(value, (list, tuple)):
                raise ValueError(value)
            element = get_args(target)[0]
            if element is int:
                return tuple(int(v) for v in value)
            return tuple(str(v) for v in value)
        if target is dict:
            return dict(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"{name}: cannot read {value!r} as {_type_word(target)}") from exc
    return value


def _type_word(hint: Any) -> str:
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is bool:
        return "true/false"
    if getattr(hint, "__origin__", None) is tuple:
        return ("a comma-separated list of integers" if get_args(hint)[0] is int
                else "a comma-separated list of names")
    return "text"


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _validate(c: RunConfig) -> None:
    hints = get_type_hints(RunConfig)
    for f in fields(c):
        hint = hints[f.name]
        choices = _literal_choices(hint)
        value = getattr(c, f.name)
        if choices and value not in choices:
            raise ConfigError(f"{f.name}: {value!r} is not one of {', '.join(map(str, choices))}")
        if hint in (int, int | None) and value is not None:
            _check(isinstance(value, int) and not isinstance(value, bool),
                   f"{f.name}: expected an integer, got {value!r}")
        if hint in (float, float | None) and value is not None:
            _check(_finite(value), f"{f.name}: expected a finite number, got {value!r}")
    _check(2 <= c.n <= MAX_N, f"n: must be between 2 and {MAX_N}, got {c.n}")
    _check(1 <= c.width <= MAX_WIDTH, f"width: must be between 1 and {MAX_WIDTH}, got {c.width}")
    _check(1 <= c.depth <= MAX_DEPTH, f"depth: must be between 1 and {MAX_DEPTH}, got {c.depth}")
    _check(1 <= c.input_dim <= 4096, f"input_dim: must be between 1 and 4096, got {c.input_dim}")
    _check(c.lr > 0, f"lr: the learning rate must be positive, got {c.lr}")
    _check(c.lr <= 1e4, f"lr: {c.lr} is absurdly large")
    _check(0 <= c.momentum < 1, f"momentum: must be in [0, 1), got {c.momentum}")
    _check(0 <= c.beta1 < 1, f"beta1: must be in [0, 1), got {c.beta1}")
    _check(0 <= c.beta2 < 1, f"beta2: must be in [0, 1), got {c.beta2}")
    _check(0 < c.eps < 1, f"eps: must be in (0, 1), got {c.eps}")
    adaptive = c.optimizer in ("adam", "rmsprop")
    _check(not (adaptive and c.momentum), f"momentum: {c.optimizer} has no momentum option"
           f"{' (its β₁ is beta1)' if c.optimizer == 'adam' else ''}; got {c.momentum}")
    _check(not c.nesterov or c.momentum > 0, "nesterov: needs a momentum above 0")
    if c.optimizer == "sgd":
        _check(c.batch_size is not None, "batch_size: sgd needs a batch size (e.g. batch_size=64)")
        _check(c.batch_size is None or 1 <= c.batch_size <= c.n,
               f"batch_size: must be between 1 and n = {c.n}, got {c.batch_size}")
    else:
        _check(c.batch_size is None, f"batch_size: only sgd takes mini-batches; {c.optimizer} "
               f"uses the full batch (got batch_size={c.batch_size})")
    flow_names = get_args(FlowName)
    for name in c.flows:
        _check(name in flow_names, f"flows: {name!r} is not one of {', '.join(flow_names)}")
    _check(len(set(c.flows)) == len(c.flows), f"flows: repeated entries in {','.join(c.flows)}")
    if c.flows:
        _check(flows_possible(c.optimizer, c.momentum),
               "flows: the central flow and gradient flow are those of plain gradient descent; "
               f"this run uses {c.optimizer}"
               f"{f' with momentum {c.momentum:g}' if c.momentum else ''}")
    _check(c.init_scale > 0, f"init_scale: must be positive, got {c.init_scale}")
    _check(1 <= c.steps <= MAX_STEPS, f"steps: must be between 1 and {MAX_STEPS}, got {c.steps}")
    _check(c.target_loss is None or c.target_loss > 0,
           f"target_loss: must be positive (or none), got {c.target_loss}")
    _check(c.divergence_factor > 1, f"divergence_factor: must exceed 1, got {c.divergence_factor}")
    _check(1 <= c.measure_every <= MAX_STEPS, f"measure_every: must be ≥ 1, got {c.measure_every}")
    _check(1 <= c.k <= MAX_K, f"k: must be between 1 and {MAX_K}, got {c.k}")
    _check(0 < c.eig_tol < 1, f"eig_tol: must be in (0, 1), got {c.eig_tol}")
    _check(c.eigvec_every >= 1, f"eigvec_every: must be ≥ 1, got {c.eigvec_every}")
    _check(c.eigvec_max_snapshots >= 2,
           f"eigvec_max_snapshots: must be ≥ 2, got {c.eigvec_max_snapshots}")
    _check(c.seed >= 0, f"seed: must be ≥ 0, got {c.seed}")
    _check(c.threads is None or 1 <= c.threads <= 256, f"threads: must be in 1..256, got {c.threads}")
    _check(1 <= c.patch <= 64, f"patch: must be between 1 and 64, got {c.patch}")
    _check(1 <= c.heads <= 64, f"heads: must be between 1 and 64, got {c.heads}")
    _check(c.device == "cpu" or c.device == "auto" or c.device.startswith("cuda"),
           f"device: expected cpu, cuda, cuda:N or auto, got {c.device!r}")
    if c.arch == "vit":
        _check(c.width % c.heads == 0,
               f"width: the ViT width ({c.width}) must be divisible by heads ({c.heads})")
    if c.classes is not None:
        _check(len(c.classes) >= 2, "classes: need at least two classes")
        _check(len(set(c.classes)) == len(c.classes), f"classes: repeated entries in {c.classes}")
        _check(all(0 <= x < 1000 for x in c.classes), f"classes: out of range in {c.classes}")
    if c.target == "binary":
        _check(c.num_classes == 2,
               f"target: binary targets need exactly two classes, got {c.num_classes}"
               " (set classes=a,b)")
    _check(c.n >= c.num_classes, f"n: {c.n} examples cannot cover {c.num_classes} classes")
    if c.loss == "ce":
        _check(c.target == "onehot", "loss: cross-entropy needs onehot targets")
    if c.arch == "linear2":
        _check(c.num_outputs == 1, "arch: linear2 has a scalar output; use target=binary")


def _literal_choices(hint: Any) -> tuple[Any, ...]:
    if getattr(hint, "__origin__", None) is tuple:  # a list of names is checked on its own
        return ()
    args = [a for a in get_args(hint) if a is not type(None)]
    if args and getattr(args[0], "__origin__", None) is Literal:
        return get_args(args[0])
    if getattr(hint, "__origin__", None) is Literal:
        return get_args(hint)
    return ()
