"""The Neuron Cluster View's figure and click mapping (core.ui.dendrogram), against core.clustering and
hand-worked trees."""
from __future__ import annotations

import math

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


def geometry(Z):
    """The geometry the figure draws: true heights pulled apart at ties (``drawn_heights``)."""
    return clustering.dendrogram_geometry(Z, dg.drawn_heights(Z))


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
    g = geometry(Z)
    n = len(Z) + 1
    fig = dg.figure(Z, n_clusters=4)
    nodes, leaves = trace(fig, dg.NODES_TRACE), trace(fig, dg.LEAVES_TRACE)
    np.testing.assert_array_equal(nodes.x, g["node_x"][n:])
    np.testing.assert_array_equal(nodes.y, g["node_y"][n:])
    np.testing.assert_array_equal(np.asarray(nodes.customdata)[:, 0], np.arange(n, 2 * n - 1))
    np.testing.assert_array_equal(np.asarray(nodes.customdata)[:, 1], g["node_size"][n:])
    np.testing.assert_array_equal(np.asarray(nodes.customdata)[:, 2], g["node_height"][n:])  # hover: true
    np.testing.assert_array_equal(leaves.x, g["leaf_x"])
    np.testing.assert_array_equal(leaves.y, np.full(n, g["node_y"][0]))
    assert g["node_y"][0] < 0 and (g["node_y"][:n] == g["node_y"][0]).all()
    np.testing.assert_array_equal(np.asarray(leaves.customdata)[:, 0], np.arange(n))


def test_line_traces_draw_every_segment_once_coloured_by_the_cut(Z):
    g = geometry(Z)
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
    fig = dg.figure(HAND, n_clusters=2, scale="linear")
    lines = {t.line.color: segments_of(t) for t in fig.data if t.mode == "lines"}
    # no ties: every node at its own height (the leaves below 0)
    assert sorted(lines[dg.ABOVE_CUT]) == sorted([(0.5, 0.5, 0.5, 1.0), (0.5, 1.0, 2.5, 1.0),
                                                  (2.5, 0.7, 2.5, 1.0)])
    left, right = (c for c in lines if c != dg.ABOVE_CUT)
    assert {left, right} == set(dg.CLUSTER_COLORS[:2])  # numbered left to right


def test_selected_subtrees_are_highlighted(Z):
    g = geometry(Z)
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
    np.testing.assert_array_equal(marks.y, g["node_y"][sorted(picks)])


def test_no_selection_no_highlight_traces(Z):
    names = {t.name for t in dg.figure(Z).data}
    assert dg.SELECTED_TRACE not in names and "selected nodes" not in names
    assert not any(name.startswith("neuron ") for name in names)


def test_neuron_path_runs_from_its_leaf_through_every_ancestor_to_the_root(Z):
    g = geometry(Z)
    n = len(Z) + 1
    neuron = 5
    fig = dg.figure(Z, neuron=neuron)
    path = trace(fig, f"neuron {neuron}'s path")
    assert path.line.color == dg.PATH
    x, y = np.asarray(path.x), np.asarray(path.y)
    assert (x[0], y[0]) == (g["leaf_x"][neuron], g["node_y"][neuron])
    ancestors = clustering.nodes_containing(Z, neuron)
    assert ancestors[-1] == 2 * n - 2
    corners = list(zip(x[2::2], y[2::2], strict=True))  # after each climb and traverse: the ancestor
    assert corners == [(g["node_x"][v], g["node_y"][v]) for v in ancestors]
    assert np.all(np.diff(y) >= 0)  # only climbs (heights never decrease for average linkage)
    star = trace(fig, f"neuron {neuron}")
    assert (star.x[0], star.y[0]) == (g["leaf_x"][neuron], g["node_y"][neuron])
    assert star.marker.color == dg.PATH


def test_hand_tree_path_of_neuron_2():
    fig = dg.figure(HAND, neuron=2, scale="linear")
    path = trace(fig, "neuron 2's path")
    assert list(path.x) == [2.0, 2.0, 2.5, 2.5, 1.5]
    assert list(path.y) == [-dg.LEAF_DROP, 0.7, 0.7, 1.0, 1.0]


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


