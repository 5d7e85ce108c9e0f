"""Text from users or files (class names, experiment ids, manifest fields, messages, link values) made safe
for each place the app shows it. No Streamlit import, so unit tests call everything directly.

Class names are folder names a user chooses (``truck<img src=x onerror=...>``, ``[a](http://x)``,
``:red[x]``, ``$x^2$``), so every piece of such text goes through one of these before it is shown:

- ``plain``: for anything Streamlit renders as Markdown (``st.markdown``, ``st.caption``, ``st.info`` and
  the other alerts, widget and metric labels, ``st.radio`` options, page-link labels). Every ASCII
  punctuation character is backslash-escaped (CommonMark allows it for all of them, and the escape is
  invisible once rendered), which turns off emphasis, links, images, headings, lists, tables, code,
  raw HTML, entities and LaTeX (``\\$``). Streamlit's shortcodes (``:smile:``, ``:material/home:``,
  ``:red[x]``) and GFM's bare links (``www.x.org``, ``a@b.org``) are found in the text after parsing,
  where escapes are gone, so an invisible word joiner (U+2060) goes after each ``:`` that touches a word
  and before each ``.`` and ``@`` (checked in Chromium by tests/browser/test_injection.py).
- ``html_text``: for the few HTML pieces that must stay HTML (colour swatches, a ``title`` attribute);
  Streamlit also expands shortcodes in the text of HTML it renders through ``st.markdown``, so the
  joiners go in here too.
- ``plotly_text``: for plotly trace names, hover text, category values and tick labels. Plotly reads a
  subset of HTML in them (``<a href>``, ``<b>``, ``<br>``, entities) and ``%{...}`` in hover templates,
  so ``& < > %`` become entities, which plotly turns back into the characters on screen.
- ``one_line``: the text as one line (control characters, line and paragraph separators and bidirectional
  controls replaced), optionally cut to a length; plain-text places (``st.text``, dataframe cells,
  selectbox options) need nothing more, and every helper above starts with it.

Vega-Lite draws axis labels as SVG text and its tooltips escape values, so chart data needs nothing.
"""
from __future__ import annotations

import html
import re
import string
import unicodedata

WORD_JOINER = "\u2060"
ELLIPSIS = "…"
# invisible controls that reorder text (a name could show as something else)
_BIDI = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_PUNCT = frozenset(string.punctuation)  # every ASCII punctuation character: all can be escaped
_COLON_WORD = re.compile(r":(?=\S)")
_LINK_MARK = re.compile(r"(?=\\[.@])")  # before an escaped "." or "@" (not between escape and character)


def one_line(text, limit: int | None = None) -> str:
    """``text`` (any object, via ``str``) as one line of printable text: control characters and line or
    paragraph separators become spaces, bidirectional controls are dropped; longer than ``limit``
    characters: cut, with an ellipsis."""
    s = str(text)
    out = []
    for ch in s:
        if ch in _BIDI:
            continue
        out.append(" " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch)
    s = "".join(out)
    if limit is not None and len(s) > limit:
        s = s[:max(0, limit - 1)] + ELLIPSIS
    return s


def plain(text, limit: int | None = None) -> str:
    """``text`` for a Markdown place (``st.markdown``, ``st.caption``, ``st.error``, labels...): shown as
    plain text, literally; nothing in it is interpreted (see the module doc)."""
    s = "".join("\\" + ch if ch in _PUNCT else ch for ch in one_line(text, limit))
    return _LINK_MARK.sub(WORD_JOINER, _COLON_WORD.sub(":" + WORD_JOINER, s))


def html_text(text, limit: int | None = None) -> str:
    """``text`` for HTML element content or a quoted attribute value."""
    return _COLON_WORD.sub(":" + WORD_JOINER, html.escape(one_line(text, limit), quote=True))


def plotly_text(text, limit: int | None = None) -> str:
    """``text`` for a plotly string (trace name, hover text or template, category value, tick label)."""
    return (one_line(text, limit).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("%", "&#37;"))


def quoted(text, limit: int = 64) -> str:
    """``text`` (an id from a link or a file) in single quotes for a Markdown place, cut to ``limit``."""
    return plain(f"'{one_line(text, limit)}'")



def number(value, spec: str = ".3g") -> str:
    """``value`` formatted with ``spec`` (``format(value, spec)``), never as a negative zero: a value that
    rounds to zero at that precision is shown as zero ("0.000", not "-0.000"), so a reader never sees a
    sign that carries no information."""
    s = format(value, spec)
    if s.startswith("-") and not any(ch in "123456789" for ch in s.split("e")[0]):
        s = s[1:]
    return s
