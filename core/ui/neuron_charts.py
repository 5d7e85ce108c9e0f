"""Charts and pure helpers of the neuron views: the Neuron Vulnerability View (paper Fig. 4) and the
Receptive Field View's probability bars. No Streamlit here, so unit tests can call everything.

The ranking chart (``ranking_figure``) puts the neurons of the chosen sort at x = 0..n−1 (their rank
position; tick labels and the hover show the neuron ids) with, per class, the activation×weight curve
and the class band (translucent, same palette colour). A strip under the plot colours every position
by its band-gap region (A: gap > 0, the attack excites the neuron; B: gap = 0; C: gap < 0, inhibited);
in band-gap order the regions are contiguous and are also shaded over the plot with their labels.
Every neuron point (both curves and the strip) carries its id as ``customdata[0]``, so a click maps
back to a neuron (``neuron_from_selection``).

Class names are user text (folder names): the figures put them into trace names, hover templates and
category labels through ``text.plotly_text`` (plotly reads HTML and ``%{...}`` there).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core import neuron_measures, receptive_fields
from core.ui.palette import rgb
from core.ui.text import plotly_text

REGIONS = ("A", "B", "C")
REGION_LABELS = {"A": "A: excited", "B": "B: unaffected", "C": "C: inhibited", "?": "no band"}
REGION_COLORS = {"A": "#b35806", "B": "#bdbdbd", "C": "#542788", "?": "#ffffff"}  # PuOr: not class colours
REGION_SHADES = {"A": "rgba(179,88,6,0.07)", "B": "rgba(189,189,189,0.10)", "C": "rgba(84,39,136,0.07)"}
MEASURES = ("band_gap", "curve_difference", "benign_decrease", "adversarial_increase")  # in neuron_measures()
IOU_SORTS = {"iou_bmap": "bmap", "iou_amap": "amap"}
OTHER_COVERAGES = (0.5, 0.8, 0.9, 0.95, 0.99)  # std / ci intervals (any value in (0, 1) is valid)
MAX_TICKS = 25
CURVE_NAMES = ("benign curve", "adversarial curve")


# -- values and order ------------------------------------------------------------------------------------
def sort_values(sort: str, measures: dict, iou: dict | None = None) -> np.ndarray:
    """The per-neuron values a sort of ``core.ui.state.NEURON_SORTS`` orders by (descending)."""
    if sort in IOU_SORTS:
        if not iou or IOU_SORTS[sort] not in iou:
            raise ValueError(f"sort {sort!r} needs the IoU with {IOU_SORTS[sort]}")
        return np.asarray(iou[IOU_SORTS[sort]], dtype=np.float64)
    if sort not in MEASURES:
        raise ValueError(f"unknown neuron sort {sort!r}")
    return np.asarray(measures[sort], dtype=np.float64)


def shown_order(values, zoom: int = 0) -> np.ndarray:
    """Neuron ids by descending value (``neuron_measures.rank``), the first ``zoom`` (0: all)."""
    order = neuron_measures.rank(values)
    return order[:zoom] if zoom and zoom > 0 else order


def regions(band_gap) -> np.ndarray:
    """"A" (gap > 0), "B" (= 0), "C" (< 0) or "?" (NaN: a class without images) per neuron."""
    g = np.asarray(band_gap, dtype=np.float64)
    out = np.full(g.shape, "?", dtype="<U1")
    out[g > 0], out[g == 0], out[g < 0] = "A", "B", "C"
    return out


def region_spans(labels) -> list[tuple[int, int, str]]:
    """Contiguous runs (first position, last position, region) of a sequence of region labels."""
    spans: list[tuple[int, int, str]] = []
    for i, r in enumerate(labels):
        if spans and spans[-1][2] == r and spans[-1][1] == i - 1:
            spans[-1] = (spans[-1][0], i, r)
        else:
            spans.append((i, i, str(r)))
    return spans


def coverage_options(interval: str, levels) -> list[float]:
    """Coverages offered for a band ``interval``: the stored quantile pairs, or a fixed list."""
    if interval == "quantile":
        return [float(c) for c in neuron_measures.quantile_coverages(levels)]
    return list(OTHER_COVERAGES)


def valid_coverage(coverage: float, options) -> float:
    """The offered coverage nearest to ``coverage`` (itself when offered; a stale link never errors)."""
    return float(min(options, key=lambda c: abs(c - coverage)))  # an offered value itself, for widgets


def top_table(order, values, band_gap, value_label: str, k: int = 10) -> pd.DataFrame:
    """The first ``k`` neurons of ``order`` with their sort value, band gap and region."""
    ids = np.asarray(order, dtype=np.int64)[:k]
    v, g = np.asarray(values, dtype=np.float64), np.asarray(band_gap, dtype=np.float64)
    return pd.DataFrame({"rank": np.arange(1, len(ids) + 1), "neuron": ids, value_label: v[ids],
                         "band gap": g[ids], "region": [REGION_LABELS[r] for r in regions(g[ids])]})


# -- chart events -> selection ---------------------------------------------------------------------------
def _get(obj, key):
    if obj is None:
        return None
    if isinstance(obj, dict) or hasattr(obj, "get"):
        return obj.get(key)
    return getattr(obj, key, None)


def neuron_from_selection(event, order=None) -> int | None:
    """The neuron of the first selected point of a ``st.plotly_chart`` selection event (its
    ``customdata[0]``; a point without customdata maps through its x position in ``order``), or None
    when nothing is selected (a cleared selection keeps the current neuron)."""
    points = _get(_get(event, "selection"), "points") or []
    for p in points:
        cd = _get(p, "customdata")
        if cd is not None:
            if isinstance(cd, dict):  # a typed array serialized by the browser: {"0": id, ...}
                cd = [cd.get("0", cd.get(0))]
            v = cd[0] if isinstance(cd, list | tuple | np.ndarray) else cd
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                return int(v)
        x = _get(p, "x")
        if order is not None and x is not None and float(x).is_integer() and 0 <= int(x) < len(order):
            return int(order[int(x)])
    return None


def neuron_from_rows(event, neurons) -> int | None:
    """The neuron of the selected row of a ``st.dataframe`` selection event over rows ``neurons``."""
    rows = _get(_get(event, "selection"), "rows") or []
    if rows and 0 <= int(rows[0]) < len(neurons):
        return int(neurons[int(rows[0])])
    return None


# -- RF threshold ----------------------------------------------------------------------------------------
def rf_value(mode: str, value: float | None, absolute_default) -> float | None:
    """The threshold value to pass on: None keeps a mode's default (quantile q 0.9, fraction 0.5); the
    absolute mode always needs one: ``absolute_default`` (a number, or a function called only then)."""
    if mode == "absolute" and value is None:
        return float(absolute_default() if callable(absolute_default) else absolute_default)
    return value


def rf_kw(sel, analysis) -> dict:
    """``mode``/``value`` keywords of the Analysis RF functions for a Selection; the absolute mode's
    default is the mean of the neurons' quantile thresholds (the activation level of a typical RF)."""
    return {"mode": sel.rf_mode,
            "value": rf_value(sel.rf_mode, sel.rf_value, lambda: float(np.mean(analysis.rf_thresholds())))}