# -- height-0 clusters (dead neurons, §6.1.4 top-down) are visible and clickable ---------------------------
def _slow_scaled(Z, scale):
    """log(1 + h/c), c the smallest positive height (at least 1e-3 of the largest)."""
    pos = sorted(v for v in Z[:, 2] if v > 0)
    c = max(pos[0], 1e-3 * pos[-1]) if pos else 1.0
    return np.array([math.log(1 + v / c) if scale == "log" else v for v in Z[:, 2]])


def _slow_drawn_heights(Z, scale="log"):
    """Line by line from the docstring: each internal node's tie group by a walk over tied parent/child
    edges, its top, u by recursion, the group's step from the cap."""
    n = len(Z) + 1
    h = np.concatenate([np.zeros(n), _slow_scaled(Z, scale)])
    top = h.max() or 1.0
    kids = {n + i: [int(c) for c in Z[i, :2]] for i in range(n - 1)}
    par = {c: v for v, cs in kids.items() for c in cs}

    def tied_kids(v):
        return [c for c in kids[v] if c >= n and h[c] == h[v]]

    def u(v):
        return 0 if not tied_kids(v) else 1 + max(u(c) for c in tied_kids(v))

    y = [-dg.LEAF_DROP * top] * n
    for v in range(n, 2 * n - 1):
        t = v
        while t in par and h[par[t]] == h[t]:
            t = par[t]
        cap = dg.TIE_BAND * top if t not in par else min(dg.TIE_BAND * top, dg.TIE_GAP * (h[par[t]] - h[t]))
        step = min(dg.TIE_STEP * top, max(cap, 0) / u(t)) if u(t) else 0.0
        y.append(h[v] + step * u(v))
    return np.array(y)


@pytest.mark.parametrize("scale", dg.SCALES)
@pytest.mark.parametrize("method", ["average", "ward", "centroid", "complete"])
def test_drawn_heights_against_the_docstring_rule(method, scale):
    x = np.random.default_rng(3).normal(size=(40, 6))
    x[30:] = 0.0
    x[20:24] = x[20]  # a second tie group, above 0
    Zm = hierarchy.linkage(x, method)
    y = dg.drawn_heights(Zm, scale)
    np.testing.assert_allclose(y, _slow_drawn_heights(Zm, scale), rtol=0, atol=1e-12)
    h = np.concatenate([np.zeros(40), dg.scaled(Zm[:, 2], scale, dg.log_knee(Zm[:, 2]))])
    np.testing.assert_allclose(h[40:], _slow_scaled(Zm, scale), rtol=1e-14)
    lift = y[40:] - h[40:]
    assert (lift >= 0).all() and lift.max() <= dg.TIE_BAND * h.max() * (1 + 1e-9)
    par = clustering.parents(Zm)
    for v in range(40, 79):  # drawn above its tied children; a tie group below its parent's height
        for c in Zm[v - 40, :2].astype(int):
            if c >= 40 and h[c] == h[v]:
                assert y[v] > y[c]
        if par[v] >= 0 and h[par[v]] > h[v]:
            assert y[v] < h[par[v]] and y[par[v]] >= h[par[v]]


def test_log_scale_spreads_the_low_merges_and_labels_true_heights():
    Zs = np.array([[0, 1, 0.5, 2], [2, 3, 1.0, 2], [4, 5, 100.0, 4]])  # ward-like: a huge top merge
    lin, log = dg.drawn_heights(Zs, "linear"), dg.drawn_heights(Zs, "log")
    assert lin[4] / lin[6] == 0.005 and log[4] / log[6] > 0.1  # low merges get room on the log axis
    assert dg.log_knee(Zs[:, 2]) == 0.5 and dg.log_knee([0, 1e-9, 10]) == 10 * 10.0 ** -dg.LOG_DECADES
    values, where = dg.log_ticks(100.0, dg.log_knee(Zs[:, 2]))
    assert values[0] == 0.0 and values[-1] <= 100 and len(values) <= 9
    np.testing.assert_allclose(where, [math.log(1 + v / dg.log_knee(Zs[:, 2])) for v in values])
    fig = dg.figure(Zs)
    assert list(fig.layout.yaxis.tickvals) == where and fig.layout.yaxis.ticktext[0] == "0"
    assert dg.figure(Zs, scale="linear").layout.yaxis.tickvals is None
    with pytest.raises(ValueError, match="height scale"):
        dg.drawn_heights(Zs, "sqrt")


