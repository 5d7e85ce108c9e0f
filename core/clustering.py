"""Hierarchical clustering of the neurons of one benign/adversarial pair (paper §5.2.2, §6.1.4).

The Neuron Cluster View clusters the n last-conv neurons on the selected image pair and draws the
hierarchy as a dendrogram. Dissimilarities (``DISTANCES``), for neurons i and j:

- ``"l2"`` (default, the paper's choice; §6.1.4: "the dendrogram is generated based on the L2 distance
  between each neuron's benign and adversarial RFs")::

      f_i = concat(vec(RF_i(benign)), vec(RF_i(adversarial)))      RF = step-4 masked image (n,C,S,S)
      d(i, j) = ‖f_i − f_j‖₂

- ``"iou"`` (§5.2.2's first alternative): with m_i = concat(vec(M_i(benign)), vec(M_i(adversarial))) the
  two binary RF masks side by side, d(i, j) = 1 − |m_i ∧ m_j| / |m_i ∨ m_j|, and d = 0 when both are
  empty (two empty RFs are the same RF; ``receptive_fields.iou(..., empty=1.0)``).
- ``"activation"`` (§5.2.2's second alternative, "the L2 distance between the corresponding activation
  maps"): the same L2 as "l2" on f_i = concat(vec(A_i(benign)), vec(A_i(adversarial))), the raw
  (not upsampled, not thresholded) last-conv maps of the two images.

Computation: the L2 distances use the Gram form d² = ‖f_i‖² + ‖f_j‖² − 2 f_i·f_j in float64 (one BLAS
matrix product: ~27 ms in all for n=512, D=6144 on 2 CPU cores, where pdist takes ~0.4 s; for the RF
distance the app forms the Gram matrix from the masks and the images' per-pixel squared norms,
``rf_euclidean_matrix``, so a 224-px pair never holds its n·C·H·W RFs), negatives
from rounding clamped to 0, the diagonal set to 0 and the matrix symmetrized. Rounding can leave a
tiny positive d² for two identical non-zero rows; every pair whose d² is within the rounding bound
(4·D·ε·(‖f_i‖²+‖f_j‖²)) is checked for exact equality and set to exactly 0 if equal, so identical RFs
(e.g. all dead neurons, whose RFs are all 0, or neurons whose RF is the whole image) are exactly 0
apart, like ``scipy.spatial.distance.pdist``. The IoU distance uses the matrix form: intersections
M·Mᵀ of the 0/1 masks (exact integer counts in float32), unions |m_i| + |m_j| − inter.

Linkage (``LINKAGE_METHODS``, scipy's ``linkage`` on the condensed matrix). The paper does not name its
linkage; the default was chosen by measurement (``core.linkage_report``, table in docs/method.md): the
§6.1.4 walk climbs from a neuron through nested clusters (3 neurons, then 36 two levels up), and on the
demo, a CIFAR ResNet18 and a ResNet56 store ``"ward"`` gives the most readable ancestor sizes (median
2 → 4–6 → 8–11 neurons for the 1st → 3rd ancestor, a 3rd ancestor over half the neurons for 3–14% of
the neurons), where ``"average"`` chains (the 3rd ancestor holds over half the neurons for 27–40%; on
one demo pair neuron 55's tree jumps from 2 neurons to 222). Ward merges the two clusters whose union
least increases the within-cluster sum of squared distances; its merge heights never decrease, and
identical RFs (e.g. the dead neurons of §6.1.4's "top-down exploration", all-zero RFs) still merge
at height 0. ``ward``, ``centroid`` and ``median`` assume Euclidean distances (their update formulas
come from cluster centroids), so ``linkage(..., kind="iou")`` refuses them, and the IoU distance
defaults to ``"complete"``, the next best by the same measurement (``default_method``); centroid and
median can also produce inversions.

Dendrogram ids follow scipy: leaves 0..n−1 are the neurons, row i of Z (children Z[i,0], Z[i,1],
height Z[i,2], size Z[i,3]) is internal node n+i; the root is 2n−2. ``dendrogram_geometry`` lays it out
like ``scipy.cluster.hierarchy.dendrogram`` (leaf order = ``leaves_list``, Z[i,0] on the left) with
leaves at x = 0..n−1 and each internal node at the mean x of its two children, drawn as a ⊓.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform

DISTANCES = ("l2", "iou", "activation")
DEFAULT_DISTANCE = "l2"
LINKAGE_METHODS = ("average", "complete", "single", "ward", "weighted", "centroid", "median")
DEFAULT_METHOD = "ward"
EUCLIDEAN_ONLY = ("ward", "centroid", "median")
NON_EUCLIDEAN_DEFAULT = "complete"


def default_method(kind: str | None = None) -> str:
    """The default linkage for a distance: ``DEFAULT_METHOD`` (ward), or ``NON_EUCLIDEAN_DEFAULT``
    (complete) for 1 − IoU, which ward cannot use."""
    return NON_EUCLIDEAN_DEFAULT if kind == "iou" else DEFAULT_METHOD


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _concat_rows(benign, adversarial, dtype=np.float64) -> np.ndarray:
    b, a = _np(benign), _np(adversarial)
    if len(b) != len(a):
        raise ValueError(f"benign and adversarial have {len(b)} and {len(a)} neurons")
    b, a = b.reshape(len(b), -1), a.reshape(len(a), -1)
    # cast while copying into one buffer: ~7x faster than astype + concatenate at n=512, D=6144
    out = np.empty((len(b), b.shape[1] + a.shape[1]), dtype=dtype)
    out[:, :b.shape[1]] = b
    out[:, b.shape[1]:] = a
    return out


def neuron_features(benign_rf, adversarial_rf) -> np.ndarray:
    """Each neuron's benign and adversarial RFs ((n,C,S,S) each) flattened and concatenated -> (n,D)."""
    return _concat_rows(benign_rf, adversarial_rf)


