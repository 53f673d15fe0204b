"""Text that comes from a visitor or a file, made safe for the page.

* ``plain``: a URL value, a file name or a message quoting a file goes into Markdown panes, and
  Panel's Markdown keeps raw HTML: ``?preset=<img src=x onerror=...>`` quoted in a message
  would run script in whoever opens the link. ``plain`` escapes HTML and Markdown and shortens.
  ``html_text`` is the same for HTML panes (no Markdown escapes, which would show there).
* ``clean_query``: Panel parses the page's query string itself and raises on some values
  (``?n=²``: ``'²'.isdigit()`` but ``int('²')`` fails; integers over 4300 digits; ``?a?b``),
  which would break the page at every later URL update. ``clean_query`` drops such values and
  overlong ones before the settings are synced, and says which.
* ``install_location``: Panel builds a page's ``Location`` from the request the first time
  anything asks for ``pn.state.location`` (``servable`` does), and that parse raises on the same
  values before any of the app's code runs. The page gets a ``SafeLocation`` first, whose query
  parsing goes through ``clean_query``, whatever the browser sends back later.
"""

from __future__ import annotations

import html
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode

import panel as pn
from bokeh.document import Document
from panel.io.location import Location
from panel.util import parse_query

# For Markdown panes that show visitor text: Panel's markdown-it turns text such as
# ``alert(1)>.nc`` into a link (``.nc`` is a top-level domain), and no escaping prevents that.
NO_LINKS = {"linkify": False}
MAX_FIELDS = 64
MAX_KEY = 64
MAX_VALUE = 256
_MARKDOWN = re.compile(r"([\\`*_\[\]~|])")  # inline markup; the text never starts a line


def _short_line(text: object, limit: int) -> str:
    value = "".join(c if c.isprintable() else " " for c in str(text))
    return value[:limit] + "…" if len(value) > limit else value


def plain(text: object, limit: int = 120) -> str:
    """``text`` as literal, single-line Markdown of at most ``limit`` characters."""
    return html.escape(_MARKDOWN.sub(r"\\\1", _short_line(text, limit)), quote=False)


def file_name(name: object) -> str:
    """A file or run name for Markdown: escaped, as inline code (Markdown would turn a bare
    ``run.nc`` into a link: ``.nc`` is a top-level domain)."""
    return f"<code>{plain(name)}</code>"


def html_text(text: object, limit: int = 120) -> str:
    """``text`` as literal, single-line HTML of at most ``limit`` characters."""
    return html.escape(_short_line(text, limit), quote=True)


def clean_query(search: str) -> tuple[str, list[str]]:
    """(the query string without the fields Panel cannot parse or that are too long, the names
    of the dropped fields)."""
    try:
        pairs = parse_qsl(search.lstrip("?"), keep_blank_values=True,
                          max_num_fields=MAX_FIELDS)
    except ValueError:
        return "", [f"more than {MAX_FIELDS} fields"]
    kept, dropped = [], []
    for key, value in pairs:
        if len(key) <= MAX_KEY and len(value) <= MAX_VALUE and _parses(key, value):
            kept.append((key, value))
        else:
            dropped.append(key[:MAX_KEY])
    query = urlencode(kept)
    return (f"?{query}" if query else ""), dropped


def _parses(key: str, value: str) -> bool:
    try:
        parse_query("?" + urlencode({key: value}))
    except Exception:  # whatever Panel's parser raises is a value it cannot take
        return False
    return True


class SafeLocation(Location):
    """Panel's ``Location`` whose query parameters leave out what Panel's parser cannot take
    (``clean_query``), so that a link's values can never raise inside a URL sync."""

    @property
    def query_params(self) -> dict[str, Any]:
        return parse_query(clean_query(self.search)[0])


def install_location(doc: Document | None) -> Location | None:
    """The page's Location, a ``SafeLocation`` built from the request unless one exists.
    None outside a server session."""
    if doc is None or doc.session_context is None:
        return None
    existing = pn.state._locations.get(doc)  # Panel's per-document table (no public setter)
    if existing is not None:
        return existing
    request = getattr(doc.session_context.request, "_request", None)
    uri = str(getattr(request, "uri", "") or "")
    path, _, query = uri.partition("?")
    query = query.partition("#")[0]
    # The raw query stays: the dashboard names the fields it drops (``clean_query``) when it
    # syncs, and the browser sends ``window.location.search`` back anyway.
    location = SafeLocation(pathname=path if path.startswith("/") else "/",
                            search=f"?{query}" if query else "")
    pn.state._locations[doc] = location
    return location