def test_a_long_dead_chain_stays_under_its_parent():
    x = np.random.default_rng(0).normal(size=(300, 4))
    x[60:] = 0.0  # 240 dead neurons: a deep stack at height 0
    Zc = hierarchy.linkage(x, "ward")
    y = dg.drawn_heights(Zc, "linear")
    top = Zc[:, 2].max()
    assert (y[300:] - Zc[:, 2]).max() <= dg.TIE_BAND * top * (1 + 1e-9)
    assert (y[300:] > y[0]).all()  # every internal node above the leaves
    dead_root = clustering.common_ancestor(Zc, range(60, 300))
    parent = clustering.parents(Zc)[dead_root]
    gap = Zc[parent - 300, 2]
    assert y[parent] == gap and y[dead_root] <= dg.TIE_GAP * gap  # the stack's top well below its parent
    assert y[dead_root] == max(y[v] for v in range(300, 599) if Zc[v - 300, 2] == 0)


def test_height_zero_nodes_each_get_their_own_marker_and_a_click_selects_them(Z):
    n = len(Z) + 1
    zero = [v for v in range(n, 2 * n - 1) if Z[v - n, 2] == 0]
    assert len(zero) == 9  # ten identical rows: nine merges at height 0
    g = geometry(Z)
    fig = dg.figure(Z)
    nodes = trace(fig, dg.NODES_TRACE)
    xy = np.column_stack([np.asarray(nodes.x), np.asarray(nodes.y)])
    assert len({tuple(p) for p in xy.round(12)}) == n - 1  # no two node markers at one place
    leaf_y = g["node_y"][0]
    for v in zero:
        for c in Z[v - n, :2].astype(int):  # each sits above its children: a visible small tree
            assert g["node_y"][v] > g["node_y"][c]
        assert g["node_y"][v] - leaf_y >= dg.LEAF_DROP * g["node_y"].max() * (1 - 1e-9)
    # the top of the stack holds the whole dead group; a click on its marker (plotly's event) selects it
    dead_root = clustering.common_ancestor(Z, range(30, 40))
    assert dead_root in zero and clustering.subtree(Z, dead_root).tolist() == list(range(30, 40))
    assert g["node_y"][dead_root] == max(g["node_y"][v] for v in zero)
    curve = next(i for i, t in enumerate(fig.data) if t.name == dg.NODES_TRACE)
    k = dead_root - n
    point = {"curve_number": curve, "point_index": k, "x": float(xy[k, 0]), "y": float(xy[k, 1]),
             "customdata": np.asarray(nodes.customdata)[k].tolist()}
    assert dg.nodes_from_event({"selection": {"points": [point]}}, 2 * n - 1) == [dead_root]
    # the same row as plotly sends a typed (numpy) customdata: {"0": id, ...}
    point["customdata"] = {str(i): v for i, v in enumerate(point["customdata"])}
    assert dg.nodes_from_event({"selection": {"points": [point]}}, 2 * n - 1) == [dead_root]


def test_marked_neurons_of_a_loose_set_are_drawn_on_their_leaves(Z):
    g = geometry(Z)
    fig = dg.figure(Z, marked=[3, 30, 10_000])
    marks = trace(fig, dg.MARKED_TRACE)
    np.testing.assert_array_equal(marks.x, g["leaf_x"][[3, 30]])
    assert marks.hoverinfo == "skip" and marks.customdata is None