def _from_gram(gram: np.ndarray, sq: np.ndarray, terms: int, row_keys) -> np.ndarray:
    """d = sqrt(max(‖f_i‖² + ‖f_j‖² − 2 f_i·f_j, 0)) from the Gram matrix and the squared norms -> (n,n).

    Identical rows may keep a rounding residue: the pairs within the rounding bound of a sum of
    ``terms`` products (usually very few rows) are grouped by ``row_keys(rows)`` (one exact byte
    string per row, equal iff the rows' features are equal) and equal ones set to 0."""
    scale = sq[:, None] + sq[None, :]
    d2 = scale - 2.0 * gram
    tol = 4.0 * terms * np.finfo(np.float64).eps * scale
    i, j = np.nonzero(np.triu((d2 <= tol) & (d2 != 0), 1))
    if len(i):
        rows, pos = np.unique(np.concatenate([i, j]), return_inverse=True)
        group = np.unique(row_keys(rows), return_inverse=True)[1].ravel()[pos]
        same = group[:len(i)] == group[len(i):]
        d2[i[same], j[same]] = d2[j[same], i[same]] = 0.0
    d = np.sqrt(np.maximum(d2, 0.0))
    d = 0.5 * (d + d.T)
    np.fill_diagonal(d, 0.0)
    return d


