"""What the live plots draw, computed from the engine's buffer without Bokeh: the rows of each
curve source, the matrices block-averaged for the browser, and the names on the axes. All values
are the engine's; the only arithmetic is display scaling (λ/n, block means, row order)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ntk_core.numerics.stability import threshold_label
from ntk_core.training.buffer import RunBuffer, flow_column
from ntk_core.training.schema import RunSchemaError, config_from_attrs, last_measured
from ntk_core.vocabulary import OptimizerName

from ..session.kept_runs import KeptRun
from ..session.theory_lines import TheoryCurve, TheoryTarget

K_SHOW = 10  # eigenvalue curves drawn in the spectrum plot
# The flows beside GD (RunConfig.flows). Their curves are drawn at the measured steps, where
# each process is measured as GD is, in the sources of GD's curves of the same cadence: each
# flow's loss and sharpness and the central flow's predicted time-averaged loss of GD with the
# fast curves, each flow's KTA with the slow ones. Their distances from GD (every step) have a
# source of their own. A flow a run lacks is NaN.
FLOWS = ("central", "stable")
FLOW_MEASURE_COLUMNS = ["predicted_loss", *(f"{name}_{p}" for name in ("loss", "sharpness")
                                            for p in FLOWS)]
FLOW_SPECTRUM_COLUMNS = [f"kta_{p}" for p in FLOWS]
DISTANCE_COLUMNS = ["step", *(f"distance_{p}" for p in FLOWS)]
MAX_PIXELS = 256  # NTK heatmap side after block-averaging
MAX_VECTOR_COLUMNS = 512
MAX_HISTORY_ROWS = 128
STEP_COLUMNS = ["step", "loss", "accuracy", "two_over_lr"]
# Measured rows are split by how often the page redraws them: the fast curves (sharpness and
# the u₁ᵀr oscillation) with every update, the slow ones (eigenvalues and alignment, which
# change over tens of steps) once a second; each redrawn figure costs the browser a paint.
# The sharpness the optimiser's threshold is drawn against (``tracked_sharpness``) is the
# Hessian's for GD, or one of the two extra columns for the adaptive methods and SGD.
TRACKED_COLUMNS = ["preconditioned_sharpness", "batch_sharpness"]
MEASURE_COLUMNS = ["step", "two_over_lr", "stability_threshold", "sharpness", "gn_sharpness",
                   *TRACKED_COLUMNS, "u1_residual", *FLOW_MEASURE_COLUMNS]
EIGENVALUE_COLUMNS = [f"lam{i + 1}" for i in range(K_SHOW)]
LABEL_ALIGNMENT_COLUMNS = ["kta", "topk_mass", "a1"]
SPECTRUM_COLUMNS = ["step", "two_over_lr", *EIGENVALUE_COLUMNS, *LABEL_ALIGNMENT_COLUMNS,
                    *FLOW_SPECTRUM_COLUMNS]
ALIGNMENT_COLUMNS = ["eigval_normalized", "alignment"]
COMPARE_COLUMNS = ["lr", "kta", "a1", "topk_mass"]


def empty_data(names: list[str] | tuple[str, ...]) -> dict[str, np.ndarray]:
    return {c: np.array([], dtype=float) for c in names}


def finite(values: np.ndarray) -> np.ndarray:
    """Floats with ±inf as NaN (a diverged loss): Bokeh draws NaN as a gap."""
    out = np.asarray(values, dtype=float)
    return np.where(np.isfinite(out), out, np.nan)


def flow_data(rows: dict[str, np.ndarray], columns: list[str],
              keep: np.ndarray | slice = slice(None)) -> dict[str, np.ndarray]:
    """The flow curves ``columns`` (``loss_central``: the buffer's ``loss@central``;
    ``distance_stable``: ``distance_to_gd@stable``) at rows ``keep``, NaN where the run has no
    such flow."""
    out = {}
    for column in columns:
        if column == "predicted_loss":
            key = column
        else:
            name, process = column.rsplit("_", 1)
            key = flow_column("distance_to_gd" if name == "distance" else name, process)
        values = rows.get(key)
        out[column] = (finite(values[keep]) if values is not None
                       else np.full(len(rows["step"][keep]), np.nan))
    return out


def step_frame(rows: dict[str, np.ndarray]) -> pd.DataFrame:
    """Every step: loss, accuracy, 2/η."""
    return pd.DataFrame({"step": rows["step"].astype(float), "loss": finite(rows["loss"]),
                         "accuracy": rows["accuracy"], "two_over_lr": rows["two_over_lr"]})


def distance_frame(rows: dict[str, np.ndarray]) -> pd.DataFrame:
    """Every step: each flow's distance from GD, ‖w − w_gd‖/‖w_gd‖."""
    return pd.DataFrame({"step": rows["step"].astype(float),
                         **flow_data(rows, DISTANCE_COLUMNS[1:])})


