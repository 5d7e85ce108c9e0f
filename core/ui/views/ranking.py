"""The Neuron ranking page's view model: everything the page draws for one selection, as plain data and
a plotly figure (no Streamlit here, so unit tests call it directly).

``ranking_view(analysis, selection)`` reads the selected pair's measures (``Analysis.neuron_measures``,
with the IoU measures once the vulnerability maps are there or the sort needs them), orders the neurons
by the selected sort (``neuron_measures.MEASURES``), and returns the pair's header, the menus' options
and words, the chart, the table of both ends of the order, the selected neuron's numbers, and the notice
that qualifies an IoU ranking whose vulnerability-map mask is empty or smaller than asked. Every
Markdown text here has the class names escaped (``text.plain``); the figure escapes them itself.

A store whose model has no activation×weight (``Analysis.has_head_weights`` False: a head that is not
global average pooling into one linear layer, ``core.models.ExplainedModel.head_type`` "other") offers
only the sorts that need no weights (``Measure.needs_weights``), ranks by the activation difference when
the selection asks for one of the others, says why in ``NO_WEIGHTS``, and draws each neuron's average
activation on both images (``activation_figure``) instead of the activation×weight curves and bands.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core import neuron_measures
from core.map_settings import MapSettings
from core.ui import neuron_charts as nc
from core.ui.palette import class_colors
from core.ui.state import NEURON_SORTS, Selection
from core.ui.text import number, plain, plotly_text
from core.ui.views import map_settings

NO_WEIGHTS = (
    "This model's head is not global average pooling into one linear layer, so a neuron's activation "
    "times its weight does not say how much it pushes a class: the band gap, curve difference and direct "
    "substitution are unavailable. The activation difference, the IoU with bMap and aMap, receptive "
    "fields, clustering and context images still work.")
FALLBACK_SORT = "activation_difference"  # the sort without weights used when the selection's needs them
ACTIVATION_NAMES = ("benign activation", "adversarial activation")  # activation_figure's traces (meta)
STRIP = (" The strip under the curves colours each neuron by its band-gap region (A: excited, B: unaffected, "
         "C: inhibited); sort by band gap to see them as regions.")


@dataclass(frozen=True)
class RankingView:
    """What the Neuron ranking page draws (Markdown texts escaped, see the module docstring)."""
    header: str                          # the pair: classes and probabilities before → after the attack
    sort: str                            # the sort used: the selection's, or FALLBACK_SORT without weights
    sorts: dict[str, str]                # the sort menu: key -> label, those this store offers
    has_weights: bool                    # activation×weight applies (bands, curves; Band settings shown)
    unavailable: str | None              # NO_WEIGHTS without the head's weights: why sorts are missing
    sort_help: str                       # the sort menu's tooltip: one line per sort
    interval_help: str                   # the band interval menu's tooltip
    coverages: dict[str, list[float]]    # per band interval, the coverages offered
    coverage: float                      # the selection's coverage, made one of those offered
    num_neurons: int
    neuron: int | None                   # the selected neuron, None when none (or not one of this model)
    notice: tuple[str, str] | None       # ("warning" | "info", text) above the chart, about an IoU ranking
    measures: dict                       # Analysis.neuron_measures (the IoU measures once maps are there)
    values: np.ndarray                   # the sort's value per neuron
    full_order: np.ndarray               # neuron ids by descending value (NaN last)
    order: np.ndarray                    # the ids plotted: the first ``zoom`` of full_order (0: all)
    label: str                           # the sort's menu label
    value_label: str                     # the sort value's column name in the ends table
    figure: go.Figure
    chart_caption: str
    ends: pd.DataFrame                   # both ends of the order (nc.ends_table)
    ends_caption: str
    columns: dict[str, tuple[str, dict]]  # the table's column -> (st.column_config class name, its kwargs)
    rank: int | None                     # the selected neuron's rank (1-based)
    details: list[tuple[str, str]]       # its numbers: (Markdown line, help)


def sorts(analysis) -> dict[str, str]:
    """The sorts the store offers (key -> menu label): all of them, or without the head's weights those
    that need none."""
    return {m.key: NEURON_SORTS[m.key] for m in neuron_measures.MEASURES
            if analysis.has_head_weights or not m.needs_weights}


def used_sort(analysis, sel: Selection) -> str:
    """The selection's sort if the store offers it, else ``FALLBACK_SORT``."""
    return sel.neuron_sort if sel.neuron_sort in sorts(analysis) else FALLBACK_SORT


