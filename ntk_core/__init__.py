"""ntk-eos engine: full-batch gradient descent at the Edge of Stability, with the NTK spectrum,
Hessian sharpness and kernel–target alignment measured at every step and logged to xarray.

The public surface is re-exported here; everything else is internal.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import ConfigError, RunConfig  # noqa: E402
from .numerics.alignment import kernel_target_alignment  # noqa: E402
from .numerics.hessian import hessian_sharpness  # noqa: E402
from .numerics.ntk import empirical_ntk  # noqa: E402
from .numerics.ntk.eigenpairs import ntk_eigenpairs  # noqa: E402
from .training.buffer import RunBuffer, StepRecord, load_run, save_run  # noqa: E402
from .training.trainer import Trainer, run  # noqa: E402

__all__ = [
    "ConfigError",
    "RunBuffer",
    "RunConfig",
    "StepRecord",
    "Trainer",
    "empirical_ntk",
    "hessian_sharpness",
    "kernel_target_alignment",
    "load_run",
    "ntk_eigenpairs",
    "run",
    "save_run",
]