def rf_slider(mode: str) -> dict:
    """The slider of a relative threshold mode: min/max/step/default (absolute uses a number input)."""
    if mode == "quantile":
        return {"min_value": 0.5, "max_value": 0.995, "step": 0.005,
                "default": receptive_fields.DEFAULT_QUANTILE}
    if mode == "fraction":
        return {"min_value": 0.05, "max_value": 1.0, "step": 0.05,
                "default": receptive_fields.DEFAULT_FRACTION}
    raise ValueError(f"mode {mode!r} has no slider")


# -- figures ---------------------------------------------------------------------------------------------
def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = rgb(hex_color)
    return f"rgba({r},{g},{b},{alpha})"


def _rows(order, columns) -> list[list]:
    """Plain JSON rows [neuron id, values…] (5 significant digits; NaN -> None). Plain lists, not
    plotly's binary arrays, so a selected point's customdata comes back from the browser as a list."""
    vals = np.stack([np.asarray(c, dtype=np.float64) for c in columns], axis=1)
    return [[int(j), *(None if not math.isfinite(v) else float(f"{v:.5g}") for v in row)]
            for j, row in zip(np.asarray(order).tolist(), vals.tolist(), strict=True)]


def _ticks(n: int) -> list[int]:
    step = max(1, math.ceil(n / MAX_TICKS))
    return list(range(0, n, step))


