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


def subtree(Z, node) -> tuple[int, ...]:
    return tuple(clustering.subtree(Z, node).tolist())


def test_dendrogram_of_all_neurons_with_the_neuron_highlighted(analysis):
    at = page(Selection(experiment="cifar20", pair=PAIR, neuron=NEURON))
    assert not at.exception
    Z = analysis.linkage(PAIR)
    g = clustering.dendrogram_geometry(Z, dendrogram.drawn_heights(Z))
    n = analysis.num_neurons
    traces = {t.get("name"): t for t in chart(at)["data"]}
    np.testing.assert_array_equal(array(traces[dendrogram.NODES_TRACE]["x"]), g["node_x"][n:])
    np.testing.assert_allclose(array(traces[dendrogram.NODES_TRACE]["y"]), g["node_y"][n:])
    data = array(traces[dendrogram.NODES_TRACE]["customdata"])
    np.testing.assert_array_equal(data[:, 0], np.arange(n, 2 * n - 1))
    np.testing.assert_allclose(data[:, 2], Z[:, 2])  # the hover's true merge height
    np.testing.assert_array_equal(array(traces[dendrogram.LEAVES_TRACE]["x"]), g["leaf_x"])
    star = traces[f"neuron {NEURON}"]
    assert star["x"] == [g["leaf_x"][NEURON]]
    path = traces[f"neuron {NEURON}'s path"]
    assert path["x"][-1] == g["node_x"][2 * n - 2]
    assert "Click dendrogram nodes to select clusters" in at.info[0].value
    assert "ward linkage" in " ".join(c.value for c in at.caption)  # the measured default


def test_each_press_climbs_one_level_down_and_reset_come_back(analysis):
    """§6.1.4 bottom-up: the neuron's cluster, then two levels up = two presses; one level down; reset."""
    at = page(Selection(experiment="cifar20", pair=PAIR, neuron=NEURON))
    assert at.button(key="clustering_down").disabled and at.button(key="clustering_reset").disabled
    Z = analysis.linkage(PAIR)
    path = clustering.nodes_containing(Z, NEURON)
    at.button(key="clustering_parent").click().run()
    assert not at.exception
    assert selection(at).clusters == (subtree(Z, path[0]),)
    members = clustering.subtree(Z, path[0])
    assert at.code[0].value == ", ".join(map(str, members))
    assert at.metric[0].value == str(len(members))
    assert len(at.image) == 2
    want = [float(rf.union(analysis.rf_masks_for(PAIR, side, members)).float().mean())
            for side in ("benign", "adversarial")]
    assert coverage(at) == pytest.approx(want, abs=0.006)  # shown as whole percents
    assert "climbed 1 level up" in " ".join(c.value for c in at.caption)
    traces = {t.get("name"): t for t in chart(at)["data"]}
    assert dendrogram.SELECTED_TRACE in traces or len(members) == 1

    at.radio(key="clustering_set_op").set_value("intersection").run()
    assert selection(at).set_op == "intersection"
    want = [float(rf.intersection(analysis.rf_masks_for(PAIR, side, members)).float().mean())
            for side in ("benign", "adversarial")]
    assert coverage(at) == pytest.approx(want, abs=0.006)

    for level in (2, 3):  # each press replaces the cluster by the one above it
        at.button(key="clustering_parent").click().run()
        assert selection(at).clusters == (subtree(Z, path[level - 1]),)
        assert f"climbed {level} levels up" in " ".join(c.value for c in at.caption)
    at.button(key="clustering_down").click().run()
    assert selection(at).clusters == (subtree(Z, path[1]),)
    at.button(key="clustering_reset").click().run()
    assert selection(at).clusters == ()
    assert "Click dendrogram nodes" in at.info[0].value


def test_several_clusters_union_of_their_members(analysis):
    Z = analysis.linkage(PAIR)
    n = analysis.num_neurons
    sets = (subtree(Z, n + 3), subtree(Z, 2 * n - 3), (7,))
    at = page(Selection(experiment="cifar20", pair=PAIR, clusters=sets + ((10_000,),)))
    assert not at.exception
    members = np.unique(np.concatenate(sets))
    assert at.code[0].value == ", ".join(map(str, members))
    assert any("10000" in c.value and "Ignored" in c.value for c in at.caption)  # named, not used
    assert not at.warning  # every valid set is one cluster of this tree
    at.button(key="clustering_clear").click().run()
    assert selection(at).clusters == ()


def test_old_links_internal_node_number_is_ignored_not_remapped(analysis):
    n = analysis.num_neurons
    at = page(Selection(experiment="cifar20", pair=PAIR, clusters=((2 * n - 3,),)))
    assert not at.exception
    assert any("older link" in c.value for c in at.caption)
    assert "Click dendrogram nodes" in at.info[0].value


