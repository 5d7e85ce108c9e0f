"""Charts and pure helpers of the neuron views: the Neuron Vulnerability View (paper Fig. 4) and the
Receptive Field View's probability bars. No Streamlit here, so unit tests can call everything.

The ranking chart (``ranking_figure``) puts the neurons of the chosen sort at x = 0..n−1 (their rank
position; tick labels and the hover show the neuron ids) with, per class, the activation×weight curve
and the class band (translucent, same palette colour). A strip under the plot colours every position
by its band-gap region (A: gap > 0, the attack excites the neuron; B: gap = 0; C: gap < 0, inhibited);
in band-gap order the regions are contiguous and are also shaded over the plot with their labels.
Every neuron point (both curves and the strip) carries its id as ``customdata[0]``, so a click maps
back to a neuron (``neuron_from_selection``).

A click anywhere in a neuron's column selects it: the layout's hover mode "x" with no hover distance
limit makes the nearest column's curve points the hovered points wherever the pointer is over the plot
(on a curve, a band or empty space), and plotly's click-to-select selects the first hovered point of a
trace that has markers. So both curves always have markers (invisible ones beyond ``MARKER_MAX``
neurons, where they would hide the lines); their selected/unselected styles keep every mark as drawn.
The hover's numbers are formatted here (``hover_rows``) rather than by plotly's number formats, so no
value reads "-0" and the substitution effects read as words ("falls by", "rises by").

Class names are user text (folder names): the figures put them into trace names, hover templates and
category labels through ``text.plotly_text`` (plotly reads HTML and ``%{...}`` there).
"""
from __future__ import annotations

import math
from functools import partial

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core import neuron_measures, receptive_fields
from core.ui.palette import rgb
from core.ui.text import number, plotly_text

REGIONS = ("A", "B", "C")
REGION_LABELS = {"A": "A: excited", "B": "B: unaffected", "C": "C: inhibited", "?": "no band"}
REGION_COLORS = {"A": "#b35806", "B": "#bdbdbd", "C": "#542788", "?": "#ffffff"}  # PuOr: not class colours
REGION_SHADES = {"A": "rgba(179,88,6,0.07)", "B": "rgba(189,189,189,0.10)", "C": "rgba(84,39,136,0.07)"}
# the sorts Analysis.neuron_measures computes without maps, and those ranking by a map's mask (-> map)
MEASURES = tuple(m.key for m in neuron_measures.MEASURES if not m.needs_maps)
IOU_SORTS = {m.key: m.vmap for m in neuron_measures.MEASURES if m.vmap}
HOVER_FIXED = ("neuron", "rank", "benign_axw", "adversarial_axw")  # the hover's first columns, then measures
LINE_STYLE = {"substitution": ("substituted alone: ", ", ")}  # a shared line's (prefix, separator)
OTHER_COVERAGES = (0.5, 0.8, 0.9, 0.95, 0.99)  # std / ci intervals (any value in (0, 1) is valid)
MAX_TICKS = 25
CURVE_NAMES = ("benign curve", "adversarial curve")
MARKER_MAX = 200  # more neurons: curve markers are drawn invisible (they stay clickable)
ENDS = 10  # the table shows this many neurons at each end of the order
SELECTED_MARK = "▶"


# -- values and order ------------------------------------------------------------------------------------
def with_iou(measures: dict, iou: dict | None = None) -> dict:
    """``measures`` (``Analysis.neuron_measures``) with the IoU arrays ``iou`` ({"bmap", "amap"}, as
    ``Analysis.iou_ranking`` gives them) added under their measures' keys (``IOU_SORTS``)."""
    if not iou:
        return measures
    return {**measures, **{key: iou[which] for key, which in IOU_SORTS.items() if which in iou}}


def sort_values(sort: str, measures: dict, iou: dict | None = None) -> np.ndarray:
    """The per-neuron values a sort of ``core.ui.state.NEURON_SORTS`` orders by (descending): its
    measure's values in ``measures`` (or, for an IoU sort, in ``iou``)."""
    if sort not in neuron_measures.BY_KEY:
        raise ValueError(f"unknown neuron sort {sort!r}")
    values = with_iou(measures, iou)
    if sort not in values:
        raise ValueError(f"sort {sort!r} needs the vulnerability maps (the IoU of the RFs with "
                         f"{IOU_SORTS.get(sort, 'them')})")
    return np.asarray(values[sort], dtype=np.float64)


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


