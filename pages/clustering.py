"""Clustering: the Neuron Cluster View (paper §5.2.2, Fig. 2-e, §6.1.4). The dendrogram of every neuron
clustered by its RFs on the selected pair; click nodes to select subtrees, climb from the selected neuron
one level per press, and see the union or the intersection of the selected neurons' RFs on the benign
and the adversarial image. Selected clusters are kept as sets of neurons (``core.ui.state``), so another
linkage or distance never selects other neurons; the page says when a set is no longer one cluster.
Layout only: what it shows comes from ``core.ui.views.clustering`` (class names already through
``text.plain`` there); no HTML on this page (the class colour is the border of each image)."""
import numpy as np
import streamlit as st

from core import clustering
from core.ui import dendrogram, services, session
from core.ui.state import SET_OPS
from core.ui.views import clustering as cv

session.require_app()  # first: a deep link must not run a page outside app.py

CHART = "clustering_dendrogram"
LINEAR = "clustering_linear_axis"  # session key of the height-axis toggle: a view setting, not in the link


def _toggle_nodes(Z: np.ndarray) -> None:
    n = len(Z) + 1
    sel = session.get()
    for node in dendrogram.nodes_from_event(st.session_state.get(CHART), 2 * n - 1):
        sel = sel.toggle_cluster(clustering.subtree(Z, node))
    session.put(sel)


def _climb(Z: np.ndarray, how: str) -> None:
    sel = session.get()
    session.put({"up": sel.climb_up, "down": sel.climb_down}[how](Z) if how != "reset" else sel.climb_reset())


def _on_scale() -> None:
    st.session_state[LINEAR] = st.session_state["clustering_linear"]


def _toggle_set(neurons) -> None:
    session.put(session.get().toggle_cluster(neurons))


sel = session.require_experiment()
st.header("Neuron clusters")
analysis = session.require_analysis(sel)
session.require_pair(analysis, sel, "the neurons are clustered by their receptive fields on that pair's "
                     "benign and adversarial image.")

# -- controls ----------------------------------------------------------------------------------------
c1, c2, c3, c4 = st.columns([1.2, 0.9, 1.2, 1.2])
session.seed("clustering_distance", sel.distance)
c1.selectbox("Distance between neurons", clustering.DISTANCES, key="clustering_distance",
             format_func=cv.DISTANCE_LABELS.get, help=cv.HELP["distance"],
             on_change=lambda: session.put(session.get().with_distance(
                 st.session_state["clustering_distance"])))
session.seed("clustering_method", sel.method)
c2.selectbox("Linkage", clustering.LINKAGE_METHODS, key="clustering_method", help=cv.HELP["method"],
             on_change=lambda: session.update(method=st.session_state["clustering_method"]))
k_max = cv.cut_max(analysis.num_neurons)
session.seed("clustering_n_clusters", min(max(1, sel.n_clusters), k_max))
c3.slider("Colour clusters (cut into k)", 1, k_max, key="clustering_n_clusters", help=cv.HELP["cut"],
          on_change=lambda: session.update(n_clusters=int(st.session_state["clustering_n_clusters"])))
session.seed("clustering_set_op", sel.set_op)
c4.radio("Combine the RFs by", SET_OPS, key="clustering_set_op", horizontal=True, help=cv.HELP["set_op"],
         on_change=lambda: session.update(set_op=st.session_state["clustering_set_op"]))
Z, refused = services.linkage(sel.experiment, sel.pair, sel)
if Z is None:
    st.warning(f"This combination cannot be clustered: {refused}")
    st.stop()
view = cv.cluster_view(analysis, sel, Z, linear=bool(st.session_state.get(LINEAR, False)))

# -- the dendrogram ----------------------------------------------------------------------------------
st.caption(view.caption)
st.plotly_chart(view.figure, on_select=lambda: _toggle_nodes(Z), selection_mode=("points",), key=CHART,
                width="stretch", config={"displaylogo": False})
b1, b2, b3, b4 = st.columns([1.9, 1, 1, 1])
b1.button("Select the node above the selected neuron", key="clustering_parent", on_click=_climb,
          args=(Z, "up"), disabled=view.neuron is None, icon=":material/arrow_upward:",
          help=cv.HELP["up"] if view.neuron is not None else
          "Select a neuron on the Neuron ranking page first.")
b2.button("One level down", key="clustering_down", on_click=_climb, args=(Z, "down"),
          disabled=view.climbed is None, icon=":material/arrow_downward:", help=cv.HELP["down"])
b3.button("Back to the neuron", key="clustering_reset", on_click=_climb, args=(Z, "reset"),
          disabled=view.climbed is None, icon=":material/restart_alt:", help=cv.HELP["reset"])
b4.button("Clear clusters", key="clustering_clear", on_click=lambda: session.update(clusters=()),
          disabled=not sel.clusters, icon=":material/close:", help=cv.HELP["clear"])
t1, t2 = st.columns([3.9, 1.1])
session.seed("clustering_linear", bool(st.session_state.get(LINEAR, False)))
t2.toggle("Linear height axis", key="clustering_linear", help=cv.HELP["scale"], on_change=_on_scale)
t1.caption(view.neuron_caption)
if view.dead:
    d1, d2 = st.columns([1.9, 3.1])
    d1.button(f"Select the {len(view.dead)} neuron{'s' * (len(view.dead) != 1)} that see nothing",
              key="clustering_dead", on_click=_toggle_set, args=(view.dead,), icon=":material/block:",
              help=cv.HELP["dead"])
    d2.caption(view.dead_caption)
if view.ignored:
    st.caption(view.ignored)
if view.loose:
    st.warning(view.loose)

# -- union / intersection of the selected clusters ---------------------------------------------------
if not view.selected.valid:
    st.info("Click dendrogram nodes to select clusters: their neurons' RFs are combined below.")
    st.stop()
st.subheader(view.title)
cols = st.columns([1, 1, 2])
for col, (picture, text) in zip(cols[:2], view.pictures, strict=True):
    col.image(picture, width="stretch")
    col.markdown(text)
with cols[2]:
    st.markdown(view.selected_text)
    st.metric("Member neurons", len(view.selected.members))
    st.code(", ".join(map(str, view.selected.members)), language=None, wrap_lines=True)
    st.caption(view.threshold)
