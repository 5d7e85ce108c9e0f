"""Clustering: the Neuron Cluster View (paper §5.2.2, Fig. 2-e, §6.1.4). The dendrogram of every neuron
clustered by its RFs on the selected pair; click nodes to select subtrees, climb from the selected neuron
one level per press, and see the union or the intersection of the selected neurons' RFs on the benign
and the adversarial image. Selected clusters are kept as sets of neurons (``core.ui.state``), so another
linkage or distance never selects other neurons; the page says when a set is no longer one cluster.
Class names and ids are user text: Markdown gets them through ``text.plain``; no HTML on this page (the
class colour is the border of each image)."""
from dataclasses import replace

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
from core.ui.text import number, plain, quoted

session.require_app()  # first: a deep link must not run a page outside app.py

CHART = "clustering_dendrogram"
MAX_CLUSTERS = 30
DISTANCE_LABELS = {"l2": "L2 between RFs (paper)", "iou": "1 − IoU of RF masks",
                   "activation": "L2 between activation maps"}
HELP = {
    "distance": "How different two neurons are. The paper compares what each neuron sees — its receptive "
                "field (RF), the part of the image it responds to — on the original and on the attacked "
                "image, pixel by pixel (L2). The alternatives (§5.2.2): how little the RF outlines overlap "
                "(1 − IoU), or the neurons' raw activation maps.",
    "method": "How far apart two groups of neurons are when the tree is built. Ward (the default) joins "
              "the two groups whose union stays most compact, which gives nested groups of readable "
              "sizes (measured on several models; see docs/method.md). Average and complete use the mean "
              "and the largest distance between their members; single the smallest (it tends to chain). "
              "Ward, centroid and median need a Euclidean distance, so not 1 − IoU.",
    "cut": "Colours the tree as if it were cut into at most k groups; only the colours change, not the "
           "tree or the selection. Grey lines join groups above the cut.",
    "set_op": "Union: every pixel any selected neuron sees (the group as a whole). Intersection: the "
              "pixels all of them see (their common behaviour).",
    "up": "Climbs one level per press from the selected neuron: the first press selects the smallest "
          "cluster holding it (its parent in the tree); each next press replaces the cluster by the one "
          "just above it. Two levels up = two presses.",
    "down": "Back one level towards the selected neuron; from its parent, the cluster is removed.",
    "reset": "Removes the cluster you climbed to: back to the neuron alone. Other clusters stay.",
    "clear": "Deselects every cluster, the one you climbed to included; the selected neuron stays.",
    "scale": "Off (default): the height axis is log-like, so the many merges low in the tree, which a "
             "linear axis crushes against the bottom when the top merges are much higher, get room to be "
             "seen and clicked; its labels give the true heights. On: heights drawn to scale, as in the "
             "paper's figures.",
    "dead": "Neurons that see nothing: their RF is black on both images (empty, or on black pixels only), "
            "§6.1.4's \"dead\" neurons. Their RFs are identical, so with the L2 distance they join at "
            "height 0: the small stack at the bottom of the tree, whose highest marker holds them all.",
}


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
    sel = session.get()
    session.put(replace(sel, extra={**sel.extra, "dendrogram_linear": st.session_state["clustering_linear"]}))


def _toggle_set(neurons) -> None:
    session.put(session.get().toggle_cluster(neurons))


sel = session.require_experiment()

st.header("Neuron clusters")
if sel.pair is None:
    st.info("Pick a pair in Image space first: the neurons are clustered by their receptive fields on "
            "that pair's benign and adversarial image.")
    session.page_link("pages/image_space.py", label="Go to Image space", icon=":material/grid_view:")
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
    session.page_link("pages/image_space.py", label="Go to Image space", icon=":material/grid_view:")
    st.stop()

n = analysis.num_neurons
classes = store.classes
colors = class_colors(len(classes))
benign_class, adv_class = analysis.classes_of(sel.pair)

# -- controls ----------------------------------------------------------------------------------------
c1, c2, c3, c4 = st.columns([1.2, 0.9, 1.2, 1.2])
session.seed("clustering_distance", sel.distance)
c1.selectbox("Distance between neurons", clustering.DISTANCES, key="clustering_distance",
             format_func=DISTANCE_LABELS.get, help=HELP["distance"],
             on_change=lambda: session.put(session.get().with_distance(
                 st.session_state["clustering_distance"])))
