"""Stored script injection through class names (issue 12), in headless Debian Chromium on a real store.

The store is prepared from real CIFAR-10 test images (10 per class) in an image folder whose 10 class
folders carry HTML, Markdown, Streamlit-shortcode, LaTeX, plotly-template and script payloads, with the
standard-trained ResNet20 (folder k in sorted order holds CIFAR-10 class k, so the model's class order
fits). Every page is opened from a link that carries a selection (a cell, a pair, a neuron, a cluster),
and each must show: no script ran (no flag set, no dialog), no element the payloads would create (img,
iframe, svg with onload, details, links to "evil", KaTeX, an ``on...`` attribute anywhere), no request for
the payloads' URLs, and the names themselves as literal text. Screenshots: test-output/browser/injection-*.
"""
import re
import shutil
import urllib.parse

import pytest

from core import clustering, image_space
from core.analysis import Analysis
from core.ui.state import encode_set
from tests.browser.conftest import _serve
from tests.browser.walk import SHOTS, TIMEOUT, _idle, open_page

pytestmark = pytest.mark.reliability

# a folder name cannot hold "/": no ":material/icon:" here (tests/core/test_ui_text.py has it)
NAMES = ['cat<img src=x onerror="window.__xss=1">', "dog[link](http:evil) <a href=http:evil>a",
         "plane![i](x.png) :smile:", ":red[car] :streamlit: :heart:", "$x^2$ bird", "**deer** # h",
         '<svg onload="window.__xss=2">horse',
         'frog<iframe srcdoc="&lt;script&gt;parent.__xss=3&lt;&#47;script&gt;">',
         "ship %{y} &amp; www.evil.example", 'truck<details open ontoggle="alert(1)">']
JOINER = "\u2060"
INJECTED_JS = """() => {
  const bad = [...document.querySelectorAll('img[src="x"], img[src$="x.png"], iframe, svg[onload], '
                                            + 'details[ontoggle], a[href*="evil"], .katex, math')];
  const on = [...document.querySelectorAll('*')]
      .filter(e => [...e.attributes].some(a => a.name.startsWith('on')));
  return [...bad, ...on].map(e => e.outerHTML.slice(0, 160));
}"""
FLAGS_JS = ("() => [window.__xss, ...Array.from({length: window.frames.length}, (_, i) => window.frames[i])"
            ".map(f => { try { return f.__xss } catch (e) { return 'x' } })]")
PLAIN_ID = '<img src=x onerror="window.__xss=9">'


@pytest.fixture(scope="module")
def hostile_store(cifar_root, models_dir, tmp_path_factory):
    from core.pipeline import prepare
    from core.presets import preset
    from core.store import Store
    root = tmp_path_factory.mktemp("hostile-data")
    cifar = sorted(p for p in cifar_root.iterdir() if p.is_dir())
    for name, src in zip(sorted(NAMES), cifar, strict=True):
        (root / name).mkdir()
        for f in sorted(src.iterdir())[:10]:
            shutil.copyfile(f, root / name / f.name)
    config = preset("cifar10-resnet56", ['data.source="image_folder"', f'data.root="{root}"',
                                         "data.per_class=10", 'model.arch="resnet20_cifar"',
                                         f'model.checkpoint="{models_dir / "resnet20-12fca82f.th"}"',
                                         "prepare.batch_size=16", "prepare.tsne_perplexity=10"])
    cache = tmp_path_factory.mktemp("hostile-cache")
    store = Store(prepare(config, "hostile", cache_dir=cache, show_bars=False))
    assert store.classes == sorted(NAMES)
    return store


@pytest.fixture(scope="module")
def url(hostile_store):
    yield from _serve(hostile_store.path.parent)


@pytest.fixture(scope="module")
def case(hostile_store):
    """A selection that fills every page: the fullest cell, its first pair, a neuron and its parent node."""
    an = Analysis(hostile_store)
    pairs = hostile_store.pairs
    matrix = image_space.prediction_matrix(pairs, len(hostile_store.classes))
    t, a = divmod(int(matrix.argmax()), matrix.shape[1])
    pair = int(image_space.select(pairs, (t, a))[0])
    neuron = 5
    node = int(clustering.nodes_containing(an.linkage(pair), neuron)[0])
    names = hostile_store.classes
    return {"exp": "hostile", "cell": f"{t}-{a}", "pair": str(pair), "neuron": str(neuron),
            "clusters": encode_set(clustering.subtree(an.linkage(pair), node)), "stride": "4",
            "names": (names[t], names[a]),
            "pair_names": tuple(names[int(pairs[c].iloc[pair])] for c in ("label", "adv_label"))}


@pytest.fixture
def page(browser):
    pg = open_page(browser)
    pg.dialogs = []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    yield pg
    pg.close()


def _link(base: str, path: str, case: dict, **extra) -> str:
    q = {k: v for k, v in case.items() if isinstance(v, str)} | extra
    return f"{base}/{path}?{urllib.parse.urlencode(q)}"


def _text(pg, area: str = "stMain") -> str:
    return pg.locator(f"[data-testid={area}]").inner_text().replace(JOINER, "")


