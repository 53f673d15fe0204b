"""The Sweep view: its plots' Bokeh data against numbers computed here from the sweep itself,
clear messages for files that are not sweeps, and the shipped example sweep.

The fixture sweep is tiny (n = 16, 20 steps) and has one η per way a run can stop: the step
budget (η = 0.02), the target loss (η = 0.5) and divergence (η = 30).
"""

from __future__ import annotations

from pathlib import Path

import holoviews as hv
import numpy as np
import pytest
import xarray as xr

from app.views.sweep_plots import MEAN, final_plot, kta_curves, sharpness_curves, spectrum_plot
from app.views.sweep_view import (
    EXAMPLE,
    SweepView,
    check_sweep,
    example_sweep_path,
    read_sweep_bytes,
    table_frame,
)
from ntk_core.config import RunConfig
from ntk_core.experiments.sweep import sweep
from ntk_core.experiments.sweep_summary import final_by_lr
from ntk_core.training.netcdf import save_run

pytestmark = pytest.mark.timeout(120)

BASE = RunConfig(dataset="digits", classes=(0, 1, 2, 3), n=16, width=8, depth=2, target="onehot",
                 kernel="traced", k=4, steps=20, measure_every=3, target_loss=0.1)
LRS = [0.02, 0.5, 30.0]


@pytest.fixture(scope="module")
def cube() -> xr.Dataset:
    out = sweep(BASE, {"lr": LRS, "seed": [0, 1]}, scheduler="serial", progress=False)
    assert set(out.status.values.ravel()) == {"completed", "reached_target", "diverged"}
    return out


