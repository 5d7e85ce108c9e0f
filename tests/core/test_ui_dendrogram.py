"""The Neuron Cluster View's figure and click mapping (core.ui.dendrogram), against core.clustering and
hand-worked trees."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.cluster import hierarchy

from core import clustering
from core.ui import dendrogram as dg

# 4 neurons by hand: node 4 = {0, 1} at 0.5, node 5 = {2, 3} at 0.7, root 6 = {0..3} at 1.0
HAND = np.array([[0, 1, 0.5, 2], [2, 3, 0.7, 2], [4, 5, 1.0, 4]], dtype=np.float64)


@pytest.fixture(scope="module")
def Z():
    """A 40-neuron tree from real-valued features with ties (some identical rows, like dead neurons)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 6))
    x[30:] = 0.0  # ten identical "dead" neurons
    return hierarchy.linkage(x, "average")


def trace(fig, name):
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, [t.name for t in fig.data]
    return found[0]


def segments_of(t) -> list[tuple[float, float, float, float]]:
    """(x0, y0, x1, y1) of a line trace drawn as x0, x1, gap, ..."""
    x, y = np.asarray(t.x, dtype=float), np.asarray(t.y, dtype=float)
    assert len(x) % 3 == 0 and np.isnan(x[2::3]).all() and np.isnan(y[2::3]).all()
    return [(x[i], y[i], x[i + 1], y[i + 1]) for i in range(0, len(x), 3)]


def test_markers_sit_on_the_geometry_and_carry_node_ids(Z):
    g = clustering.dendrogram_geometry(Z)
    n = len(Z) + 1
    fig = dg.figure(Z, n_clusters=4)
    nodes, leaves = trace(fig, dg.NODES_TRACE), trace(fig, dg.LEAVES_TRACE)
    np.testing.assert_array_equal(nodes.x, g["node_x"][n:])
    np.testing.assert_array_equal(nodes.y, g["node_height"][n:])
    np.testing.assert_array_equal(np.asarray(nodes.customdata)[:, 0], np.arange(n, 2 * n - 1))
    np.testing.assert_array_equal(np.asarray(nodes.customdata)[:, 1], g["node_size"][n:])
    np.testing.assert_array_equal(leaves.x, g["leaf_x"])
    np.testing.assert_array_equal(leaves.y, np.zeros(n))
    np.testing.assert_array_equal(np.asarray(leaves.customdata)[:, 0], np.arange(n))


def test_line_traces_draw_every_segment_once_coloured_by_the_cut(Z):
    g = clustering.dendrogram_geometry(Z)
    n = len(Z) + 1
    k = 5
    fig = dg.figure(Z, n_clusters=k)
    lines = [t for t in fig.data if t.mode == "lines"]
    drawn = [s for t in lines for s in segments_of(t)]
    assert sorted(drawn) == sorted(g["segments"])
    labels = clustering.cut(Z, k)
    # reference: a ⊓ is in a cluster colour iff all its neurons fall in one cluster of the cut
    colour_of_segment = {s: t.line.color for t in lines for s in segments_of(t)}
    cluster_colour = {}
    for s, node in zip(g["segments"], g["segment_node"], strict=True):
        members = clustering.subtree(Z, int(node))
        one = len(set(labels[members])) == 1
        c = colour_of_segment[s]
        if one:
            assert c != dg.ABOVE_CUT
            assert cluster_colour.setdefault(int(labels[members[0]]), c) == c  # one colour per cluster
        else:
            assert c == dg.ABOVE_CUT
    multi = {c for c in set(labels.tolist()) if (labels == c).sum() > 1}  # singletons have no ⊓
    assert set(cluster_colour) == multi and len(set(labels)) <= k
    assert len(set(cluster_colour.values())) == len(cluster_colour)
    assert all(t.hoverinfo == "skip" and t.customdata is None for t in lines)
    assert n == len(labels)


def test_hand_tree_cut_in_two_colours_each_pair():
    fig = dg.figure(HAND, n_clusters=2)
    lines = {t.line.color: segments_of(t) for t in fig.data if t.mode == "lines"}
    assert sorted(lines[dg.ABOVE_CUT]) == sorted([(0.5, 0.5, 0.5, 1.0), (0.5, 1.0, 2.5, 1.0),
                                                  (2.5, 0.7, 2.5, 1.0)])
    left, right = (c for c in lines if c != dg.ABOVE_CUT)
    assert {left, right} == set(dg.CLUSTER_COLORS[:2])  # numbered left to right


