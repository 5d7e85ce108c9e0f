"""Context images of one neuron (paper §5.3) against a slow Python sort."""
from __future__ import annotations

import numpy as np
import pytest

from core.context import SORTS, context_receptive_fields, top_images

COLUMNS = ["pair", "rank", "score", "activation", "confidence", "label", "adv_label"]


def _cell(store):
    """The pair ids of the most populated prediction-matrix cell (label a, adversarial label b)."""
    pairs = store.pairs
    a, b = pairs.groupby(["label", "adv_label"]).size().idxmax()
    return np.flatnonzero((pairs.label == a).to_numpy() & (pairs.adv_label == b).to_numpy()), a, b


def _slow_top(store, neuron, ids, m, sort, side):
    pooled = store.array(f"{side}_pooled")
    conf_col = "benign_prob" if side == "benign" else "adv_prob"
    rows = []
    for p in ids:
        act = float(pooled[p, neuron])
        conf = float(store.pairs[conf_col][p])
        rows.append(((act if sort == "activation" else conf), int(p), act, conf))
    rows.sort(key=lambda r: (-r[0], r[1]))
    return rows[:m]


def test_pairs_are_in_row_order(cifar20_store):
    assert (cifar20_store.pairs.pair.to_numpy() == np.arange(len(cifar20_store.pairs))).all()


@pytest.mark.parametrize("sort", SORTS)
@pytest.mark.parametrize("side", ["benign", "adversarial"])
def test_top_images_match_a_python_sort(cifar20_store, sort, side):
    s = cifar20_store
    ids, a, b = _cell(s)
    assert len(ids) >= 4
    for neuron in (0, 31, 63):
        for m in (3, 6, 100):
            got = top_images(s, neuron, ids, m=m, sort=sort, side=side)
            ref = _slow_top(s, neuron, ids, m, sort, side)
            assert list(got.columns) == COLUMNS
            assert got.pair.tolist() == [r[1] for r in ref]
            assert got["rank"].tolist() == list(range(len(ref)))
            np.testing.assert_allclose(got.score, [r[0] for r in ref], rtol=1e-7)
            np.testing.assert_allclose(got.activation, [r[2] for r in ref], rtol=1e-7)
            np.testing.assert_allclose(got.confidence, [r[3] for r in ref], rtol=1e-7)
            assert (got.label == a).all() and (got.adv_label == b).all()
    # all pairs (None) and the whole store agree with the slow sort too
    got = top_images(s, 5, None, m=6, sort=sort, side=side)
    assert got.pair.tolist() == [r[1] for r in _slow_top(s, 5, range(len(s.pairs)), 6, sort, side)]


def test_top_images_ties_go_to_the_lower_pair_id(cifar20_store):
    s = cifar20_store
    # confidence ties: several benign images are classified with probability 1.0 in float32
    conf = s.pairs.benign_prob.to_numpy()
    ids = np.arange(len(conf))[::-1]  # a reversed selection: the order given must not matter
    got = top_images(s, 0, ids, m=len(ids), sort="confidence")
    ref = sorted(range(len(conf)), key=lambda p: (-conf[p], p))
    assert got.pair.tolist() == ref
    # duplicates count once
    assert top_images(s, 0, [3, 3, 1], m=6).pair.tolist() == top_images(s, 0, [1, 3], m=6).pair.tolist()


def test_top_images_validation_and_empty(cifar20_store):
    s = cifar20_store
    with pytest.raises(ValueError, match="neuron"):
        top_images(s, 64, None)
    with pytest.raises(ValueError, match="neuron"):
        top_images(s, -1, None)
    with pytest.raises(ValueError, match="side"):
        top_images(s, 0, None, side="clean")
    with pytest.raises(ValueError, match="sort"):
        top_images(s, 0, None, sort="probability")
    with pytest.raises(ValueError, match="out of range"):
        top_images(s, 0, [0, len(s.pairs)])
    with pytest.raises(ValueError, match="integer"):
        top_images(s, 0, np.array([0.0, 1.0]))
    empty = top_images(s, 0, [])
    assert list(empty.columns) == COLUMNS and len(empty) == 0
    assert len(top_images(s, 0, np.array([], dtype=np.int64), side="adversarial")) == 0


@pytest.mark.parametrize("side", ["benign", "adversarial"])
def test_context_receptive_fields_images_and_fmaps(cifar20_store, side):
    s = cifar20_store
    top = top_images(s, 7, None, m=4, side=side)
    calls = []

    def upsampled(fmap):
        return np.kron(fmap > fmap.mean(), np.ones((4, 4), bool))  # 8×8 map → 32×32 mask

    def rf_fn(fmap, image):
        calls.append((fmap, image))
        return upsampled(fmap)

    out = context_receptive_fields(s, 7, top.pair.to_numpy(), side=side, rf_fn=rf_fn)
    assert len(out) == len(calls) == 4
    for (image, mask), (fmap, img_arg), p in zip(out, calls, top.pair, strict=True):
        expected = s.pair_images(int(p))[0 if side == "benign" else 1]
        assert image.dtype == np.float32 and image.shape == (3, 32, 32)
        np.testing.assert_array_equal(image, expected)
        np.testing.assert_array_equal(img_arg, expected)
        assert fmap.dtype == np.float32 and fmap.shape == (8, 8)
        np.testing.assert_array_equal(fmap, s.array(f"{side}_fmaps")[int(p), 7].astype(np.float32))
        assert mask.dtype == bool and mask.shape == (32, 32)
        np.testing.assert_array_equal(mask, upsampled(fmap))
    with pytest.raises(ValueError, match="shape"):
        context_receptive_fields(s, 7, [0], side=side, rf_fn=lambda f, i: np.zeros((8, 8), bool))
    with pytest.raises(ValueError, match="side"):
        context_receptive_fields(s, 7, [0], side="both", rf_fn=rf_fn)
    assert context_receptive_fields(s, 7, [], side=side, rf_fn=rf_fn) == []