def _check(pg, shot: str, names=()) -> str:
    """Nothing injected ran or exists; every name in ``names`` is on the page as text. Returns the text."""
    _idle(pg)
    pg.wait_for_timeout(500)  # plotly and vega draw after the run
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SHOTS / f"injection-{shot}.png"), full_page=True)
    assert pg.evaluate(FLAGS_JS) == [None] * len(pg.evaluate(FLAGS_JS)), f"{shot}: a payload script ran"
    assert not pg.dialogs, f"{shot}: a payload opened a dialog: {pg.dialogs}"
    assert pg.evaluate(INJECTED_JS) == [], f"{shot}: injected elements"
    fetched = [f for f in pg.failed if re.search(r"/x(\.png)?$|evil", f)]
    assert not fetched, f"{shot}: the page requested a payload's URL: {fetched}"
    text = _text(pg) + "\n" + _text(pg, "stSidebar")
    for name in names:
        assert name in text, f"{shot}: {name!r} is not shown literally"
    assert "😄" not in text and "❤" not in text, f"{shot}: a shortcode became an emoji"
    assert "\\" not in text, f"{shot}: an escape shows"
    assert not [e for e in pg.errors if e.startswith("page error")], pg.errors
    return text


def test_image_space_shows_names_as_text(page, url, case):
    page.goto(_link(url, "image_space", case))
    page.wait_for_selector("[data-testid=stVegaLiteChart] svg path[aria-label]", timeout=TIMEOUT)
    page.wait_for_selector(".st-key-image_space_scatter_benign .js-plotly-plot", timeout=TIMEOUT)
    text = _check(page, "1-image-space", NAMES)  # the legend holds every class
    b, a = case["names"]
    assert f"Cell: {b} → {a}" in _text(page, "stSidebar")
    assert f"cell {b} → {a}" in text
    # the matrix: axis labels and the tooltip of a hovered cell are text
    labels = page.evaluate("() => [...document.querySelectorAll('[data-testid=stVegaLiteChart] text')]"
                           ".map(t => t.textContent)")
    assert any(label.startswith("cat<img") for label in labels)
    cell = page.locator("[data-testid=stVegaLiteChart] svg path[aria-label*='pairs: ']").nth(3)
    box = cell.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_selector("#vg-tooltip-element.visible", timeout=TIMEOUT)
    tip = page.evaluate("() => document.querySelector('#vg-tooltip-element').innerHTML")
    assert "<img" not in tip and "<svg" not in tip and "<iframe" not in tip and "<details" not in tip, tip
    _check(page, "1b-image-space-tooltip")


def test_neuron_ranking_shows_names_as_text(page, url, case):
    page.goto(_link(url, "neuron_ranking", case))
    page.wait_for_selector(".st-key-neuron_ranking_chart .js-plotly-plot", timeout=TIMEOUT)
    b, a = case["pair_names"]
    text = _check(page, "2-neuron-ranking", (b, a))
    assert f"Pair #{case['pair']}: {b} → {a}" in text
    legend = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot .legendtext')]"
                           ".map(t => t.textContent)")
    assert f"{b}: benign image" in legend and f"{a}: adversarial image" in legend


def test_receptive_fields_show_names_as_text(page, url, case):
    page.goto(_link(url, "receptive_fields", case))
    page.wait_for_function("() => document.querySelectorAll('[data-testid=stMain] [data-testid=stImage]')"
                           ".length >= 6", timeout=TIMEOUT)
    page.wait_for_selector("[data-testid=stMain] .js-plotly-plot .ytick", timeout=TIMEOUT)
    b, a = case["pair_names"]
    text = _check(page, "3-receptive-fields", (b, a))
    assert f"predicted {b}" in text and f"lowers P({b})" in text
    ticks = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot .ytick text')]"
                          ".map(t => t.textContent)")
    assert b in ticks and a in ticks and set(ticks) <= set(NAMES), ticks


@pytest.mark.parametrize("set_op", ["union", "intersection"])
def test_clustering_shows_names_as_text(page, url, case, set_op):
    page.goto(_link(url, "clustering", case, set_op=set_op))
    page.wait_for_selector(".st-key-clustering_dendrogram .js-plotly-plot", timeout=TIMEOUT)
    page.wait_for_function("() => /of \\d+ neurons?' RFs/.test(document.querySelector('[data-testid=stMain]')"
                           ".innerText)", timeout=TIMEOUT)
    b, a = case["pair_names"]
    text = _check(page, f"4-clustering-{set_op}", (b, a))
    assert f"{set_op.capitalize()} of" in text and f"Benign: {b}" in text and f"Adversarial: {a}" in text


def test_a_hostile_experiment_id_in_a_link_is_text(page, url, case):
    page.goto(f"{url}/image_space?{urllib.parse.urlencode({'exp': PLAIN_ID})}")
    page.wait_for_selector("[data-testid=stVegaLiteChart] svg path[aria-label]", timeout=TIMEOUT)
    text = _check(page, "5-unknown-experiment")
    assert f"Experiment '{PLAIN_ID}' cannot be opened: invalid experiment id '{PLAIN_ID}'" in text
    assert "showing 'hostile'" in text


def test_experiments_page_shows_names_as_text(page, url, case):
    page.goto(url + "/")
    page.wait_for_selector("[data-testid=stDataFrame]", timeout=TIMEOUT)
    _check(page, "0-experiments", NAMES)