def _void_rows(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a.view(np.dtype((np.void, a.dtype.itemsize * a.shape[1]))).ravel()


def euclidean_matrix(features: np.ndarray) -> np.ndarray:
    """Pairwise L2 distances between the rows of ``features`` (n,D) by the Gram form -> (n,n) float64."""
    x = np.ascontiguousarray(features, dtype=np.float64)
    # +0.0 turns -0.0 into 0.0, so equal values have equal bytes
    return _from_gram(x @ x.T, np.einsum("ij,ij->i", x, x), x.shape[1],
                      lambda rows: _void_rows(x[rows] + 0.0))


def rf_euclidean_matrix(benign_image, adversarial_image, benign_masks, adversarial_masks, *,
                        block: int = 2048) -> np.ndarray:
    """The "l2" distance between RFs from the images and the masks, without forming the RFs -> (n,n).

    With RF_i(x) = x ⊙ M_i (the step-4 masked image, the same mask on every channel) and
    f_i = concat(vec(RF_i(benign)), vec(RF_i(adversarial))), exactly as ``neuron_features``::

        f_i·f_j = Σ_s Σ_p w_s(p) M_{s,i}(p) M_{s,j}(p),   w_s(p) = Σ_c x_s(c, p)²,   ‖f_i‖² = f_i·f_i

    so the Gram matrix is Σ_s (M_s ⊙ w_s) M_sᵀ over the H·W pixels (C times fewer terms than the RFs,
    which at 224 px and 1,280 neurons would be 770 MB per image), summed in float64 over blocks of
    ``block`` pixels (memory: two n·block float64 blocks at a time). Two neurons are exactly 0 apart
    when their masks agree wherever the image is not black (w > 0) on both images, as their RFs are
    then equal.
    """
    imgs = [np.asarray(_np(x), dtype=np.float64) for x in (benign_image, adversarial_image)]
    masks = [_np(m).astype(bool, copy=False) for m in (benign_masks, adversarial_masks)]
    n = len(masks[0])
    if len(masks[1]) != n:
        raise ValueError(f"benign and adversarial have {n} and {len(masks[1])} neurons")
    gram, sq = np.zeros((n, n)), np.zeros(n)
    lit = []  # per image: the masks where the RF can be non-zero (w > 0), bit-packed
    for x, m in zip(imgs, masks, strict=True):
        if x.ndim != 3 or m.shape[1:] != x.shape[1:]:
            raise ValueError(f"image {x.shape} and masks {m.shape} disagree: give (C,H,W) and (n,H,W)")
        w = np.einsum("chw,chw->hw", x, x).ravel()
        m = m.reshape(n, -1)
        packed = []
        for lo in range(0, m.shape[1], block):
            mb = m[:, lo:lo + block]
            packed.append(np.packbits(mb & (w[lo:lo + block] > 0), axis=1))
            mb = mb.astype(np.float64)
            wm = mb * w[lo:lo + block]
            gram += wm @ mb.T
            sq += wm.sum(1)
        lit.append(np.concatenate(packed, axis=1))
    terms = sum(x.size for x in imgs)
    return _from_gram(gram, sq, terms, lambda rows: _void_rows(np.concatenate([lt[rows] for lt in lit], 1)))


def iou_distance_matrix(benign_masks, adversarial_masks) -> np.ndarray:
    """1 − IoU of the concatenated (benign, adversarial) masks, 0 between two empty ones -> (n,n)."""
    m = _concat_rows(benign_masks, adversarial_masks, np.float32)  # 0/1: exact counts below 2^24
    inter = (m @ m.T).astype(np.float64)
    size = m.sum(1, dtype=np.float64)
    uni = size[:, None] + size[None, :] - inter
    d = 1.0 - np.divide(inter, uni, out=np.ones_like(inter), where=uni > 0)
    d = np.maximum(0.5 * (d + d.T), 0.0)
    np.fill_diagonal(d, 0.0)
    return d


def distance_matrix(kind: str = DEFAULT_DISTANCE, *, benign_rf=None, adversarial_rf=None,
                    benign_masks=None, adversarial_masks=None, benign_fmaps=None,
                    adversarial_fmaps=None, benign_image=None, adversarial_image=None) -> np.ndarray:
    """(n,n) float64 symmetric dissimilarities, zero diagonal, of one image pair's n neurons.

    "l2": needs ``benign_rf``/``adversarial_rf`` (n,C,S,S), or the images ``benign_image``/
    ``adversarial_image`` (C,S,S) with the masks (``rf_euclidean_matrix``: the same distances without
    the RFs in memory); "iou": ``benign_masks``/``adversarial_masks`` (n,S,S) bool; "activation":
    ``benign_fmaps``/``adversarial_fmaps`` (n,h,w) raw maps.
    """
    if kind == "l2" and benign_rf is None and adversarial_rf is None and benign_image is not None:
        if adversarial_image is None or benign_masks is None or adversarial_masks is None:
            raise ValueError("the 'l2' distance from images needs benign_image, adversarial_image, "
                             "benign_masks and adversarial_masks")
        return rf_euclidean_matrix(benign_image, adversarial_image, benign_masks, adversarial_masks)
    needs = {"l2": ("benign_rf", "adversarial_rf"), "iou": ("benign_masks", "adversarial_masks"),
             "activation": ("benign_fmaps", "adversarial_fmaps")}
    if kind not in needs:
        raise ValueError(f"unknown distance {kind!r}; valid distances: {', '.join(DISTANCES)}")
    given = {"benign_rf": benign_rf, "adversarial_rf": adversarial_rf, "benign_masks": benign_masks,
             "adversarial_masks": adversarial_masks, "benign_fmaps": benign_fmaps,
             "adversarial_fmaps": adversarial_fmaps}
    b, a = (given[k] for k in needs[kind])
    if b is None or a is None:
        raise ValueError(f"the {kind!r} distance needs {' and '.join(needs[kind])}")
    if kind == "iou":
        return iou_distance_matrix(b, a)
    return euclidean_matrix(_concat_rows(b, a))


def linkage(dist, method: str | None = None, *, kind: str | None = None) -> np.ndarray:
    """scipy linkage matrix Z ((n−1)×4) of a square distance matrix. ``kind`` (the distance that made
    ``dist``, optional): "iou" refuses the Euclidean-only methods (ward, centroid, median).
    ``method`` None: ``default_method(kind)``."""
    method = default_method(kind) if method is None else method
    if method not in LINKAGE_METHODS:
        raise ValueError(f"unknown linkage method {method!r}; valid methods: {', '.join(LINKAGE_METHODS)}")
    if kind == "iou" and method in EUCLIDEAN_ONLY:
        raise ValueError(f"{method!r} linkage assumes Euclidean distances and 1 − IoU is not one; use "
                         f"one of {', '.join(m for m in LINKAGE_METHODS if m not in EUCLIDEAN_ONLY)}")
    d = np.asarray(dist, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1] or d.shape[0] < 2:
        raise ValueError(f"dist must be a square (n,n) matrix with n >= 2, got shape {d.shape}")
    return hierarchy.linkage(squareform(d, checks=False), method=method)


def _tree(Z) -> tuple[np.ndarray, int]:
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2 or Z.shape[1] != 4:
        raise ValueError(f"Z must be a scipy linkage matrix ((n-1)×4), got shape {Z.shape}")
    return Z[:, :2].astype(np.int64), len(Z) + 1


def dendrogram_geometry(Z, heights=None) -> dict:
    """Everything needed to draw and click the dendrogram without scipy's plotting (see module doc).

    leaf_order (list, neurons left to right), leaf_x (n,) x of each neuron, node_x / node_height /
    node_size ((2n−1,) per node id), children ((n−1)×2), segments (list of (x0, y0, x1, y1): three per
    internal node, the ⊓) and segment_node (the internal node id of each segment). ``heights`` ((2n−1,),
    optional): the y at which to draw each node (node_y; default: node_height, leaves at 0), e.g. the
    dendrogram view's heights that pull ties apart (``core.ui.dendrogram.drawn_heights``).
    """
    children, n = _tree(Z)
    Z = np.asarray(Z, dtype=np.float64)
    order = hierarchy.leaves_list(Z) if n > 1 else np.zeros(1, dtype=np.int64)
    leaf_x = np.empty(n)
    leaf_x[order] = np.arange(n, dtype=np.float64)
    node_x = np.concatenate([leaf_x, np.zeros(n - 1)])
    node_height = np.concatenate([np.zeros(n), Z[:, 2]])
    node_y = node_height if heights is None else np.asarray(heights, dtype=np.float64)
    if node_y.shape != node_height.shape:
        raise ValueError(f"heights must have one value per node ({len(node_height)}), got {node_y.shape}")
    node_size = np.concatenate([np.ones(n, dtype=np.int64), Z[:, 3].astype(np.int64)])
    segments, segment_node = [], []
    for i, (a, b) in enumerate(children):  # rows are in merge order: children come first
        node, h = n + i, node_y[n + i]
        xa, xb = node_x[a], node_x[b]
        node_x[node] = 0.5 * (xa + xb)
        segments += [(xa, node_y[a], xa, h), (xa, h, xb, h), (xb, node_y[b], xb, h)]
        segment_node += [node] * 3
    return {"leaf_order": [int(v) for v in order], "leaf_x": leaf_x, "node_x": node_x,
            "node_height": node_height, "node_y": node_y, "node_size": node_size, "children": children,
            "segments": [tuple(float(v) for v in s) for s in segments],
            "segment_node": np.asarray(segment_node, dtype=np.int64)}


def subtree(Z, node: int) -> np.ndarray:
    """Sorted neuron ids (leaves) under node id ``node`` (a leaf gives [node]); iterative."""
    children, n = _tree(Z)
    if not 0 <= node < 2 * n - 1:
        raise ValueError(f"node {node} out of range: ids are 0..{2 * n - 2} (leaves 0..{n - 1})")
    leaves, stack = [], [int(node)]
    while stack:
        v = stack.pop()
        if v < n:
            leaves.append(v)
        else:
            stack.extend(children[v - n])
    return np.sort(np.asarray(leaves, dtype=np.int64))


def nodes_containing(Z, neuron: int) -> list[int]:
    """Internal node ids on the path from ``neuron``'s parent up to the root (its dendrogram location)."""
    children, n = _tree(Z)
    if not 0 <= neuron < n:
        raise ValueError(f"neuron {neuron} out of range 0..{n - 1}")
    parent = np.full(2 * n - 1, -1, dtype=np.int64)
    parent[children.ravel()] = np.repeat(np.arange(n, 2 * n - 1), 2)
    path, v = [], parent[neuron]
    while v >= 0:
        path.append(int(v))
        v = parent[v]
    return path


def cut(Z, n_clusters: int) -> np.ndarray:
    """Cluster label (1..k, k <= n_clusters) per neuron: scipy ``fcluster`` with criterion maxclust."""
    return hierarchy.fcluster(np.asarray(Z, dtype=np.float64), n_clusters, criterion="maxclust")


def common_ancestor(Z, neurons) -> int:
    """The lowest node whose subtree holds every one of ``neurons`` (one neuron: the leaf itself), so
    ``subtree(Z, common_ancestor(Z, s))`` is the smallest cluster of the dendrogram containing s."""
    ids = [int(j) for j in neurons]
    if not ids:
        raise ValueError("common_ancestor needs at least one neuron")
    if len(set(ids)) == 1:
        return ids[0]
    paths = [nodes_containing(Z, j) for j in ids]
    shared = set(paths[0]).intersection(*paths[1:])
    return next(v for v in paths[0] if v in shared)  # paths run bottom-up: the first shared is lowest


def members(Z, nodes) -> np.ndarray:
    """Sorted neuron ids under any of ``nodes`` (the union of their subtrees); empty for no node."""
    parts = [subtree(Z, v) for v in nodes]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


# -- walking the tree from one neuron (§6.1.4 bottom-up) and neuron sets as selections ----------------
def parents(Z) -> np.ndarray:
    """(2n−1,) parent node id of every node id (−1 for the root)."""
    children, n = _tree(Z)
    parent = np.full(2 * n - 1, -1, dtype=np.int64)
    parent[children.ravel()] = np.repeat(np.arange(n, 2 * n - 1), 2)
    return parent


def cluster_node(Z, neurons) -> int | None:
    """The node id whose subtree is exactly the set ``neurons`` (a single neuron: its leaf), or None
    when the set is not one cluster of this tree (e.g. it was picked on another linkage)."""
    ids = sorted({int(j) for j in neurons})
    _, n = _tree(Z)
    if not ids or ids[0] < 0 or ids[-1] >= n:
        return None
    node = common_ancestor(Z, ids)
    return node if len(subtree(Z, node)) == len(ids) else None


def child_towards(Z, node: int, neuron: int) -> int:
    """The child of internal node ``node`` whose subtree holds ``neuron`` (one step down the neuron's
    path); ValueError if ``node`` is a leaf or does not hold ``neuron``."""
    children, n = _tree(Z)
    if not n <= node < 2 * n - 1 or node not in nodes_containing(Z, neuron):
        raise ValueError(f"node {node} is not an ancestor of neuron {neuron}")
    a, b = (int(c) for c in children[node - n])
    return a if neuron in subtree(Z, a) else b


def selected_members(sets, n: int) -> np.ndarray:
    """Sorted neuron ids in any of the selected neuron ``sets`` (``core.ui.state.Selection.clusters``)
    whose ids all lie in 0..n−1; a set naming another id (an old link's node number) is left out."""
    keep = [np.asarray(c, dtype=np.int64) for c in sets if len(c) and 0 <= min(c) and max(c) < n]
    return np.unique(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def blind_neurons(images, masks) -> np.ndarray:
    """Sorted ids of the neurons whose RF (image ⊙ mask, step 4) is all zero on every one of ``images``
    ((C,H,W) each; ``masks`` (n,H,W) each, the same order): an empty mask, or one on black pixels only.
    They "capture nothing" (§6.1.4's dead neurons), their "l2" features are all 0, so they are exactly
    0 apart and form one cluster at height 0 under any of the linkages."""
    seen = None
    for x, m in zip(images, masks, strict=True):
        lit = np.asarray(_np(x)).reshape(-1, *np.shape(_np(x))[-2:]).any(axis=0)  # (H,W): not black
        hit = (_np(m).astype(bool, copy=False) & lit).reshape(len(_np(m)), -1).any(axis=1)
        seen = hit if seen is None else seen | hit
    return np.flatnonzero(~seen)


def ancestor_sizes(Z, neurons, levels: int = 3) -> np.ndarray:
    """(len(neurons), levels) int: the number of neurons under each neuron's 1st, 2nd, … ancestor
    (parent, grandparent, …), i.e. the clusters met by climbing one level at a time; past the root the
    root's size n is repeated. Used to compare linkages (``core.linkage_report``)."""
    _, n = _tree(Z)
    parent = parents(Z)
    size = np.concatenate([np.ones(n, dtype=np.int64), np.asarray(Z)[:, 3].astype(np.int64)])
    out = np.empty((len(neurons), levels), dtype=np.int64)
    for row, j in enumerate(neurons):
        v = int(j)
        for k in range(levels):
            v = parent[v] if parent[v] >= 0 else v
            out[row, k] = size[v]
    return out


def singleton_merge_share(Z) -> float:
    """The share of the n−1 merges in which at least one side is a single neuron (a leaf): 1 for a
    chain, where neurons join one big cluster one at a time; at least ~½ for any tree (each merge
    absorbs at most two leaves), ~½ for a balanced one."""
    children, n = _tree(Z)
    return float(np.mean((children < n).any(axis=1))) if len(children) else 0.0
