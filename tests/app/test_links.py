"""The case is always in the link, through AppTest on the small real store: every page writes the whole
selection to the browser's address as it opens (also a page that stops early), clearing a field removes
it, and the sidebar's page links carry the selection (so "open in a new tab" opens the same case).

AppTest's ``query_params`` is the server's copy, which is updated even when the message to the browser is
never sent (a message queued after ``st.stop()`` is dropped); so these tests read the ``page_info_changed``
messages the run actually sends, the ones the browser applies. The browser itself is checked in
tests/browser/test_links.py."""
from __future__ import annotations

import runpy
from pathlib import Path
from urllib.parse import parse_qs, urlencode

import pytest
from streamlit.runtime.scriptrunner import script_runner
from streamlit.testing.v1 import AppTest, local_script_runner

from core.ui.state import KEY, Selection, to_query

APP = str(Path(__file__).resolve().parents[2] / "app.py")
PAGES = ("pages/experiments.py", "pages/image_space.py", "pages/neuron_ranking.py",
         "pages/receptive_fields.py", "pages/clustering.py")


@pytest.fixture
def sent(monkeypatch):
    """The query strings each run sends to the browser (``page_info_changed``), one list per run."""
    runs: list[list[str]] = []
    parse = local_script_runner.parse_tree_from_messages

    def recording(msgs):
        runs.append([m.page_info_changed.query_string for m in msgs
                     if m.WhichOneof("type") == "page_info_changed"])
        return parse(msgs)

    monkeypatch.setattr(local_script_runner, "parse_tree_from_messages", recording)
    return runs


def _address(runs, query: str) -> dict[str, str]:
    """The browser's address after the last run: the last query string it was sent, else ``query``
    (what it had)."""
    last = runs[-1][-1] if runs and runs[-1] else query
    return {k: v[-1] for k, v in parse_qs(last, keep_blank_values=True).items()}


def _open(store, monkeypatch, page: str, sel: Selection) -> AppTest:
    """``page`` opened from the navigation menu: the session has a selection, the browser's query string
    is empty (a page change resets it). app.py runs around the page as on the server (AppTest would run
    the page file alone, seeing the pages/ folder; bench.app.served does the same)."""
    monkeypatch.setenv("NVE_CACHE", str(store.path.parent))
    monkeypatch.setattr(script_runner, "_mpa_v1", runpy.run_path)
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state[KEY] = sel
    at.switch_page(page)
    return at.run()


@pytest.mark.parametrize("page", PAGES)
def test_each_page_writes_the_selection_as_it_opens(cifar20_store, monkeypatch, sent, page):
    """Clustering with no cluster selected stops early: before the fix, its address stayed bare."""
    sel = Selection(experiment="cifar20", pair=0, neuron=5, stride=4)
    at = _open(cifar20_store, monkeypatch, page, sel)
    assert not at.exception
    assert _address(sent, "") == to_query(sel) == {"exp": "cifar20", "pair": "0", "neuron": "5",
                                                   "stride": "4"}


def test_clearing_the_clusters_removes_them_from_the_address(cifar20_store, monkeypatch, sent):
    sel = Selection(experiment="cifar20", pair=0, neuron=5, stride=4)
    at = _open(cifar20_store, monkeypatch, "pages/clustering.py", sel)
    at.button(key="clustering_parent").click().run()  # the cluster above the neuron
    assert at.session_state[KEY].clusters
    address = _address(sent, "")
    assert "clusters" in address and address == to_query(at.session_state[KEY])
    at.button(key="clustering_clear").click().run()
    assert not at.exception and not at.session_state[KEY].clusters
    assert _address(sent, urlencode(address)) == to_query(sel)  # no clusters= left


def test_sidebar_links_carry_the_selection(cifar20_store, monkeypatch, sent):
    sel = Selection(experiment="cifar20", pair=0, neuron=5, stride=4)
    at = _open(cifar20_store, monkeypatch, "pages/neuron_ranking.py", sel)
    links = {e.proto.label: e.proto for e in at.sidebar.get("page_link")}
    assert {"Next: its receptive fields", "Or: similar neurons"} <= links.keys()
    for proto in links.values():
        assert parse_qs(proto.query_string) == {k: [v] for k, v in to_query(sel).items()}
