"""Context images of one neuron (paper §5.3) against a slow Python sort."""
from __future__ import annotations

import math

import numpy as np
import pytest

from core import receptive_fields as rf
from core.analysis import Analysis
from core.context import READINGS, SORTS, context_receptive_fields, top_images

COLUMNS = ["pair", "rank", "score", "activation", "confidence", "label", "adv_label"]


def _cell(store):
    """The pair ids of the most populated prediction-matrix cell (label a, adversarial label b)."""
    pairs = store.pairs
    a, b = pairs.groupby(["label", "adv_label"]).size().idxmax()
    return np.flatnonzero((pairs.label == a).to_numpy() & (pairs.adv_label == b).to_numpy()), a, b


def _log_odds(store, side, p) -> float:
    """z_c − log Σ_{j≠c} e^{z_j} of side's predicted class c, from the stored logits: the confidence's
    order without float32 ties at 1.0."""
    c = int(store.pairs["label" if side == "benign" else "adv_label"][p])
    z = [float(v) for v in store.array(f"{side}_logits")[p]]
    return z[c] - math.log(math.fsum(math.exp(v) for j, v in enumerate(z) if j != c))


def _slow_top(store, neuron, ids, m, sort, side, ranked_by=None):
    """(score on ranked_by, pair, activation on side, confidence on side), best first, m of them; the
    confidence sort orders by the exact log-odds (ties at p = 1.0 broken by the logits)."""
    ranked_by = ranked_by or side

    def act_conf(s, p):
        conf_col = "benign_prob" if s == "benign" else "adv_prob"
        return float(store.array(f"{s}_pooled")[p, neuron]), float(store.pairs[conf_col][p])

    rows = []
    for p in ids:
        act, conf = act_conf(side, p)
        key_act, key_conf = act_conf(ranked_by, p)
        order = key_act if sort == "activation" else _log_odds(store, ranked_by, p)
        rows.append(((key_act if sort == "activation" else key_conf), int(p), act, conf, order))
    rows.sort(key=lambda r: (-r[4], r[1]))
    return [r[:4] for r in rows[:m]]


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
    # activation ties (a neuron that is 0 on many images) go to the lower pair id
    act = np.asarray(s.array("benign_pooled")[:, 0], dtype=np.float64)
    ids = np.arange(len(act))[::-1]  # a reversed selection: the order given must not matter
    got = top_images(s, 0, ids, m=len(ids), sort="activation")
    assert got.pair.tolist() == sorted(range(len(act)), key=lambda p: (-act[p], p))
    # several benign images have probability 1.0 in float32: the exact log-odds still order them
    conf = s.pairs.benign_prob.to_numpy()
    got = top_images(s, 0, ids, m=len(ids), sort="confidence").pair.tolist()
    ref = sorted(range(len(conf)), key=lambda p: (-_log_odds(s, "benign", p), p))
    assert got == ref
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


# -- the two readings of Fig. 5 ------------------------------------------------------------------------
@pytest.mark.parametrize("sort", SORTS)
@pytest.mark.parametrize("ranked_by", ["benign", "adversarial"])
@pytest.mark.parametrize("side", ["benign", "adversarial"])
def test_ranked_by_another_side_matches_a_python_sort(cifar20_store, sort, side, ranked_by):
    s = cifar20_store
    ids, _, _ = _cell(s)
    for neuron in (0, 31, 63):
        got = top_images(s, neuron, ids, m=4, sort=sort, side=side, ranked_by=ranked_by)
        ref = _slow_top(s, neuron, ids, 4, sort, side, ranked_by)
        assert got.pair.tolist() == [r[1] for r in ref]
        np.testing.assert_allclose(got.score, [r[0] for r in ref], rtol=1e-7)
        np.testing.assert_allclose(got.activation, [r[2] for r in ref], rtol=1e-7)
        np.testing.assert_allclose(got.confidence, [r[3] for r in ref], rtol=1e-7)
    with pytest.raises(ValueError, match="side"):
        top_images(s, 0, ids, side=side, ranked_by="clean")


def test_the_readings_differ_where_the_orders_differ(cifar20_store):
    """"counterparts" lists the benign top-m's pairs, "own" the adversarial side's own top-m: on this
    store some neuron orders the two sides differently (else the test would prove nothing)."""
    s = cifar20_store
    assert READINGS == {"own": "adversarial", "counterparts": "benign"}
    differ = 0
    for neuron in range(64):
        benign = top_images(s, neuron, None, m=3, side="benign").pair.tolist()
        own = top_images(s, neuron, None, m=3, side="adversarial", ranked_by=READINGS["own"])
        counter = top_images(s, neuron, None, m=3, side="adversarial", ranked_by=READINGS["counterparts"])
        assert counter.pair.tolist() == benign
        assert own.pair.tolist() == top_images(s, neuron, None, m=3, side="adversarial").pair.tolist()
        differ += own.pair.tolist() != benign
    assert differ > 0


@pytest.mark.parametrize("reading", list(READINGS))
def test_context_images_through_an_analysis(cifar20_store, reading):
    """Each listed pair's adversarial image with the neuron's RF on it, computed line by line from the
    stored feature map with the page's threshold (fraction 0.5 of the max, and the default quantile)."""
    s = cifar20_store
    an = Analysis(s)
    ids, _, _ = _cell(s)
    for kw in ({"mode": "fraction", "value": 0.5}, {}):
        table, items = an.context_images(7, ids, m=3, side="adversarial", ranked_by=READINGS[reading], **kw)
        assert table.pair.tolist() == [r[1] for r in _slow_top(s, 7, ids, 3, "activation", "adversarial",
                                                               READINGS[reading])]
        assert len(items) == len(table)
        for (image, mask), p in zip(items, table.pair, strict=True):
            np.testing.assert_array_equal(image, s.pair_images(int(p))[1])
            fmap = np.asarray(s.array("adversarial_fmaps")[int(p), 7], dtype=np.float32)
            if kw:
                ref = rf.rf_masks(fmap[None], image.shape[1:], mode="fraction", value=0.5)[0].numpy()
            else:
                ref = rf.rf_masks(fmap[None], image.shape[1:], mode="quantile",
                                  neuron_thresholds=an.rf_thresholds()[[7]])[0].numpy()
            assert mask.dtype == bool and mask.shape == image.shape[1:]
            np.testing.assert_array_equal(mask, ref)
    # the own reading is the default: the adversarial images ranked on their own
    if reading == "own":
        table2, _ = an.context_images(7, ids, m=3, side="adversarial")
        assert table.equals(table2)