@pytest.fixture(scope="module")
def sweep_file(cube: xr.Dataset, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return save_run(cube, tmp_path_factory.mktemp("sweep") / "s.nc").read_bytes()


def sources(element: hv.Overlay) -> list[tuple[hv.Element, dict]]:
    """(element, Bokeh column data) for every layer of a rendered overlay."""
    plot = hv.renderer("bokeh").get_plot(element)
    return [(sub.current_frame, sub.handles["source"].data) for sub in plot.subplots.values()
            if "source" in sub.handles]


def test_final_kta_means_leave_out_diverged_runs(cube: xr.Dataset) -> None:
    layers = sources(final_plot(cube))
    curve = next(data for el, data in layers if isinstance(el, hv.Curve))
    kta, status = cube.final_kta.values, cube.status.values
    for i, lr in enumerate(LRS):
        ok = status[i] != "diverged"
        expected = kta[i][ok].mean() if ok.any() else np.nan
        got = np.asarray(curve["mean"])[np.asarray(curve["lr"]) == lr]
        if ok.any():
            assert got == pytest.approx([expected], rel=1e-12)
        else:
            assert len(got) == 0 or np.isnan(got).all(), "a mean over diverged runs only"
    bars = next(data for el, data in layers if isinstance(el, hv.ErrorBars))
    stds = np.array([kta[i][status[i] != "diverged"].std() for i in range(2)])
    means = np.array([kta[i][status[i] != "diverged"].mean() for i in range(2)])
    assert np.asarray(bars["upper"])[:2] == pytest.approx(means + stds, rel=1e-12)
    assert np.asarray(bars["lower"])[:2] == pytest.approx(means - stds, rel=1e-12)
    # every diverged run is still shown, as its own red point
    diverged = [data for el, data in layers
                if isinstance(el, hv.Scatter) and "diverged" in el.label]
    assert len(diverged) == 1
    assert sorted(diverged[0]["lr"]) == [30.0, 30.0]
    assert sorted(diverged[0]["value"]) == pytest.approx(sorted(kta[2]))


def test_other_metrics_and_summary_agree(cube: xr.Dataset) -> None:
    layers = sources(final_plot(cube, "a1"))
    curve = next(data for el, data in layers if isinstance(el, hv.Curve))
    a1 = cube.final_alignment.values[:, :, 0]
    assert np.asarray(curve["mean"])[1] == pytest.approx(a1[1].mean())
    # values that agree to a few parts in a thousand get a y range 10 % of their size tall
    flat = cube.assign(final_kta=cube.final_kta * 0 + 0.25 + 1e-4 * cube.seed)
    y_range = hv.renderer("bokeh").get_plot(final_plot(flat)).state.y_range
    assert y_range.end - y_range.start == pytest.approx(0.1 * 0.25001 * 1.2, rel=1e-3)
    spread = hv.renderer("bokeh").get_plot(final_plot(cube)).state.y_range
    finite = cube.final_kta.values[:2]
    assert spread.end - spread.start < 1.5 * (finite.max() - finite.min())  # autoscaled
    stats = final_by_lr(cube, "final_topk_mass")
    assert list(stats.runs) == [2, 2, 0] and list(stats.excluded) == [0, 0, 2]
    assert stats["mean"][0] == pytest.approx(cube.final_topk_mass.values[0].mean())


def test_kta_curves_one_per_lr(cube: xr.Dataset) -> None:
    layers = sources(kta_curves(cube, seed=1))
    curves = [(el, data) for el, data in layers if isinstance(el, hv.Curve)]
    assert [el.label for el, _ in curves] == ["η = 0.02", "η = 0.5", "η = 30 (diverged)"]
    # the diverged η ends in a cross on its last finite point, however short its curve
    crosses = [data for el, data in layers if isinstance(el, hv.Scatter)]
    diverged = curves[2][1]
    assert len(crosses) == 1 and list(crosses[0]["step"]) == [list(diverged["step"])[-1]]
    for i, (_, data) in enumerate(curves):
        run = cube.isel(lr=i).sel(seed=1)
        ok = np.isfinite(run.kta.values)
        assert list(data["step"]) == list(run.step.values[ok])
        assert np.asarray(data["KTA"]) == pytest.approx(run.kta.values[ok])
    # the seed mean is taken where both seeds measured
    _, data = sources(kta_curves(cube, seed=MEAN))[1]
    both = np.isfinite(cube.kta.values[1]).all(axis=0)
    assert np.asarray(data["KTA"]) == pytest.approx(cube.kta.values[1][:, both].mean(axis=0))


def test_sharpness_against_two_over_lr(cube: xr.Dataset) -> None:
    plot = hv.renderer("bokeh").get_plot(sharpness_curves(cube, seed=0))
    frames = [(sub.current_frame, sub.handles["source"].data) for sub in plot.subplots.values()]
    curves = [data for el, data in frames if isinstance(el, hv.Curve)]
    run = cube.isel(lr=1).sel(seed=0)
    ok = np.isfinite(run.sharpness.values)
    assert np.asarray(curves[1]["sharpness"]) == pytest.approx(run.sharpness.values[ok])
    lines = [data for el, data in frames if isinstance(el, hv.HLines)]
    assert len(lines) == 1 and sorted(next(iter(lines[0].values()))) == pytest.approx(
        sorted(2 / lr for lr in LRS))
    # the diverged run's sharpness does not set the range: it ends a little above 2/η
    assert plot.state.y_range.end == pytest.approx(1.1 * 2 / LRS[0])


def test_alignment_spectrum_per_lr(cube: xr.Dataset) -> None:
    layers = [(el, d) for el, d in sources(spectrum_plot(cube, seed=0)) if isinstance(el, hv.Scatter)]
    assert len(layers) == len(LRS)
    run = cube.isel(lr=1).sel(seed=0)
    _, data = layers[1]
    lam, a = run.final_eigval_normalized.values, run.final_alignment.values
    keep = (lam > 0) & (a > 0)
    assert np.asarray(data["λᵢ/‖K‖_F"]) == pytest.approx(lam[keep])
    assert np.asarray(data["aᵢ"]) == pytest.approx(a[keep])
    assert keep.sum() >= 3


def test_table_has_every_run(cube: xr.Dataset) -> None:
    table = table_frame(cube)
    assert len(table) == cube.sizes["lr"] * cube.sizes["seed"]
    assert list(table["stopped at"]).count("diverged") == 2
    row = table[(table["η"] == "0.5") & (table.seed == 0)].iloc[0]
    assert row["final KTA"] == f"{float(cube.final_kta.sel(lr=0.5, seed=0)):.4f}"
    assert row.steps == int(cube.steps_done.sel(lr=0.5, seed=0))


def test_view_opens_uploads_and_says_why_a_file_is_refused(cube: xr.Dataset,
                                                           sweep_file: bytes) -> None:
    view = SweepView()
    assert view.source == EXAMPLE and not view.alert.visible
    assert view.load_bytes(sweep_file, "mine.nc") and view.source == "mine.nc"
    assert "6 runs over lr (3), seed (2)" in view.header.object
    assert "2 diverged (η = 30)" in view.header.object
    view.seed_select.value = 1
    assert "seed 1" in view.kta_pane.object.opts.get().kwargs["title"]
    cases = {b"not a netcdf file": "not a readable NetCDF file",
             sweep_file: "the limit is"}
    for data, message in cases.items():
        max_mb = 1e-4 if message == "the limit is" else 200
        with pytest.raises(ValueError, match=message):
            read_sweep_bytes(data, max_mb=max_mb)
    assert not view.load_bytes(b"garbage", "bad.nc")
    assert "Could not open <code>bad.nc</code>" in view.alert.object and view.alert.visible
    assert "Still showing <code>mine.nc</code>" in view.alert.object and view.source == "mine.nc"


def test_no_uploads_on_a_hosted_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.session import limits

    for mode, shown in (("hosted", False), ("local", True)):
        monkeypatch.setattr(limits, "current", lambda m=mode: limits.ServerLimits.defaults(m))
        view = SweepView()
        assert view.source == EXAMPLE
        inputs = view.__panel__().select(type(view.upload))
        assert (view.upload in inputs) is shown, mode


def test_server_folder_lists_and_opens_sweeps(cube: xr.Dataset, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    save_run(cube, tmp_path / "ladder.nc")
    save_run(cube.isel(lr=0, seed=0).drop_vars("status").expand_dims(sample=2), tmp_path / "one.nc")
    (tmp_path / "link.nc").symlink_to(tmp_path / "ladder.nc")
    monkeypatch.setenv("NTK_EOS_RUNS_DIR", str(tmp_path))
    view = SweepView()
    assert view.server_select.options == ["ladder", "one"], "links are not listed"
    view.server_select.value = "ladder"
    view.server_button.clicks += 1
    assert view.source == "ladder.nc" and not view.alert.visible
    view.server_select.value = "one"
    view.server_button.clicks += 1
    assert "single run" in view.alert.object and view.source == "ladder.nc"
    view.server_select.param.update(options=["link"], value="link")
    view._open_from_server()
    assert "link" in view.alert.object and view.source == "ladder.nc"


def test_file_names_are_shown_as_text(sweep_file: bytes) -> None:
    view = SweepView()
    view.load_bytes(sweep_file, "<img src=x onerror=alert(1)>*.nc")
    assert "<img" not in view.header.object and "&lt;img" in view.header.object
    view.load_bytes(b"junk", "<b>bad</b>.nc")
    assert "<b>" not in view.alert.object


def test_schema_messages(cube: xr.Dataset) -> None:
    run = cube.isel(lr=0, seed=0).drop_vars(["status"]).expand_dims(sample=2)
    with pytest.raises(ValueError, match="single run"):
        check_sweep(run.drop_vars(["lr", "seed"]))
    with pytest.raises(ValueError, match="missing final_kta"):
        check_sweep(cube.drop_vars("final_kta"))
    with pytest.raises(ValueError, match="no lr dimension"):
        check_sweep(cube.isel(lr=0))


def test_extra_grid_dims_are_series(cube: xr.Dataset) -> None:
    wide = xr.concat([cube, cube.assign(final_kta=cube.final_kta + 0.1)], dim="width")
    wide = wide.assign_coords(width=[8, 16])
    curves = [d for el, d in sources(final_plot(wide)) if isinstance(el, hv.Curve)]
    assert len(curves) == 2
    shift = np.asarray(curves[1]["mean"]) - np.asarray(curves[0]["mean"])
    assert shift[:2] == pytest.approx([0.1, 0.1]) and np.isnan(shift[2]), "η = 30 diverged"


def test_sweep_tab_is_built_when_first_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    import panel as pn

    import app.views.sweep_view as sweep_view

    built: list[int] = []
    monkeypatch.setattr(sweep_view, "SweepView", lambda: built.append(1) or pn.pane.Markdown("x"))
    tabs = pn.Tabs(("Live", pn.pane.Markdown("live")), ("Sweep", sweep_view.sweep_tab()),
                   dynamic=True)
    tabs.get_root()
    assert built == [], "a page that never opens the tab pays nothing"
    tabs.active = 1
    assert built == [1]


def test_example_sweep_is_shipped_small_and_at_matched_loss() -> None:
    path = example_sweep_path()
    assert path is not None and path.stat().st_size < 2 * 2**20
    ds = check_sweep(xr.open_dataset(path, engine="h5netcdf"))
    status = ds.status.values
    assert (status == "reached_target").sum() >= 0.6 * status.size
    assert set(status.ravel()) <= {"reached_target", "diverged"}
    ds.close()
