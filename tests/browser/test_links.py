"""The case is always in the link (issue 13, item 3), in headless Debian Chromium on the demo store.

Each page is opened from another page (the sidebar's navigation menu) and then reloaded: the address
holds the whole selection as soon as the page has opened (Clustering, which stops early when no cluster
is selected, used to stay at a bare ``/clustering``), and the reloaded page shows the same case. On
Clustering, selecting a cluster puts it in the address and "Clear clusters" takes it out again. The
sidebar's "Next" links carry the selection: opened in a new tab, they open the same case.
Screenshots go to ``test-output/browser/links-*.png``."""
from urllib.parse import urlencode, urljoin

import pytest

from core.ui.state import Selection, to_query
from tests.browser.walk import SHOTS, TIMEOUT, _idle, _nav, _wait_sidebar, open_page

# (title in the navigation menu, last part of the page's path, something only that page draws when it
# shows the case)
PAGES = [("Neuron ranking", "neuron_ranking", ".st-key-neuron_ranking_chart .js-plotly-plot"),
         ("Receptive fields", "receptive_fields", "[data-testid=stMain] [data-testid=stImage]"),
         ("Clustering", "clustering", ".st-key-clustering_dendrogram .js-plotly-plot"),
         ("Image space", "image_space", ".st-key-image_space_scatter_benign .js-plotly-plot")]
# the address's page and query parameters (any order) are exactly the expected ones
ADDRESS_JS = """([path, want]) => {
  const here = new URL(location.href);
  const got = [...here.searchParams.entries()].map(e => e.join('=')).sort().join('&');
  return here.pathname.split('/').pop() === path && got === want;
}"""
CLUSTERING = PAGES[2][2]
HAS_JS = "([key, on]) => new URL(location.href).searchParams.has(key) === on"


def _query(want: dict) -> str:
    return "&".join(sorted(f"{k}={v}" for k, v in want.items()))


def _shows_case(pg, path: str, want: dict, pair: int, neuron: int, marker: str | None = None) -> None:
    """The page at ``path`` shows the case: the address, the sidebar's summary (the session's
    selection), the page's own view; and the address still holds it once the run has finished."""
    pg.wait_for_function(ADDRESS_JS, arg=[path, _query(want)], timeout=TIMEOUT)
    _wait_sidebar(pg, f"Pair #{pair}:")
    _wait_sidebar(pg, f"Neuron {neuron}")
    if marker:
        pg.wait_for_selector(marker, timeout=TIMEOUT)
    _idle(pg)
    assert pg.evaluate(ADDRESS_JS, [path, _query(want)]), pg.url


def _shot(pg, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SHOTS / f"links-{name}.png"), full_page=True)


def _clear_clusters(pg, want: dict, pair: int, neuron: int) -> None:
    """On Clustering: a selected cluster is in the address; cleared, it is gone (also after a reload)."""
    pg.locator(".st-key-clustering_parent button").first.click()  # the cluster above the neuron
    pg.wait_for_function(HAS_JS, arg=["clusters", True], timeout=TIMEOUT)
    _wait_sidebar(pg, "Clusters:")
    _shot(pg, "clustering-cluster-selected")
    pg.locator(".st-key-clustering_clear button").first.click()
    pg.wait_for_function(HAS_JS, arg=["clusters", False], timeout=TIMEOUT)
    _shows_case(pg, "clustering", want, pair, neuron)
    assert "Clusters:" not in pg.locator("[data-testid=stSidebar]").inner_text()
    _shot(pg, "clustering-cleared")
    pg.reload()
    _shows_case(pg, "clustering", want, pair, neuron, CLUSTERING)
    assert "Clusters:" not in pg.locator("[data-testid=stSidebar]").inner_text()


@pytest.fixture
def page(browser):
    pg = open_page(browser)
    yield pg
    pg.close()


def test_every_page_keeps_the_case_in_its_address(page, browser, demo_url, demo_store):
    pg = page
    pair, neuron = int(demo_store.pairs["pair"].iloc[3]), 5
    want = to_query(Selection(experiment=demo_store.id, pair=pair, neuron=neuron))
    assert want == {"exp": demo_store.id, "pair": str(pair), "neuron": str(neuron)}

    pg.goto(f"{demo_url}/?{urlencode(want)}")  # a shared link to the Experiments page
    _shows_case(pg, "", want, pair, neuron)
    for title, path, marker in PAGES:
        _nav(pg, title)  # from the page before, through the navigation menu (no query in its link)
        _shows_case(pg, path, want, pair, neuron, marker)
        _shot(pg, f"{path}-opened")
        pg.reload()  # a new session: the case comes back from the address alone
        _shows_case(pg, path, want, pair, neuron, marker)
        if path == "clustering":
            _clear_clusters(pg, want, pair, neuron)

    # -- the sidebar's links carry the case: "open in a new tab", and a plain click -------------------
    links = {name: pg.locator("[data-testid=stSidebar] [data-testid=stPageLink] a").filter(has_text=name)
             for name in ("Next: its receptive fields", "Or: similar neurons")}
    href = links["Or: similar neurons"].get_attribute("href")
    tab = open_page(browser)  # a new tab: a new session with nothing but the link
    try:
        tab.goto(urljoin(pg.url, href))
        _shows_case(tab, "clustering", want, pair, neuron, CLUSTERING)
        _shot(tab, "new-tab-from-sidebar-link")
        assert not [e for e in tab.errors if e.startswith("page error")], tab.errors
    finally:
        tab.close()
    links["Next: its receptive fields"].click()
    _shows_case(pg, "receptive_fields", want, pair, neuron, PAGES[1][2])
    assert not [e for e in pg.errors if e.startswith("page error")], pg.errors