def test_selected_subtrees_are_highlighted(Z):
    g = clustering.dendrogram_geometry(Z)
    n = len(Z) + 1
    picks = [2 * n - 4, 7]  # an internal node and a leaf
    fig = dg.figure(Z, selected=picks + [10_000])  # an id outside the tree is ignored
    sel = trace(fig, dg.SELECTED_TRACE)
    chosen = set(clustering.subtree(Z, picks[0]).tolist())
    want = [s for s, v in zip(g["segments"], g["segment_node"], strict=True)
            if set(clustering.subtree(Z, int(v)).tolist()) <= chosen]
    assert sorted(segments_of(sel)) == sorted(want)
    assert sel.line.width > max(t.line.width for t in fig.data if t.mode == "lines" and t is not sel)
    assert fig.data[0] is sel  # drawn under the cluster colours
    marks = trace(fig, "selected nodes")
    np.testing.assert_array_equal(marks.x, g["node_x"][sorted(picks)])
    np.testing.assert_array_equal(marks.y, g["node_height"][sorted(picks)])


def test_no_selection_no_highlight_traces(Z):
    names = {t.name for t in dg.figure(Z).data}
    assert dg.SELECTED_TRACE not in names and "selected nodes" not in names
    assert not any(name.startswith("neuron ") for name in names)


def test_neuron_path_runs_from_its_leaf_through_every_ancestor_to_the_root(Z):
    g = clustering.dendrogram_geometry(Z)
    n = len(Z) + 1
    neuron = 5
    fig = dg.figure(Z, neuron=neuron)
    path = trace(fig, f"neuron {neuron}'s path")
    assert path.line.color == dg.PATH
    x, y = np.asarray(path.x), np.asarray(path.y)
    assert (x[0], y[0]) == (g["leaf_x"][neuron], 0.0)
    ancestors = clustering.nodes_containing(Z, neuron)
    assert ancestors[-1] == 2 * n - 2
    corners = list(zip(x[2::2], y[2::2], strict=True))  # after each climb and traverse: the ancestor
    assert corners == [(g["node_x"][v], g["node_height"][v]) for v in ancestors]
    assert np.all(np.diff(y) >= 0)  # only climbs (heights never decrease for average linkage)
    star = trace(fig, f"neuron {neuron}")
    assert (star.x[0], star.y[0]) == (g["leaf_x"][neuron], 0.0)
    assert star.marker.color == dg.PATH


def test_hand_tree_path_of_neuron_2():
    fig = dg.figure(HAND, neuron=2)
    path = trace(fig, "neuron 2's path")
    assert list(path.x) == [2.0, 2.0, 2.5, 2.5, 1.5]
    assert list(path.y) == [0.0, 0.7, 0.7, 1.0, 1.0]


def test_descendants_and_node_clusters_by_hand():
    assert dg.descendants(HAND, [4]).tolist() == [0, 1, 4]
    assert dg.descendants(HAND, [5, 0]).tolist() == [0, 2, 3, 5]
    assert dg.descendants(HAND, [6]).tolist() == list(range(7))
    assert dg.node_clusters(HAND, [1, 1, 2, 2]).tolist() == [1, 1, 2, 2, 1, 2, 0]


def test_click_events_map_to_node_ids():
    event = {"selection": {"points": [
        {"curve_number": 8, "point_index": 3, "x": 1.5, "y": 0.7, "customdata": [5, 2]},
        {"curve_number": 9, "point_index": 2, "x": 2, "y": 0, "customdata": [2, 1]},
        {"curve_number": 0, "point_index": 4, "x": 1, "y": 1},           # a line vertex: no node
        {"curve_number": 8, "point_index": 3, "customdata": [5, 2]},      # repeated
        {"curve_number": 8, "point_index": 9, "customdata": [99, 1]},     # outside the tree
        {"curve_number": 9, "point_index": 0, "customdata": 0},           # scalar customdata
        {"curve_number": 8, "point_index": 1, "customdata": {"0": 4, "1": 2}}],  # a typed-array row
        "point_indices": [3, 2, 4, 3, 9, 0, 1], "box": [], "lasso": []}}
    assert dg.nodes_from_event(event, 7) == [5, 2, 0, 4]
    assert dg.nodes_from_event(event["selection"], 7) == [5, 2, 0, 4]
    assert dg.nodes_from_event(None, 7) == []
    assert dg.nodes_from_event({"selection": {"points": []}}, 7) == []


def test_a_click_on_any_marker_gives_back_the_node_it_shows(Z):
    """Simulate plotly's event for each clickable point: the mapping returns that point's node id."""
    n = len(Z) + 1
    fig = dg.figure(Z, selected=[n + 3], neuron=1)
    clickable = [i for i, t in enumerate(fig.data) if t.customdata is not None]
    assert [fig.data[i].name for i in clickable] == [dg.NODES_TRACE, dg.LEAVES_TRACE]
    seen = []
    for i in clickable:
        for k, data in enumerate(np.asarray(fig.data[i].customdata).tolist()):
            event = {"selection": {"points": [{"curve_number": i, "point_index": k, "customdata": data}]}}
            seen += dg.nodes_from_event(event, 2 * n - 1)
    assert sorted(seen) == list(range(2 * n - 1))
