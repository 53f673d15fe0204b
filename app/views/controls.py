"""Widgets for the run settings, made from the RunSettings parameters.

Each control field gets a widget chosen by its parameter type (selectors, sliders for the sizes,
numeric inputs for counts); sliders write back on release (``value_throttled``) because a change
restarts the run. η gets a log-scale slider plus an exact input, both linked to ``settings.lr``.
"""

from __future__ import annotations

import math
from typing import Any

import panel as pn
import param
from bokeh.models import CustomJSTickFormatter

from ntk_core.models import UNUSED_FIELDS

from ..session.settings import BOUNDS, CONTROL_FIELDS, SLIDER_RANGES, RunSettings, round_lr

RADIO_FIELDS = frozenset({"target"})
INPUT_FIELDS = frozenset({"steps", "measure_every", "seed"})
SPEEDS = {"1": 1.0, "2": 2.0, "5": 5.0, "10": 10.0, "20": 20.0, "50": 50.0, "max": 0.0}


def field_widget(settings: RunSettings, name: str) -> pn.widgets.Widget:
    """The widget for one control field, linked both ways to ``settings``."""
    p = settings.param[name]
    common: dict[str, Any] = {"sizing_mode": "stretch_width"}
    if isinstance(p, param.Selector):
        kind = pn.widgets.RadioButtonGroup if name in RADIO_FIELDS else pn.widgets.Select
        return kind.from_param(p, **common)
    if name in SLIDER_RANGES:
        return pn.widgets.IntSlider.from_param(p, throttled=True, **common)
    common["description"] = _describe(name)
    if isinstance(p, param.Integer):
        return pn.widgets.IntInput.from_param(p, **common)
    if isinstance(p, param.Number):
        return pn.widgets.FloatInput.from_param(p, **common)
    return pn.widgets.TextInput.from_param(p, placeholder="all classes", **common)


def _describe(name: str) -> str:
    bounds = BOUNDS.get(name)
    text = f"RunConfig.{name}"
    if bounds:
        text += f" (allowed {bounds[0]:g} … {bounds[1]:g})"
    return text


class LearningRateControl(pn.viewable.Viewer):
    """η on a log slider (10⁻³ … 10) and as an exact number, with 2/η shown beside it."""

    def __init__(self, settings: RunSettings, **params: Any) -> None:
        super().__init__(**params)
        self.settings = settings
        low, high = BOUNDS["lr"]
        self.slider = pn.widgets.FloatSlider(
            label="Learning rate η (log scale)", start=math.log10(low), end=math.log10(high),
            step=0.01, value=math.log10(settings.lr), sizing_mode="stretch_width",
            format=CustomJSTickFormatter(code="return Number((10 ** tick).toPrecision(3))"))
        # No start/end: the browser's spinner drops a typed value outside them without a word
        # (the box showed −1 while the run kept its η); the settings report it instead
        self.input = pn.widgets.FloatInput(label="η", value=settings.lr, step=0.01, width=110,
                                           description=_describe("lr"))
        self.threshold = pn.pane.Markdown(self._threshold_text(), margin=(22, 5, 0, 10))
        self.slider.param.watch(self._from_slider, "value_throttled")
        self.input.param.watch(self._from_input, "value")
        settings.param.watch(self._from_settings, "lr")

    def _from_slider(self, event: param.parameterized.Event) -> None:
        self.settings.lr = round_lr(10 ** event.new)

    def _from_input(self, event: param.parameterized.Event) -> None:
        # through propose: a value the run cannot take (η ≤ 0, beyond the bounds) is reported
        # on the page, where assigning it to the settings raised where no one saw it
        if event.new is not None:
            self.settings.propose("lr", float(event.new))

    def _from_settings(self, event: param.parameterized.Event) -> None:
        shown = self.slider.value
        if shown is None or abs(10**shown - event.new) > 1e-9 * event.new:
            self.slider.value = min(max(math.log10(event.new), self.slider.start), self.slider.end)
        if self.input.value != event.new:
            self.input.value = event.new
        self.threshold.object = self._threshold_text()

    def _threshold_text(self) -> str:
        return f"**2/η = {2 / self.settings.lr:.4g}**"

    def __panel__(self) -> pn.layout.Column:
        return pn.Column(self.slider, pn.Row(self.input, self.threshold),
                         sizing_mode="stretch_width")


def settings_sections(settings: RunSettings) -> list[tuple[str, list[pn.viewable.Viewable]]]:
    """The control fields grouped for the sidebar: data, model, run."""
    widgets = {name: field_widget(settings, name) for name in CONTROL_FIELDS if name != "lr"}
    groups = {"Data": ("dataset", "n", "classes", "target"),
              "Model": ("arch", "width", "depth", "activation"),
              "Run": ("steps", "target_loss", "measure_every", "k", "seed")}

    def grey_out_unused(*_: object) -> None:  # e.g. depth and activation for linear2
        unused = UNUSED_FIELDS.get(settings.arch, ())
        for name in groups["Model"][1:]:
            widgets[name].disabled = name in unused

    settings.param.watch(grey_out_unused, "arch")
    grey_out_unused()
    return [(title, [widgets[name] for name in names]) for title, names in groups.items()]