def computes_maps(analysis, sel: Selection) -> bool:
    """Whether ``ranking_view`` will compute the pair's vulnerability maps (slow: the page says so)."""
    return (neuron_measures.BY_KEY[used_sort(analysis, sel)].needs_maps
            and not analysis.has_vulnerability_maps(sel.pair, map_settings(analysis, sel)))


def activation_figure(activations: tuple, order, *, classes: tuple[str, str], colors: tuple[str, str],
                      sort_label: str, selected: int | None = None, height: int = 420) -> go.Figure:
    """Each neuron's average activation (its pooled value) on the benign and on the adversarial image,
    for the neurons ``order`` (ids, plotted at x = 0..len−1): the chart of a model without
    activation×weight. Every point carries its neuron id as ``customdata[0]`` (a click selects it), as
    in ``neuron_charts.ranking_figure``; class names go through ``text.plotly_text``."""
    order = np.asarray(order, dtype=np.int64)
    n, x = len(order), list(range(len(order)))
    names = (plotly_text(classes[0]), plotly_text(classes[1]))
    opacity = 1.0 if n <= nc.MARKER_MAX else 0.0
    keep = {"selected": {"marker": {"opacity": opacity}}, "unselected": {"marker": {"opacity": opacity}}}
    data = [{"type": "scatter", "x": x, "y": np.asarray(a, dtype=np.float64)[order].tolist(),
             "mode": "lines+markers", "line": {"color": color, "width": 1.6},
             "marker": {"size": 5, "color": color, "opacity": opacity}, **keep, "meta": meta,
             "name": f"{name}: {side} image", "customdata": [[int(j)] for j in order],
             "hovertemplate": f"neuron %{{customdata[0]}} · {name} ({side}): %{{y:.4g}}<extra></extra>"}
            for a, color, name, side, meta in zip(activations, colors, names, ("benign", "adversarial"),
                                                  ACTIVATION_NAMES, strict=True)]
    shapes, notes = [], []
    if selected is not None and selected in set(order.tolist()):
        pos = int(np.flatnonzero(order == selected)[0])
        shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": pos, "x1": pos, "y0": 0, "y1": 1,
                       "line": {"color": "#d62728", "width": 2, "dash": "dot"}})
        notes.append({"x": pos, "xref": "x", "y": 1, "yref": "paper", "text": f"neuron {selected}",
                      "showarrow": False, "yanchor": "bottom", "font": {"color": "#d62728"}})
    ticks = list(range(0, n, max(1, -(-n // nc.MAX_TICKS))))
    layout = {"height": height, "margin": {"l": 10, "r": 10, "t": 60, "b": 10}, "hovermode": "x",
              "hoverdistance": -1, "dragmode": "zoom", "clickmode": "event+select", "shapes": shapes,
              "annotations": notes, "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.08, "x": 0},
              "xaxis": {"range": [-0.5, n - 0.5], "tickmode": "array", "tickvals": ticks,
                        "ticktext": [str(int(order[i])) for i in ticks],
                        "title": {"text": f"neurons sorted by {sort_label} (tick labels: neuron ids)"}},
              "yaxis": {"fixedrange": True, "title": {"text": "average activation"}}}
    return go.Figure(data=data, layout=layout)


def coverages(analysis) -> dict[str, list[float]]:
    """Per band interval, the coverages offered: quantile levels stored for both populations."""
    stats = analysis.store.class_stats
    levels = [lv for lv in stats["benign_levels"] if lv in set(stats["adversarial_levels"])]
    return {interval: nc.coverage_options(interval, levels) for interval in neuron_measures.INTERVALS}


def _header(analysis, pair: int, names: tuple[str, str]) -> str:
    row = analysis.store.pairs.iloc[pair]
    b, a = names
    return (f"**Pair #{pair}**: **{b}** → **{a}** · "
            f"P({b}) {row['benign_prob']:.1%} → {row['benign_prob_adv']:.1%} · "
            f"P({a}) {row['adv_prob_benign']:.1%} → {row['adv_prob']:.1%}")


def _notice(analysis, sel: Selection, sort: str, values: np.ndarray,
            maps: MapSettings) -> tuple[str, str] | None:
    """The words that qualify a ranking by a vulnerability map's mask: an empty or partial top-% mask,
    or no RF overlapping it (every value 0: the order is just the neuron ids)."""
    which = neuron_measures.BY_KEY[sort].vmap
    if which is None:
        return None
    info = analysis.map_mask_status(sel.pair, which, top=sel.top, settings=maps)
    name = f"{which[0]}Map"
    if info.empty:
        return ("warning", f"This ranking is degenerate: no pixel of {name} is above 0 on this pair, so "
                "every neuron's IoU is 0 and the order below is just the neuron ids. Try the other map or a "
                "neuron-perturbation sort.")
    if info.short:
        return ("info", f"Only {number(100 * info.positive_share, '.1f')}% of the pixels are above 0 in "
                f"{name}, so its mask holds {info.kept} pixels instead of the top {sel.top:.0%} "
                f"({info.requested}).")
    if not values.any():
        return ("warning", f"No neuron's RF overlaps the {name} mask on this pair: every IoU is 0 and the "
                "order below is just the neuron ids.")
    return None


def _columns(sort: str, value_label: str, weights: bool = True) -> dict[str, tuple[str, dict]]:
    help_ = neuron_measures.HELP
    columns = {"selected": ("TextColumn", {"help": nc.CONTROL_HELP["selected"]}),
               "rank": ("NumberColumn", {"help": help_["rank"]}),
               "neuron": ("NumberColumn", {"help": nc.CONTROL_HELP["neuron_id"]}),
               value_label: ("NumberColumn", {"format": "%.4g", "help": help_[sort]})}
    if weights:
        columns |= {"band gap": ("NumberColumn", {"format": "%.4g", "help": help_["band_gap"]}),
                    "region": ("TextColumn", {"help": help_["regions"]})}
    return columns


def _details_without_weights(activations: tuple, measures: dict, neuron: int, *, rank: int, total: int,
                             names: tuple[str, str], shown: int) -> list[tuple[str, str]]:
    """The selected neuron's numbers for a store without the head's weights: its rank, its average
    activation on both images, and the measures there are (``nc.detail_lines`` without its act×weight
    and region lines, which have no meaning here)."""
    pb, pa = activations
    nan = np.full(total, np.nan)
    lines = nc.detail_lines({**measures, "band_gap": nan, "benign_axw": nan, "adversarial_axw": nan},
                            neuron, rank=rank, total=total, classes=names, shown=shown)
    where = "" if not shown or rank <= shown else f" (outside the top {shown} shown)"
    return [(f"**Neuron {neuron}**: rank {rank} of {total}{where}", neuron_measures.HELP["rank"]),
            (f"average activation: {nc.value_text(pb[neuron])} ({names[0]} image) → "
             f"{nc.value_text(pa[neuron])} ({names[1]} image)",
             neuron_measures.HELP["activation_difference"]),
            *lines[2:]]


def ranking_view(analysis, sel: Selection) -> RankingView:
    """Everything the Neuron ranking page draws for ``sel`` (its pair must be one of ``analysis``'s)."""
    pair, n = sel.pair, analysis.num_neurons
    classes = analysis.store.classes
    bc, ac = analysis.classes_of(pair)
    names = (plain(classes[bc]), plain(classes[ac]))  # for Markdown; the chart takes the raw names
    offered = coverages(analysis)
    coverage = nc.valid_coverage(sel.coverage, offered[sel.interval])
    weights = analysis.has_head_weights
    sort = used_sort(analysis, sel)
    measure = neuron_measures.BY_KEY[sort]
    maps = map_settings(analysis, sel)
    with_maps = measure.needs_maps or analysis.has_vulnerability_maps(pair, maps)
    measures = analysis.neuron_measures(
        pair, interval=sel.interval, coverage=coverage,
        maps={"top": sel.top, "settings": maps, **nc.rf_kw(sel, analysis)} if with_maps else None)
    values = nc.sort_values(sort, measures)
    full_order = neuron_measures.rank(values)
    order = nc.shown_order(values, sel.zoom)
    label = NEURON_SORTS[sort]
    colors = class_colors(len(classes))
    neuron = sel.neuron if sel.neuron is not None and 0 <= sel.neuron < n else None
    k = min(nc.ENDS, n)
    ends = (f"ranks 1–{k} (the left end of the chart) and {n - k + 1}–{n} (the right end)"
            if n > 2 * nc.ENDS else f"all {n} neurons")
    rank = None if neuron is None else int(np.flatnonzero(full_order == neuron)[0]) + 1
    if weights:
        figure = nc.ranking_figure(measures, order, classes=(classes[bc], classes[ac]),
                                   colors=(colors[bc], colors[ac]), sort=sort, sort_label=label,
                                   selected=sel.neuron)
        table = nc.ends_table(full_order, values, measures["band_gap"], measure.name, selected=neuron)
        caption = nc.CONTROL_HELP["chart"] + ("" if sort == "band_gap" else STRIP)
        details = [] if neuron is None else nc.detail_lines(measures, neuron, rank=rank, total=n,
                                                            classes=names, shown=sel.zoom)
    else:
        activations = analysis.pooled(pair)
        figure = activation_figure(activations, order, classes=(classes[bc], classes[ac]),
                                   colors=(colors[bc], colors[ac]), sort_label=label, selected=sel.neuron)
        table = nc.ends_table(full_order, values, np.full(n, np.nan), measure.name,
                              selected=neuron).drop(columns=["band gap", "region"])
        caption = ("Each neuron's average activation on the original and on the attacked image. "
                   "Click a neuron's point to select it.")
        details = [] if neuron is None else _details_without_weights(
            activations, measures, neuron, rank=rank, total=n, names=names, shown=sel.zoom)
    menu = sorts(analysis)
    return RankingView(
        header=_header(analysis, pair, names), sort=sort, sorts=menu, has_weights=weights,
        unavailable=None if weights else NO_WEIGHTS,
        sort_help=nc.options_help(nc.CONTROL_HELP["sort"], menu, neuron_measures.SUMMARY,
                                  nc.CONTROL_HELP["sort_more"]),
        interval_help=nc.options_help(neuron_measures.HELP["interval"], neuron_measures.INTERVAL_LABELS,
                                      neuron_measures.INTERVAL_HELP),
        coverages=offered, coverage=coverage, num_neurons=n, neuron=neuron,
        notice=_notice(analysis, sel, sort, values, maps), measures=measures, values=values,
        full_order=full_order, order=order, label=label, value_label=measure.name, figure=figure,
        chart_caption=caption, ends=table,
        ends_caption=(f"Both ends of the order by {label}: {ends}. {nc.SELECTED_MARK} marks the selected "
                      "neuron; click a row to select its neuron."),
        columns=_columns(sort, measure.name, weights), rank=rank, details=details)