def measure_frame(rows: dict[str, np.ndarray]) -> pd.DataFrame:
    """Measured steps only, so that measure_every > 1 still draws connected curves; the flows
    are measured on the same steps as GD."""
    keep = rows["measured"] == 1
    gd = [c for c in MEASURE_COLUMNS if c not in FLOW_MEASURE_COLUMNS]
    return pd.DataFrame({**{c: finite(rows[c][keep]) for c in gd},
                         **flow_data(rows, FLOW_MEASURE_COLUMNS, keep)})


def spectrum_frame(rows: dict[str, np.ndarray], n: int) -> pd.DataFrame:
    """Measured steps, the slow curves: the top K_SHOW eigenvalues divided by n (comparable
    with 2/η), KTA, A_k and a₁, and each flow's KTA."""
    keep = rows["measured"] == 1
    eig = rows["eigenvalues"][keep, :K_SHOW] / n
    data = {"step": rows["step"][keep].astype(float), "two_over_lr": rows["two_over_lr"][keep]}
    for i in range(K_SHOW):
        data[f"lam{i + 1}"] = finite(eig[:, i]) if i < eig.shape[1] else np.full(len(eig), np.nan)
    data.update(kta=finite(rows["kta"][keep]), topk_mass=finite(rows["topk_mass"][keep]),
                a1=finite(rows["alignment"][keep, 0]))
    data.update(flow_data(rows, FLOW_SPECTRUM_COLUMNS, keep))
    return pd.DataFrame(data)


def column_data(frame: pd.DataFrame, names: list[str] | tuple[str, ...]) -> dict[str, np.ndarray]:
    """The frame's ``names`` as float arrays, the form a ColumnDataSource takes."""
    return {c: np.asarray(frame[c], dtype=float) for c in names}


# ---- matrices for display ----------------------------------------------------------------------
def display_order(row_data: dict[str, np.ndarray]) -> np.ndarray:
    """Kernel rows grouped by output, then by class (the engine sorts by class, sample-major)."""
    labels = np.asarray(row_data["label"])
    outputs = np.asarray(row_data.get("output_index", np.zeros_like(labels)))
    return np.lexsort((np.arange(len(labels)), labels, outputs))


def block_mean(a: np.ndarray, axis: int, max_size: int) -> tuple[np.ndarray, int]:
    """Average runs of f consecutive entries along ``axis`` so at most ``max_size`` remain;
    non-finite entries (padding, a diverged run) are left out of their block's mean."""
    size = a.shape[axis]
    f = max(1, math.ceil(size / max_size))
    if f == 1:
        return a, 1
    a = np.asarray(a, np.float32)
    pad = (-size) % f
    if pad:
        shape = list(a.shape)
        shape[axis] = pad
        a = np.concatenate([a, np.full(shape, np.nan, np.float32)], axis)
    blocks = a.reshape(*a.shape[:axis], -1, f, *a.shape[axis + 1:])  # a view: no copy
    if not pad:  # f strided adds: several times faster than a mean over a strided axis
        index = [slice(None)] * a.ndim
        total = np.zeros(blocks.shape[:axis + 1] + blocks.shape[axis + 2:], np.float32)
        for i in range(f):
            index[axis] = slice(i, None, f)
            total += a[tuple(index)]
        out = total / f
        if np.isfinite(out).all():
            return out, f
    return np.nanmean(blocks, axis=axis + 1), f  # padding or non-finite entries: skip them


def block_boundaries(row_data: dict[str, np.ndarray], order: np.ndarray
                     ) -> tuple[list[int], list[int], list[tuple[float, str]]]:
    """Row positions where the class changes, where the output changes, and class tick marks."""
    labels = np.asarray(row_data["label"])[order]
    outputs = np.asarray(row_data.get("output_index", np.zeros_like(labels)))[order]
    key = outputs * (labels.max() + 1) + labels
    edges: list[int] = (np.flatnonzero(np.diff(key)) + 1).tolist()
    out_edges = [e for e in edges if outputs[e] != outputs[e - 1]]
    starts = [0, *edges]
    ends = [*edges, len(labels)]
    ticks = [((s + e) / 2, str(labels[s])) for s, e in zip(starts, ends, strict=True)]
    return [e for e in edges if e not in out_edges], out_edges, ticks