def _figure(data: list[dict], layout: dict) -> go.Figure:
    """A Figure from plain trace/layout dicts without plotly's per-element validation (≈100 ms for a few
    thousand customdata values: most of a rerun); the dicts are built here and checked by the tests."""
    try:
        return go.Figure(data=data, layout=layout, _validate=False)
    except TypeError:  # a plotly without the private switch: validate (slower, same figure)
        return go.Figure(data=data, layout=layout)


def ranking_figure(measures: dict, order, *, classes: tuple[str, str], colors: tuple[str, str],
                   sort: str, sort_label: str, iou: dict | None = None, selected: int | None = None,
                   height: int = 430) -> go.Figure:
    """The Neuron Vulnerability View of one pair for the neurons ``order`` (ids, in plotted order).

    ``measures``: ``Analysis.neuron_measures``; ``classes``/``colors``: names and palette colours of the
    benign and adversarial classes; ``iou``: {"bmap": (n,), "amap": (n,)} when computed (hover only).
    Two rows sharing x: the curves and bands (x/y), and the region strip (x2/y2).
    """
    order = np.asarray(order, dtype=np.int64)
    classes = (plotly_text(classes[0]), plotly_text(classes[1]))
    n = len(order)
    x = list(range(n))
    gap = np.asarray(measures["band_gap"], dtype=np.float64)
    reg = regions(gap)[order]
    cols = [np.arange(1, n + 1), *(np.asarray(measures[k])[order] for k in (
        "benign_axw", "adversarial_axw", "band_gap", "curve_difference", "benign_decrease",
        "adversarial_increase"))]
    hover = ("<b>neuron %{customdata[0]}</b> · rank %{customdata[1]}<br>"
             f"{classes[0]} (benign) act×w: %{{customdata[2]:.4g}}<br>"
             f"{classes[1]} (adversarial) act×w: %{{customdata[3]:.4g}}<br>"
             "band gap: %{customdata[4]:.4g} · curve difference: %{customdata[5]:.4g}<br>"
             f"substituted alone: P({classes[0]}) drops %{{customdata[6]:.3g}}, "
             f"P({classes[1]}) rises %{{customdata[7]:.3g}}")
    if iou:
        cols += [np.asarray(iou["bmap"])[order], np.asarray(iou["amap"])[order]]
        hover += "<br>IoU with bMap: %{customdata[8]:.3f} · with aMap: %{customdata[9]:.3f}"
    custom = _rows(order, cols)
    ids = [[int(j)] for j in order]  # the other traces only need the id (a click selects it)

    def values(a) -> list:
        return [None if not math.isfinite(v) else v for v in np.asarray(a, dtype=np.float64)[order].tolist()]

    data: list[dict] = []
    sides = (("benign", colors[0], classes[0]), ("adversarial", colors[1], classes[1]))
    for side, color, name in sides:
        data.append({"type": "scatter", "x": x, "y": values(measures[f"{side}_lo"]), "mode": "lines",
                     "line": {"width": 0, "color": color}, "hoverinfo": "skip", "showlegend": False,
                     "legendgroup": f"{side}-band"})
        data.append({"type": "scatter", "x": x, "y": values(measures[f"{side}_hi"]), "mode": "lines",
                     "line": {"width": 0, "color": color}, "fill": "tonexty", "fillcolor": _rgba(color, 0.22),
                     "hoverinfo": "skip", "name": f"{name} band ({side})", "legendgroup": f"{side}-band"})
    for (side, color, name), meta in zip(sides, CURVE_NAMES, strict=True):
        data.append({"type": "scatter", "x": x, "y": values(measures[f"{side}_axw"]),
                     "mode": "lines+markers" if n <= 200 else "lines", "line": {"color": color, "width": 1.6},
                     "marker": {"size": 5, "color": color}, "name": f"{name}: {side} image", "meta": meta,
                     "customdata": custom if side == "benign" else ids,
                     "hovertemplate": (hover if side == "benign" else f"{name} act×w: %{{y:.4g}}")
                     + "<extra></extra>"})
    data.append({"type": "scatter", "x": x, "y": [0] * n, "xaxis": "x2", "yaxis": "y2", "mode": "markers",
                 "meta": "regions", "customdata": ids, "showlegend": False,
                 "marker": {"symbol": "square", "size": 9 if n <= 200 else 6,
                            "color": [REGION_COLORS[r] for r in reg]},
                 "text": [REGION_LABELS[r] for r in reg],
                 "hovertemplate": "neuron %{customdata[0]}: region %{text}<extra></extra>"})

    shapes: list[dict] = []
    notes: list[dict] = []
    if sort == "band_gap":
        for a, b, r in region_spans(reg):
            if r in REGION_SHADES:
                shapes.append({"type": "rect", "xref": "x", "yref": "y domain", "x0": a - 0.5, "x1": b + 0.5,
                               "y0": 0, "y1": 1, "fillcolor": REGION_SHADES[r], "line": {"width": 0},
                               "layer": "below"})
                notes.append({"x": a - 0.5, "xref": "x", "y": 1, "yref": "y domain", "text": REGION_LABELS[r],
                              "showarrow": False, "xanchor": "left", "yanchor": "top",
                              "font": {"color": REGION_COLORS[r]}})
    if selected is not None and selected in set(order.tolist()):
        pos = int(np.flatnonzero(order == selected)[0])
        shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": pos, "x1": pos, "y0": 0, "y1": 1,
                       "line": {"color": "#d62728", "width": 2, "dash": "dot"}})
        notes.append({"x": pos, "xref": "x", "y": 1, "yref": "paper", "text": f"neuron {selected}",
                      "showarrow": False, "yanchor": "bottom", "font": {"color": "#d62728"}})
    ticks = _ticks(n)
    span = [-0.5, n - 0.5]
    layout = {
        "height": height, "margin": {"l": 10, "r": 10, "t": 30, "b": 10}, "hovermode": "x",
        "dragmode": "zoom", "clickmode": "event+select", "shapes": shapes, "annotations": notes,
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.04, "x": 0},
        "xaxis": {"anchor": "y", "domain": [0, 1], "matches": "x2", "showticklabels": False, "range": span},
        "xaxis2": {"anchor": "y2", "domain": [0, 1], "range": span, "tickmode": "array", "tickvals": ticks,
                   "ticktext": [str(int(order[i])) for i in ticks],
                   "title": {"text": f"neurons sorted by {sort_label} (tick labels: neuron ids)"}},
        "yaxis": {"anchor": "x", "domain": [0.125, 1], "fixedrange": True,
                  "title": {"text": "activation × weight"}},
        "yaxis2": {"anchor": "x2", "domain": [0, 0.07], "fixedrange": True, "visible": False},
    }
    return _figure(data, layout)


