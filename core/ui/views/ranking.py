"""The Neuron ranking page's view model: everything the page draws for one selection, as plain data and
a plotly figure (no Streamlit here, so unit tests call it directly).

``ranking_view(analysis, selection)`` reads the selected pair's measures (``Analysis.neuron_measures``,
with the IoU measures once the vulnerability maps are there or the sort needs them), orders the neurons
by the selected sort (``neuron_measures.MEASURES``), and returns the pair's header, the menus' options
and words, the chart, the table of both ends of the order, the selected neuron's numbers, and the notice
that qualifies an IoU ranking whose vulnerability-map mask is empty or smaller than asked. Every
Markdown text here has the class names escaped (``text.plain``); the figure escapes them itself.
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
from core.ui.text import number, plain
from core.ui.views import map_settings

STRIP = (" The strip under the curves colours each neuron by its band-gap region (A: excited, B: unaffected, "
         "C: inhibited); sort by band gap to see them as regions.")


@dataclass(frozen=True)
class RankingView:
    """What the Neuron ranking page draws (Markdown texts escaped, see the module docstring)."""
    header: str                          # the pair: classes and probabilities before → after the attack
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


def computes_maps(analysis, sel: Selection) -> bool:
    """Whether ``ranking_view`` will compute the pair's vulnerability maps (slow: the page says so)."""
    return (neuron_measures.BY_KEY[sel.neuron_sort].needs_maps
            and not analysis.has_vulnerability_maps(sel.pair, map_settings(analysis, sel)))


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


def _notice(analysis, sel: Selection, values: np.ndarray, maps: MapSettings) -> tuple[str, str] | None:
    """The words that qualify a ranking by a vulnerability map's mask: an empty or partial top-% mask,
    or no RF overlapping it (every value 0: the order is just the neuron ids)."""
    which = neuron_measures.BY_KEY[sel.neuron_sort].vmap
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


def _columns(sort: str, value_label: str) -> dict[str, tuple[str, dict]]:
    help_ = neuron_measures.HELP
    return {"selected": ("TextColumn", {"help": nc.CONTROL_HELP["selected"]}),
            "rank": ("NumberColumn", {"help": help_["rank"]}),
            "neuron": ("NumberColumn", {"help": nc.CONTROL_HELP["neuron_id"]}),
            value_label: ("NumberColumn", {"format": "%.4g", "help": help_[sort]}),
            "band gap": ("NumberColumn", {"format": "%.4g", "help": help_["band_gap"]}),
            "region": ("TextColumn", {"help": help_["regions"]})}


def ranking_view(analysis, sel: Selection) -> RankingView:
    """Everything the Neuron ranking page draws for ``sel`` (its pair must be one of ``analysis``'s)."""
    pair, n = sel.pair, analysis.num_neurons
    classes = analysis.store.classes
    bc, ac = analysis.classes_of(pair)
    names = (plain(classes[bc]), plain(classes[ac]))  # for Markdown; the chart takes the raw names
    offered = coverages(analysis)
    coverage = nc.valid_coverage(sel.coverage, offered[sel.interval])
    measure = neuron_measures.BY_KEY[sel.neuron_sort]
    maps = map_settings(analysis, sel)
    with_maps = measure.needs_maps or analysis.has_vulnerability_maps(pair, maps)
    measures = analysis.neuron_measures(
        pair, interval=sel.interval, coverage=coverage,
        maps={"top": sel.top, "settings": maps, **nc.rf_kw(sel, analysis)} if with_maps else None)
    values = nc.sort_values(sel.neuron_sort, measures)
    full_order = neuron_measures.rank(values)
    order = nc.shown_order(values, sel.zoom)
    label = NEURON_SORTS[sel.neuron_sort]
    colors = class_colors(len(classes))
    figure = nc.ranking_figure(measures, order, classes=(classes[bc], classes[ac]),
                               colors=(colors[bc], colors[ac]), sort=sel.neuron_sort, sort_label=label,
                               selected=sel.neuron)
    neuron = sel.neuron if sel.neuron is not None and 0 <= sel.neuron < n else None
    k = min(nc.ENDS, n)
    ends = (f"ranks 1–{k} (the left end of the chart) and {n - k + 1}–{n} (the right end)"
            if n > 2 * nc.ENDS else f"all {n} neurons")
    rank = None if neuron is None else int(np.flatnonzero(full_order == neuron)[0]) + 1
    return RankingView(
        header=_header(analysis, pair, names),
        sort_help=nc.options_help(nc.CONTROL_HELP["sort"], NEURON_SORTS, neuron_measures.SUMMARY,
                                  nc.CONTROL_HELP["sort_more"]),
        interval_help=nc.options_help(neuron_measures.HELP["interval"], neuron_measures.INTERVAL_LABELS,
                                      neuron_measures.INTERVAL_HELP),
        coverages=offered, coverage=coverage, num_neurons=n, neuron=neuron,
        notice=_notice(analysis, sel, values, maps), measures=measures, values=values,
        full_order=full_order, order=order, label=label, value_label=measure.name, figure=figure,
        chart_caption=nc.CONTROL_HELP["chart"] + ("" if sel.neuron_sort == "band_gap" else STRIP),
        ends=nc.ends_table(full_order, values, measures["band_gap"], measure.name, selected=neuron),
        ends_caption=(f"Both ends of the order by {label}: {ends}. {nc.SELECTED_MARK} marks the selected "
                      "neuron; click a row to select its neuron."),
        columns=_columns(sel.neuron_sort, measure.name), rank=rank,
        details=[] if neuron is None else nc.detail_lines(measures, neuron, rank=rank, total=n, classes=names,
                                                         shown=sel.zoom))
