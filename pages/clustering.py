"""Clustering: the Neuron Cluster View (paper §5.2.2, Fig. 2-e, §6.1.4). The dendrogram of every neuron
clustered by its RFs on the selected pair; click nodes to select subtrees, and see the union or the
intersection of the selected neurons' RFs on the benign and the adversarial image.
Class names and ids are user text: Markdown gets them through ``text.plain``; no HTML on this page (the
class colour is the border of each image)."""
from functools import partial

import numpy as np
import streamlit as st

from core import clustering
from core import receptive_fields as rf
from core.store import StoreError
from core.ui import dendrogram, services, session
from core.ui import neuron_charts as nc
from core.ui.images import bordered, rf_overlay
from core.ui.palette import class_colors
from core.ui.state import SET_OPS
from core.ui.text import plain, quoted

session.require_app()  # first: a deep link must not run a page outside app.py

CHART = "clustering_dendrogram"
MAX_CLUSTERS = 30
DISTANCE_LABELS = {"l2": "L2 between RFs (paper)", "iou": "1 − IoU of RF masks",
                   "activation": "L2 between activation maps"}


def _toggle(nodes) -> None:
    sel = session.get()
    for node in nodes:
        sel = sel.toggle_cluster(node)
    session.put(sel)


def _on_chart(num_nodes: int) -> None:
    _toggle(dendrogram.nodes_from_event(st.session_state.get(CHART), num_nodes))


def _on_parent(Z: np.ndarray) -> None:
    neuron = session.get().neuron
    if neuron is not None:
        _toggle(clustering.nodes_containing(Z, neuron)[:1])


sel = session.require_experiment()

st.header("Neuron clusters")
if sel.pair is None:
    st.info("Pick a pair in Image space first: the neurons are clustered by their receptive fields on "
            "that pair's benign and adversarial image.")
    st.page_link("pages/image_space.py", label="Go to Image space", icon=":material/grid_view:")
    st.stop()

try:
    analysis = services.analysis(sel.experiment)
except StoreError as e:  # removed or damaged since the sidebar listed it
    st.error(plain(e))
    st.stop()
store = analysis.store
if not 0 <= sel.pair < analysis.num_pairs:
    st.warning(f"Pair #{sel.pair} is not in experiment {quoted(sel.experiment)} (it has {analysis.num_pairs} "
               "pairs); pick a pair in Image space.")
    st.page_link("pages/image_space.py", label="Go to Image space", icon=":material/grid_view:")
    st.stop()

n = analysis.num_neurons
classes = store.classes
colors = class_colors(len(classes))
benign_class, adv_class = analysis.classes_of(sel.pair)

# -- controls ----------------------------------------------------------------------------------------
c1, c2, c3, c4 = st.columns([1.2, 0.9, 1.2, 1.2])
session.seed("clustering_distance", sel.distance)
c1.selectbox("Distance between neurons", clustering.DISTANCES, key="clustering_distance",
             format_func=DISTANCE_LABELS.get, on_change=lambda: session.update(distance=st.session_state[
                 "clustering_distance"]),
             help="The paper clusters by the L2 distance between each neuron's benign and adversarial "
                  "RFs; §5.2.2 names the two others as alternatives.")
session.seed("clustering_method", sel.method)
c2.selectbox("Linkage", clustering.LINKAGE_METHODS, key="clustering_method",
             on_change=lambda: session.update(method=st.session_state["clustering_method"]),
             help="How the distance between two clusters is computed. Average (the default) works with "
                  "every distance; ward, centroid and median need a Euclidean one.")
k_max = max(1, min(MAX_CLUSTERS, n))
session.seed("clustering_n_clusters", min(max(1, sel.n_clusters), k_max))
c3.slider("Colour clusters (cut into k)", 1, k_max, key="clustering_n_clusters",
          on_change=lambda: session.update(n_clusters=int(st.session_state["clustering_n_clusters"])),
          help="Cuts the tree into at most k clusters (scipy maxclust) and colours each; grey links join "
               "clusters above the cut.")
session.seed("clustering_set_op", sel.set_op)
c4.radio("Combine the RFs by", SET_OPS, key="clustering_set_op", horizontal=True,
         on_change=lambda: session.update(set_op=st.session_state["clustering_set_op"]),
         help="Union: every pixel any selected neuron sees (the group as a whole). Intersection: the "
              "pixels all of them see (their common behaviour).")

