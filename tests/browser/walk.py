"""The paper's §6.1.2 walk as reusable browser steps (the browser tests, the reverse-proxy test and the
concurrency test all drive it). Expected values are computed independently with the core library."""
import math
import re
import time
from pathlib import Path

import numpy as np
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from core import clustering, image_space
from core.analysis import Analysis
from core.ui.state import Selection, encode_set
from core.ui.views import map_settings

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-output" / "browser"
TIMEOUT = 90_000

# Where a point of a plotly chart is on screen: the chart's axes map data to pixels.
POINT_JS = """([root, trace, id]) => {
  const gd = document.querySelector(root + ' .js-plotly-plot');
  const t = gd._fullData.find(d => d.meta === trace || d.name === trace);
  const key = c => (typeof c === 'number' ? c : c[0]);
  const k = Array.from(t.customdata).findIndex(c => key(c) == id);
  const xa = gd._fullLayout['xaxis' + t.xaxis.slice(1)], ya = gd._fullLayout['yaxis' + t.yaxis.slice(1)];
  const r = gd.getBoundingClientRect();
  return [r.left + xa._offset + xa.l2p(t.x[k]), r.top + ya._offset + ya.l2p(t.y[k])];
}"""
TEXT_JS = "p => new RegExp(p).test(document.querySelector('[data-testid=AREA]')?.innerText ?? '')"
PLOT_AREA_JS = """(root) => {
  const gd = document.querySelector(root + ' .js-plotly-plot');
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, r = gd.getBoundingClientRect();
  return [r.left + xa._offset, r.top + ya._offset, xa._length, ya._length];
}"""


def open_page(context_or_browser):
    """A 1280×800 page that records console errors, page errors and failed requests."""
    pg = context_or_browser.new_page(viewport={"width": 1280, "height": 800})
    errors = []
    pg.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    failed = []
    pg.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    pg.on("requestfailed", lambda r: failed.append(f"{r.failure} {r.url}"))
    pg.errors, pg.failed = errors, failed
    return pg


def unexpected_errors(pg) -> list[str]:
    """The page's browser errors and failed requests, less a deep link's expected ones: Streamlit's
    frontend probes <page>/_stcore/{health,host-config} before the server root (404s, each with one
    "Failed to load resource" console line); anything else is unexpected."""
    probe = re.compile(r"404 .*/[a-z_]+/_stcore/(health|host-config)")
    probes = [f for f in pg.failed if probe.fullmatch(f)]
    load_errors = [e for e in pg.errors if "Failed to load resource" in e]
    other = [e for e in pg.errors if e not in load_errors] + [f for f in pg.failed if f not in probes]
    return other if len(load_errors) <= len(probes) else other + load_errors


def _nav(pg, title: str) -> None:
    pg.locator("[data-testid=stSidebarNav]").get_by_text(title, exact=True).click()


def _sidebar(pg) -> str:
    return pg.locator("[data-testid=stSidebar]").inner_text()


def _wait_sidebar(pg, text: str) -> None:
    pg.wait_for_function(TEXT_JS.replace("AREA", "stSidebar"), arg=re.escape(text), timeout=TIMEOUT)


def _wait_text(pg, pattern: str) -> re.Match:
    pg.wait_for_function(TEXT_JS.replace("AREA", "stMain"), arg=pattern, timeout=TIMEOUT)
    return re.search(pattern, pg.locator("[data-testid=stMain]").inner_text())


def _idle(pg) -> None:
    """Wait until the app has finished its rerun (no running indicator)."""
    pg.wait_for_timeout(300)
    pg.wait_for_function("() => !document.querySelector('[data-testid=stStatusWidget]')", timeout=TIMEOUT)


