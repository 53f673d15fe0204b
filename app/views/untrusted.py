"""Text that comes from a visitor or a file, made safe for the page.

* ``plain``: a URL value, a file name or a message quoting a file goes into Markdown panes, and
  Panel's Markdown keeps raw HTML: ``?preset=<img src=x onerror=...>`` quoted in a message
  would run script in whoever opens the link. ``plain`` escapes HTML and Markdown and shortens.
* ``clean_query``: Panel parses the page's query string itself and raises on some values
  (``?n=²``: ``'²'.isdigit()`` but ``int('²')`` fails; integers over 4300 digits), which would
  break the page at every later URL update. ``clean_query`` drops such values and overlong ones
  before the settings are synced, and says which.
"""

from __future__ import annotations

import html
import re
from urllib.parse import parse_qsl, urlencode

from panel.util import parse_query

MAX_FIELDS = 64
MAX_KEY = 64
MAX_VALUE = 256
_MARKDOWN = re.compile(r"([\\`*_\[\]~|])")  # inline markup; the text never starts a line


def plain(text: object, limit: int = 120) -> str:
    """``text`` as literal, single-line Markdown of at most ``limit`` characters."""
    value = "".join(c if c.isprintable() else " " for c in str(text))
    if len(value) > limit:
        value = value[:limit] + "…"
    return html.escape(_MARKDOWN.sub(r"\\\1", value), quote=False)


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
