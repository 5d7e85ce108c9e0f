"""Neuron ranking: the Neuron Vulnerability View (paper Fig. 4) of the selected pair. The neurons sorted by
a vulnerability measure, their activation×weight curves and class bands, regions A/B/C; a click (or a
typed id, or a row of the top-10 table) selects a neuron for the Receptive fields and Clustering pages.
Class names and ids are user text: Markdown gets them through ``text.plain``, the chart through its
builder."""
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
from core.ui.text import plain, quoted

session.require_app()  # first: a deep link must not run a page outside app.py

CHART = "neuron_ranking_chart"
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


def _on_table(neurons) -> None:
    neuron = nc.neuron_from_rows(st.session_state.get("neuron_ranking_top"), neurons)
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
    st.page_link("pages/image_space.py", label="Go to Image space", icon=":material/grid_view:")
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
    st.page_link("pages/image_space.py", label="Go to Image space", icon=":material/grid_view:")
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
                 key="neuron_ranking_sort", on_change=_on_sort)
session.seed("neuron_ranking_zoom", min(int(sel.zoom), analysis.num_neurons))  # the widget's bounds
c_zoom.number_input("Show the top N (0: all)", min_value=0, max_value=analysis.num_neurons, step=5,
                    key="neuron_ranking_zoom", on_change=_on_zoom,
                    help="Horizontal zoom; drag on the chart to zoom further, double-click to reset.")
session.seed("neuron_ranking_neuron",
             sel.neuron if sel.neuron is not None and 0 <= sel.neuron < analysis.num_neurons else None)
c_id.number_input("Or type a neuron id", min_value=0, max_value=analysis.num_neurons - 1, step=1,
                  key="neuron_ranking_neuron", on_change=_on_neuron_id, placeholder="neuron id")
with st.expander("Band settings"):
    b1, b2 = st.columns(2)
    session.seed("neuron_ranking_interval", sel.interval)
    b1.selectbox("Band interval", list(neuron_measures.INTERVALS), key="neuron_ranking_interval",
                 on_change=_on_interval, args=(_coverages,),
                 format_func={"quantile": "quantiles of the class's images",
                              "std": "mean ± z·std", "ci": "confidence interval of the mean"}.get)
    session.seed("neuron_ranking_coverage", coverage)
    b2.selectbox("Coverage", _coverages(sel.interval), key="neuron_ranking_coverage",
                 on_change=_on_coverage, format_func=lambda c: f"{c:.0%}")
    st.caption("The benign band is the benign images of the benign class; the adversarial band the benign "
               "images of the adversarial class (× each class's weights). Band gap > 0: region A.")

# -- measures and order ----------------------------------------------------------------------------------
measures = analysis.neuron_measures(pair, interval=sel.interval, coverage=coverage)
map_kw = {"stride": analysis.map_stride(sel.stride), "precision": "auto"}
rf_kw = nc.rf_kw(sel, analysis)
iou = None
if sel.neuron_sort in nc.IOU_SORTS or analysis.has_vulnerability_maps(pair, **map_kw):
    with st.spinner(SPINNER) if not analysis.has_vulnerability_maps(pair, **map_kw) else nullcontext():
        analysis.vulnerability_maps(pair, **map_kw)
    iou = {w: analysis.iou_ranking(pair, w, top=sel.top, **map_kw, **rf_kw)[0] for w in analysis_mod.MAPS}
values = nc.sort_values(sel.neuron_sort, measures, iou)
full_order = neuron_measures.rank(values)
order = nc.shown_order(values, sel.zoom)
label = NEURON_SORTS[sel.neuron_sort]
value_label = label.split(" (")[0]

fig = nc.ranking_figure(measures, order, classes=(classes[bc], classes[ac]), colors=(colors[bc], colors[ac]),
                        sort=sel.neuron_sort, sort_label=label, iou=iou, selected=sel.neuron)
st.plotly_chart(fig, key=CHART, on_select=partial(_on_chart, order), selection_mode=("points",),
                config={"displaylogo": False, "scrollZoom": False})
if sel.neuron_sort != "band_gap":
    st.caption("The strip under the curves colours each neuron by its band-gap region "
               "(A: excited, B: unaffected, C: inhibited); sort by band gap to see them as regions.")

# -- top 10 and the selected neuron ----------------------------------------------------------------------
left, right = st.columns([3, 2])
with left:
    table = nc.top_table(full_order, values, measures["band_gap"], value_label, k=10)
    st.caption(f"Top 10 by {label} (click a row to select the neuron)")
    st.dataframe(table, hide_index=True, key="neuron_ranking_top",
                 on_select=partial(_on_table, table["neuron"].tolist()), selection_mode="single-row",
                 column_config={"band gap": st.column_config.NumberColumn(format="%.4g"),
                                value_label: st.column_config.NumberColumn(format="%.4g")})
with right:
    if sel.neuron is None or not 0 <= sel.neuron < analysis.num_neurons:
        st.info("Click a neuron on the chart, a row of the table, or type its id to select it.")
    else:
        j = sel.neuron
        pos = int((full_order == j).nonzero()[0][0])
        where = "" if sel.zoom == 0 or pos < sel.zoom else f" (outside the top {sel.zoom} shown)"
        st.markdown(f"**Neuron {j}**: rank {pos + 1} of {analysis.num_neurons}{where}, region "
                    f"{nc.REGION_LABELS[nc.regions(measures['band_gap'][[j]])[0]]}")
        st.markdown(f"- act×weight: {measures['benign_axw'][j]:.4g} ({b_name}) → "
                    f"{measures['adversarial_axw'][j]:.4g} ({a_name})\n"
                    f"- band gap {measures['band_gap'][j]:.4g} · curve difference "
                    f"{measures['curve_difference'][j]:.4g}\n"
                    f"- substituted alone: P({b_name}) drops {measures['benign_decrease'][j]:.3g}, "
                    f"P({a_name}) rises {measures['adversarial_increase'][j]:.3g}" +
                    (f"\n- IoU of its RFs with bMap {iou['bmap'][j]:.3f}, aMap {iou['amap'][j]:.3f}"
                     if iou else ""))
        st.page_link("pages/receptive_fields.py", label=f"See neuron {j}'s receptive fields",
                     icon=":material/arrow_forward:")
        st.page_link("pages/clustering.py", label="Find neurons that behave like it",
                     icon=":material/account_tree:")
