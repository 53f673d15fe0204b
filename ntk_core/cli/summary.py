"""The human summary of a run log that ``run`` prints at the end and ``info`` prints for a file."""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from ..config import RunConfig
from ..models import UNUSED_FIELDS
from ..training.schema import measured_rows


def fmt(x: float | None, spec: str = ".4g") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def summarize(ds: xr.Dataset) -> str:
    """Status, model, kernel, and the final figures of the last step and last measured step."""
    cfg = RunConfig.from_json(ds.attrs["config"])
    steps = ds.sizes["step"]
    lines = [f"status       {ds.attrs['status']}: {ds.attrs.get('status_reason', '')}".rstrip(": "),
             f"run          {cfg.arch} ({_shape(cfg)}) "
             f"on {cfg.dataset}, n = {cfg.n}, target {cfg.target}, loss {cfg.loss}",
             f"NTK          {ds.attrs.get('ntk_mode')} · {ds.attrs.get('kernel')} kernel · "
             f"{ds.sizes['sample']} rows · k = {ds.sizes['eig']}",
             f"steps        {steps}"]
    if steps:
        last = ds.isel(step=-1)
        # isel, not where: where would broadcast the eigenvector snapshots over every step
        measured = ds.isel(step=measured_rows(ds.measured.values))
        lr = float(last.lr)
        lines.append(f"final η      {lr:g} (2/η = {2 / lr:.4g})")
        lines.append(f"final loss   {float(last.loss):.4e} (start {float(ds.loss[0]):.4e}), "
                     f"accuracy {float(last.accuracy):.3f}")
        if measured.sizes.get("step", 0):
            m = measured.isel(step=-1)
            sharp = measured.sharpness.values
            half = sharp[len(sharp) // 2:]
            ratio = np.nanmedian(half / (2 / measured.lr.values[len(sharp) // 2:])) if np.isfinite(
                half).any() else float("nan")
            lines += [
                f"sharpness    {fmt(float(m.sharpness))} (max {fmt(float(np.nanmax(sharp)) if np.isfinite(sharp).any() else float('nan'))}; "  # noqa: E501
                f"median over the 2nd half = {fmt(ratio, '.3f')} × 2/η)",
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


def _shape(cfg: RunConfig) -> str:
    unused = UNUSED_FIELDS.get(cfg.arch, ())
    parts = [f"width {cfg.width}"] + [f"depth {cfg.depth}"] * ("depth" not in unused) \
        + [cfg.activation] * ("activation" not in unused)
    return ", ".join(parts)
