"""core.analysis on a real store (ResNet20, 10 CIFAR-10 test images per class, real PGD)."""
import json
import shutil

import numpy as np
import pytest
import torch

from core import clustering, neuron_measures, receptive_fields, vulnerability
from core.analysis import Analysis
from core.store import Store, StoreError


@pytest.fixture
def store(cifar20_copy):
    return cifar20_copy  # the tests write derived/ and edit manifests


def test_neuron_measures_match_the_modules(store):
    an = Analysis(store)
    pair = 3
    m = an.neuron_measures(pair)
    lin = an.model.head_module
    W, b = lin.weight.double().numpy(), lin.bias.double().numpy()
    row = store.pairs.iloc[pair]
    bc, ac = int(row["label"]), int(row["adv_label"])
    pb = store.array("benign_pooled")[pair].astype(np.float64)
    pa = store.array("adversarial_pooled")[pair].astype(np.float64)
    np.testing.assert_array_equal(m["benign_axw"], pb * W[bc])
    np.testing.assert_array_equal(m["adversarial_axw"], pa * W[ac])
    bands = neuron_measures.pair_bands(store.class_stats, W, bc, ac)
    np.testing.assert_array_equal(m["band_gap"], neuron_measures.band_gap(bands["adversarial"],
                                                                          bands["benign"]))
    sub = neuron_measures.substitution_effect(W, b, pb, pa, bc, ac)
    np.testing.assert_allclose(m["benign_decrease"], sub["benign_decrease"])
    assert all(v.shape == (an.num_neurons,) for v in m.values())


def test_vulnerability_maps_are_cached_on_disk(store):
    an = Analysis(store)
    pair = 0
    bmap, amap = an.vulnerability_maps(pair, stride=2)
    files = list((store.path / "derived").glob("vmap-p0-k2-s2-probability-fp32-v2.npy"))
    assert len(files) == 1 and not list((store.path / "derived").glob(".*tmp*"))
    b, a = (torch.from_numpy(np.array(x)) for x in store.pair_images(pair))
    row = store.pairs.iloc[pair]
    ref = vulnerability.vulnerability_maps(an.model, b, a, int(row["label"]), int(row["adv_label"]),
                                           k=2, stride=2)
    np.testing.assert_array_equal(bmap, ref[0].numpy())
    np.testing.assert_array_equal(amap, ref[1].numpy())
    fresh = Analysis(store)  # a new process would read the file, not recompute
    assert fresh.has_vulnerability_maps(pair, stride=2)
    fresh._model = "must not be needed"
    np.testing.assert_array_equal(fresh.vulnerability_maps(pair, stride=2)[0], bmap)


def test_read_only_store_still_answers(store, monkeypatch):
    import core.analysis as mod

    def refuse(*_a, **_k):
        raise PermissionError("read-only file system")
    monkeypatch.setattr(mod, "save_npy", refuse)
    an = Analysis(store)
    assert an.rf_thresholds().shape == (an.num_neurons,)
    assert not (store.path / "derived").exists() or not any((store.path / "derived").iterdir())


def test_iou_ranking_uses_the_matching_image(store):
    an = Analysis(store)
    pair = 1
    bmap, amap = an.vulnerability_maps(pair, stride=4)
    for which, vmap, side in (("bmap", bmap, "benign"), ("amap", amap, "adversarial")):
        iou, order = an.iou_ranking(pair, which, stride=4)
        _, masks = an.rf(pair, side)
        ref, _ = neuron_measures.iou_ranking(masks, vulnerability.binarize(vmap, 0.2))
        np.testing.assert_array_equal(iou, ref)
        assert iou[order[0]] == iou.max()
    forced, _ = an.iou_ranking(pair, "bmap", stride=4, rf_side="adversarial")
    _, masks = an.rf(pair, "adversarial")
    np.testing.assert_array_equal(forced, neuron_measures.iou_ranking(
        masks, vulnerability.binarize(bmap, 0.2))[0])


def test_rf_thresholds_are_benign_quantiles(store):
    an = Analysis(store)
    t = an.rf_thresholds(0.9)
    fm = store.array("benign_fmaps").astype(np.float32)
    ref = np.quantile(np.moveaxis(fm, 1, 0).reshape(fm.shape[1], -1), 0.9, axis=1)
    np.testing.assert_allclose(t, ref, rtol=1e-6)
    sub = an.rf_masks_for(2, "adversarial", [5, 0, 7])
    full = an.rf(2, "adversarial")[1]
    assert torch.equal(sub, full[[5, 0, 7]])


