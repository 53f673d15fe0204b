"""ntk-eos engine: full-batch gradient descent at the Edge of Stability, with the NTK spectrum,
Hessian sharpness and kernel–target alignment measured at every step and logged to xarray.

The public surface is re-exported here; everything else is internal.
"""

from __future__ import annotations

from .config import ConfigError, RunConfig
from .numerics.alignment import kernel_target_alignment
from .numerics.hessian import hessian_sharpness, sharpness_gradient
from .numerics.ntk import empirical_ntk
from .numerics.ntk.eigenpairs import ntk_eigenpairs
from .training.buffer import RunBuffer, StepRecord
from .training.netcdf import load_run, save_run
from .training.trainer import Trainer, run
from .version import __version__
from .vocabulary import RunStatus

__all__ = [
    "ConfigError",
    "RunBuffer",
    "RunConfig",
    "RunStatus",
    "StepRecord",
    "Trainer",
    "empirical_ntk",
    "hessian_sharpness",
    "kernel_target_alignment",
    "load_run",
    "ntk_eigenpairs",
    "run",
    "save_run",
    "sharpness_gradient",
    "__version__",
]
