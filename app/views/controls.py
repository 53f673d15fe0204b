"""Widgets for the run settings, made from the RunSettings parameters.

Each control field gets a widget chosen by its parameter type (selectors, sliders for the sizes,
numeric inputs for counts); sliders write back on release (``value_throttled``) because a change
restarts the run. η gets a log-scale slider plus an exact input, both linked to ``settings.lr``,
with the optimiser's stability threshold beside them. The optimiser's options show only while
the selected optimiser reads them. The Flows control starts the central flow and gradient flow
beside gradient descent; it is greyed out, showing Off, while the optimiser is not plain GD.
"""

from __future__ import annotations

import math
from typing import Any

import panel as pn
import param
from bokeh.models import CustomJSTickFormatter

from ntk_core.models import UNUSED_FIELDS
from ntk_core.numerics.stability import stability_threshold, threshold_label

from ..session.limits import ServerLimits
from ..session.settings import (
    ALL_OPTIMIZER_FIELDS,
    BOUNDS,
    FLOW_CHOICES,
    SLIDER_RANGES,
    RunSettings,
    round_lr,
)

RADIO_FIELDS = frozenset({"target"})
INPUT_FIELDS = frozenset({"steps", "measure_every", "seed"})
STEPS = {"momentum": 0.05, "beta1": 0.01, "beta2": 0.001}  # the spinners' arrows
OPTIMIZER_NAMES = {"gd": "GD (full batch)", "sgd": "SGD (mini-batch)", "adam": "Adam",
                   "rmsprop": "RMSProp"}
SPEEDS = {"1": 1.0, "2": 2.0, "5": 5.0, "10": 10.0, "20": 20.0, "50": 50.0, "max": 0.0}


def field_widget(settings: RunSettings, name: str) -> pn.widgets.Widget:
    """The widget for one control field, linked both ways to ``settings``."""
    p = settings.param[name]
    common: dict[str, Any] = {"sizing_mode": "stretch_width"}
    if isinstance(p, param.Selector):
        kind = pn.widgets.RadioButtonGroup if name in RADIO_FIELDS else pn.widgets.Select
        return kind.from_param(p, **common)
    if isinstance(p, param.Boolean):
        return pn.widgets.Checkbox.from_param(p, **common)
    if name in SLIDER_RANGES:
        return pn.widgets.IntSlider.from_param(p, throttled=True, **common)
    common["description"] = _describe(name)
    if isinstance(p, param.Integer):
        return pn.widgets.IntInput.from_param(p, **common)
    if isinstance(p, param.Number):
        if name in STEPS:
            common["step"] = STEPS[name]
        return pn.widgets.FloatInput.from_param(p, **common)
    return pn.widgets.TextInput.from_param(p, placeholder="all classes", **common)


def _describe(name: str) -> str:
    bounds = BOUNDS.get(name)
    text = f"RunConfig.{name}"
    if bounds:
        text += f" (allowed {bounds[0]:g} … {bounds[1]:g})"
    return text


def threshold_text(settings: RunSettings) -> str:
    """The next run's stability threshold as the sidebar shows it: "**2/η = 20**",
    "**(2+2β)/η = 20**, β = 0.5", "**38/η = 19,000** (Adam, β₁ = 0.9)"."""
    v = settings.values()
    label = threshold_label(v["optimizer"], v["momentum"], v["nesterov"], v["beta1"])
    value = stability_threshold(v["optimizer"], settings.lr, v["momentum"], v["nesterov"],
                                v["beta1"])
    cut = min((i for i in (label.find(", "), label.find(" (")) if i >= 0), default=len(label))
    shown = f"{value:,.0f}" if value >= 1e4 else f"{value:.4g}"
    return f"**{label[:cut]} = {shown}**{label[cut:]}"


class LearningRateControl(pn.viewable.Viewer):
    """η on a log slider (10⁻³ … 10) and as an exact number, with the optimiser's stability
    threshold beside it (``threshold_text``)."""

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
        self.threshold = pn.pane.Markdown(threshold_text(settings), margin=(22, 5, 0, 10))
        self.slider.param.watch(self._from_slider, "value_throttled")
        self.input.param.watch(self._from_input, "value")
        settings.param.watch(self._from_settings, "lr")
        settings.param.watch(self._show_threshold, ["optimizer", "momentum", "nesterov", "beta1"])

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
        self._show_threshold()

    def _show_threshold(self, *_: object) -> None:
        self.threshold.object = threshold_text(self.settings)

    def __panel__(self) -> pn.layout.Column:
        return pn.Column(self.slider, pn.Row(self.input, self.threshold),
                         sizing_mode="stretch_width")


