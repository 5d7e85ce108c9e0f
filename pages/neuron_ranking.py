"""Neuron ranking: the Neuron Vulnerability View (paper Fig. 4) of the selected pair. The neurons sorted by
a vulnerability measure, their activation×weight curves and class bands, regions A/B/C; a click anywhere
in a neuron's column (or a typed id, or a row of the table of both ends of the order) selects a neuron
for the Receptive fields and Clustering pages. Layout only: what is drawn comes from
``core.ui.views.ranking.ranking_view`` (every measure and setting with its "?" in plain words)."""
from contextlib import nullcontext
from functools import partial

import streamlit as st

from core import neuron_measures
from core.ui import neuron_charts as nc
from core.ui import session
from core.ui.state import NEURON_SORTS
from core.ui.views import ranking

session.require_app()  # first: a deep link must not run a page outside app.py

CHART = "neuron_ranking_chart"
HELP = neuron_measures.HELP
SPINNER = "Computing the vulnerability maps (first time for this pair)…"


def _from_widget(field: str, key: str, cast=None) -> None:
    session.update(**{field: cast(st.session_state[key]) if cast else st.session_state[key]})


def _select(neuron) -> None:
    if neuron is not None:
        session.put(session.get().with_neuron(int(neuron)))


def _on_event(read, key, among) -> None:  # a chart click or a table row: its neuron (``among``: the ids)
    _select(read(st.session_state.get(key), among))


def _on_interval(coverages) -> None:
    interval = st.session_state["neuron_ranking_interval"]
    session.update(interval=interval, coverage=nc.valid_coverage(session.get().coverage, coverages[interval]))


sel = session.require_experiment()

st.header("Neuron ranking")
analysis = session.require_analysis(sel)
session.require_pair(analysis, sel)

with st.spinner(SPINNER) if ranking.computes_maps(analysis, sel) else nullcontext():
    view = ranking.ranking_view(analysis, sel)
st.markdown(view.header)

# -- controls --------------------------------------------------------------------------------------------
c_sort, c_zoom, c_id = st.columns([2.2, 1, 1])
session.seed("neuron_ranking_sort", view.sort)  # the store's sorts only (view.sorts: none needing weights)
c_sort.selectbox("Sort neurons by", list(view.sorts), format_func=NEURON_SORTS.get,
                 key="neuron_ranking_sort", help=view.sort_help,
                 on_change=_from_widget, args=("neuron_sort", "neuron_ranking_sort"))
session.seed("neuron_ranking_zoom", min(int(sel.zoom), view.num_neurons))  # the widget's bounds
c_zoom.number_input("Show the top N (0: all)", min_value=0, max_value=view.num_neurons, step=5,
                    key="neuron_ranking_zoom", on_change=_from_widget,
                    args=("zoom", "neuron_ranking_zoom", lambda v: int(v or 0)), help=nc.CONTROL_HELP["zoom"])
session.seed("neuron_ranking_neuron", view.neuron)
c_id.number_input("Or type a neuron id", min_value=0, max_value=view.num_neurons - 1, step=1,
                  key="neuron_ranking_neuron", placeholder="neuron id", help=nc.CONTROL_HELP["neuron_id"],
                  on_change=lambda: _select(st.session_state["neuron_ranking_neuron"]))
if view.has_weights:  # the bands are of activation×weight: none without the head's weights
    with st.expander("Band settings"):
        b1, b2 = st.columns(2)
        session.seed("neuron_ranking_interval", sel.interval)
        b1.selectbox("Band interval", list(neuron_measures.INTERVALS), key="neuron_ranking_interval",
                     on_change=_on_interval, args=(view.coverages,), help=view.interval_help,
                     format_func=neuron_measures.INTERVAL_LABELS.get)
        session.seed("neuron_ranking_coverage", view.coverage)
        b2.selectbox("Coverage", view.coverages[sel.interval], key="neuron_ranking_coverage",
                     help=HELP["coverage"], on_change=_from_widget,
                     args=("coverage", "neuron_ranking_coverage", float),
                     format_func=lambda c: f"{c:.0%}")
        st.caption("The benign band is the benign images of the benign class; the adversarial band the "
                   "benign images of the adversarial class (× each class's weights). Band gap > 0: region A.",
                   help=HELP["class_band"])

# -- the chart, both ends of the order and the selected neuron -------------------------------------------
if view.unavailable:  # a head without activation×weight: which measures are missing, and why
    st.info(view.unavailable)
if view.notice:  # an empty or partial top-% mask: said before the chart it qualifies
    getattr(st, view.notice[0])(view.notice[1])
st.plotly_chart(view.figure, key=CHART, selection_mode=("points",),
                on_select=partial(_on_event, nc.neuron_from_selection, CHART, view.order),
                config={"displaylogo": False, "scrollZoom": False})
st.caption(view.chart_caption, help=HELP["regions"])
left, right = st.columns([3, 2])
with left:
    st.caption(view.ends_caption)
    # a fresh key per selected neuron: a row ticked earlier never stays ticked beside another neuron's ▶
    table_key = f"neuron_ranking_top_{view.neuron}"
    st.dataframe(view.ends, hide_index=True, key=table_key, height=35 * (len(view.ends) + 1) + 3,
                 on_select=partial(_on_event, nc.neuron_from_rows, table_key, view.ends["neuron"].tolist()),
                 selection_mode="single-row",
                 column_config={c: getattr(st.column_config, kind)(**kw)
                                for c, (kind, kw) in view.columns.items()})
with right:
    if view.neuron is None:
        st.info("Click a neuron's column on the chart, a row of the table, or type its id to select it.")
    else:
        for line, words in view.details:
            st.markdown(line, help=words)
        session.page_link("receptive_fields", label=f"See neuron {view.neuron}'s receptive fields",
                          icon=":material/arrow_forward:")
        session.page_link("clustering", label="Find neurons that behave like it",
                          icon=":material/account_tree:")