def matrix_payload(buffer: RunBuffer, history: bool) -> dict:
    """What the matrix pipes need, block-averaged for the browser."""
    order = display_order(buffer.row_data)
    class_edges, output_edges, ticks = block_boundaries(buffer.row_data, order)
    out: dict = {"m": buffer.m, "class_edges": class_edges, "output_edges": output_edges,
                 "ticks": ticks}
    latest = buffer.latest_eigenvectors()
    if latest is not None:
        vectors, f = block_mean(latest[1].take(order, axis=1), 1, MAX_VECTOR_COLUMNS)
        out["vectors"] = (latest[0], vectors, f)
    if history:
        steps, u1 = buffer.eigenvector_history(0)
        if len(steps) >= 2:
            grid = np.linspace(steps[0], steps[-1], min(MAX_HISTORY_ROWS, len(steps)))
            nearest = np.clip(np.searchsorted(steps, grid), 0, len(steps) - 1)
            values, f = block_mean(u1[nearest].take(order, axis=1), 1, MAX_VECTOR_COLUMNS)
            out["history"] = (grid, values, f)
    kernel = buffer.latest_kernel_stored()
    if kernel is not None:
        step, K, rows = kernel
        columns = rows[order]  # display row i is stored row columns[i]
        # rows first (whole-row copies), then the columns of the 4× smaller result
        k, f = block_mean(K.take(columns, axis=0), 0, MAX_PIXELS)
        k, _ = block_mean(k.take(columns, axis=1), 1, MAX_PIXELS)
        out["kernel"] = (step, k, f)
    return out


def last_alignment(rows: dict[str, np.ndarray]) -> tuple[int, pd.DataFrame] | None:
    """(step, λᵢ/‖K‖ and aᵢ of its top eigenpairs) of the last measured row, or None."""
    i = last_measured(rows["measured"])
    if i is None:
        return None
    frame = pd.DataFrame({"eigval_normalized": rows["eigval_normalized"][i],
                          "alignment": rows["alignment"][i]}).dropna()
    return int(rows["step"][i]), frame


def comparison_frame(kept: list[KeptRun]) -> pd.DataFrame:
    """One row per kept run, by η: its final KTA, a₁ and A_k."""
    frame = pd.DataFrame([{"lr": k.lr, "kta": k.final.get("kta", np.nan),
                           "a1": k.final.get("a1", np.nan),
                           "topk_mass": k.final.get("topk_mass", np.nan)} for k in kept],
                         columns=COMPARE_COLUMNS)
    return frame.sort_values("lr")


def theory_label(target: TheoryTarget | None) -> str:
    """The legend of the predicted final KTA at the run's η."""
    if target is None:
        return "theory: final KTA at η"
    if not np.isfinite(target.kta):  # 2/η below the flattest interpolant's sharpness
        return f"theory: no stable fit at η = {target.lr:g}"
    return f"theory: final KTA {target.kta:.3f} at η = {target.lr:g}"


def theory_curve_data(curve: TheoryCurve | None) -> dict[str, np.ndarray]:
    """The predicted curve's rows (NaN, where no fit is stable, draws as a gap)."""
    if curve is None:
        return empty_data(("lr", "kta"))
    return {"lr": np.asarray(curve.lr, dtype=float), "kta": finite(curve.kta)}


def buffer_threshold(buffer: RunBuffer) -> tuple[OptimizerName, str]:
    """(optimizer, threshold formula) of the run in ``buffer`` as its config started it; a file
    whose config cannot be read is taken for plain gradient descent. A live run's β can have
    changed since: ``TrainingRun.threshold_label`` has the current one."""
    try:
        c = config_from_attrs(buffer.attrs)
    except RunSchemaError:
        return "gd", threshold_label("gd")
    return c.optimizer, threshold_label(c.optimizer, c.momentum, c.nesterov, c.beta1)


def buffer_kernel_name(buffer: RunBuffer) -> str:
    """``kernel_name`` of the run in ``buffer``."""
    outputs = int(np.max(buffer.row_data["output_index"], initial=0)) + 1
    return kernel_name(str(buffer.attrs.get("kernel", "full")), outputs)


def kernel_name(kind: str, outputs: int) -> str:
    """Which NTK the alignment plots describe, in words. It decides what a₁ reads: with C
    balanced one-hot classes the traced kernel's u₁ is close to the constant vector, so a₁ sits
    near 1/C; the full kernel's u₁ is close to 1 ⊗ v for an output direction v, which the
    targets meet only through Σ_c v_c, so a₁ starts at 1/C² and falls near 0 in training."""
    if kind == "traced":
        return "traced NTK (n × n)"
    return "full NTK (nC × nC)" if outputs > 1 else "NTK (n × n)"
