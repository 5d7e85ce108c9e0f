"""Hostile links, an unknown experiment and an unexpected error, through AppTest on the small real store.

Every page is opened with query parameters from a seeded generator (a valid deep link with some values
replaced by hostile ones: 40-digit integers, 1e-300, -1e308, nan, inf, negative, huge or repeated lists,
markup): no exception, no traceback and no error message, and the page draws its header. A link to an
experiment that is not here says so in plain words. An error inside a page is logged with an id and the
user sees one sentence, no traceback and no server path.
"""
import logging
import random
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import image_space
from core.ui import dendrogram
from core.ui import neuron_charts as nc
from core.ui.state import KEY, Selection
from tests.helpers import displayed

pytestmark = pytest.mark.reliability

APP = str(Path(__file__).resolve().parents[2] / "app.py")
PAGES = {"pages/experiments.py": "Experiments", "pages/image_space.py": "Image space",
         "pages/neuron_ranking.py": "Neuron ranking", "pages/receptive_fields.py": "Receptive fields",
         "pages/clustering.py": "Neuron clusters"}
# a deep link that reaches the bottom of every page (stride 4: the cheapest vulnerability maps)
VALID = {"exp": "cifar20", "cell": "3-5", "pair": "0", "neuron": "5", "clusters": "5", "stride": "4"}
HOSTILE = ["1" * 40, "-1", "0", "1e-300", "-1e308", "1e308", "nan", "inf", "-inf", "2147483648", "1.5",
           "", ",", "5,5,5,5", "1," * 3000, "-5,3", "3-4-5", "<img src=x onerror=alert(1)>", "[a](http:evil)",
           ":red[x]", "$x$", "quantile", "absolute", "intersection", "ward", "iou", "9" * 5000]
KEYS = ["cell", "lasso", "color_by", "benign_classes", "adversarial_classes", "grid_sort", "grid_page",
        "pair", "neuron", "neuron_sort", "zoom", "clusters", "set_op", "n_clusters", "rf_mode", "rf_value",
        "top", "stride", "interval", "coverage", "distance", "method"]
CASES_PER_PAGE = 3
TRACE = re.compile(r"Traceback|File \"|\.py\b|/work/|/home/|site-packages")


def _links(seed: int) -> list[dict]:
    """Deep links with 4-8 values replaced by hostile ones (a value may be a repeated parameter)."""
    rng = random.Random(seed)
    out = []
    for _ in range(CASES_PER_PAGE):
        q = dict(VALID)
        for key in rng.sample(KEYS, rng.randint(4, 8)):
            q[key] = rng.choice(HOSTILE) if rng.random() < 0.8 else rng.sample(HOSTILE, 2)
        out.append(q)
    return out


def _texts(at) -> list[str]:
    """Every text the user can read (markdown, captions, alerts, headers, labels)."""
    out = []
    for kind in ("markdown", "caption", "error", "warning", "info", "success", "header", "title",
                 "subheader", "text", "code"):
        out += [str(e.value) for e in getattr(at, kind)]
    return out


def _open(store, monkeypatch, page: str, query: dict | None = None, sel: Selection | None = None) -> AppTest:
    monkeypatch.setenv("NVE_CACHE", str(store.path.parent))
    at = AppTest.from_file(APP, default_timeout=120)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    if sel is not None:
        at.session_state[KEY] = sel
    at.switch_page(page)
    return at.run()


@pytest.mark.parametrize("page", PAGES)
def test_hostile_links_never_break_a_page(cifar20_store, monkeypatch, page):
    for query in _links(seed=sorted(PAGES).index(page)):
        at = _open(cifar20_store, monkeypatch, page, query)
        where = f"{page} with {query}"[:600]
        assert not at.exception, f"{where}: {at.exception}"
        assert not at.error, f"{where}: {[e.value for e in at.error]}"
        headers = [h.value for h in (*at.header, *at.title)]
        assert PAGES[page] in headers, f"{where}: the page did not render ({headers})"
        assert not any(TRACE.search(t) for t in _texts(at)), where


def test_a_link_to_an_unknown_experiment_says_so(cifar20_store, monkeypatch):
    at = _open(cifar20_store, monkeypatch, "pages/image_space.py", {"exp": "gone", "pair": "0"})
    assert not at.exception
    said = [w.value for w in at.warning if "is not here" in w.value]
    assert len(said) == 1
    assert displayed(said[0]) == ("Experiment 'gone' is not here; showing 'cifar20'. Pick another one in "
                                  "the sidebar.")
    assert at.session_state[KEY].experiment == "cifar20" and at.session_state[KEY].pair is None
    assert at.header[0].value == "Image space"
    # a hostile id: not a valid id, said as such, shown literally
    at = _open(cifar20_store, monkeypatch, "pages/image_space.py", {"exp": "gone<img src=x>", "pair": "0"})
    assert not at.exception
    said = [e.value for e in at.error if "invalid experiment id" in e.value]
    assert len(said) == 1
    assert displayed(said[0]).startswith("Experiment 'gone<img src=x>' cannot be opened: invalid experiment "
                                         "id 'gone<img src=x>'")
    assert displayed(said[0]).endswith("showing 'cifar20'. Pick another one in the sidebar.")
    assert not re.search(r"(?<!\\)[<>=']", said[0])  # every character Markdown could read is escaped


def test_a_link_to_an_unknown_experiment_without_any_experiment(tmp_path, monkeypatch):
    monkeypatch.setenv("NVE_CACHE", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["exp"] = "gone"
    at.run()
    assert not at.exception
    assert any("'gone' is not here; there is no experiment to show yet" in displayed(w.value)
               for w in at.warning)


BREAK = {"pages/image_space.py": (image_space, "sort_pairs"),
         "pages/neuron_ranking.py": (nc, "ranking_figure"), "pages/clustering.py": (dendrogram, "figure")}


@pytest.mark.parametrize("page", BREAK)
def test_an_error_inside_a_page_shows_an_id_not_a_traceback(cifar20_store, monkeypatch, page):
    """A function the page calls fails with a message naming a server path: the boundary in app.py logs
    the traceback with an id; the user reads one sentence with the same id, and the sidebar still works.
    (Only the failing function is replaced; the app, the page and the store are real.)"""
    def boom(*args, **kwargs):
        raise RuntimeError(f"cannot read {cifar20_store.path}/pairs.parquet")

    monkeypatch.setattr(*BREAK[page], boom)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("nve.app")
    log.addHandler(handler)
    try:  # a link (not injected state): the run goes through app.py, as in a browser
        at = _open(cifar20_store, monkeypatch, page, dict(VALID))
    finally:
        log.removeHandler(handler)
    assert not at.exception
    assert len(at.error) == 1
    message = at.error[0].value
    error_id = re.search(r"error ([0-9a-f]{8})", message).group(1)
    assert not any(TRACE.search(t) or "RuntimeError" in t or "parquet" in t for t in _texts(at)), _texts(at)
    assert len(records) == 1 and error_id in records[0].getMessage()
    assert records[0].exc_info[0] is RuntimeError  # the server log keeps the traceback
    assert at.sidebar.selectbox[0].value == "cifar20"
