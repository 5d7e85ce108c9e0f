"""The Neuron Cluster View's dendrogram (paper §5.2.2, Fig. 2-e) as a plotly figure, and the pure
mapping from a click event to dendrogram node ids. No Streamlit here, so unit tests call it directly.

Layout comes from ``core.clustering.dendrogram_geometry``: leaves (neurons) at x = 0..n−1 in scipy's
leaf order, at height 0; internal node ``n+i`` at the mean x of its children and at the merge height
Z[i, 2], drawn as a ⊓ of three segments. Traces, bottom to top:

- the selected subtrees (every ⊓ under a selected node) as a wide translucent highlighter stroke
  (``SELECTED``) under the cluster colours;
- one line trace per cluster colour (the ``n_clusters`` cut of ``core.clustering.cut``: a ⊓ whose
  leaves all fall in one cluster takes that cluster's colour; the ⊓s above the cut are grey), the
  segments of a trace separated by gaps (NaN) so 512 neurons stay a handful of traces;
- the selected neuron's path from its leaf to the root in red (``PATH``), as in the paper's Fig. 2-e;
- the clickable markers: ``NODES_TRACE`` (internal nodes: x = node_x, y = height, customdata =
  [node id, size]) and ``LEAVES_TRACE`` (neurons at height 0, customdata = [neuron id, 1]); a leaf's
  node id is its neuron id, so a click on either gives a node id directly;
- markers on the selected nodes and a star on the selected neuron's leaf (not clickable).

Only the two clickable traces carry customdata; every other trace has ``hoverinfo="skip"``, so a
click always lands on a node. Cluster colours avoid red and yellow, which mean "selected neuron" and
"selected cluster"; they are not class colours (clusters are groups of neurons, not classes).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import plotly.graph_objects as go

from core import clustering

CLUSTER_COLORS = ("#1f77b4", "#2ca02c", "#d95f02", "#17becf", "#8c564b", "#e377c2", "#4e79a7", "#1b9e77",
                  "#393b79", "#637939")
ABOVE_CUT = "#a0a0a0"
SELECTED = "rgba(255, 190, 0, 0.6)"   # a highlighter stroke under the selected subtrees
SELECTED_MARK = "#ffbe00"
PATH = "#d62728"
NODES_TRACE = "nodes"
LEAVES_TRACE = "neurons"
SELECTED_TRACE = "selected clusters"
PATH_TRACE = "selected neuron"
HEIGHT = 430


def node_clusters(Z, labels) -> np.ndarray:
    """(2n−1,) cluster label per node id: a leaf's label, an internal node's label if both children
    share it, else 0 (the node joins several clusters: it lies above the cut)."""
    children = np.asarray(Z)[:, :2].astype(np.int64)
    n = len(children) + 1
    out = np.zeros(2 * n - 1, dtype=np.int64)
    out[:n] = np.asarray(labels, dtype=np.int64)
    for i, (a, b) in enumerate(children):  # merge order: children first
        out[n + i] = out[a] if out[a] == out[b] else 0
    return out


def cluster_color_index(labels, leaf_order) -> dict[int, int]:
    """Cluster label -> colour index, numbered left to right along the leaves, so neighbouring clusters
    get different colours whatever numbering ``fcluster`` chose."""
    order: dict[int, int] = {}
    for leaf in leaf_order:
        order.setdefault(int(labels[leaf]), len(order))
    return order


def descendants(Z, nodes: Iterable[int]) -> np.ndarray:
    """Sorted ids of every node (internal and leaf) under any of ``nodes``, the nodes included."""
    children = np.asarray(Z)[:, :2].astype(np.int64)
    n = len(children) + 1
    seen = np.zeros(2 * n - 1, dtype=bool)
    stack = [int(v) for v in nodes if 0 <= int(v) < 2 * n - 1]
    while stack:
        v = stack.pop()
        if seen[v]:
            continue
        seen[v] = True
        if v >= n:
            stack.extend(int(c) for c in children[v - n])
    return np.flatnonzero(seen)


def neuron_path(Z, geometry: Mapping, neuron: int) -> tuple[list[float], list[float]]:
    """The polyline from ``neuron``'s leaf up to the root through every ancestor
    (``core.clustering.nodes_containing``): up to the parent's height, across to the parent, up..."""
    xs, ys = [float(geometry["leaf_x"][neuron])], [0.0]
    x, h = geometry["node_x"], geometry["node_height"]
    for node in clustering.nodes_containing(Z, neuron):
        xs += [xs[-1], float(x[node])]
        ys += [float(h[node]), float(h[node])]
    return xs, ys


