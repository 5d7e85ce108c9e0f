"""The Neuron Cluster View (paper §5.2.2, Fig. 2-e, §6.1.4) as data: ``cluster_view`` gives the
dendrogram of every neuron of the selected pair (linkage ``Z`` from ``Analysis.linkage``), what is
selected on it (clusters as neuron sets, ``core.ui.state``), the climb from the selected neuron, the
neurons that see nothing, and the union or intersection of the selected neurons' RFs on both images.
Texts are final (class names through ``text.plain``); the page only places them."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core import clustering
from core.ui import dendrogram
from core.ui import neuron_charts as nc
from core.ui.images import bordered, rf_overlay
from core.ui.palette import class_colors
from core.ui.text import number, plain
from core.ui.views.selected_clusters import SelectedRFs, selected_rfs

MAX_CLUSTERS = 30  # the most colours the cut slider offers
WHAT = {"l2": "L2 distance between RFs", "iou": "1 − IoU of RF masks",
        "activation": "L2 distance between activation maps"}

# Plain-words help for the controls (the "?" next to each), for a reader who does not code.
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
DISTANCE_LABELS = {"l2": "L2 between RFs (paper)", "iou": "1 − IoU of RF masks",
                   "activation": "L2 between activation maps"}


@dataclass(frozen=True)
class ClusterView:
    caption: str               # above the dendrogram: the pair, the linkage, how to use it
    figure: object             # the dendrogram (core.ui.dendrogram.figure)
    k_max: int                 # the cut slider's maximum
    neuron: int | None         # the selected neuron, when it is one of this experiment
    climbed: int | None        # index of the climbed cluster in sel.clusters (Selection.climbed)
    neuron_caption: str        # where the neuron is, how far it climbed
    dead: tuple[int, ...]      # the neurons that see nothing (clustering.blind_neurons)
    dead_caption: str          # whether they are one cluster of this tree
    ignored: str | None        # about selected sets naming no neuron of this experiment
    loose: str | None          # about selected sets that are no longer one cluster of this tree
    selected: SelectedRFs      # the union/intersection of the valid sets
    title: str                 # "Union of 12 neurons' RFs"
    pictures: list[tuple[str, str]]  # per side: (combined RF in the class colour's frame, Markdown)
    selected_text: str         # Markdown: the selected sets
    threshold: str             # the RF threshold in use


def cut_max(n_neurons: int) -> int:
    """The most clusters the dendrogram's colouring cut offers."""
    return max(1, min(MAX_CLUSTERS, n_neurons))


def _selected_text(valid, nodes, Z, n: int) -> str:
    parts = []
    for c, v in zip(valid, nodes, strict=True):
        if v is None:
            parts.append(f"{len(c)} neurons, not one cluster here")
        elif v < n:
            parts.append(f"neuron {v}")
        else:
            parts.append(f"node {v} ({len(c)} neurons, height {number(float(Z[v - n, 2]), '.3g')})")
    return f"**Selected:** {'; '.join(parts)}"


def _neuron_caption(sel, Z, neuron, climbed) -> str:
    if neuron is None:
        return ("No neuron selected: pick one on the Neuron ranking page to see where it sits (red) and to "
                "climb from it.")
    level, where = sel.climb_level(Z), ""
    if climbed is not None:
        size = len(sel.clusters[climbed])
        where = (f" · climbed {level} level{'s' * (level != 1)} up: a cluster of {size} neurons"
                 if level is not None else f" · climbing from a set of {size} neurons that is not one "
                 "cluster of this tree")
    return f"Neuron {neuron}: red star and red path to the root. Selected clusters: yellow{where}."


def _dead_caption(Z, dead, n: int) -> str:
    node = clustering.cluster_node(Z, dead) if dead else None
    if node is None:
        return ("They are not one cluster of this tree: this distance does not see them as identical "
                "(with the L2 distance between RFs they always are one cluster, at height 0).")
    height = float(Z[node - n, 2]) if node >= n else 0.0
    return f"They form one cluster, at height {number(height)}."