Z, refused = services.linkage(sel.experiment, sel.pair, sel)
if Z is None:
    st.warning(f"This combination cannot be clustered: {refused}")
    st.stop()

num_nodes = 2 * n - 1
valid = tuple(v for v in sel.clusters if 0 <= v < num_nodes)
neuron = sel.neuron if sel.neuron is not None and 0 <= sel.neuron < n else None

# -- the dendrogram ----------------------------------------------------------------------------------
what = {"l2": "L2 distance between RFs", "iou": "1 − IoU of RF masks",
        "activation": "L2 distance between activation maps"}[sel.distance]
st.caption(f"Pair #{sel.pair}: {plain(classes[benign_class])} → {plain(classes[adv_class])} · {n} neurons · "
           f"{sel.method} "
           f"linkage of the {what} (benign and adversarial image together) · click a node to select its "
           "subtree, a leaf for one neuron; click again to deselect; drag to zoom, double-click to reset.")
fig = dendrogram.figure(Z, n_clusters=min(max(1, sel.n_clusters), k_max), selected=valid, neuron=neuron)
st.plotly_chart(fig, on_select=partial(_on_chart, num_nodes), selection_mode=("points",), key=CHART,
                width="stretch", config={"displaylogo": False})

b1, b2, b3 = st.columns([1.9, 1, 2.1])
b1.button("Select the node above the selected neuron", key="clustering_parent", on_click=_on_parent,
          args=(Z,), disabled=neuron is None, icon=":material/arrow_upward:",
          help="Toggles the smallest cluster containing the selected neuron (its parent in the tree)."
          if neuron is not None else "Select a neuron on the Neuron ranking page first.")
b2.button("Clear clusters", key="clustering_clear", on_click=lambda: session.update(clusters=()),
          disabled=not sel.clusters, icon=":material/close:")
if neuron is None:
    b3.caption("No neuron selected: pick one on the Neuron ranking page to see where it sits (red).")
else:
    b3.caption(f"Neuron {neuron}: red star and red path to the root. Selected clusters: yellow.")
if len(valid) < len(sel.clusters):
    st.caption(f"Ignored node ids not in this tree (ids are 0..{num_nodes - 1}): "
               f"{', '.join(str(v) for v in sel.clusters if v not in valid)}")

# -- union / intersection of the selected clusters ---------------------------------------------------
if not valid:
    st.info("Click dendrogram nodes to select clusters: their neurons' RFs are combined below.")
    st.stop()

members = clustering.members(Z, valid)
op = rf.union if sel.set_op == "union" else rf.intersection
benign_img, adv_img = store.pair_images(sel.pair)
row = store.pairs.iloc[sel.pair]
st.subheader(f"{sel.set_op.capitalize()} of {len(members)} neuron{'s' * (len(members) != 1)}' RFs")
cols = st.columns([1, 1, 2])
for col, side, image, label, prob in (
        (cols[0], "benign", benign_img, benign_class, float(row["benign_prob"])),
        (cols[1], "adversarial", adv_img, adv_class, float(row["adv_prob"]))):
    masks = analysis.rf_masks_for(sel.pair, side, members, **nc.rf_kw(sel, analysis))
    mask = op(masks).numpy()
    col.image(bordered(rf_overlay(image, mask), colors[label]), width="stretch")  # border: class colour
    col.markdown(f"**{side.capitalize()}**: {plain(classes[label])} ({prob:.0%}) · covers {mask.mean():.0%} "
                 "of the image")
with cols[2]:
    sizes = [f"node {v} ({len(clustering.subtree(Z, v))} neurons)" if v >= n else f"neuron {v}"
             for v in valid]
    st.markdown(f"**Selected:** {', '.join(sizes)}")
    st.metric("Member neurons", len(members))
    st.code(", ".join(map(str, members)), language=None, wrap_lines=True)
    threshold = sel.rf_mode if sel.rf_value is None else f"{sel.rf_mode} {sel.rf_value:g}"
    st.caption(f"RF threshold: {threshold} (set it on the Receptive fields page).")
