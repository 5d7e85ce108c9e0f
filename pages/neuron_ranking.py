"""Neuron ranking: the Neuron Vulnerability View (paper Fig. 4) of the selected pair. The neurons sorted by
a vulnerability measure, their activation×weight curves and class bands, regions A/B/C; a click anywhere
in a neuron's column (or a typed id, or a row of the table of both ends of the order) selects a neuron
for the Receptive fields and Clustering pages. Every measure and setting has a "?" in plain words
(``neuron_measures.HELP``, ``neuron_charts.CONTROL_HELP``). Class names and ids are user text: Markdown
gets them through ``text.plain``, the chart through its builder."""
from contextlib import nullcontext
from functools import partial

import streamlit as st

from core import analysis as analysis_mod
from core import neuron_measures
from core.store import StoreError
from core.ui import neuron_charts as nc
from core.ui import services, session
from core.ui.palette import class_colors
from core.ui.state import NEURON_SORTS
from core.ui.text import number, plain, quoted

session.require_app()  # first: a deep link must not run a page outside app.py

CHART = "neuron_ranking_chart"
TABLE = "neuron_ranking_top"
HELP = neuron_measures.HELP  # the plain words of every measure and setting
SPINNER = "Computing the vulnerability maps (first time for this pair)…"


def _on_sort() -> None:
    session.update(neuron_sort=st.session_state["neuron_ranking_sort"])


def _on_zoom() -> None:
    session.update(zoom=int(st.session_state["neuron_ranking_zoom"] or 0))


def _on_neuron_id() -> None:
    value = st.session_state["neuron_ranking_neuron"]
    if value is not None:
        session.put(session.get().with_neuron(int(value)))


def _on_chart(order) -> None:
    neuron = nc.neuron_from_selection(st.session_state.get(CHART), order)
    if neuron is not None:
        session.put(session.get().with_neuron(neuron))


def _on_table(key, neurons) -> None:
    neuron = nc.neuron_from_rows(st.session_state.get(key), neurons)
    if neuron is not None:
        session.put(session.get().with_neuron(neuron))


def _on_interval(options_of) -> None:
    interval = st.session_state["neuron_ranking_interval"]
    sel = session.get()
    session.update(interval=interval, coverage=nc.valid_coverage(sel.coverage, options_of(interval)))


def _on_coverage() -> None:
    session.update(coverage=float(st.session_state["neuron_ranking_coverage"]))


sel = session.require_experiment()

st.header("Neuron ranking")
if sel.pair is None:
    st.info("Pick a pair in Image space first: click a prediction-matrix cell, then a pair of the grid.")
    session.page_link("pages/image_space.py", label="Go to Image space", icon=":material/grid_view:")
    st.stop()

try:
    analysis = services.analysis(sel.experiment)
except StoreError as e:  # removed or damaged since the sidebar listed it
    st.error(plain(e))
    st.stop()
store = analysis.store
if not 0 <= sel.pair < analysis.num_pairs:
    st.warning(f"Pair #{sel.pair} is not in experiment {quoted(sel.experiment)} "
               f"(it has {analysis.num_pairs} pairs). Pick another pair in Image space.")
    session.page_link("pages/image_space.py", label="Go to Image space", icon=":material/grid_view:")
    st.stop()

pair = sel.pair
classes = store.classes
colors = class_colors(len(classes))
bc, ac = analysis.classes_of(pair)
b_name, a_name = plain(classes[bc]), plain(classes[ac])  # for Markdown; the chart takes the raw names
row = store.pairs.iloc[pair]
st.markdown(f"**Pair #{pair}**: **{b_name}** → **{a_name}** · "
            f"P({b_name}) {row['benign_prob']:.1%} → {row['benign_prob_adv']:.1%} · "
            f"P({a_name}) {row['adv_prob_benign']:.1%} → {row['adv_prob']:.1%}")