def _clean(a) -> np.ndarray:
    """float64 values with a negative zero made positive (``-0.0 + 0.0 == 0.0``), for display."""
    return np.asarray(a, dtype=np.float64) + 0.0


def ends_table(order, values, band_gap, value_label: str, k: int = ENDS,
               selected: int | None = None) -> pd.DataFrame:
    """Both ends of ``order`` (neuron ids, full order): ranks 1..k and the last k (each neuron once, so
    with at most 2k neurons all of them), plus the selected neuron's row between them when it is in
    neither end; in rank order. Columns: "selected" (``SELECTED_MARK`` on the selected neuron's row,
    else ""), "rank" (1-based), "neuron", ``value_label`` (the sort value), "band gap", "region"."""
    order = np.asarray(order, dtype=np.int64)
    n = len(order)
    pos = set(range(min(k, n))) | set(range(max(0, n - k), n))
    hit = np.flatnonzero(order == selected) if selected is not None else []
    if len(hit):
        pos.add(int(hit[0]))
    pos = sorted(pos)
    ids = order[pos]
    v, g = _clean(values), _clean(band_gap)
    return pd.DataFrame({"selected": [SELECTED_MARK if j == selected else "" for j in ids.tolist()],
                         "rank": np.asarray(pos, dtype=np.int64) + 1, "neuron": ids, value_label: v[ids],
                         "band gap": g[ids], "region": [REGION_LABELS[r] for r in regions(g[ids])]})


# -- words -----------------------------------------------------------------------------------------------
def value_text(value, spec: str = ".4g") -> str:
    """A value as shown to users: ``text.number`` (never "-0"), "n/a" for NaN (a class without images)."""
    v = float(value)
    return "n/a" if math.isnan(v) else number(v, spec)


def change_text(change, spec: str = ".3g") -> str:
    """A signed change in words: "rises by 0.0012", "falls by 0.00094", "does not change" (the change
    rounds to zero at ``spec``), "n/a" (NaN); never a sign on a number."""
    v = float(change)
    if math.isnan(v):
        return "n/a"
    size = number(abs(v), spec)
    if float(size) == 0:
        return "does not change"
    return f"{'rises' if v > 0 else 'falls'} by {size}"


def shown_measures(values: dict) -> list:
    """The registered measures whose values ``values`` holds, those that need no maps first (the
    maps' come only once they are computed), each group in registry order."""
    have = [m for m in neuron_measures.MEASURES if m.key in values]
    return [m for m in have if not m.needs_maps] + [m for m in have if m.needs_maps]


def has_maps(values: dict) -> bool:
    """Whether ``values`` holds every measure that needs the vulnerability maps."""
    return all(m.key in values for m in neuron_measures.MEASURES if m.needs_maps)


def hover_columns(iou: bool = False) -> list[str]:
    """The names of the benign curve's customdata columns, in order (``hover_rows``): ``HOVER_FIXED``
    (the id first, for a click), then one per measure (those that need maps only with ``iou``). The
    hover template and the tests address the columns by these names, never by position."""
    keys = [m.key for m in neuron_measures.MEASURES if not m.needs_maps]
    keys += [m.key for m in neuron_measures.MEASURES if m.needs_maps] if iou else []
    return [*HOVER_FIXED, *keys]


def measure_text(measure, value) -> str:
    """One measure's value as shown: ``value_text`` at its format, or a change in words (``change_text``:
    a decrease is shown as the fall it is)."""
    if measure.reads == "value":
        return value_text(value, measure.fmt)
    return change_text(-float(value) if measure.reads == "decrease" else float(value), measure.fmt)


def _lines(measures: list, where: str) -> list[tuple[str, list]]:
    """(line key, its measures) in order of first appearance (``Measure.line``)."""
    lines: dict[str, list] = {}
    for m in measures:
        lines.setdefault(m.line(where), []).append(m)
    return list(lines.items())


