"""The paper's §6.1.2 walk, clicked in headless Debian Chromium on the demo store.

Real clicks on the real charts: a lasso on a t-SNE scatterplot, a prediction-matrix cell (SVG, found
by its aria-label), the grid's sort and pair buttons, a point of the Neuron Vulnerability View, the
context-images expander, a dendrogram node. The expected values (the cell's first pair by L2, the
top neuron by IoU with bMap, the selected neuron's parent node) are computed independently with the
core library. Screenshots of every page go to ``test-output/browser/``; any browser console error or
page error fails the test.
"""

import pytest

from tests.browser.walk import TIMEOUT, _wait_sidebar, open_page, unexpected_errors, walk


@pytest.fixture
def page(browser):
    pg = open_page(browser)
    yield pg
    pg.close()


def test_paper_walk_on_the_demo_store(page, demo_url, demo_store):
    pg = page
    chosen = walk(pg, demo_url, demo_store)
    first, top_neuron = chosen["pair"], chosen["neuron"]

    # -- the whole state is in the URL: a fresh tab on the same link shows the same case -------------
    link = pg.url
    assert f"pair={first}" in link and f"neuron={top_neuron}" in link
    assert f"clusters={chosen['clusters']}" in link
    assert not pg.errors and not pg.failed, "browser errors:\n" + "\n".join(pg.errors + pg.failed)


def test_shared_link_opens_the_case(page, demo_url, demo_store):
    pair = int(demo_store.pairs["pair"].iloc[3])
    page.goto(f"{demo_url}/receptive_fields?exp=demo&pair={pair}&neuron=5")
    _wait_sidebar(page, f"Pair #{pair}")
    _wait_sidebar(page, "Neuron 5")
    page.wait_for_function("() => document.querySelectorAll('[data-testid=stMain] [data-testid=stImage]')"
                           ".length >= 6", timeout=TIMEOUT)
    # a deep link's probes of <page>/_stcore/... are expected 404s; nothing else may fail
    assert not unexpected_errors(page), "\n".join(unexpected_errors(page))