# -- controls --------------------------------------------------------------------------------------------
stats = store.class_stats


def _coverages(interval: str) -> list[float]:
    levels = [lv for lv in stats["benign_levels"] if lv in set(stats["adversarial_levels"])]
    return nc.coverage_options(interval, levels)


coverage = nc.valid_coverage(sel.coverage, _coverages(sel.interval))
c_sort, c_zoom, c_id = st.columns([2.2, 1, 1])
session.seed("neuron_ranking_sort", sel.neuron_sort)
c_sort.selectbox("Sort neurons by", list(NEURON_SORTS), format_func=NEURON_SORTS.get,
                 key="neuron_ranking_sort", on_change=_on_sort,
                 help=nc.options_help(nc.CONTROL_HELP["sort"], NEURON_SORTS, neuron_measures.SUMMARY,
                                      nc.CONTROL_HELP["sort_more"]))
session.seed("neuron_ranking_zoom", min(int(sel.zoom), analysis.num_neurons))  # the widget's bounds
c_zoom.number_input("Show the top N (0: all)", min_value=0, max_value=analysis.num_neurons, step=5,
                    key="neuron_ranking_zoom", on_change=_on_zoom, help=nc.CONTROL_HELP["zoom"])
session.seed("neuron_ranking_neuron",
             sel.neuron if sel.neuron is not None and 0 <= sel.neuron < analysis.num_neurons else None)
c_id.number_input("Or type a neuron id", min_value=0, max_value=analysis.num_neurons - 1, step=1,
                  key="neuron_ranking_neuron", on_change=_on_neuron_id, placeholder="neuron id",
                  help=nc.CONTROL_HELP["neuron_id"])
with st.expander("Band settings"):
    b1, b2 = st.columns(2)
    session.seed("neuron_ranking_interval", sel.interval)
    b1.selectbox("Band interval", list(neuron_measures.INTERVALS), key="neuron_ranking_interval",
                 on_change=_on_interval, args=(_coverages,), format_func=neuron_measures.INTERVAL_LABELS.get,
                 help=nc.options_help(HELP["interval"], neuron_measures.INTERVAL_LABELS,
                                      neuron_measures.INTERVAL_HELP))
    session.seed("neuron_ranking_coverage", coverage)
    b2.selectbox("Coverage", _coverages(sel.interval), key="neuron_ranking_coverage",
                 on_change=_on_coverage, format_func=lambda c: f"{c:.0%}", help=HELP["coverage"])
    st.caption("The benign band is the benign images of the benign class; the adversarial band the benign "
               "images of the adversarial class (× each class's weights). Band gap > 0: region A.",
               help=HELP["class_band"])

# -- measures and order ----------------------------------------------------------------------------------
measures = analysis.neuron_measures(pair, interval=sel.interval, coverage=coverage)
map_kw = {"stride": analysis.map_stride(sel.stride), "precision": "auto"}
rf_kw = nc.rf_kw(sel, analysis)
iou = None
if sel.neuron_sort in nc.IOU_SORTS or analysis.has_vulnerability_maps(pair, **map_kw):
    with st.spinner(SPINNER) if not analysis.has_vulnerability_maps(pair, **map_kw) else nullcontext():
        analysis.vulnerability_maps(pair, **map_kw)
    iou = {w: analysis.iou_ranking(pair, w, top=sel.top, **map_kw, **rf_kw)[0] for w in analysis_mod.MAPS}
