"""The escape helpers of core.ui.text: what each turns user text into, and (property tests) that the
text a reader sees is the original text and that nothing in it can form markup. The rendering in a
real browser is checked by tests/browser/test_injection.py."""
import html
import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.ui.text import WORD_JOINER, html_text, one_line, plain, plotly_text, quoted

pytestmark = pytest.mark.reliability

PAYLOADS = ['cat<img src=x onerror="window.__xss=1">', "dog[link](http:evil)", "plane![i](x.png)",
            ":red[car]", ":material/home:", ":smile:", "$x^2$ bird", "**deer**", "<svg onload=alert(1)>",
            "# h", "1. x", "`code`", "www.evil.example", "a@b.co", "http://evil", "&amp;", "%{y}", "a\\b",
            "> quote", "| t |"]
# Text as a fuzzer would write it: printable ASCII (all of Markdown's syntax) and any other character.
TEXT = st.text(alphabet=st.one_of(st.sampled_from(string.printable), st.characters()), max_size=60)


def _unescape_md(s: str) -> str:
    """What CommonMark shows of ``plain``'s output: backslash escapes resolved, joiners invisible."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", s).replace(WORD_JOINER, "")


def test_plain_escapes_every_markdown_character():
    assert plain("**deer**") == r"\*\*deer\*\*"
    assert plain("$x^2$") == r"\$x\^2\$"
    assert plain("<img src=x>") == r"\<img src\=x\>"
    assert plain("[a](http:evil)") == "\\[a\\]\\(http\\:" + WORD_JOINER + "evil\\)"
    assert plain(":red[car]") == "\\:" + WORD_JOINER + "red\\[car\\]"
    assert plain("www.evil.example") == "www" + WORD_JOINER + "\\." + "evil" + WORD_JOINER + "\\.example"
    assert plain("a@b") == "a" + WORD_JOINER + "\\@b"
    assert plain("cat") == "cat" and plain("airplane") == "airplane"  # ordinary names stay as they are
    assert plain("Pair: 3") == "Pair\\: 3"  # no joiner where no shortcode can start


def test_one_line_removes_controls_and_cuts():
    assert one_line("a\nb\r\tc\u2028d\u2029e") == "a b  c d e"
    assert one_line("ab\u202ecd") == "abcd"  # a right-to-left override could disguise a name
    assert one_line("x" * 10, limit=5) == "xxxx…" and one_line("xxxxx", limit=5) == "xxxxx"
    assert one_line(ValueError("bad\nthing")) == "bad thing"


def test_html_and_plotly_text():
    assert html_text('<a href="x">&</a>') == "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
    assert html_text(":smile:") == ":" + WORD_JOINER + "smile:"
    assert plotly_text("<b>%{y}</b> & co") == "&lt;b&gt;&#37;{y}&lt;/b&gt; &amp; co"
    assert plotly_text("cat") == "cat"


def test_quoted_cuts_long_ids():
    q = quoted("x" * 200)
    assert _unescape_md(q) == "'" + "x" * 63 + "…'"
    assert _unescape_md(quoted("<gone>")) == "'<gone>'"


@pytest.mark.parametrize("payload", PAYLOADS)
def test_payloads_read_back_literally(payload):
    assert _unescape_md(plain(payload)) == payload
    assert html.unescape(html_text(payload)).replace(WORD_JOINER, "") == payload
    assert html.unescape(plotly_text(payload)) == payload


@settings(max_examples=300, derandomize=True, deadline=None)
@given(TEXT)
def test_plain_reads_back_and_leaves_no_markup(text):
    out = plain(text)
    assert _unescape_md(out) == one_line(text)  # the reader sees the text itself
    assert "\n" not in out and "\r" not in out
    # every ASCII punctuation character is escaped (nothing can open a construct) ...
    bare = re.sub(r"\\[!-/:-@\[-`{-~]", "", out)
    assert not any(c in string.punctuation for c in bare), out
    # ... and no shortcode or bare link survives once the escapes are resolved
    shown = re.sub(r"\\(.)", r"\1", out)
    assert not re.search(r":[\w/+-]+:|:\w+\[", shown), out
    assert not re.search(r"www\.|\w@|\w\.\w", shown), out


@settings(max_examples=300, derandomize=True, deadline=None)
@given(TEXT)
def test_html_and_plotly_text_hold_no_tags(text):
    for out in (html_text(text), plotly_text(text)):
        assert "<" not in out and ">" not in out
        assert not re.search(r"&(?!amp;|lt;|gt;|quot;|#x27;|#37;)", out), out  # only our own entities
    assert "%{" not in plotly_text(text) and '"' not in html_text(text)
    assert html.unescape(plotly_text(text)) == one_line(text)
