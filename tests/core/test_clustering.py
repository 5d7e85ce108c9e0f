"""Neuron clustering (paper §5.2.2, §6.1.4) against pairwise loops and scipy on real RFs."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.cluster import hierarchy
from scipy.spatial.distance import pdist, squareform

from core import clustering as cl
from core import receptive_fields as rf
from core.attacks import pgd
from core.features import extract
from tests.helpers import lossless20 as load_lossless20
from tests.helpers import shared_model


@pytest.fixture(scope="module")
def pair(models_dir, lossless20):
    """A real benign/adversarial pair on ResNet18: RFs, masks and maps of all 512 neurons, plus a
    40-neuron subset (30 with an RF, 10 with none on either image) for the loop references."""
    model = shared_model("cifar10-resnet18", models_dir)
    x, y = load_lossless20(lossless20)
    fmaps = extract(model, x).fmaps
    q = rf.neuron_quantiles(fmaps, rf.DEFAULT_QUANTILE)  # dataset thresholds from the 20 images
    adv = pgd(model, x[:1], y[:1])
    adv_feats = extract(model, adv)
    assert adv_feats.logits.argmax(1) != y[:1]  # the attack succeeded
    adv_fmaps = adv_feats.fmaps
    b_rf, b_m = rf.receptive_fields(x[0], fmaps[0], neuron_thresholds=q)
    a_rf, a_m = rf.receptive_fields(adv[0], adv_fmaps[0], neuron_thresholds=q)
    empty = ~(b_m.flatten(1).any(1) | a_m.flatten(1).any(1))
    sub = np.concatenate([np.flatnonzero(~empty.numpy())[:30], np.flatnonzero(empty.numpy())[:10]])
    return SimpleNamespace(b_rf=b_rf, a_rf=a_rf, b_m=b_m, a_m=a_m, b_f=fmaps[0], a_f=adv_fmaps[0],
                           empty=empty.numpy(), sub=sub)


def kw(p, idx=slice(None)):
    return dict(benign_rf=p.b_rf[idx], adversarial_rf=p.a_rf[idx], benign_masks=p.b_m[idx],
                adversarial_masks=p.a_m[idx], benign_fmaps=p.b_f[idx], adversarial_fmaps=p.a_f[idx])


def loop_l2(b, a) -> np.ndarray:
    n = len(b)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            fi = np.concatenate([b[i].numpy().ravel(), a[i].numpy().ravel()]).astype(np.float64)
            fj = np.concatenate([b[j].numpy().ravel(), a[j].numpy().ravel()]).astype(np.float64)
            d[i, j] = np.linalg.norm(fi - fj)
    return d


def loop_iou(b, a) -> np.ndarray:
    n = len(b)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            mi = np.concatenate([b[i].numpy().ravel(), a[i].numpy().ravel()])
            mj = np.concatenate([b[j].numpy().ravel(), a[j].numpy().ravel()])
            inter, uni = np.sum(mi & mj), np.sum(mi | mj)
            d[i, j] = 1 - inter / uni if uni else 0.0  # two empty RFs are the same RF
    return d


def test_neuron_features(pair):
    f = cl.neuron_features(pair.b_rf, pair.a_rf)
    assert f.shape == (512, 2 * 3 * 32 * 32) and f.dtype == np.float64
    np.testing.assert_array_equal(f[7, :3072], pair.b_rf[7].numpy().ravel())
    np.testing.assert_array_equal(f[7, 3072:], pair.a_rf[7].numpy().ravel())


@pytest.mark.parametrize("kind", cl.DISTANCES)
def test_distance_matrix_matches_pairwise_loop(pair, kind):
    s = pair.sub
    d = cl.distance_matrix(kind, **kw(pair, s))
    if kind == "l2":
        ref = loop_l2(pair.b_rf[s], pair.a_rf[s])
    elif kind == "activation":
        ref = loop_l2(pair.b_f[s], pair.a_f[s])
    else:
        ref = loop_iou(pair.b_m[s], pair.a_m[s])
    assert d.shape == (40, 40) and d.dtype == np.float64
    assert (d == d.T).all() and (np.diag(d) == 0).all()
    np.testing.assert_allclose(d, ref, rtol=0, atol=1e-6 * max(ref.max(), 1.0))
    assert ref[30:].max() > 0 if kind == "activation" else True
    if kind != "activation":  # neurons 30..39 have no RF on either image: exactly 0 apart
        assert (d[30:, 30:] == 0).all() and (d[:30, 30:] > 0).all()


def test_iou_distance_is_one_minus_receptive_fields_iou(pair):
    s = pair.sub
    m = torch.cat([pair.b_m[s], pair.a_m[s]], dim=2)  # the two masks side by side: (40, 32, 64)
    ref = 1 - rf.iou(m[:, None], m[None, :], empty=1.0).double().numpy()
    np.testing.assert_allclose(cl.distance_matrix("iou", **kw(pair, s)), ref, atol=1e-6)


def test_l2_all_neurons_equals_pdist_and_identical_rows_are_zero(pair):
    d = cl.distance_matrix("l2", **kw(pair))
    feats = cl.neuron_features(pair.b_rf, pair.a_rf)
    np.testing.assert_allclose(d, squareform(pdist(feats)), rtol=0, atol=1e-9 * d.max())
    # identical non-zero rows (three neurons given neuron 0's RFs) come out exactly 0 apart too
    b, a = pair.b_rf.clone(), pair.a_rf.clone()
    b[[5, 9, 11]], a[[5, 9, 11]] = b[0].clone(), a[0].clone()
    d = cl.distance_matrix("l2", benign_rf=b, adversarial_rf=a)
    assert d[0, 5] == d[5, 9] == d[9, 11] == d[11, 0] == 0 and d[0, 1] > 0
    assert (d[np.ix_(pair.empty, pair.empty)] == 0).all()


def test_rf_l2_from_masks_and_images_equals_the_rf_features(pair, lossless20):
    # the app's path (Gram from masks and per-pixel squared norms, in pixel blocks) against pdist of
    # the materialized RFs, on the real pair; block=100 leaves a partial last block
    x, _ = load_lossless20(lossless20)
    xb = x[0]
    xa = (pair.a_rf * pair.a_m[:, None]).amax(0)  # any image works; make one with black pixels
    xa[:, :4] = 0
    b_rf, a_rf = xb[None] * pair.b_m[:, None], xa[None] * pair.a_m[:, None]
    ref = squareform(pdist(cl.neuron_features(b_rf, a_rf)))
    got = cl.rf_euclidean_matrix(xb, xa, pair.b_m, pair.a_m, block=100)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9 * ref.max())
    assert (got == got.T).all() and (np.diag(got) == 0).all()
    np.testing.assert_allclose(cl.distance_matrix("l2", benign_image=xb, adversarial_image=xa,
                                                  benign_masks=pair.b_m, adversarial_masks=pair.a_m),
                               got, rtol=1e-12, atol=1e-12)
    # exact zeros: copies of neuron 0's masks, and a copy that differs only on black pixels of xa
    bm, am = pair.b_m.clone(), pair.a_m.clone()
    bm[[5, 9]], am[[5, 9]] = bm[0].clone(), am[0].clone()
    am[9, :4] = ~am[9, :4]
    d = cl.rf_euclidean_matrix(xb, xa, bm, am)
    assert d[0, 5] == d[5, 9] == d[0, 9] == 0 and d[0, 1] > 0
    assert (d[np.ix_(pair.empty, pair.empty)] == 0).all()
    with pytest.raises(ValueError, match="neurons"):
        cl.rf_euclidean_matrix(xb, xa, pair.b_m[:3], pair.a_m)


def test_distance_matrix_errors(pair):
    with pytest.raises(ValueError, match="valid distances: l2, iou, activation"):
        cl.distance_matrix("cosine", **kw(pair))
    with pytest.raises(ValueError, match="benign_masks and adversarial_masks"):
        cl.distance_matrix("iou", benign_rf=pair.b_rf, adversarial_rf=pair.a_rf)
    with pytest.raises(ValueError, match="neurons"):
        cl.distance_matrix("l2", benign_rf=pair.b_rf[:3], adversarial_rf=pair.a_rf[:4])


@pytest.mark.parametrize("method", cl.LINKAGE_METHODS)
def test_linkage_equals_scipy_on_features(pair, method):
    s = pair.sub
    for kind, feats in [("l2", cl.neuron_features(pair.b_rf[s], pair.a_rf[s])),
                        ("activation", cl.neuron_features(pair.b_f[s], pair.a_f[s]))]:
        Z = cl.linkage(cl.distance_matrix(kind, **kw(pair, s)), method)
        ref = hierarchy.linkage(pdist(feats), method=method)
        assert Z.shape == (39, 4)
        np.testing.assert_allclose(Z, ref, rtol=1e-9, atol=1e-9 * ref[:, 2].max())


def test_linkage_refuses_euclidean_methods_with_iou(pair):
    d = cl.distance_matrix("iou", **kw(pair, pair.sub))
    for method in ("ward", "centroid", "median"):
        with pytest.raises(ValueError, match="Euclidean"):
            cl.linkage(d, method, kind="iou")
    assert cl.default_method("iou") == "complete" and cl.default_method("l2") == cl.DEFAULT_METHOD == "ward"
    Z = cl.linkage(d, kind="iou")  # complete by default for 1 − IoU (ward cannot use it)
    np.testing.assert_allclose(Z, hierarchy.linkage(squareform(d), "complete"))
    assert (np.diff(Z[:, 2]) >= 0).all()  # monotone heights
    with pytest.raises(ValueError, match="valid methods"):
        cl.linkage(d, "upgma")
    with pytest.raises(ValueError, match="square"):
        cl.linkage(d[:, :5])


@pytest.fixture(scope="module")
def tree(pair):
    Z = cl.linkage(cl.distance_matrix("l2", **kw(pair)))
    return Z, cl.dendrogram_geometry(Z)


def test_dendrogram_geometry_matches_scipy(tree):
    Z, g = tree
    n = len(Z) + 1
    ref = hierarchy.dendrogram(Z, no_plot=True)
    assert g["leaf_order"] == ref["leaves"]
    np.testing.assert_array_equal(g["leaf_x"][g["leaf_order"]], np.arange(n))
    np.testing.assert_array_equal(g["node_height"], np.concatenate([np.zeros(n), Z[:, 2]]))
    np.testing.assert_array_equal(g["node_size"][n:], Z[:, 3])
    assert (g["node_size"][:n] == 1).all()
    np.testing.assert_array_equal(g["children"], Z[:, :2].astype(int))
    root = 2 * n - 2
    a, b = g["children"][-1]
    assert g["node_x"][root] == (g["node_x"][a] + g["node_x"][b]) / 2
    # scipy draws every ⊓ as icoord [xa, xa, xb, xb] (x = 5 + 10·position), dcoord [ha, h, h, hb]
    ours = set()
    segs, owner = g["segments"], g["segment_node"]
    assert len(segs) == len(owner) == 3 * (n - 1)
    for k in range(0, len(segs), 3):
        (x0, y0, x1, y1), (hx0, hy0, hx1, hy1), (u0, v0, u1, v1) = segs[k:k + 3]
        node = owner[k]
        assert (owner[k:k + 3] == node).all()
        ca, cb = g["children"][node - n]
        h = g["node_height"][node]
        assert (x0, y0, x1, y1) == (g["node_x"][ca], g["node_height"][ca], g["node_x"][ca], h)
        assert (u0, v0, u1, v1) == (g["node_x"][cb], g["node_height"][cb], g["node_x"][cb], h)
        assert (hx0, hy0, hx1, hy1) == (x0, h, u0, h)  # the horizontal joins the verticals' tops
        ours.add(tuple(np.round([x0, x1, u0, u1, y0, h, h, v0], 6)))
    theirs = {tuple(np.round([(v - 5) / 10 for v in ic] + list(dc), 6))
              for ic, dc in zip(ref["icoord"], ref["dcoord"], strict=True)}
    assert ours == theirs


def test_subtree_and_nodes_containing(tree):
    Z, g = tree
    n = len(Z) + 1
    root = 2 * n - 2
    np.testing.assert_array_equal(cl.subtree(Z, root), np.arange(n))
    assert cl.subtree(Z, 17).tolist() == [17]
    for i in range(n - 1):
        leaves = cl.subtree(Z, n + i)
        assert len(leaves) == Z[i, 3]
        a, b = g["children"][i]
        np.testing.assert_array_equal(leaves, np.sort(np.concatenate([cl.subtree(Z, a), cl.subtree(Z, b)])))
        # a subtree's leaves are contiguous in the leaf order, so a clicked node is a block of leaves
        pos = np.sort(g["leaf_x"][leaves])
        assert pos[-1] - pos[0] == len(leaves) - 1
    for neuron in (0, 100, 511):
        path = cl.nodes_containing(Z, neuron)
        assert path[-1] == root and neuron in g["children"][path[0] - n]
        for child, parent in zip(path, path[1:], strict=False):
            assert child in g["children"][parent - n]
        assert all(neuron in cl.subtree(Z, v) for v in path)
        assert len(path) == len({v for v in range(n, 2 * n - 1) if neuron in cl.subtree(Z, v)})
    for bad in (-1, 2 * n - 1):
        with pytest.raises(ValueError, match="out of range"):
            cl.subtree(Z, bad)
    with pytest.raises(ValueError, match="out of range"):
        cl.nodes_containing(Z, n)


def test_deep_tree_has_no_recursion_limit():
    # points whose gaps grow make single linkage a chain of depth n-1 = 2047
    n = 2048
    x = np.cumsum(np.arange(n, dtype=np.float64))[:, None]
    Z = cl.linkage(squareform(pdist(x)), "single")
    np.testing.assert_array_equal(cl.subtree(Z, 2 * n - 2), np.arange(n))
    assert len(cl.nodes_containing(Z, 0)) == n - 1
    g = cl.dendrogram_geometry(Z)
    assert g["leaf_order"] == hierarchy.leaves_list(Z).tolist()


def test_cut(tree):
    Z, _ = tree
    assert len(set(cl.cut(Z, 1))) == 1 and len(set(cl.cut(Z, 512))) == 512
    labels = cl.cut(Z, 8)
    assert labels.shape == (512,) and 1 <= len(set(labels)) <= 8
    np.testing.assert_array_equal(labels, hierarchy.fcluster(Z, 8, "maxclust"))


@pytest.mark.parametrize("kind", ["l2", "iou"])
def test_neurons_without_rf_form_one_subtree_at_height_zero(pair, kind):
    """§6.1.4: the "dead" neurons — no RF on the benign nor the adversarial image — cluster together."""
    dead = np.flatnonzero(pair.empty)
    assert len(dead) >= 10
    Z = cl.linkage(cl.distance_matrix(kind, **kw(pair)), kind=kind)
    n = len(Z) + 1
    nodes = [v for v in range(n, 2 * n - 1) if np.array_equal(cl.subtree(Z, v), dead)]
    assert len(nodes) == 1
    g = cl.dendrogram_geometry(Z)
    assert g["node_height"][nodes[0]] == 0 and g["node_size"][nodes[0]] == len(dead)
    # and no other neuron joins them at height 0
    parent = [v for v in range(n, 2 * n - 1) if nodes[0] in g["children"][v - n]]
    assert g["node_height"][parent[0]] > 0


# -- walking the tree and the linkage measurement -------------------------------------------------------
def _slow_ancestor_sizes(Z, neurons, levels):
    """Line by line: the k-th node of nodes_containing, its subtree's size; the root's past the top."""
    out = []
    for j in neurons:
        path = cl.nodes_containing(Z, j)
        out.append([len(cl.subtree(Z, path[min(k, len(path) - 1)])) for k in range(levels)])
    return np.asarray(out)


@pytest.mark.parametrize("method", ["average", "complete", "ward", "single"])
def test_ancestor_sizes_and_singleton_merges_against_loops(method):
    x = np.random.default_rng(3).normal(size=(60, 5))
    x[40:] = 0.0  # 20 identical "dead" rows: merges at height 0
    Z = cl.linkage(squareform(pdist(x)), method)
    n = len(Z) + 1
    neurons = list(range(n))
    np.testing.assert_array_equal(cl.ancestor_sizes(Z, neurons, 4), _slow_ancestor_sizes(Z, neurons, 4))
    singles = sum(1 for a, b in Z[:, :2] if a < n or b < n)
    assert cl.singleton_merge_share(Z) == singles / (n - 1)
    par = cl.parents(Z)
    assert par[2 * n - 2] == -1 and all(v in cl.nodes_containing(Z, j)[:1] for j, v in enumerate(par[:n]))


def test_chain_and_balanced_tree_singleton_share():
    chain = cl.linkage(squareform(pdist(np.cumsum(np.arange(16.0))[:, None])), "single")
    assert cl.singleton_merge_share(chain) == 1.0
    assert cl.ancestor_sizes(chain, [0], 3).tolist() in ([[2, 3, 4]], [[15, 16, 16]])
    # pairs of pairs of pairs: four leaf-leaf merges, then two, then the root
    x = np.array([0, 1, 10, 11, 100, 101, 110, 111.0])[:, None]
    balanced = cl.linkage(squareform(pdist(x)), "average")
    assert cl.singleton_merge_share(balanced) == 4 / 7
    assert cl.ancestor_sizes(balanced, [0, 7], 3).tolist() == [[2, 4, 8], [2, 4, 8]]


def test_cluster_node_and_child_towards(tree):
    Z, g = tree
    n = len(Z) + 1
    for node in (n, n + 100, 2 * n - 2, 5):
        assert cl.cluster_node(Z, cl.subtree(Z, node).tolist()[::-1]) == node
    path = cl.nodes_containing(Z, 17)
    big = cl.subtree(Z, path[2]).tolist()
    assert cl.cluster_node(Z, big[:-1]) is None  # one neuron short: not one cluster
    assert cl.cluster_node(Z, []) is None and cl.cluster_node(Z, [n]) is None
    assert cl.child_towards(Z, path[2], 17) == path[1] and cl.child_towards(Z, path[0], 17) == 17
    with pytest.raises(ValueError, match="not an ancestor"):
        cl.child_towards(Z, 17, 17)


def test_linkage_report_on_a_small_fake_store():
    """core.linkage_report: per method, the ancestor sizes' quartiles and the singleton-merge share of
    the sampled (pair, neuron)s, against the functions it summarizes."""
    from core import linkage_report

    rng = np.random.default_rng(0)
    n, pairs = 24, 3
    images = rng.uniform(0.1, 1, size=(pairs, 2, 1, 8, 8))
    masks = rng.uniform(size=(pairs, 2, n, 8, 8)) > 0.6
    masks[:, :, 20:] = False  # four dead neurons: never sampled

    class Store:
        id = "fake"

        def pair_images(self, p):
            return images[p, 0], images[p, 1]

    class Analysis:
        num_pairs, num_neurons, store = pairs, n, Store()

        def rf_masks(self, p, side):
            return torch.from_numpy(masks[p, 0 if side == "benign" else 1])

    out = linkage_report.report(Analysis(), pairs=5, neurons=10, seed=1)
    assert (out["pairs"], out["sampled_neurons"], out["neurons"]) == (3, 30, n)
    rng = np.random.default_rng(1)
    chosen = np.sort(rng.choice(pairs, pairs, replace=False))
    sizes, shares = {m: [] for m in linkage_report.METHODS}, {m: [] for m in linkage_report.METHODS}
    for p in chosen:
        js = np.sort(rng.choice(np.arange(20), 10, replace=False))
        d = cl.distance_matrix("l2", benign_image=images[p, 0], adversarial_image=images[p, 1],
                               benign_masks=masks[p, 0], adversarial_masks=masks[p, 1])
        for m in linkage_report.METHODS:
            Z = cl.linkage(d, m)
            sizes[m].append(_slow_ancestor_sizes(Z, js, 3))
            shares[m].append(cl.singleton_merge_share(Z))
    for m, s in out["methods"].items():
        allsizes = np.concatenate(sizes[m])
        for k in range(3):
            assert s["ancestor_quartiles"][k] == list(np.percentile(allsizes[:, k], [25, 50, 75]))
        assert s["singleton_merge_share"] == pytest.approx(np.mean(shares[m]))
        assert s["third_over_half"] == np.mean(allsizes[:, 2] > n / 2)
    table = linkage_report.markdown([out])
    assert table.count("\n") == 2 + len(linkage_report.METHODS) - 1 and "| fake (24, 3, 30) | ward |" in table


@pytest.mark.parametrize("method", ["ward", "average", "complete", "single"])
def test_blind_neurons_see_nothing_and_form_one_height_zero_cluster(method):
    rng = np.random.default_rng(7)
    n = 30
    images = [rng.uniform(0.2, 1, size=(3, 10, 10)) for _ in range(2)]
    for x in images:
        x[:, :4, :4] = 0.0  # a black corner
    masks = [rng.uniform(size=(n, 10, 10)) > 0.7 for _ in range(2)]
    for m in masks:
        m[20:25] = False             # empty RFs
        m[25:] = False
        m[25:, :3, :3] = True        # RFs on black pixels only: they see nothing either
    masks[0][3, :2, :2] = True       # and one more neuron on the black corner in one image only
    ref = [j for j in range(n) if all(not (x * m[j]).any() for x, m in zip(images, masks, strict=True))]
    got = cl.blind_neurons(images, [torch.from_numpy(m) for m in masks])
    assert got.tolist() == ref == list(range(20, 30))
    d = cl.distance_matrix("l2", benign_image=images[0], adversarial_image=images[1],
                           benign_masks=masks[0], adversarial_masks=masks[1])
    Z = cl.linkage(d, method)
    node = cl.cluster_node(Z, got)
    assert node is not None and Z[node - n, 2] == 0


def test_selected_members_is_the_union_of_the_valid_sets():
    sets = [(3, 1), (7,), (2, 40), (), (5, 3)]
    ref = sorted({j for c in sets if c and max(c) < 10 for j in c})
    assert cl.selected_members(sets, 10).tolist() == ref == [1, 3, 5, 7]
    assert cl.selected_members([], 10).tolist() == [] and cl.selected_members([(12,)], 10).tolist() == []
