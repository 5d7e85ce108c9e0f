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
    Z = cl.linkage(d, kind="iou")  # average by default
    np.testing.assert_allclose(Z, hierarchy.linkage(squareform(d), "average"))
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