def test_linkage_options(store):
    an = Analysis(store)
    n = an.num_neurons
    for distance in clustering.DISTANCES:
        Z = an.linkage(0, distance=distance)
        assert Z.shape == (n - 1, 4)
    rb, _ = an.rf(0, "benign")
    ra, _ = an.rf(0, "adversarial")
    ref = clustering.linkage(clustering.distance_matrix("l2", benign_rf=rb, adversarial_rf=ra))
    got = an.linkage(0)  # from masks and images (rf_euclidean_matrix): the same tree, rounding apart
    np.testing.assert_array_equal(got[:, [0, 1, 3]], ref[:, [0, 1, 3]])
    np.testing.assert_allclose(got[:, 2], ref[:, 2], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="Euclidean"):
        an.linkage(0, distance="iou", method="ward")


def test_bad_arguments_are_refused(store):
    an = Analysis(store)
    for bad in (-1, len(store), 1.5, "0", True):
        with pytest.raises(ValueError, match="pair"):
            an.neuron_measures(bad)
    with pytest.raises(ValueError, match="side"):
        an.rf(0, "../etc")
    with pytest.raises(ValueError, match="output"):
        an.vulnerability_maps(0, output="../../x")
    with pytest.raises(ValueError, match="mode"):
        an.rf(0, "benign", mode="median")
    with pytest.raises(ValueError, match="neuron"):
        an.rf_masks_for(0, "benign", [an.num_neurons])
    with pytest.raises(ValueError, match="quantile"):
        an.rf_thresholds(1.5)


def test_changed_or_missing_checkpoint_is_a_clear_error(store, tmp_path):
    manifest = json.loads((store.path / "manifest.json").read_text())
    manifest["fingerprints"]["model"]["checkpoint_sha256"] = "0" * 64
    (store.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="has changed"):
        Analysis(Store(store.path)).vulnerability_maps(0, stride=4)
    manifest["config"]["model"]["checkpoint"] = str(tmp_path / "gone.th")
    (store.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="not there any more"):
        Analysis(Store(store.path)).neuron_measures(0)


def test_quantile_rf_default_matches_module(store):
    an = Analysis(store)
    image = store.pair_images(4)[0]
    fm = store.array("benign_fmaps")[4].astype(np.float32)
    rf, masks = receptive_fields.receptive_fields(image, fm, neuron_thresholds=an.rf_thresholds())
    got_rf, got_masks = an.rf(4, "benign")
    assert torch.equal(got_masks, masks) and torch.equal(got_rf, rf)


def test_bench_analytics_runs(cifar20_store, tmp_path):
    """The benchmark's code path (tiny settings): every section is there, fp32 equals the loop."""
    from core.bench import bench_analytics
    shutil.copytree(cifar20_store.path, tmp_path / "cifar20")
    r = bench_analytics("cifar20", pairs=1, fidelity_pairs=1, store_pairs=2, strides=(8,),
                        cache_dir=tmp_path)
    assert r["stride8"]["fp32_max_abs_diff_vs_naive"] <= 1e-6
    assert 0 <= r["stride8"]["fast_vs_fp32_top20_iou"]["bmap_min"] <= 1
    assert r["store"]["per_pair_rfs_bands_gap_substitution_linkage_ms"]["pairs_timed"] == 2
    assert r["fidelity_stride2_vs_stride1"]["pairs"] == 1
    assert r["dead_neurons"]["pairs"] == 1


def test_context_images_carry_the_neurons_rf(store):
    an = Analysis(store)
    neuron = int(np.argmax(store.array("adversarial_pooled")[:].mean(0)))
    cell = store.pairs.index[store.pairs["label"] == store.pairs["label"].iloc[0]].to_numpy()
    table, items = an.context_images(neuron, cell, m=3, side="adversarial")
    acts = store.array("adversarial_pooled")[table["pair"].to_numpy(), neuron]
    assert np.all(np.diff(acts) <= 0), "sorted by the neuron's activation, highest first"
    assert len(items) == len(table) == min(3, len(cell)) and set(table["pair"]) <= set(cell)
    for p, (image, mask) in zip(table["pair"], items, strict=True):
        np.testing.assert_array_equal(image, store.pair_images(p)[1])
        full = an.rf(int(p), "adversarial")[1][neuron].numpy()
        np.testing.assert_array_equal(mask, full)
