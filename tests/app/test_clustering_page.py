"""The Clustering page (Neuron Cluster View) through AppTest on a real small store; chart clicks cannot be
simulated by AppTest, so clusters are injected or chosen with the page's buttons (the click mapping
itself is unit-tested in tests/core/test_ui_dendrogram.py)."""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core import clustering
from core import receptive_fields as rf
from core.analysis import Analysis
from core.ui import dendrogram
from core.ui.state import Selection

APP = str(Path(__file__).resolve().parents[2] / "app.py")
PAIR, NEURON = 0, 5



@pytest.fixture
def analysis(cifar20_store, monkeypatch):
    monkeypatch.setenv("NVE_CACHE", str(cifar20_store.path.parent))
    return Analysis(cifar20_store)


def page(sel: Selection) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["nve_selection"] = sel
    at.switch_page("pages/clustering.py")
    return at.run()


def selection(at) -> Selection:
    return at.session_state["nve_selection"]


def array(value) -> np.ndarray:
    """A plotly JSON array: a list, or a typed array {"dtype", "bdata"[, "shape"]}."""
    if isinstance(value, dict):
        a = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        if "shape" in value:
            a = a.reshape([int(s) for s in str(value["shape"]).split(",")])
        return a
    return np.asarray(value, dtype=float)


def chart(at) -> dict:
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    return json.loads(charts[0].proto.spec)


def coverage(at) -> list[float]:
    """The "covers x% of the image" figures of the benign and the adversarial RF combination."""
    text = " ".join(m.value for m in at.markdown)
    return [float(v) / 100 for v in re.findall(r"covers (\d+)% of the image", text)]


def test_without_a_pair_it_says_where_to_pick_one(analysis):
    at = page(Selection(experiment="cifar20"))
    assert not at.exception
    assert "Pick a pair in Image space first" in at.info[0].value
    assert not at.get("plotly_chart")


def test_dendrogram_of_all_neurons_with_the_neuron_highlighted(analysis):
    at = page(Selection(experiment="cifar20", pair=PAIR, neuron=NEURON))
    assert not at.exception
    Z = analysis.linkage(PAIR)
    g = clustering.dendrogram_geometry(Z)
    n = analysis.num_neurons
    traces = {t.get("name"): t for t in chart(at)["data"]}
    np.testing.assert_array_equal(array(traces[dendrogram.NODES_TRACE]["x"]), g["node_x"][n:])
    np.testing.assert_allclose(array(traces[dendrogram.NODES_TRACE]["y"]), g["node_height"][n:])
    np.testing.assert_array_equal(array(traces[dendrogram.NODES_TRACE]["customdata"])[:, 0],
                                  np.arange(n, 2 * n - 1))
    np.testing.assert_array_equal(array(traces[dendrogram.LEAVES_TRACE]["x"]), g["leaf_x"])
    star = traces[f"neuron {NEURON}"]
    assert star["x"] == [g["leaf_x"][NEURON]]
    path = traces[f"neuron {NEURON}'s path"]
    assert path["x"][-1] == g["node_x"][2 * n - 2]
    assert "Click dendrogram nodes to select clusters" in at.info[0].value


def test_parent_button_selects_the_neurons_cluster_and_shows_its_union(analysis, cifar20_store):
    at = page(Selection(experiment="cifar20", pair=PAIR, neuron=NEURON))
    at.button(key="clustering_parent").click().run()
    assert not at.exception
    Z = analysis.linkage(PAIR)
    parent = clustering.nodes_containing(Z, NEURON)[0]
    assert selection(at).clusters == (parent,)
    members = clustering.subtree(Z, parent)
    assert at.code[0].value == ", ".join(map(str, members))
    assert at.metric[0].value == str(len(members))
    assert len(at.image) == 2
    want = [float(rf.union(analysis.rf_masks_for(PAIR, side, members)).float().mean())
            for side in ("benign", "adversarial")]
    assert coverage(at) == pytest.approx(want, abs=0.006)  # shown as whole percents
    traces = {t.get("name"): t for t in chart(at)["data"]}
    assert dendrogram.SELECTED_TRACE in traces or len(members) == 1

    at.radio(key="clustering_set_op").set_value("intersection").run()
    assert selection(at).set_op == "intersection"
    want = [float(rf.intersection(analysis.rf_masks_for(PAIR, side, members)).float().mean())
            for side in ("benign", "adversarial")]
    assert coverage(at) == pytest.approx(want, abs=0.006)

    at.button(key="clustering_parent").click().run()  # the same node again: deselected
    assert selection(at).clusters == ()
    assert "Click dendrogram nodes" in at.info[0].value


def test_several_clusters_union_of_their_members(analysis):
    Z = analysis.linkage(PAIR)
    n = analysis.num_neurons
    nodes = (n + 3, 2 * n - 3, 7)
    at = page(Selection(experiment="cifar20", pair=PAIR, clusters=nodes + (10_000,)))
    assert not at.exception
    members = np.unique(np.concatenate([clustering.subtree(Z, v) for v in nodes]))
    assert at.code[0].value == ", ".join(map(str, members))
    assert any("10000" in c.value for c in at.caption)  # a stale id is named, not used
    at.button(key="clustering_clear").click().run()
    assert selection(at).clusters == ()


def test_controls_write_the_selection_and_refuse_ward_with_iou(analysis):
    at = page(Selection(experiment="cifar20", pair=PAIR))
    at.slider(key="clustering_n_clusters").set_value(3).run()
    assert selection(at).n_clusters == 3
    lines = [t for t in chart(at)["data"] if t.get("mode") == "lines"]
    colours = {t["line"]["color"] for t in lines} - {dendrogram.ABOVE_CUT}
    assert 1 <= len(colours) <= 3
    at.selectbox(key="clustering_distance").set_value("iou").run()
    at.selectbox(key="clustering_method").set_value("ward").run()
    assert (selection(at).distance, selection(at).method) == ("iou", "ward")
    assert not at.exception
    assert "Euclidean" in at.warning[0].value
    assert not at.get("plotly_chart")
    at.selectbox(key="clustering_method").set_value("complete").run()
    Z = analysis.linkage(PAIR, distance="iou", method="complete")
    g = clustering.dendrogram_geometry(Z)
    nodes = next(t for t in chart(at)["data"] if t.get("name") == dendrogram.NODES_TRACE)
    np.testing.assert_allclose(array(nodes["y"]), g["node_height"][analysis.num_neurons:])