def _polylines(segments: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """x and y of disjoint segments as one line: x0, x1, gap, ... (NaN breaks a plotly line like None,
    and float arrays validate and serialize much faster than lists with None)."""
    s = np.asarray(list(segments), dtype=np.float64).reshape(-1, 4)
    xs = np.column_stack([s[:, 0], s[:, 2], np.full(len(s), np.nan)]).ravel()
    ys = np.column_stack([s[:, 1], s[:, 3], np.full(len(s), np.nan)]).ravel()
    return xs, ys


def figure(Z, *, n_clusters: int = 8, selected: Iterable[int] = (), neuron: int | None = None,
           geometry: Mapping | None = None, height: int = HEIGHT) -> go.Figure:
    """The dendrogram of linkage ``Z`` (see the module doc). ``selected``: node ids whose subtrees are
    highlighted (out-of-range ids are ignored); ``neuron``: the leaf to star and whose path is red."""
    g = geometry if geometry is not None else clustering.dendrogram_geometry(Z)
    n = len(g["leaf_x"])
    labels = clustering.cut(Z, max(1, int(n_clusters)))
    per_node = node_clusters(Z, labels)
    colour_of = cluster_color_index(labels, g["leaf_order"])
    seg_node = np.asarray(g["segment_node"])
    segments = g["segments"]
    fig = go.Figure()

    def colour(label: int) -> str:
        return ABOVE_CUT if label == 0 else CLUSTER_COLORS[colour_of[label] % len(CLUSTER_COLORS)]

    chosen = sorted({int(v) for v in selected if 0 <= int(v) < 2 * n - 1})
    under = descendants(Z, chosen)
    if len(under):
        keep = np.isin(seg_node, under[under >= n])
        xs, ys = _polylines(s for s, k in zip(segments, keep, strict=True) if k)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=SELECTED_TRACE,
                                 line={"color": SELECTED, "width": 9}, hoverinfo="skip"))
    groups: dict[str, list] = {}
    for s, node in zip(segments, seg_node, strict=True):
        groups.setdefault(colour(int(per_node[node])), []).append(s)
    for c, segs in sorted(groups.items(), key=lambda kv: kv[0] == ABOVE_CUT):
        xs, ys = _polylines(segs)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": c, "width": 1.2},
                                 hoverinfo="skip", showlegend=False,
                                 name="above the cut" if c == ABOVE_CUT else "cluster"))

    has_neuron = neuron is not None and 0 <= int(neuron) < n
    if has_neuron:
        xs, ys = neuron_path(Z, g, int(neuron))
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=f"neuron {int(neuron)}'s path",
                                 line={"color": PATH, "width": 2.5}, hoverinfo="skip"))

    internal = np.arange(n, 2 * n - 1)
    # colours by index into a stepwise colour scale: a list of 1,000 colour strings validates ~10x slower
    palette = [*CLUSTER_COLORS, ABOVE_CUT]
    scale = [[pos, c] for i, c in enumerate(palette) for pos in (i / len(palette), (i + 1) / len(palette))]
    grey = len(palette) - 1

    def colour_ids(lbls: np.ndarray) -> np.ndarray:
        lut = np.full(max(int(lbls.max()), *colour_of) + 1, grey)
        for label, idx in colour_of.items():
            lut[label] = idx % len(CLUSTER_COLORS)
        return lut[lbls]

    marker_colour = {"colorscale": scale, "cmin": -0.5, "cmax": len(palette) - 0.5, "showscale": False}
    fig.add_trace(go.Scatter(
        x=g["node_x"][n:], y=g["node_height"][n:], mode="markers", name=NODES_TRACE,
        customdata=np.stack([internal, g["node_size"][n:]], axis=1),
        marker={"size": 7, "color": colour_ids(per_node[n:]), "opacity": 0.55, "line": {"width": 0},
                **marker_colour},
        hovertemplate="node %{customdata[0]}<br>%{customdata[1]} neurons<br>height %{y:.4g}"
                      "<extra>click to select</extra>", showlegend=False))
    fig.add_trace(go.Scatter(
        x=g["leaf_x"], y=np.zeros(n), mode="markers", name=LEAVES_TRACE,
        customdata=np.stack([np.arange(n), np.ones(n, dtype=np.int64)], axis=1),
        marker={"size": 6, "symbol": "line-ns-open", "color": colour_ids(np.asarray(labels)),
                "line": {"width": 1.5}, **marker_colour},
        hovertemplate="neuron %{customdata[0]}<extra>click to select</extra>", showlegend=False))
    if chosen:
        fig.add_trace(go.Scatter(
            x=g["node_x"][chosen], y=g["node_height"][chosen], mode="markers", name="selected nodes",
            marker={"size": 13, "symbol": "diamond", "color": SELECTED_MARK,
                    "line": {"width": 1, "color": "#333333"}},
            hoverinfo="skip", showlegend=False))
    if has_neuron:
        fig.add_trace(go.Scatter(
            x=[g["leaf_x"][int(neuron)]], y=[0.0], mode="markers", name=f"neuron {int(neuron)}",
            marker={"size": 16, "symbol": "star", "color": PATH, "line": {"width": 1, "color": "white"}},
            hoverinfo="skip", showlegend=False))
    top = float(g["node_height"].max()) or 1.0
    fig.update_layout(
        height=height, margin={"l": 10, "r": 10, "t": 10, "b": 10}, clickmode="event+select",
        dragmode="zoom", hovermode="closest", showlegend=bool(chosen) or has_neuron,
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0},
        xaxis={"showticklabels": False, "showgrid": False, "zeroline": False,
               "range": [-1, n], "title": None},
        yaxis={"title": "merge height (distance)", "zeroline": False,
               "range": [-0.04 * top, 1.04 * top]})  # room for the star at 0
    return fig


def nodes_from_event(event, num_nodes: int) -> list[int]:
    """Node ids clicked in a ``st.plotly_chart`` selection event (the widget's state, or its
    ``selection``), in click order without repeats. A point's customdata is [node id, size], which the
    browser sends as a list, or as {"0": id, "1": size} for a numpy (typed-array) customdata. Points
    without customdata (not a node marker) and ids outside 0..num_nodes−1 are ignored."""
    if event is None:
        return []
    selection = event.get("selection", event) if isinstance(event, Mapping) else \
        getattr(event, "selection", event)
    points = selection.get("points", []) if isinstance(selection, Mapping) else \
        getattr(selection, "points", [])
    out: list[int] = []
    for p in points or []:
        data = p.get("customdata") if isinstance(p, Mapping) else None
        if data is None:
            continue
        if isinstance(data, Mapping):  # a row of a typed (numpy) customdata array arrives as {"0": id, ...}
            data = data.get("0", data.get(0))
        first = data[0] if isinstance(data, list | tuple) else data
        try:
            node = int(first)
        except (TypeError, ValueError):
            continue
        if 0 <= node < num_nodes and node not in out:
            out.append(node)
    return out
