"""Runs kept for comparison: a few columns and the final measurements of a finished or paused
run, copied out of its ``RunBuffer`` for the overlays (no measurement is recomputed)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ntk_core.config import RunConfig
from ntk_core.training.buffer import RunBuffer
from ntk_core.training.schema import RunSchemaError, config_from_attrs, last_measured
from ntk_core.vocabulary import RunStatus

MAX_KEPT = 8  # runs kept for comparison (the oldest is dropped)
KEPT_COLUMNS = ("step", "loss", "sharpness", "stability_threshold", "kta", "topk_mass", "a1")


@dataclass
class KeptRun:
    """A finished or paused run kept for comparison: its curves and its final measurements."""

    label: str
    lr: float
    frame: pd.DataFrame  # KEPT_COLUMNS, measured steps for the measured columns
    final: dict[str, float] = field(default_factory=dict)  # kta, a1, topk_mass, sharpness, loss
    spectrum: pd.DataFrame | None = None  # eigval_normalized, alignment of the last measurement
    status: RunStatus = RunStatus.READY
    config: RunConfig | None = None  # as the run started (None: a file without a valid one)


def lr_history_label(lrs: np.ndarray) -> str:
    """"η=0.1", or "η=0.1→0.05" for a run whose η was changed on the way (first → … → last)."""
    finite = np.asarray(lrs, dtype=float)
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return "η=?"
    changes = finite[np.r_[True, finite[1:] != finite[:-1]]]
    shown = [f"{v:g}" for v in changes]
    if len(shown) > 3:
        shown = [shown[0], "…", shown[-1]]
    return "η=" + "→".join(shown)


def keep_run(buffer: RunBuffer, label: str, lr: float) -> KeptRun:
    """Copy what the overlays need from ``buffer`` (a few columns, not the eigenvectors)."""
    rows = buffer.rows(0)
    frame = pd.DataFrame({
        "step": rows["step"].astype(float), "loss": rows["loss"],
        "sharpness": rows["sharpness"], "stability_threshold": rows["stability_threshold"],
        "kta": rows["kta"], "topk_mass": rows["topk_mass"], "a1": rows["alignment"][:, 0],
    })
    final: dict[str, float] = {"loss": float(rows["loss"][-1]) if len(frame) else np.nan}
    spectrum = None
    i = last_measured(rows["measured"])
    if i is not None:
        final.update(kta=float(rows["kta"][i]), a1=float(rows["alignment"][i, 0]),
                     topk_mass=float(rows["topk_mass"][i]), sharpness=float(rows["sharpness"][i]))
        spectrum = pd.DataFrame({"eigval_normalized": rows["eigval_normalized"][i],
                                 "alignment": rows["alignment"][i]}).dropna()
    try:
        config: RunConfig | None = config_from_attrs(buffer.attrs)
    except RunSchemaError:
        config = None
    return KeptRun(label, lr, frame, final, spectrum, buffer.status, config)
