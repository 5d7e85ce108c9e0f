"""Neuron ranking in headless Debian Chromium: a click anywhere in a neuron's column of the all-neurons
view selects that neuron (issue 13), not only on the region strip under the plot; so does a row of the
table of both ends of the order.

The demo has 256 neurons, more than ``neuron_charts.MARKER_MAX``, so its curves carry invisible markers:
the case a click is most likely to miss. The expected neurons come from the core library (the page's
default sort: band gap), the pixels from the chart's own axes.
"""

import pytest

from core import neuron_measures
from core.analysis import Analysis
from core.ui import neuron_charts as nc
from tests.browser.walk import TIMEOUT, _idle, _wait_text, open_page, unexpected_errors

CHART = ".st-key-neuron_ranking_chart"
# The screen position of plotted position ``pos``: on a trace's point (``trace``: its meta), or at
# ``frac`` of the main plot's height from its top; plus the top of the region strip's plot.
COLUMN_JS = """([root, pos, trace, frac]) => {
  const gd = document.querySelector(root + ' .js-plotly-plot');
  const L = gd._fullLayout, xa = L.xaxis, ya = L.yaxis, r = gd.getBoundingClientRect();
  const t = trace && gd._fullData.find(d => d.meta === trace);
  const y = t ? ya._offset + ya.l2p(t.y[pos]) : ya._offset + frac * ya._length;
  return [r.left + xa._offset + xa.l2p(pos), r.top + y, r.top + L.yaxis2._offset];
}"""


@pytest.fixture
def page(browser):
    pg = open_page(browser)
    yield pg
    pg.close()


def _click(pg, pos: int, trace: str | None = None, frac: float = 0.1) -> None:
    """Click plotted position ``pos`` of the ranking chart well above the region strip."""
    _idle(pg)
    pg.wait_for_function("r => document.querySelectorAll(r + ' .js-plotly-plot').length === 1", arg=CHART,
                         timeout=TIMEOUT)
    pg.locator(f"{CHART} .js-plotly-plot").scroll_into_view_if_needed()
    x, y, strip_top = pg.evaluate(COLUMN_JS, [CHART, pos, trace, frac])
    assert y < strip_top - 10, "the click must land on the curves' plot, not on the strip"
    pg.mouse.click(x, y)


def _selected(pg, neuron: int, rank: int, total: int) -> None:
    pg.wait_for_function("p => new RegExp(p).test(location.href)", arg=rf"[?&]neuron={neuron}(&|$)",
                         timeout=TIMEOUT)
    _wait_text(pg, rf"Neuron {neuron}: rank {rank} of {total}\b")


def test_a_click_on_a_curve_a_band_or_a_table_row_selects_the_neuron(page, demo_url, demo_store):
    pair = int(demo_store.pairs["pair"].iloc[0])
    order = neuron_measures.rank(Analysis(demo_store).neuron_measures(pair)["band_gap"])
    n = len(order)
    assert n > nc.MARKER_MAX  # the invisible-marker case
    page.goto(f"{demo_url}/neuron_ranking?exp=demo&pair={pair}")
    page.wait_for_selector(f"{CHART} .js-plotly-plot", timeout=TIMEOUT)
    _wait_text(page, "Click a neuron's column")

    # on the benign curve, near the left end (region A) ...
    _click(page, 3, trace=nc.CURVE_NAMES[0])
    _selected(page, int(order[3]), 4, n)
    # ... then in the top tenth of the plot (bands or empty space) near the right end (region C)
    _click(page, n - 4, frac=0.1)
    _selected(page, int(order[n - 4]), n - 3, n)
    assert f"neuron={int(order[3])}" not in page.url

    # the table of both ends: ticking its first row (rank 1) selects that neuron
    _idle(page)
    table = page.locator("[data-testid=stDataFrame]").first
    table.scroll_into_view_if_needed()
    box = table.bounding_box()
    page.mouse.click(box["x"] + 16, box["y"] + 35 + 17)  # the row's tick box: under the 35-px header
    _selected(page, int(order[0]), 1, n)

    # a deep link's probes of <page>/_stcore/... are expected 404s; nothing else may fail
    assert not unexpected_errors(page), "\n".join(unexpected_errors(page))
