"""The Neuron Cluster View's dendrogram (paper §5.2.2, Fig. 2-e) as a plotly figure, and the pure
mapping from a click event to dendrogram node ids. No Streamlit here, so unit tests call it directly.

Layout comes from ``core.clustering.dendrogram_geometry``: leaves (neurons) at x = 0..n−1 in scipy's
leaf order; internal node ``n+i`` at the mean x of its children, drawn as a ⊓ of three segments, at
its merge height Z[i, 2] pulled apart from tied nodes (``drawn_heights``): identical RFs (the dead
neurons of §6.1.4's top-down walk) merge at height 0, and drawn at their true heights all those nodes
would sit on one line over the leaves, impossible to click. So the leaves are drawn a little below 0
(``LEAF_DROP`` of the top height) and the nodes of a tie each a small step above their tied children,
the stack kept below its parent: a small visible tree whose highest marker holds the whole group. The
hover gives each node's true height. Traces, bottom to top:

- the selected subtrees (every ⊓ under a selected node) as a wide translucent highlighter stroke
  (``SELECTED``) under the cluster colours;
- one line trace per cluster colour (the ``n_clusters`` cut of ``core.clustering.cut``: a ⊓ whose
  leaves all fall in one cluster takes that cluster's colour; the ⊓s above the cut are grey), the
  segments of a trace separated by gaps (NaN) so 512 neurons stay a handful of traces;
- the selected neuron's path from its leaf to the root in red (``PATH``), as in the paper's Fig. 2-e;
- the clickable markers: ``NODES_TRACE`` (internal nodes: x = node_x, y = height, customdata =
  [node id, size]) and ``LEAVES_TRACE`` (neurons at height 0, customdata = [neuron id, 1]); a leaf's
  node id is its neuron id, so a click on either gives a node id directly;
- markers on the selected nodes, on the leaves of selected neuron sets that are not one cluster of this
  tree (``marked``), and a star on the selected neuron's leaf (not clickable).

Only the two clickable traces carry customdata; every other trace has ``hoverinfo="skip"``, so a
click always lands on a node. Cluster colours avoid red and yellow, which mean "selected neuron" and
"selected cluster"; they are not class colours (clusters are groups of neurons, not classes).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import plotly.graph_objects as go

from core import clustering
from core.ui.text import number

CLUSTER_COLORS = ("#1f77b4", "#2ca02c", "#d95f02", "#17becf", "#8c564b", "#e377c2", "#4e79a7", "#1b9e77",
                  "#393b79", "#637939")
ABOVE_CUT = "#a0a0a0"
SELECTED = "rgba(255, 190, 0, 0.6)"   # a highlighter stroke under the selected subtrees
SELECTED_MARK = "#ffbe00"
PATH = "#d62728"
NODES_TRACE = "nodes"
LEAVES_TRACE = "neurons"
SELECTED_TRACE = "selected clusters"
MARKED_TRACE = "selected neurons (not one cluster here)"
PATH_TRACE = "selected neuron"
HEIGHT = 430
LEAF_DROP = 0.03  # leaves drawn this share of the top merge height below 0 (under the height-0 nodes)
TIE_STEP = 0.012  # one level of a tie stack: at most this share of the top merge height ...
TIE_BAND = 0.12   # ... a whole stack within this share of the top ...
TIE_GAP = 0.5     # ... and within this share of the gap up to the stack's parent, drawn at its height
SCALES = ("log", "linear")
LOG_DECADES = 3  # the log axis spans at most this many factors of 10 above its knee


def log_knee(heights) -> float:
    """c of the log-like axis: the smallest positive merge height, so every positive merge is drawn at
    least log 2 above 0 (a tie stack below it gets room), but at least 10^−LOG_DECADES of the largest
    (a near-tie of 1e-9 must not stretch the axis); 1 when none is positive."""
    h = np.asarray(heights, dtype=np.float64)
    pos = h[h > 0]
    if not len(pos):
        return 1.0
    return max(float(pos.min()), 10.0 ** -LOG_DECADES * float(pos.max()))


def scaled(heights, scale: str, knee: float) -> np.ndarray:
    """Heights on the drawn axis: log(1 + h/c) for "log" (linear below c, one unit per factor e
    above: merges low in the tree, crushed at the bottom of a linear axis when the top merges of ward
    are a thousand times higher, get room), h for "linear". Monotone, so ties stay ties and order stays."""
    h = np.asarray(heights, dtype=np.float64)
    if scale == "linear":
        return h.copy()
    if scale != "log":
        raise ValueError(f"unknown height scale {scale!r}; valid: {', '.join(SCALES)}")
    return np.log1p(h / knee)


def drawn_heights(Z, scale: str = "log") -> np.ndarray:
    """(2n−1,) y at which to draw each node id: the heights on the ``scale`` axis (``scaled``), with
    exact ties pulled apart. Below, h is the scaled height and top the largest one (1 if all are 0).

    Leaves at −LEAF_DROP·top. A tie group is a set of
    internal nodes of one height h joined parent to child (e.g. the dead neurons' merges at 0; a
    chain of them when the linkage merges identical RFs one by one). In a group, node v is drawn at
    h + s·u(v), u(v) = 0 without a child in the group, else 1 + the largest u of its children there;
    s = min(TIE_STEP·top, cap / u(top of the group)), cap = min(TIE_BAND·top, TIE_GAP·(h(parent) − h))
    (TIE_BAND·top for the root's group). So each node of the group is drawn above its children, and the
    whole group below its parent, which keeps its own height: every node outside a tie is drawn at its
    true height, and inversions (centroid/median) stay as scipy draws them."""
    children = np.asarray(Z)[:, :2].astype(np.int64)
    n = len(children) + 1
    raw = np.asarray(Z, dtype=np.float64)[:, 2]
    h = np.concatenate([np.zeros(n), scaled(raw, scale, log_knee(raw))])
    top = float(h.max()) or 1.0
    group = np.arange(2 * n - 1)   # union-find over tied parent/child edges
    u = np.zeros(2 * n - 1)

    def find(v: int) -> int:
        while group[v] != v:
            group[v] = group[group[v]]
            v = group[v]
        return v

    for i, (a, b) in enumerate(children):  # merge order: children first
        v = n + i
        tied = [int(c) for c in (a, b) if c >= n and h[c] == h[v]]
        for c in tied:
            group[find(c)] = v  # v is above every node of its children's groups: it becomes the top
        if tied:
            u[v] = 1 + max(u[c] for c in tied)
    parent = clustering.parents(Z)
    y = h.copy()
    y[:n] = -LEAF_DROP * top
    tops = {find(v) for v in range(n, 2 * n - 1) if u[v] > 0}
    step = {}
    for t in tops:
        cap = TIE_BAND * top if parent[t] < 0 else min(TIE_BAND * top, TIE_GAP * (h[parent[t]] - h[t]))
        step[t] = min(TIE_STEP * top, max(cap, 0.0) / u[t])
    for v in range(n, 2 * n - 1):
        if u[v] > 0:
            y[v] = h[v] + step[find(v)] * u[v]
    return y


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
    (``core.clustering.nodes_containing``): up to the parent's drawn height, across to the parent, up..."""
    h = geometry.get("node_y", geometry["node_height"])
    xs, ys = [float(geometry["leaf_x"][neuron])], [float(h[neuron])]
    x = geometry["node_x"]
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


def log_ticks(top: float, knee: float) -> tuple[list[float], list[float]]:
    """(true heights, their positions on the log axis) for tick labels: 0 and the 1-2-5 steps from
    the knee's decade up to ``top``, thinned to at most 9 labels."""
    if top <= 0:
        return [0.0], [0.0]
    steps = [m * 10.0 ** e for e in range(int(np.floor(np.log10(knee))), int(np.ceil(np.log10(top))) + 1)
             for m in (1, 2, 5) if knee <= m * 10.0 ** e <= top]
    values = [0.0, *steps[::-(-len(steps) // 8) or 1]]  # every k-th step, k = ceil(len / 8)
    return values, scaled(values, "log", knee).tolist()


def figure(Z, *, n_clusters: int = 8, selected: Iterable[int] = (), neuron: int | None = None,
           marked: Iterable[int] = (), geometry: Mapping | None = None, height: int = HEIGHT,
           scale: str = "log") -> go.Figure:
    """The dendrogram of linkage ``Z`` (see the module doc). ``selected``: node ids whose subtrees are
    highlighted (out-of-range ids are ignored); ``neuron``: the leaf to star and whose path is red;
    ``marked``: neurons whose leaves get a selection mark (those of a selected set that is not one
    cluster of this tree). ``scale``: the height axis, "log" (log-like, ``scaled``; tick labels give the
    true heights) or "linear". ``geometry``: ``dendrogram_geometry(Z, drawn_heights(Z, scale))``."""
    g = geometry if geometry is not None else clustering.dendrogram_geometry(Z, drawn_heights(Z, scale))
    n = len(g["leaf_x"])
    y = g.get("node_y", g["node_height"])
    leaf_y = float(y[0]) if n else 0.0
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

    internal = np.arange(n, 2 * n - 1, dtype=np.float64)
    # colours by index into a stepwise colour scale: a list of 1,000 colour strings validates ~10x slower
    palette = [*CLUSTER_COLORS, ABOVE_CUT]
    steps = [[pos, c] for i, c in enumerate(palette) for pos in (i / len(palette), (i + 1) / len(palette))]
    grey = len(palette) - 1

    def colour_ids(lbls: np.ndarray) -> np.ndarray:
        lut = np.full(max(int(lbls.max()), *colour_of) + 1, grey)
        for label, idx in colour_of.items():
            lut[label] = idx % len(CLUSTER_COLORS)
        return lut[lbls]

    marker_colour = {"colorscale": steps, "cmin": -0.5, "cmax": len(palette) - 0.5, "showscale": False}
    fig.add_trace(go.Scatter(
        x=g["node_x"][n:], y=y[n:], mode="markers", name=NODES_TRACE,
        # [node id, size, true height]: ids and sizes are exact in float64
        customdata=np.stack([internal, g["node_size"][n:], g["node_height"][n:]], axis=1),
        marker={"size": 7, "color": colour_ids(per_node[n:]), "opacity": 0.55, "line": {"width": 0},
                **marker_colour},
        hovertemplate="node %{customdata[0]}<br>%{customdata[1]} neurons<br>merge height "
                      "%{customdata[2]:.4g}<extra>click to select</extra>", showlegend=False))
    fig.add_trace(go.Scatter(
        x=g["leaf_x"], y=np.full(n, leaf_y), mode="markers", name=LEAVES_TRACE,
        customdata=np.stack([np.arange(n), np.ones(n, dtype=np.int64)], axis=1),
        marker={"size": 6, "symbol": "line-ns-open", "color": colour_ids(np.asarray(labels)),
                "line": {"width": 1.5}, **marker_colour},
        hovertemplate="neuron %{customdata[0]}<extra>click to select</extra>", showlegend=False))
    loose = sorted({int(v) for v in marked if 0 <= int(v) < n})
    if loose:
        fig.add_trace(go.Scatter(
            x=g["leaf_x"][loose], y=np.full(len(loose), leaf_y), mode="markers", name=MARKED_TRACE,
            marker={"size": 9, "symbol": "triangle-up", "color": SELECTED_MARK,
                    "line": {"width": 1, "color": "#333333"}},
            hoverinfo="skip", showlegend=True))
    if chosen:
        fig.add_trace(go.Scatter(
            x=g["node_x"][chosen], y=y[chosen], mode="markers", name="selected nodes",
            marker={"size": 13, "symbol": "diamond", "color": SELECTED_MARK,
                    "line": {"width": 1, "color": "#333333"}},
            hoverinfo="skip", showlegend=False))
    if has_neuron:
        fig.add_trace(go.Scatter(
            x=[g["leaf_x"][int(neuron)]], y=[leaf_y], mode="markers", name=f"neuron {int(neuron)}",
            marker={"size": 16, "symbol": "star", "color": PATH, "line": {"width": 1, "color": "white"}},
            hoverinfo="skip", showlegend=False))
    top = float(np.max(y)) or 1.0  # on the drawn axis
    high = float(np.max(y[n:])) if n > 1 else top
    fig.update_layout(
        height=height, margin={"l": 10, "r": 10, "t": 10, "b": 10}, clickmode="event+select",
        dragmode="zoom", hovermode="closest", showlegend=bool(chosen) or has_neuron or bool(loose),
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0},
        xaxis={"showticklabels": False, "showgrid": False, "zeroline": False,
               "range": [-1, n], "title": None},
        yaxis={"title": f"merge height (distance{', log scale' if scale == 'log' else ''}; ties drawn apart)",
               "zeroline": False,
               "range": [leaf_y - 0.03 * top, high + 0.04 * top]})  # room for the star under the leaves
    if scale == "log":
        raw = np.asarray(g["node_height"][n:], dtype=np.float64)
        values, where = log_ticks(float(raw.max()) if len(raw) else 0.0, log_knee(raw))
        fig.update_yaxes(tickvals=where, ticktext=[number(v, ".3g") for v in values])
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