def plotted_neurons(spec: dict) -> list[int]:
    """The neuron ids in plotted order of a ``ranking_figure`` JSON spec (for tests and checks)."""
    for t in spec["data"]:
        if t.get("meta") == CURVE_NAMES[0]:
            return [int(row[0]) for row in t["customdata"]]
    raise ValueError("not a ranking figure")


def top_classes(probs, k: int = 5) -> np.ndarray:
    """The ``k`` most probable class ids, most probable first (ties: lower id)."""
    p = np.asarray(probs, dtype=np.float64)
    return np.lexsort((np.arange(len(p)), -p))[:k]


def probability_figure(probs, classes, colors, k: int = 5, height: int = 170) -> go.Figure:
    """The top-``k`` classes of a probability vector as horizontal bars in the class colours."""
    p = np.asarray(probs, dtype=np.float64)
    top = top_classes(p, k)[::-1]  # plotly draws the first bar at the bottom
    fig = go.Figure(go.Bar(x=p[top], y=[plotly_text(classes[i]) for i in top], orientation="h",
                           marker_color=[colors[i] for i in top], text=[f"{v:.1%}" for v in p[top]],
                           textposition="auto", hovertemplate="%{y}: %{x:.2%}<extra></extra>"))
    fig.update_xaxes(range=[0, 1], tickformat=".0%", fixedrange=True)
    fig.update_yaxes(fixedrange=True)
    fig.update_layout(height=height, margin={"l": 0, "r": 0, "t": 0, "b": 0}, showlegend=False)
    return fig