if sel.neuron_sort in nc.IOU_SORTS:  # an empty or partial top-% mask: say so before the chart it qualifies
    which = nc.IOU_SORTS[sel.neuron_sort]
    info = analysis.map_mask_status(pair, which, top=sel.top, **map_kw)
    name = f"{which[0]}Map"
    if info.empty:
        st.warning(f"This ranking is degenerate: no pixel of {name} is above 0 on this pair, so every "
                   "neuron's IoU is 0 and the order below is just the neuron ids. Try the other map or a "
                   "neuron-perturbation sort.")
    elif info.short:
        st.info(f"Only {number(100 * info.positive_share, '.1f')}% of the pixels are above 0 in {name}, so "
                f"its mask holds {info.kept} pixels instead of the top {sel.top:.0%} ({info.requested}).")
    elif iou is not None and not iou[which].any():
        st.warning(f"No neuron's RF overlaps the {name} mask on this pair: every IoU is 0 and the order "
                   "below is just the neuron ids.")
values = nc.sort_values(sel.neuron_sort, measures, iou)
full_order = neuron_measures.rank(values)
order = nc.shown_order(values, sel.zoom)
label = NEURON_SORTS[sel.neuron_sort]
value_label = label.split(" (")[0]

fig = nc.ranking_figure(measures, order, classes=(classes[bc], classes[ac]), colors=(colors[bc], colors[ac]),
                        sort=sel.neuron_sort, sort_label=label, iou=iou, selected=sel.neuron)
st.plotly_chart(fig, key=CHART, on_select=partial(_on_chart, order), selection_mode=("points",),
                config={"displaylogo": False, "scrollZoom": False})
strip = ("" if sel.neuron_sort == "band_gap" else
         " The strip under the curves colours each neuron by its band-gap region (A: excited, "
         "B: unaffected, C: inhibited); sort by band gap to see them as regions.")
st.caption(nc.CONTROL_HELP["chart"] + strip, help=HELP["regions"])

# -- both ends of the order and the selected neuron -----------------------------------------------------
n_neurons = analysis.num_neurons
selected = sel.neuron if sel.neuron is not None and 0 <= sel.neuron < n_neurons else None
left, right = st.columns([3, 2])
with left:
    table = nc.ends_table(full_order, values, measures["band_gap"], value_label, selected=selected)
    k = min(nc.ENDS, n_neurons)
    ends = (f"ranks 1–{k} (the left end of the chart) and {n_neurons - k + 1}–{n_neurons} (the right end)"
            if n_neurons > 2 * nc.ENDS else f"all {n_neurons} neurons")
    st.caption(f"Both ends of the order by {label}: {ends}. {nc.SELECTED_MARK} marks the selected neuron; "
               "click a row to select its neuron.")
    # a fresh key per selected neuron: a row ticked earlier never stays ticked beside another neuron's ▶
    table_key = f"{TABLE}_{selected}"
    st.dataframe(table, hide_index=True, key=table_key, height=35 * (len(table) + 1) + 3,
                 on_select=partial(_on_table, table_key, table["neuron"].tolist()),
                 selection_mode="single-row",
                 column_config={
                     "selected": st.column_config.TextColumn(help=nc.CONTROL_HELP["selected"]),
                     "rank": st.column_config.NumberColumn(help=HELP["rank"]),
                     "neuron": st.column_config.NumberColumn(help=nc.CONTROL_HELP["neuron_id"]),
                     value_label: st.column_config.NumberColumn(format="%.4g", help=HELP[sel.neuron_sort]),
                     "band gap": st.column_config.NumberColumn(format="%.4g", help=HELP["band_gap"]),
                     "region": st.column_config.TextColumn(help=HELP["regions"])})
with right:
    if selected is None:
        st.info("Click a neuron's column on the chart, a row of the table, or type its id to select it.")
    else:
        rank = int((full_order == selected).nonzero()[0][0]) + 1
        for line, words in nc.detail_lines(measures, selected, rank=rank, total=n_neurons,
                                           classes=(b_name, a_name), iou=iou, shown=sel.zoom):
            st.markdown(line, help=words)
        session.page_link("pages/receptive_fields.py", label=f"See neuron {selected}'s receptive fields",
                     icon=":material/arrow_forward:")
        session.page_link("pages/clustering.py", label="Find neurons that behave like it",
                     icon=":material/account_tree:")