def cluster_view(analysis, sel, Z: np.ndarray, *, linear: bool = False) -> ClusterView:
    """Everything the Clustering page draws for ``sel`` (its pair checked by the page) and the linkage
    ``Z`` of its distance and method; ``linear``: heights drawn to scale (else the log-like axis)."""
    store, pair, n = analysis.store, sel.pair, analysis.num_neurons
    classes = store.classes
    colors = class_colors(len(classes))
    bc, ac = analysis.classes_of(pair)
    k_max = cut_max(n)
    rf_kw = nc.rf_kw(sel, analysis)
    selected = selected_rfs(analysis, pair, sel.clusters, sel.set_op, rf_kw)
    nodes = [clustering.cluster_node(Z, c) for c in selected.valid]
    loose = [c for c, v in zip(selected.valid, nodes, strict=True) if v is None]
    neuron = sel.neuron if sel.neuron is not None and 0 <= sel.neuron < n else None
    images = store.pair_images(pair)
    dead = tuple(int(j) for j in clustering.blind_neurons(
        images, [analysis.rf_masks(pair, s, **rf_kw) for s in ("benign", "adversarial")]))
    caption = (f"Pair #{pair}: {plain(classes[bc])} → {plain(classes[ac])} · {n} neurons · "
               f"{sel.method} linkage of the {WHAT[sel.distance]} (benign and adversarial image together) · "
               "click a node to select its subtree, a leaf for one neuron; click again to deselect; drag to "
               "zoom, double-click to reset. Heights on a log-like axis (see the toggle below); nodes that "
               "merge at the same height (e.g. 0: identical RFs) are drawn a little apart; the hover gives "
               "each true height.")
    figure = dendrogram.figure(Z, n_clusters=min(max(1, sel.n_clusters), k_max),
                               selected=[v for v in nodes if v is not None], neuron=neuron,
                               marked=sorted({j for c in loose for j in c}),
                               scale="linear" if linear else "log")
    climbed = sel.climbed() if neuron is not None else None
    ignored = None
    if selected.ignored:
        ids = ", ".join(str(c[-1]) for c in selected.ignored[:10])
        ignored = (f"Ignored: {len(selected.ignored)} selected set(s) naming ids that are no neurons of this "
                   f"experiment (neurons are 0..{n - 1}; {ids}). An older link may name dendrogram node "
                   "numbers; pick those clusters again.")
    loose_text, many = None, len(loose) != 1
    if loose:
        loose_text = (f"{len(loose)} selected set{'s are' if many else ' is'} no longer one cluster of this "
                      "tree (picked with another linkage, distance or RF threshold). "
                      f"{'They keep' if many else 'It keeps'} exactly {'their' if many else 'its'} neurons "
                      "(yellow triangles under the leaves), and the union and intersection below use them.")
    members = selected.members
    row = store.pairs.iloc[pair]
    pictures = []
    for side, image, label, prob in (("benign", images[0], bc, float(row["benign_prob"])),
                                     ("adversarial", images[1], ac, float(row["adv_prob"]))):
        if not len(members):
            break
        mask = selected.masks[side]
        pictures.append((bordered(rf_overlay(image, mask), colors[label], uri=True),  # the class colour
                         f"**{side.capitalize()}**: {plain(classes[label])} ({number(prob, '.0%')}) · covers "
                         f"{number(float(mask.mean()), '.0%')} of the image"))
    threshold = sel.rf_mode if sel.rf_value is None else f"{sel.rf_mode} {number(sel.rf_value, 'g')}"
    return ClusterView(
        caption=caption, figure=figure, k_max=k_max, neuron=neuron, climbed=climbed,
        neuron_caption=_neuron_caption(sel, Z, neuron, climbed), dead=dead,
        dead_caption=_dead_caption(Z, dead, n),
        ignored=ignored, loose=loose_text, selected=selected,
        title=f"{sel.set_op.capitalize()} of {len(members)} neuron{'s' * (len(members) != 1)}' RFs",
        pictures=pictures, selected_text=_selected_text(selected.valid, nodes, Z, n),
        threshold=f"RF threshold: {threshold} (set it on the Receptive fields page).")