session.seed("clustering_method", sel.method)
c2.selectbox("Linkage", clustering.LINKAGE_METHODS, key="clustering_method", help=HELP["method"],
             on_change=lambda: session.update(method=st.session_state["clustering_method"]))
k_max = max(1, min(MAX_CLUSTERS, n))
session.seed("clustering_n_clusters", min(max(1, sel.n_clusters), k_max))
c3.slider("Colour clusters (cut into k)", 1, k_max, key="clustering_n_clusters", help=HELP["cut"],
          on_change=lambda: session.update(n_clusters=int(st.session_state["clustering_n_clusters"])))
session.seed("clustering_set_op", sel.set_op)
c4.radio("Combine the RFs by", SET_OPS, key="clustering_set_op", horizontal=True, help=HELP["set_op"],
         on_change=lambda: session.update(set_op=st.session_state["clustering_set_op"]))

Z, refused = services.linkage(sel.experiment, sel.pair, sel)
if Z is None:
    st.warning(f"This combination cannot be clustered: {refused}")
    st.stop()

# the selected sets: neurons of this experiment or not (an old link's node numbers), one cluster or not
valid = [c for c in sel.clusters if c[-1] < n]
ignored = [c for c in sel.clusters if c[-1] >= n]
nodes = [clustering.cluster_node(Z, c) for c in valid]
loose = [c for c, v in zip(valid, nodes, strict=True) if v is None]
neuron = sel.neuron if sel.neuron is not None and 0 <= sel.neuron < n else None
rf_kw = nc.rf_kw(sel, analysis)
benign_img, adv_img = store.pair_images(sel.pair)
dead = tuple(int(j) for j in clustering.blind_neurons(
    (benign_img, adv_img), [analysis.rf_masks(sel.pair, s, **rf_kw) for s in ("benign", "adversarial")]))

# -- the dendrogram ----------------------------------------------------------------------------------
what = {"l2": "L2 distance between RFs", "iou": "1 − IoU of RF masks",
        "activation": "L2 distance between activation maps"}[sel.distance]
st.caption(f"Pair #{sel.pair}: {plain(classes[benign_class])} → {plain(classes[adv_class])} · {n} neurons · "
           f"{sel.method} linkage of the {what} (benign and adversarial image together) · click a node to "
           "select its subtree, a leaf for one neuron; click again to deselect; drag to zoom, double-click "
           "to reset. Heights on a log-like axis (see the toggle below); nodes that merge at the same "
           "height (e.g. 0: identical RFs) are drawn a little apart; the hover gives each true height.")
linear = bool(sel.extra.get("dendrogram_linear", False))  # a view setting: kept in the session, not the link
fig = dendrogram.figure(Z, n_clusters=min(max(1, sel.n_clusters), k_max),
                        selected=[v for v in nodes if v is not None], neuron=neuron,
                        marked=sorted({j for c in loose for j in c}), scale="linear" if linear else "log")
st.plotly_chart(fig, on_select=lambda: _toggle_nodes(Z), selection_mode=("points",), key=CHART,
                width="stretch", config={"displaylogo": False})

climbed = sel.climbed() if neuron is not None else None
b1, b2, b3, b4 = st.columns([1.9, 1, 1, 1])
b1.button("Select the node above the selected neuron", key="clustering_parent", on_click=_climb,
          args=(Z, "up"), disabled=neuron is None, icon=":material/arrow_upward:",
          help=HELP["up"] if neuron is not None else "Select a neuron on the Neuron ranking page first.")
b2.button("One level down", key="clustering_down", on_click=_climb, args=(Z, "down"),
          disabled=climbed is None, icon=":material/arrow_downward:", help=HELP["down"])
b3.button("Back to the neuron", key="clustering_reset", on_click=_climb, args=(Z, "reset"),
          disabled=climbed is None, icon=":material/restart_alt:", help=HELP["reset"])
b4.button("Clear clusters", key="clustering_clear", on_click=lambda: session.update(clusters=()),
          disabled=not sel.clusters, icon=":material/close:", help=HELP["clear"])
