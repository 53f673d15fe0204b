"""The human summary of a run log that ``run`` prints at the end and ``info`` prints for a file."""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from ..config import RunConfig
from ..models import UNUSED_FIELDS
from ..numerics.stability import threshold_label, tracked_sharpness
from ..training.schema import measured_rows
from ..vocabulary import GD_PROCESS


def fmt(x: float | None, spec: str = ".4g") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def summarize(ds: xr.Dataset) -> str:
    """Status, model, kernel, and the final figures of the last step and last measured step;
    with flows, gradient descent's, then one block for the flows."""
    if "process" in ds.dims:
        return "\n".join([summarize(ds.sel(process=GD_PROCESS)), *flow_lines(ds)])
    cfg = RunConfig.from_json(ds.attrs["config"])
    steps = ds.sizes["step"]
    lines = [f"status       {ds.attrs['status']}: {ds.attrs.get('status_reason', '')}".rstrip(": "),
             f"run          {_model_and_data(ds, cfg)}, loss {cfg.loss}",
             f"NTK          {ds.attrs.get('ntk_mode')} · {ds.attrs.get('kernel')} kernel · "
             f"{ds.sizes['sample']} rows · k = {ds.sizes['eig']}",
             f"steps        {steps}"]
    if steps:
        last = ds.isel(step=-1)
        # isel, not where: where would broadcast the eigenvector snapshots over every step
        measured = ds.isel(step=measured_rows(ds.measured.values))
        lr = float(last.lr)
        label = threshold_label(cfg.optimizer, cfg.momentum, cfg.nesterov, cfg.beta1)
        thresholds = (ds.stability_threshold.values if "stability_threshold" in ds
                      else 2 / ds.lr.values)  # files from before the optimisers: GD
        lines.append(f"optimiser    {_optimizer(cfg)}")
        lines.append(f"final η      {lr:g} (threshold {label} = {thresholds[-1]:.4g})")
        lines.append(f"final loss   {float(last.loss):.4e} (start {float(ds.loss[0]):.4e}), "
                     f"accuracy {float(last.accuracy):.3f}")
        if measured.sizes.get("step", 0):
            m = measured.isel(step=-1)
            rows = measured_rows(ds.measured.values)
            tracked = str(ds.attrs.get("tracked_sharpness", tracked_sharpness(cfg.optimizer)))
            for name, title in (("sharpness", "sharpness   "),
                                ("preconditioned_sharpness", "λ_max(P⁻¹H) "),
                                ("batch_sharpness", "batch S     ")):
                if name != "sharpness" and (name != tracked or name not in ds):
                    continue
                values = measured[name].values
                line = f"{title} {fmt(float(values[-1]))} (max {fmt(_nanmax(values))}"
                if name == tracked:
                    half = len(values) // 2
                    ratio = _nanmedian(values[half:] / thresholds[rows][half:])
                    line += f"; median over the 2nd half = {fmt(ratio, '.3f')} × {label}"
                lines.append(line + ")")
            lines += [
                f"GN λ₁(K)/n   {fmt(float(m.gn_sharpness))}",
                f"KTA          {fmt(float(m.kta), '.4f')} (start {fmt(float(measured.kta[0]), '.4f')})"
                f" · centred {fmt(float(m.kta_centered), '.4f')}",
                f"a₁, A_k      {fmt(float(m.alignment[0]), '.4f')}, {fmt(float(m.topk_mass), '.4f')}",
                f"kernel dist  {fmt(float(m.kernel_distance), '.4f')} from the initial NTK",
                f"cost         {np.nanmedian(measured.ntk_products):.0f} NTK products, "
                f"{np.nanmedian(measured.hvp_products):.0f} HVPs per measured step (median); "
                f"{steps / np.nansum(ds.time_step):.1f} steps/s over the run",
            ]
    return "\n".join(lines)


def flow_lines(ds: xr.Dataset) -> list[str]:
    """One line per process of a run with flows (final loss, sharpness against 2/η over the
    second half, KTA, distance to GD), and the central flow's prediction of GD's loss."""
    steps = ds.sizes["step"]
    if not steps:
        return []
    threshold = 2 / ds.lr.values
    half = slice(steps // 2, None)
    lines = [f"flows        {ds.attrs.get('flows', '')} from GD's initial weights"
             + (f" · ended: {ds.attrs['flow_status']}" if ds.attrs.get("flow_status") else "")]
    for process in ds.process.values:
        one = ds.sel(process=process)
        rows = measured_rows(one.measured.values)
        kta = one.kta.values[rows]
        ratio = _nanmedian((one.sharpness.values / threshold)[half])
        distance = ("" if process == GD_PROCESS
                    else f" · ‖w − w_gd‖/‖w_gd‖ {fmt(float(one.distance_to_gd.values[-1]), '.3g')}")
        lines.append(f"  {str(process):<9}  loss {fmt(float(one.loss.values[-1]), '.4e')} · "
                     f"S/(2/η) {fmt(ratio, '.3f')} (median, 2nd half) · KTA "
                     f"{fmt(float(kta[-1]) if len(kta) else math.nan, '.4f')}{distance}")
    if "central" in ds.process.values:
        gd_loss = ds.loss.sel(process=GD_PROCESS).values[half]
        predicted = ds.predicted_loss.values[half]
        ok = np.isfinite(gd_loss) & np.isfinite(predicted)
        if ok.any():
            lines.append(f"  predicted  GD's mean loss over the 2nd half {np.mean(gd_loss[ok]):.4e}"
                         f"; the central flow predicts {np.mean(predicted[ok]):.4e}")
    return lines


def _model_and_data(ds: xr.Dataset, cfg: RunConfig) -> str:
    """"mlp (width 128, ...) on digits, n = 256, target onehot", or the user's module and arrays
    as the log names them."""
    model = str(ds.attrs.get("model", cfg.arch))
    data = str(ds.attrs.get("data", cfg.dataset))
    model_text = f"{cfg.arch} ({_shape(cfg)})" if model == cfg.arch else model
    data_text = (f"{cfg.dataset}, n = {cfg.n}, target {cfg.target}" if data == cfg.dataset
                 else f"{data}")
    return f"{model_text} on {data_text}"


def _nanmax(values: np.ndarray) -> float:
    return float(np.nanmax(values)) if np.isfinite(values).any() else math.nan


def _nanmedian(values: np.ndarray) -> float:
    return float(np.nanmedian(values)) if np.isfinite(values).any() else math.nan


def _optimizer(cfg: RunConfig) -> str:
    """The optimiser and the options it uses: "gd, momentum 0.9 (Nesterov)", "adam (β₁ 0.9,
    β₂ 0.999, ε 1e-08)", "sgd, batch 32"."""
    if cfg.optimizer in ("adam", "rmsprop"):
        betas = f"β₁ {cfg.beta1:g}, " if cfg.optimizer == "adam" else ""
        return f"{cfg.optimizer} ({betas}β₂ {cfg.beta2:g}, ε {cfg.eps:g})"
    text = cfg.optimizer + (f", batch {cfg.batch_size}" if cfg.optimizer == "sgd" else "")
    if cfg.momentum:
        text += f", momentum {cfg.momentum:g}" + (" (Nesterov)" if cfg.nesterov else "")
    return text


def _shape(cfg: RunConfig) -> str:
    unused = UNUSED_FIELDS.get(cfg.arch, ())
    parts = [f"width {cfg.width}"] + [f"depth {cfg.depth}"] * ("depth" not in unused) \
        + [cfg.activation] * ("activation" not in unused)
    return ", ".join(parts)