def optimizer_controls(settings: RunSettings) -> tuple[pn.widgets.Widget, pn.Column]:
    """The optimiser selector, and its options in a column that shows only those the selected
    optimiser reads (``RunSettings.used``): β and Nesterov for GD and SGD, the batch size for
    SGD, β₁, β₂ and ε for Adam, β₂ and ε for RMSProp."""
    choices = settings.param.optimizer.objects
    select = pn.widgets.Select.from_param(
        settings.param.optimizer, options={OPTIMIZER_NAMES.get(o, o): o for o in choices},
        sizing_mode="stretch_width")
    widgets = {name: field_widget(settings, name) for name in ALL_OPTIMIZER_FIELDS}

    def show_used(*_: object) -> None:
        for name, widget in widgets.items():
            widget.visible = settings.used(name)

    settings.param.watch(show_used, "optimizer")
    show_used()
    return select, pn.Column(*widgets.values(), sizing_mode="stretch_width", margin=0)


FLOWS_ONLY_GD = "Flows: plain gradient descent only"
FLOWS_NOTE = ("Beside GD, from the same initial weights: each flow is measured as GD is, so "
              "a step costs several GD steps; raise *Measure every* to go faster.")


def flows_text(settings: RunSettings, limits: ServerLimits | None = None) -> str:
    """The line under the Flows control: why it is off (another optimiser, momentum), what the
    flows cost, and a server's cap on them."""
    if not settings.flows_available:
        using = (f"momentum β = {settings.momentum:g}" if settings.optimizer == "gd"
                 else OPTIMIZER_NAMES.get(settings.optimizer, settings.optimizer))
        return f"*{FLOWS_ONLY_GD} (no momentum); this run uses {using}.*"
    if not settings.flows:
        return ""
    text = f"*{FLOWS_NOTE}*"
    if limits is not None and limits.max_flow_np:
        text += (f" *On this server a run with flows may have n·p up to "
                 f"{limits.max_flow_np:,} (examples × parameters).*")
    return text


class FlowsControl(pn.viewable.Viewer):
    """Off / central flow / central flow + gradient flow (``settings.flows``). While the
    optimiser is not plain gradient descent it is greyed out and shows Off, and the line under
    it says why (the choice comes back with plain GD)."""

    def __init__(self, settings: RunSettings, limits: ServerLimits | None = None,
                 **params: Any) -> None:
        super().__init__(**params)
        self.settings = settings
        self.limits = limits
        self.select = pn.widgets.Select(label=settings.param.flows.label, options=FLOW_CHOICES,
                                        value=settings.flows, sizing_mode="stretch_width")
        self.note = pn.pane.Markdown("", margin=(0, 10), sizing_mode="stretch_width")
        self.select.param.watch(self._from_widget, "value")
        settings.param.watch(self._show, ["flows", "optimizer", "momentum"])
        self._show()

    def _from_widget(self, event: param.parameterized.Event) -> None:
        if self.settings.flows_available:  # greyed out it shows Off, which is no choice
            self.settings.flows = event.new

    def _show(self, *_: object) -> None:
        available = self.settings.flows_available
        self.select.param.update(value=self.settings.flows if available else "",
                                 disabled=not available)
        text = flows_text(self.settings, self.limits)
        self.note.param.update(object=text, visible=bool(text))

    def __panel__(self) -> pn.layout.Column:
        return pn.Column(self.select, self.note, sizing_mode="stretch_width", margin=0)


OWN_NOTES = {"Data": "*Not used (greyed out): the runs train your data.*",
             "Model": "*Not used (greyed out): the runs train your model.*"}


def settings_sections(settings: RunSettings, ignored: frozenset[str] = frozenset()
                      ) -> list[tuple[str, list[pn.viewable.Viewable]]]:
    """The control fields grouped for the sidebar: data, model, run (η and the optimiser are
    in the Run box above them: ``LearningRateControl``, ``optimizer_controls``). ``ignored``:
    the fields the runs do not read (the user's own model or data replaces them), greyed out
    under a note that says so."""
    groups = {"Data": ("dataset", "n", "classes", "target"),
              "Model": ("arch", "width", "depth", "activation"),
              "Run": ("steps", "target_loss", "measure_every", "k", "seed")}
    widgets = {name: field_widget(settings, name) for names in groups.values() for name in names}

    def grey_out_unused(*_: object) -> None:  # e.g. depth and activation for linear2
        unused = {*UNUSED_FIELDS.get(settings.arch, ()), *ignored}
        for name in (*groups["Data"], *groups["Model"]):
            widgets[name].disabled = name in unused

    settings.param.watch(grey_out_unused, "arch")
    grey_out_unused()
    notes = {title: [pn.pane.Markdown(OWN_NOTES[title], margin=(0, 10))]
             for title, names in groups.items() if title in OWN_NOTES and ignored & set(names)}
    return [(title, [*notes.get(title, []), *(widgets[name] for name in names)])
            for title, names in groups.items()]