t1, t2 = st.columns([3.9, 1.1])
session.seed("clustering_linear", linear)
t2.toggle("Linear height axis", key="clustering_linear", help=HELP["scale"], on_change=_on_scale)
if neuron is None:
    t1.caption("No neuron selected: pick one on the Neuron ranking page to see where it sits (red) and to "
               "climb from it.")
else:
    level, where = sel.climb_level(Z), ""
    if climbed is not None:
        size = len(sel.clusters[climbed])
        where = (f" · climbed {level} level{'s' * (level != 1)} up: a cluster of {size} neurons"
                 if level is not None else f" · climbing from a set of {size} neurons that is not one "
                 "cluster of this tree")
    t1.caption(f"Neuron {neuron}: red star and red path to the root. Selected clusters: yellow{where}.")
if dead:
    d1, d2 = st.columns([1.9, 3.1])
    d1.button(f"Select the {len(dead)} neuron{'s' * (len(dead) != 1)} that see nothing",
              key="clustering_dead",
              on_click=_toggle_set, args=(dead,), icon=":material/block:", help=HELP["dead"])
    node = clustering.cluster_node(Z, dead)
    if node is None:
        d2.caption("They are not one cluster of this tree: this distance does not see them as identical "
                   "(with the L2 distance between RFs they always are one cluster, at height 0).")
    else:
        height = float(Z[node - n, 2]) if node >= n else 0.0
        d2.caption(f"They form one cluster, at height {number(height)}.")
if ignored:
    st.caption(f"Ignored: {len(ignored)} selected set(s) naming ids that are no neurons of this experiment "
               f"(neurons are 0..{n - 1}; {', '.join(str(c[-1]) for c in ignored[:10])}). An older link may "
               "name dendrogram node numbers; pick those clusters again.")
if loose:
    many = len(loose) != 1
    st.warning(f"{len(loose)} selected set{'s are' if many else ' is'} no longer one cluster of this tree "
               "(picked with another linkage, distance or RF threshold). "
               f"{'They keep' if many else 'It keeps'} exactly {'their' if many else 'its'} neurons (yellow "
               "triangles under the leaves), and the union and intersection below use them.")

# -- union / intersection of the selected clusters ---------------------------------------------------
if not valid:
    st.info("Click dendrogram nodes to select clusters: their neurons' RFs are combined below.")
    st.stop()

members = clustering.selected_members(valid, n)
op = rf.union if sel.set_op == "union" else rf.intersection
row = store.pairs.iloc[sel.pair]
st.subheader(f"{sel.set_op.capitalize()} of {len(members)} neuron{'s' * (len(members) != 1)}' RFs")
cols = st.columns([1, 1, 2])
for col, side, image, label, prob in (
        (cols[0], "benign", benign_img, benign_class, float(row["benign_prob"])),
        (cols[1], "adversarial", adv_img, adv_class, float(row["adv_prob"]))):
    masks = analysis.rf_masks_for(sel.pair, side, members, **rf_kw)
    mask = op(masks).numpy()
    col.image(bordered(rf_overlay(image, mask), colors[label], uri=True), width="stretch")  # class colour
    col.markdown(f"**{side.capitalize()}**: {plain(classes[label])} ({number(prob, '.0%')}) · covers "
                 f"{number(float(mask.mean()), '.0%')} of the image")
with cols[2]:
    parts = []
    for c, v in zip(valid, nodes, strict=True):
        if v is None:
            parts.append(f"{len(c)} neurons, not one cluster here")
        elif v < n:
            parts.append(f"neuron {v}")
        else:
            parts.append(f"node {v} ({len(c)} neurons, height {number(float(Z[v - n, 2]), '.3g')})")
    st.markdown(f"**Selected:** {'; '.join(parts)}")
    st.metric("Member neurons", len(members))
    st.code(", ".join(map(str, members)), language=None, wrap_lines=True)
    threshold = sel.rf_mode if sel.rf_value is None else f"{sel.rf_mode} {number(sel.rf_value, 'g')}"
    st.caption(f"RF threshold: {threshold} (set it on the Receptive fields page).")