def _line_text(key: str, parts: list[tuple]) -> str:
    """One line of (measure, value text, class names, "hover"|"detail") parts, e.g. "band gap: 0.5 ·
    curve difference: 0.2", "substituted alone: P(cat) falls by 0.1, P(dog) rises by 0.2" (``LINE_STYLE``)."""
    prefix, sep = LINE_STYLE.get(key, ("", " · "))
    return prefix + sep.join(
        m.words(where).format(benign=names[0], adversarial=names[1]) + (": " if m.reads == "value" else " ")
        + text for m, text, names, where in parts)


def hover_rows(measures: dict, order, iou: dict | None = None) -> list[list]:
    """Per neuron of ``order``, the benign curve's customdata in ``hover_columns`` order: the id and
    rank as integers, the rest as finished text (``value_text``, ``measure_text``) that
    ``hover_template`` places; the id first, for a click. ``iou``: {"bmap", "amap"} when computed (or
    the IoU measures already in ``measures``)."""
    values = with_iou(measures, iou)
    cols = hover_columns(has_maps(values))
    shown = [neuron_measures.BY_KEY[k] for k in cols[len(HOVER_FIXED):]]
    arrays = [np.asarray(values[k], dtype=np.float64) for k in cols[2:]]
    fmt = [value_text, value_text, *(partial(measure_text, m) for m in shown)]
    rows = []
    for r, j in enumerate(np.asarray(order, dtype=np.int64).tolist(), start=1):
        rows.append([j, r, *(f(a[j]) for f, a in zip(fmt, arrays, strict=True))])
    return rows


def hover_template(classes: tuple[str, str], iou: bool = False) -> str:
    """The benign curve's hover template over ``hover_rows`` (``classes`` already escaped with
    ``plotly_text``): the fixed words once, the per-neuron text from the customdata, addressed by the
    column names of ``hover_columns``; one line per hover line of the measures (``Measure.line``)."""
    cols = hover_columns(iou)

    def cell(name: str) -> str:
        return f"%{{customdata[{cols.index(name)}]}}"
    lines = [f"<b>neuron {cell('neuron')}</b> · rank {cell('rank')}",
             f"{classes[0]} (benign) act×w: {cell('benign_axw')}",
             f"{classes[1]} (adversarial) act×w: {cell('adversarial_axw')}"]
    shown = [neuron_measures.BY_KEY[k] for k in cols[len(HOVER_FIXED):]]
    lines += [_line_text(key, [(m, cell(m.key), classes, "hover") for m in ms])
              for key, ms in _lines(shown, "hover")]
    return "<br>".join(lines) + "<extra></extra>"


# -- help ------------------------------------------------------------------------------------------------
CONTROL_HELP = {  # the page's own controls; the measures' words are neuron_measures.HELP
    "zoom": ("Show only the first N neurons of the order (the left end of the chart), so each is wider and "
             "easier to click; 0 shows all. You can also drag across the chart to zoom in, and double-click "
             "it to zoom back out."),
    "neuron_id": "Select a neuron by its number: the labels under the chart are neuron numbers.",
    "sort": "What orders the neurons from left to right, the highest value first:",
    "sort_more": "Each measure's full explanation: the ? of its column in the table under the chart.",
    "chart": ("Click anywhere in a neuron's column (its curves, the bands above or below them, or the "
              "coloured strip) to select that neuron."),
    "selected": f"{SELECTED_MARK} marks the selected neuron.",
}


def options_help(intro: str, labels: dict, helps: dict, outro: str = "") -> str:
    """A tooltip (Markdown) explaining each option of a menu: ``intro``, then one bullet per key of
    ``labels`` (app constants, not user text) with its words from ``helps``, then ``outro``; KeyError
    if an option has no words."""
    text = intro + "\n\n" + "\n".join(f"- **{labels[k]}**: {helps[k]}" for k in labels)
    return text + ("\n\n" + outro if outro else "")