def _select(pg, key: str, option: str) -> None:
    """Pick ``option`` in the selectbox ``key``. A rerun that lands while the list is open redraws the
    widget and closes the list (seen under load), so open it again until the option can be clicked."""
    deadline = time.monotonic() + TIMEOUT / 1000
    while True:
        _idle(pg)
        pg.locator(f".st-key-{key}").click()
        try:
            pg.get_by_role("option", name=option, exact=True).click(timeout=max(15_000, TIMEOUT // 10))
            break
        except PlaywrightTimeout:
            if time.monotonic() > deadline:
                raise
            pg.keyboard.press("Escape")
    _idle(pg)


def _shot(pg, prefix: str | None, name: str) -> None:
    """Save a screenshot, and check the page fits 1280 px: no horizontal scrolling."""
    if prefix is not None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(SHOTS / f"{prefix}{name}.png"), full_page=True)
    overflow = pg.evaluate("() => [...document.querySelectorAll('[data-testid=stMain], html')]"
                           ".map(e => e.scrollWidth - e.clientWidth)")
    assert max(overflow) <= 1, f"{name}: horizontal scrolling at 1280x800 ({overflow} px)"


def _click_point(pg, root: str, trace: str, ident: int) -> None:
    # a rerun can leave the old chart beside its redraw for a moment (seen in CI): wait for one
    _idle(pg)
    pg.wait_for_function("r => document.querySelectorAll(r + ' .js-plotly-plot').length === 1", arg=root,
                         timeout=TIMEOUT)
    pg.locator(f"{root} .js-plotly-plot").scroll_into_view_if_needed()
    x, y = pg.evaluate(POINT_JS, [root, trace, ident])
    pg.mouse.click(x, y)


def pick_first_pair(pg, store, cell, sort: str) -> int:
    """Check that the grid's first card is the cell's first pair by ``sort`` (computed with the core
    library), press its *Select pair* and wait for the sidebar to show it; returns the pair id."""
    first = int(image_space.sort_pairs(store.pairs, image_space.select(store.pairs, cell), sort)[0])
    buttons = pg.locator("[class*='st-key-image_space_pick_']")
    assert f"st-key-image_space_pick_{first}" in buttons.first.get_attribute("class")
    buttons.first.locator("button").first.click()
    _wait_sidebar(pg, f"Pair #{first}")
    return first


def walk(pg, base_url: str, store, *, cell_rank: int = 0, shots: str | None = "") -> dict:
    """Click through the walk; ``cell_rank``: which cell (0 = the most populated); ``shots``: a prefix
    for screenshots under test-output/browser/ (None: none). Returns what was selected."""
    pairs = store.pairs
    an = Analysis(store)
    defaults = Selection()

    pg.goto(base_url + "/")
    pg.wait_for_selector("[data-testid=stSidebarNav]", timeout=TIMEOUT)
    # the page drawn, not its loading skeleton: the summary numbers and the table's canvas
    pg.wait_for_selector("[data-testid=stMetricValue]", timeout=TIMEOUT)
    pg.wait_for_selector("[data-testid=stDataFrame] canvas", timeout=TIMEOUT)
    _idle(pg)
    _shot(pg, shots, "0-experiments")

    # -- image space: a lasso on the benign scatterplot filters the grid ------------------------------
    _nav(pg, "Image space")
    pg.wait_for_selector(".st-key-image_space_scatter_benign .js-plotly-plot", timeout=TIMEOUT)
    pg.wait_for_selector("[data-testid=stVegaLiteChart] svg path[aria-label]", timeout=TIMEOUT)
    _wait_text(pg, rf"All {len(pairs)} pairs")
    left, top, width, height = pg.evaluate(PLOT_AREA_JS, ".st-key-image_space_scatter_benign")
    cx, cy, r = left + width / 2, top + height / 2, min(width, height) / 4
    pg.mouse.move(cx + r, cy)
    pg.mouse.down()
    for i in range(1, 33):
        a = 2 * math.pi * i / 32
        pg.mouse.move(cx + r * math.cos(a), cy + r * math.sin(a))
    pg.mouse.up()
    lassoed = int(_wait_text(pg, r"(\d+) pairs? selected").group(1))
    assert 0 < lassoed < len(pairs), "the lasso should keep part of the pairs"
    _wait_sidebar(pg, f"Scatterplot selection: {lassoed} pairs")
    _shot(pg, shots, "1-image-space-lasso")
    pg.locator(".st-key-image_space_clear button").first.click()
    _wait_text(pg, rf"All {len(pairs)} pairs")

    # -- 1. click the cell_rank-th most populated prediction-matrix cell --------------------------
    matrix = image_space.prediction_matrix(pairs, len(store.classes))
    t, a = np.unravel_index(np.argsort(-matrix, axis=None, kind="stable")[cell_rank], matrix.shape)
    true_name, adv_name = store.classes[t], store.classes[a]
    cell = pg.locator(f"[data-testid=stVegaLiteChart] svg path[aria-label*='true: {true_name}; "
                      f"adversarial: {adv_name}; pairs: {matrix[t, a]}']")
    cell.first.click()
    _wait_text(pg, rf"{matrix[t, a]} pairs selected")
    _wait_sidebar(pg, f"Cell: {true_name} → {adv_name}")

    # -- 2. sort the grid by L2 increasing (through another sort, so the change is real) --------------
    _select(pg, "image_space_sort", image_space.SORTS["l2_decreasing"])
    _select(pg, "image_space_sort", image_space.SORTS["l2_increasing"])
    # -- 3. select the first pair ------------------------------------------------------------------------
    first = pick_first_pair(pg, store, (int(t), int(a)), "l2_increasing")
    _shot(pg, shots, "2-image-space-cell-and-pair")

    # -- 4. neuron ranking sorted by IoU with bMap ----------------------------------------------------
    _nav(pg, "Neuron ranking")
    pg.wait_for_selector(".st-key-neuron_ranking_chart .js-plotly-plot", timeout=TIMEOUT)
    _select(pg, "neuron_ranking_sort", "IoU with bMap (image perturbation)")
    pg.wait_for_selector(".st-key-neuron_ranking_chart .js-plotly-plot", timeout=TIMEOUT)
    _idle(pg)
    _, order = an.iou_ranking(first, "bmap", top=defaults.top, settings=map_settings(an, defaults))
    top_neuron = int(order[0])

    # -- 5. click the top neuron (the first position of the chart) ------------------------------------
    _click_point(pg, ".st-key-neuron_ranking_chart", "regions", top_neuron)
    _wait_sidebar(pg, f"Neuron {top_neuron}")
    _shot(pg, shots, "3-neuron-ranking")

    # -- 6. receptive fields: both RFs and both maps ----------------------------------------------------
    _nav(pg, "Receptive fields")
    main = pg.locator("[data-testid=stMain]")
    pg.wait_for_function("() => document.querySelectorAll('[data-testid=stMain] [data-testid=stImage]')"
                         ".length >= 6", timeout=TIMEOUT)
    text = main.inner_text()
    assert "bMap" in text and "aMap" in text
    _shot(pg, shots, "4-receptive-fields")

    # -- 7. open the context images ----------------------------------------------------------------------
    before = main.locator("[data-testid=stImage]").count()
    pg.locator(".st-key-receptive_fields_context summary").click()
    pg.wait_for_function("n => document.querySelectorAll('[data-testid=stMain] [data-testid=stImage]')"
                         ".length > n", arg=before, timeout=TIMEOUT)
    _idle(pg)
    _shot(pg, shots, "5-context-images")

    # -- 8. clustering: click the node above the selected neuron ---------------------------------------
    _nav(pg, "Clustering")
    pg.wait_for_selector(".st-key-clustering_dendrogram .js-plotly-plot", timeout=TIMEOUT)
    _wait_text(pg, "Click dendrogram nodes")
    Z = an.linkage(first, distance=defaults.distance, method=defaults.method)
    parent = clustering.nodes_containing(Z, top_neuron)[0]
    members = clustering.subtree(Z, parent)
    _click_point(pg, ".st-key-clustering_dendrogram", "nodes", parent)
    _wait_text(pg, rf"Union of {len(members)} neurons?' RFs")
    _wait_sidebar(pg, f"Clusters: 1 set(s), {len(members)} neurons, union")
    assert re.search(rf"Member neurons\s+{len(members)}\b", main.inner_text())
    _shot(pg, shots, "6-clustering-union")
    pg.locator(".st-key-clustering_set_op").get_by_text("intersection", exact=True).click()
    _wait_text(pg, rf"Intersection of {len(members)} neurons?' RFs")
    _shot(pg, shots, "7-clustering-intersection")

    return {"pair": first, "neuron": top_neuron, "node": parent, "members": len(members),
            "clusters": encode_set(members)}
