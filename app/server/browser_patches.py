"""A BokehJS fix the served page installs: identical CSS is not written again.

Every Bokeh renderer (axis, grid, legend, glyph) re-sets its element's position stylesheet at
every paint, through ``InlineStyleSheet._update``, which assigns the ``<style>`` element's text
whether or not it changed. Each assignment invalidates the styles of that shadow root, and the
next renderer's colour lookup (``getComputedStyle``) forces a style recalculation. On the live
page that was about 120 recalculations a second, 0.15 of a core of Chromium's time, for three
streamed curve figures. Skipping unchanged text removes three quarters of them (Chromium's own
``Performance`` counters; ``docs/dashboard.md``). A changed stylesheet is written as before.
Served pages get it (``app/main.py``); a Dashboard shown in a notebook renders without it, only
with more work for the browser.
"""

from __future__ import annotations

from bokeh.document import Document
from bokeh.models import CustomJS

MARKER = "__ntk_eos_skip_same_css"

SKIP_SAME_CSS = f"""
try {{
  const proto = Bokeh.require("core/dom").InlineStyleSheet.prototype;
  if (!proto.{MARKER} && typeof proto._update === "function") {{
    const update = proto._update;
    proto._update = function (css) {{
      if (this.el.textContent !== css) {{
        update.call(this, css);
      }}
    }};
    proto.{MARKER} = true;
  }}
}} catch (error) {{
  console.warn("ntk-eos: BokehJS stylesheet patch not applied", error);
}}
"""


def install(doc: Document) -> None:
    """Apply the fix in the browser once ``doc`` is ready (a guarded no-op if BokehJS changed)."""
    doc.js_on_event("document_ready", CustomJS(code=SKIP_SAME_CSS))