def test_another_linkage_keeps_the_same_neurons_and_says_when_they_are_no_cluster(analysis):
    Z = analysis.linkage(PAIR)  # ward
    Zs = analysis.linkage(PAIR, method="single")
    n = analysis.num_neurons
    picked = next(subtree(Z, v) for v in range(n, 2 * n - 1)
                  if 4 <= Z[v - n, 3] <= n // 2 and clustering.cluster_node(Zs, subtree(Z, v)) is None)
    at = page(Selection(experiment="cifar20", pair=PAIR, clusters=(picked,)))
    assert not at.warning
    at.selectbox(key="clustering_method").set_value("single").run()
    assert not at.exception
    assert selection(at).clusters == (picked,)  # the same neurons, not the node with the same number
    assert "no longer one cluster" in at.warning[0].value
    assert at.code[0].value == ", ".join(map(str, picked))
    traces = {t.get("name"): t for t in chart(at)["data"]}
    g = clustering.dendrogram_geometry(Zs, dendrogram.drawn_heights(Zs))
    np.testing.assert_array_equal(np.sort(array(traces[dendrogram.MARKED_TRACE]["x"])),
                                  np.sort(g["leaf_x"][list(picked)]))
    at.selectbox(key="clustering_method").set_value("ward").run()
    assert not at.warning and selection(at).clusters == (picked,)


def test_dead_neurons_button_selects_the_height_zero_cluster(analysis):
    """§6.1.4 top-down: the neurons that see nothing (black RF on both images) in one click; with the L2
    distance they are one cluster at height 0, and their union covers nothing."""
    masks = [analysis.rf_masks(PAIR, side) for side in ("benign", "adversarial")]
    dead = tuple(clustering.blind_neurons(analysis.store.pair_images(PAIR), masks).tolist())
    at = page(Selection(experiment="cifar20", pair=PAIR))
    if not dead:
        pytest.skip("no neuron sees nothing on this pair")
    assert f"Select the {len(dead)} neuron" in at.button(key="clustering_dead").label
    at.button(key="clustering_dead").click().run()
    assert not at.exception
    assert selection(at).clusters == (dead,)
    assert coverage(at) == [0.0, 0.0]  # they capture nothing (§6.1.4)
    Z = analysis.linkage(PAIR)
    node = clustering.cluster_node(Z, dead)
    assert node is not None and (node < analysis.num_neurons or Z[node - analysis.num_neurons, 2] == 0)
    assert "one cluster, at height 0" in " ".join(c.value for c in at.caption)
    at.button(key="clustering_dead").click().run()  # again: deselected
    assert selection(at).clusters == ()


def test_controls_write_the_selection_and_refuse_ward_with_iou(analysis):
    at = page(Selection(experiment="cifar20", pair=PAIR))
    at.slider(key="clustering_n_clusters").set_value(3).run()
    assert selection(at).n_clusters == 3
    lines = [t for t in chart(at)["data"] if t.get("mode") == "lines"]
    colours = {t["line"]["color"] for t in lines} - {dendrogram.ABOVE_CUT}
    assert 1 <= len(colours) <= 3
    at.selectbox(key="clustering_distance").set_value("iou").run()
    # ward (the default) cannot use 1 − IoU: the linkage follows to the IoU's default
    assert (selection(at).distance, selection(at).method) == ("iou", clustering.default_method("iou"))
    assert not at.warning and at.get("plotly_chart")
    at.selectbox(key="clustering_method").set_value("ward").run()
    assert (selection(at).distance, selection(at).method) == ("iou", "ward")
    assert not at.exception
    assert "Euclidean" in at.warning[0].value
    assert not at.get("plotly_chart")
    at.selectbox(key="clustering_method").set_value("complete").run()
    Z = analysis.linkage(PAIR, distance="iou", method="complete")
    g = clustering.dendrogram_geometry(Z, dendrogram.drawn_heights(Z))
    nodes = next(t for t in chart(at)["data"] if t.get("name") == dendrogram.NODES_TRACE)
    np.testing.assert_allclose(array(nodes["y"]), g["node_y"][analysis.num_neurons:])


def test_every_control_has_plain_words_help(analysis):
    at = page(Selection(experiment="cifar20", pair=PAIR, neuron=NEURON))
    for w in (at.selectbox(key="clustering_distance"), at.selectbox(key="clustering_method"),
              at.slider(key="clustering_n_clusters"), at.radio(key="clustering_set_op"),
              at.button(key="clustering_parent"), at.button(key="clustering_down"),
              at.button(key="clustering_reset"), at.button(key="clustering_clear")):
        assert w.help and len(w.help) > 40, w.key


def test_linear_axis_toggle_draws_heights_to_scale(analysis):
    Z = analysis.linkage(PAIR)
    n = analysis.num_neurons
    at = page(Selection(experiment="cifar20", pair=PAIR))
    nodes = next(t for t in chart(at)["data"] if t.get("name") == dendrogram.NODES_TRACE)
    np.testing.assert_allclose(array(nodes["y"]), dendrogram.drawn_heights(Z, "log")[n:])
    at.toggle(key="clustering_linear").set_value(True).run()
    assert not at.exception and at.session_state["clustering_linear_axis"] is True
    nodes = next(t for t in chart(at)["data"] if t.get("name") == dendrogram.NODES_TRACE)
    np.testing.assert_allclose(array(nodes["y"]), dendrogram.drawn_heights(Z, "linear")[n:])