def detail_lines(measures: dict, j: int, *, rank: int, total: int, classes: tuple[str, str],
                 iou: dict | None = None, shown: int = 0) -> list[tuple[str, str]]:
    """The selected neuron's numbers as (Markdown line, help) pairs: its rank and region, its
    activation×weight, then one line per detail line of the measures in ``measures`` (``iou``: the IoU
    arrays when computed), numbers through ``measure_text``; a line of one measure has its help, a
    shared line the help of the line's key. ``classes``: the benign and adversarial class names already
    escaped for Markdown (``text.plain``); ``shown``: the zoom (0: all shown), to say when the neuron is
    outside it."""
    help_ = neuron_measures.HELP
    values = with_iou(measures, iou)
    where = "" if not shown or rank <= shown else f" (outside the top {shown} shown)"
    region = REGION_LABELS[regions(np.asarray(values["band_gap"], dtype=np.float64)[[j]])[0]]
    lines = [(f"**Neuron {j}**: rank {rank} of {total}{where}, region {region}",
              help_["rank"] + "\n\n" + help_["regions"]),
             (f"act×weight: {value_text(values['benign_axw'][j])} ({classes[0]}) → "
              f"{value_text(values['adversarial_axw'][j])} ({classes[1]})",
              help_["activation_times_weight"])]
    for key, ms in _lines(shown_measures(values), "detail"):
        text = _line_text(key, [(m, measure_text(m, values[m.key][j]), classes, "detail") for m in ms])
        lines.append((text, ms[0].help if len(ms) == 1 else help_[key]))
    return lines


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
                   height: int = 470) -> go.Figure:
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
    # every point's id first (a click selects it), as plain JSON lists rather than plotly's binary arrays,
    # so a selected point's customdata comes back from the browser as a list
    ids = [[int(j)] for j in order]
    rows = hover_rows(measures, order, iou)
    maps = has_maps(with_iou(measures, iou))
    at = [hover_columns(maps).index(name) for name in ("neuron", "adversarial_axw")]
    custom = {"benign": rows, "adversarial": [[row[i] for i in at] for row in rows]}
    template = {"benign": hover_template(classes, maps),
                "adversarial": f"{classes[1]} act×w: %{{customdata[1]}}<extra></extra>"}

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
    # markers make a curve selectable by a click (see the module doc); beyond MARKER_MAX they are invisible
    opacity = 1.0 if n <= MARKER_MAX else 0.0
    keep = {"selected": {"marker": {"opacity": opacity}}, "unselected": {"marker": {"opacity": opacity}}}
    for (side, color, name), meta in zip(sides, CURVE_NAMES, strict=True):
        data.append({"type": "scatter", "x": x, "y": values(measures[f"{side}_axw"]), "mode": "lines+markers",
                     "line": {"color": color, "width": 1.6},
                     "marker": {"size": 5, "color": color, "opacity": opacity}, **keep,
                     "name": f"{name}: {side} image", "meta": meta,
                     "customdata": custom[side], "hovertemplate": template[side]})
    data.append({"type": "scatter", "x": x, "y": [0] * n, "xaxis": "x2", "yaxis": "y2", "mode": "markers",
                 "meta": "regions", "customdata": ids, "showlegend": False,
                 "marker": {"symbol": "square", "size": 9 if n <= MARKER_MAX else 6,
                            "color": [REGION_COLORS[r] for r in reg]},
                 "selected": {"marker": {"opacity": 1}}, "unselected": {"marker": {"opacity": 1}},
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
        # near either end the label grows inwards, so the plot's edge does not cut it ("neuron 4" for 46)
        side = "right" if pos > 0.9 * (n - 1) else "left" if pos < 0.1 * (n - 1) else "center"
        notes.append({"x": pos, "xref": "x", "y": 1, "yref": "paper", "text": f"neuron {selected}",
                      "showarrow": False, "xanchor": side, "yanchor": "bottom", "font": {"color": "#d62728"}})
    ticks = _ticks(n)
    span = [-0.5, n - 0.5]
    layout = {
        # the top margin holds, from the top: plotly's tool bar (on hover), the legend, the selected label
        "height": height, "margin": {"l": 10, "r": 10, "t": 72, "b": 10}, "hovermode": "x",
        "hoverdistance": -1,  # the nearest column wherever the pointer is: a click in a column selects it
        "dragmode": "zoom", "clickmode": "event+select", "shapes": shapes, "annotations": notes,
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1 + 24 / (height - 82), "x": 0},
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
