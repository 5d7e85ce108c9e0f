"""Neuron-perturbation measures (paper §5.2.1) against slow, line-by-line references."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from core.models import load_model
from core.neuron_measures import (
    ADVERSARIAL_BANDS,
    DEFAULT_ADVERSARIAL_BAND,
    DEFAULT_COVERAGE,
    DEFAULT_INTERVAL,
    INTERVALS,
    MEASURES,
    activation_times_weight,
    band_gap,
    class_band,
    curve_difference,
    iou_ranking,
    pair_bands,
    rank,
    substitution_effect,
)

NAN = math.nan


@pytest.fixture(scope="module")
def model20(cifar20_config):
    """The store's own model (ResNet20 from ../shared)."""
    return load_model(cifar20_config.model, (3, 32, 32))


@pytest.fixture(scope="module")
def weight20(model20) -> np.ndarray:
    return model20.head_weight.detach().numpy().astype(np.float64)


def _paper_bg(cla, cua, clb, cub):
    """The paper's formula, one neuron at a time."""
    if any(math.isnan(v) for v in (cla, cua, clb, cub)):
        return NAN
    if clb > cua:
        return cua - clb
    elif cla > cub:
        return cla - cub
    else:
        return 0.0


def test_constants():
    assert INTERVALS == ("quantile", "std", "ci") and DEFAULT_INTERVAL == "quantile"
    assert DEFAULT_COVERAGE == 0.5
    assert ADVERSARIAL_BANDS == ("benign", "adversarial") and DEFAULT_ADVERSARIAL_BAND == "benign"


def test_band_gap_hand_made_intervals_all_branches():
    #            adversarial (lo, hi)   benign (lo, hi)     expected
    cases = [((0.0, 1.0), (2.0, 3.0), -1.0),      # adversarial below: CUa - CLb < 0 (region C)
             ((4.0, 6.0), (1.0, 2.5), 1.5),       # adversarial above: CLa - CUb > 0 (region A)
             ((0.0, 2.0), (1.0, 3.0), 0.0),       # overlapping
             ((1.0, 2.0), (0.0, 3.0), 0.0),       # adversarial inside benign
             ((0.0, 5.0), (1.0, 2.0), 0.0),       # benign inside adversarial
             ((0.0, 1.0), (1.0, 2.0), 0.0),       # touching: CLb == CUa
             ((2.0, 3.0), (1.0, 2.0), 0.0),       # touching: CLa == CUb
             ((-3.0, -2.0), (-1.0, 0.5), -1.0),   # negative values (negative weights)
             ((1.0, 1.0), (1.0, 1.0), 0.0),       # degenerate equal bands
             ((NAN, 1.0), (0.0, 2.0), NAN),
             ((0.0, 1.0), (2.0, NAN), NAN)]
    la, ua = np.array([c[0][0] for c in cases]), np.array([c[0][1] for c in cases])
    lb, ub = np.array([c[1][0] for c in cases]), np.array([c[1][1] for c in cases])
    got = band_gap((la, ua), (lb, ub))
    ref = [_paper_bg(*c[0], *c[1]) for c in cases]
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(got, [c[2] for c in cases])
    assert got.dtype == np.float64 and got.shape == (len(cases),)


def test_band_gap_random_vs_loop():
    rng = np.random.default_rng(0)
    a, b = np.sort(rng.normal(size=(2, 2, 500)), axis=1)
    a[:, :3] = np.nan
    got = band_gap((a[0], a[1]), (b[0], b[1]))
    ref = [_paper_bg(a[0, j], a[1, j], b[0, j], b[1, j]) for j in range(500)]
    np.testing.assert_array_equal(got, ref)
    assert (got > 0).any() and (got < 0).any() and (got == 0).any()


def test_activation_times_weight_and_curve_difference_vs_loop(cifar20_store, weight20):
    s = cifar20_store
    p = s.pairs.iloc[0]
    pair, b, a = int(p.pair), int(p.label), int(p.adv_label)
    bp, ap = s.array("benign_pooled")[pair], s.array("adversarial_pooled")[pair]
    ben = activation_times_weight(bp, weight20, b)
    adv = activation_times_weight(ap, torch.from_numpy(weight20), a)  # torch accepted
    assert ben.shape == (64,)
    for j in range(64):
        assert ben[j] == pytest.approx(float(bp[j]) * weight20[b, j], rel=1e-12)
        assert adv[j] == pytest.approx(float(ap[j]) * weight20[a, j], rel=1e-12)
    diff = curve_difference(ben, adv)
    np.testing.assert_allclose(diff, [adv[j] - ben[j] for j in range(64)], rtol=0, atol=0)
    # batched: (N, n) pooled × one class row
    many = activation_times_weight(s.array("benign_pooled"), weight20, 3)
    np.testing.assert_allclose(many[5], np.asarray(s.array("benign_pooled")[5], float) * weight20[3])
    with pytest.raises(ValueError, match="class"):
        activation_times_weight(bp, weight20, 10)


def test_rank_nan_last_ties_by_id():
    v = np.array([1.0, NAN, 3.0, 1.0, -2.0, NAN, 3.0, 0.0])
    assert rank(v).tolist() == [2, 6, 0, 3, 7, 4, 1, 5]
    assert rank(v, descending=False).tolist() == [4, 7, 0, 3, 2, 6, 1, 5]
    # reference: python sort on (is nan, ∓value, id)
    rng = np.random.default_rng(1)
    r = rng.integers(-3, 4, 200).astype(float)
    r[rng.random(200) < 0.1] = np.nan
    key = lambda j: (math.isnan(r[j]), 0.0 if math.isnan(r[j]) else -r[j], j)
    assert rank(r).tolist() == sorted(range(200), key=key)


def _raw_benign_pooled(store, k):
    """Pooled vectors of the correctly classified benign images of class k (the benign statistics)."""
    labels, pred = store.array("dataset_labels"), store.array("dataset_pred")
    pooled = np.asarray(store.array("dataset_pooled"), dtype=np.float64)
    return np.array([pooled[i] for i in range(len(labels)) if labels[i] == pred[i] == k])


def _raw_adversarial_pooled(store, k):
    adv = store.pairs.adv_label.to_numpy()
    pooled = np.asarray(store.array("adversarial_pooled"), dtype=np.float64)
    return np.array([pooled[i] for i in range(len(adv)) if adv[i] == k])


def _swap(lo, hi, w):
    return (lo * w, hi * w) if w >= 0 else (hi * w, lo * w)


@pytest.mark.parametrize("population", ["benign", "adversarial"])
def test_class_band_quantile_vs_raw_values(cifar20_store, weight20, population):
    s = cifar20_store
    st = s.class_stats
    raw = _raw_benign_pooled if population == "benign" else _raw_adversarial_pooled
    checked_neg = checked_pos = 0
    for k in range(10):
        rows = raw(s, k)
        for coverage in (0.5, 0.8, 1.0):
            lo, hi = class_band(st, population, k, weight20[k], interval="quantile", coverage=coverage)
            if len(rows) == 0:
                assert np.isnan(lo).all() and np.isnan(hi).all()
                continue
            for j in range(64):
                qlo = float(np.quantile(rows[:, j], (1 - coverage) / 2))
                qhi = float(np.quantile(rows[:, j], (1 + coverage) / 2))
                elo, ehi = _swap(qlo, qhi, weight20[k, j])
                assert lo[j] == pytest.approx(elo, rel=1e-5, abs=1e-6)
                assert hi[j] == pytest.approx(ehi, rel=1e-5, abs=1e-6)
                assert lo[j] <= hi[j]
                checked_neg += weight20[k, j] < 0 and qlo < qhi
                checked_pos += weight20[k, j] > 0 and qlo < qhi
    assert checked_neg > 0 and checked_pos > 0  # both the swapped and the plain branch were exercised


@pytest.mark.parametrize("interval", ["std", "ci"])
@pytest.mark.parametrize("coverage", [0.5, 0.95])
def test_class_band_std_and_ci_vs_scipy_loop(cifar20_store, weight20, interval, coverage):
    s = cifar20_store
    for k in range(10):
        rows = _raw_benign_pooled(s, k)
        lo, hi = class_band(s.class_stats, "benign", k, weight20[k], interval=interval, coverage=coverage)
        n = len(rows)
        for j in range(64):
            col = rows[:, j]
            mean = sum(col) / n
            std = math.sqrt(sum((v - mean) ** 2 for v in col) / (n - 1)) if n > 1 else 0.0
            if interval == "std":
                half = sps.norm.ppf((1 + coverage) / 2) * std
            else:
                half = sps.t.ppf((1 + coverage) / 2, n - 1) * std / math.sqrt(n) if n > 1 else 0.0
            elo, ehi = _swap(mean - half, mean + half, weight20[k, j])
            assert lo[j] == pytest.approx(elo, rel=1e-4, abs=1e-6)
            assert hi[j] == pytest.approx(ehi, rel=1e-4, abs=1e-6)


def test_class_band_edge_cases():
    levels = np.array([0.0, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.975, 1.0], np.float32)
    q = np.broadcast_to(np.linspace(0, 1, 11)[:, None], (11, 2))
    st = {"benign_count": np.array([1, 0, 5]), "benign_mean": np.array([[1.0, 2.0], [NAN, NAN], [1.0, 1.0]]),
          "benign_std": np.array([[0.0, 0.0], [NAN, NAN], [0.5, 0.5]]),
          "benign_quantiles": np.stack([q, np.full((11, 2), NAN), q]), "benign_levels": levels}
    w = np.array([2.0, -1.0])
    # one image: the CI is the mean itself
    lo, hi = class_band(st, "benign", 0, w, interval="ci", coverage=0.9)
    np.testing.assert_array_equal(lo, [2.0, -2.0])
    np.testing.assert_array_equal(hi, [2.0, -2.0])
    # no image: NaN for every interval
    for interval in INTERVALS:
        lo, hi = class_band(st, "benign", 1, w, interval=interval)
        assert np.isnan(lo).all() and np.isnan(hi).all()
    # quantile, IQR, weight 2 and -1 (swap)
    lo, hi = class_band(st, "benign", 2, w)
    np.testing.assert_allclose(lo, [0.4 * 2, -0.6])
    np.testing.assert_allclose(hi, [0.6 * 2, -0.4])
    with pytest.raises(ValueError, match=r"0\.5, 0\.8, 0\.9, 0\.95, 1"):
        class_band(st, "benign", 2, w, coverage=0.7)
    with pytest.raises(ValueError, match="coverage"):
        class_band(st, "benign", 2, w, interval="std", coverage=1.0)
    with pytest.raises(ValueError, match="interval"):
        class_band(st, "benign", 2, w, interval="iqr")
    with pytest.raises(ValueError, match="population"):
        class_band(st, "clean", 2, w)
    with pytest.raises(ValueError, match="class"):
        class_band(st, "benign", 3, w)


@pytest.mark.parametrize("adversarial_band", ["benign", "adversarial"])
def test_pair_bands_pick_the_populations(cifar20_store, weight20, adversarial_band):
    st = cifar20_store.class_stats
    p = cifar20_store.pairs.iloc[0]
    b, a = int(p.label), int(p.adv_label)
    bands = pair_bands(st, torch.from_numpy(weight20), b, a, interval="std", coverage=0.8,
                       adversarial_band=adversarial_band)
    exp_b = class_band(st, "benign", b, weight20[b], interval="std", coverage=0.8)
    exp_a = class_band(st, adversarial_band, a, weight20[a], interval="std", coverage=0.8)
    np.testing.assert_array_equal(bands["benign"], exp_b)
    np.testing.assert_array_equal(bands["adversarial"], exp_a)
    gap = band_gap(bands["adversarial"], bands["benign"])
    assert gap.shape == (64,) and np.isfinite(gap).all()
    with pytest.raises(ValueError, match="adversarial_band"):
        pair_bands(st, weight20, b, a, adversarial_band="clean")


@pytest.mark.parametrize("output", ["probability", "logit"])
def test_substitution_effect_vs_real_head_loop(cifar20_store, model20, output):
    s = cifar20_store
    head = model20.head_module
    for pair in (0, len(s.pairs) - 1):
        row = s.pairs.iloc[pair]
        b, a = int(row.label), int(row.adv_label)
        pb = torch.tensor(np.asarray(s.array("benign_pooled")[pair]), dtype=torch.float64)
        pa = torch.tensor(np.asarray(s.array("adversarial_pooled")[pair]), dtype=torch.float64)
        got = substitution_effect(head.weight, head.bias, pb.numpy(), pa.numpy(), b, a, output=output)
        head64 = torch.nn.Linear(64, 10).double()
        head64.load_state_dict({k: v.double() for k, v in head.state_dict().items()})
        y = (lambda z: torch.softmax(z, -1)) if output == "probability" else (lambda z: z)
        with torch.no_grad():
            y0 = y(head64(pb))
            for j in range(64):
                x = pb.clone()
                x[j] = pa[j]
                yj = y(head64(x))
                assert got["benign_decrease"][j] == pytest.approx(float(y0[b] - yj[b]), abs=1e-12)
                assert got["adversarial_increase"][j] == pytest.approx(float(yj[a] - y0[a]), abs=1e-12)
        assert got["benign_decrease"].shape == got["adversarial_increase"].shape == (64,)
    # the stored float32 pooled vectors reproduce the stored benign prediction through the head
    with torch.no_grad():
        probs = torch.softmax(head(torch.from_numpy(np.array(s.array("benign_pooled")[:4]))), -1)
    np.testing.assert_allclose(probs.numpy(), s.array("benign_probs")[:4], atol=1e-5)
    with pytest.raises(ValueError, match="output"):
        substitution_effect(head.weight, head.bias, pb, pa, b, a, output="margin")


def _iou_loop(rf, v):
    out = []
    for j in range(len(rf)):
        inter = union = 0
        for r in range(v.shape[0]):
            for c in range(v.shape[1]):
                inter += bool(rf[j, r, c]) and bool(v[r, c])
                union += bool(rf[j, r, c]) or bool(v[r, c])
        out.append(inter / union if union else 0.0)
    return np.array(out)


def test_iou_ranking_hand_made():
    v = np.zeros((4, 4), bool)
    v[:2, :2] = True                                   # 4 pixels
    rf = np.zeros((5, 4, 4), bool)
    rf[0, :2, :2] = True                               # identical: 1
    rf[1, :2, :] = True                                # 4 / 8
    rf[2, 2:, 2:] = True                               # disjoint: 0
    rf[3, 0, 0] = True                                 # 1 / 4
    # rf[4] empty: 0 / 4
    iou, order = iou_ranking(rf, v)
    np.testing.assert_allclose(iou, [1.0, 0.5, 0.0, 0.25, 0.0])
    np.testing.assert_allclose(iou, _iou_loop(rf, v))
    assert order.tolist() == [0, 1, 3, 2, 4]
    # both empty: 0, not NaN
    iou, _ = iou_ranking(np.zeros((2, 3, 3), bool), np.zeros((3, 3), bool))
    assert iou.tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="shape|expected"):
        iou_ranking(rf, np.zeros((3, 4), bool))


def test_iou_ranking_random_numpy_and_torch():
    rng = np.random.default_rng(2)
    rf = rng.random((40, 12, 12)) < rng.random((40, 1, 1))
    rf[7] = False
    v = rng.random((12, 12)) < 0.2
    ref = _iou_loop(rf, v)
    iou, order = iou_ranking(rf, v)
    np.testing.assert_allclose(iou, ref, rtol=1e-15)
    assert order.tolist() == sorted(range(40), key=lambda j: (-ref[j], j))
    iou_t, order_t = iou_ranking(torch.from_numpy(rf), torch.from_numpy(v))
    np.testing.assert_array_equal(iou_t, iou)
    np.testing.assert_array_equal(order_t, order)


# -- plain words ------------------------------------------------------------------------------------------
def test_every_measure_sort_and_setting_has_plain_words():
    from core import neuron_measures as nm
    from core.ui.state import NEURON_SORTS
    assert set(nm.SORT_KEYS) == set(NEURON_SORTS)  # every sort the app offers is a measure with words
    assert set(nm.SUMMARY) == set(nm.SORT_KEYS)
    assert set(nm.INTERVAL_HELP) == set(nm.INTERVALS) == set(nm.INTERVAL_LABELS)
    terms = {"activation_times_weight", "class_band", "regions", "rank", "substitution", "interval",
             "coverage"}
    assert set(nm.SORT_KEYS) | terms <= set(nm.HELP)
    for key, words in [*nm.HELP.items(), *nm.INTERVAL_HELP.items(), *nm.SUMMARY.items()]:
        assert len(words) > 40 and words.strip() == words, key
        # for a reader who does not code: no identifiers, code or formulas
        assert not any(mark in words for mark in ("_", "`", "==", "np.", "[", "]")), (key, words)


# -- the registry ---------------------------------------------------------------------------------------
def test_registry_entries_are_complete_and_in_menu_order():
    from core import neuron_measures as nm
    from core.ui.state import NEURON_SORTS
    keys = [m.key for m in nm.MEASURES]
    assert keys[:6] == ["band_gap", "curve_difference", "iou_bmap", "iou_amap", "benign_decrease",
                        "adversarial_increase"]  # the paper's sorts first, in the menu's order
    assert len(set(keys)) == len(keys) and list(NEURON_SORTS) == keys == list(nm.SORT_KEYS)
    assert len({m.label for m in nm.MEASURES}) == len(keys) == len({m.name for m in nm.MEASURES})
    for m in nm.MEASURES:
        assert NEURON_SORTS[m.key] == m.label and m.label.split(" (")[0] == m.name
        assert nm.HELP[m.key] == m.help and nm.SUMMARY[m.key] == m.summary
        assert m.reads in ("value", "increase", "decrease") and format(0.5, m.fmt)
        assert m.vmap in (None, "bmap", "amap") and (m.vmap is None or m.needs_maps)


@pytest.mark.parametrize("key", [m.key for m in MEASURES])
def test_every_measure_is_a_sort_of_the_link(key):
    from core.ui.state import Selection, from_query, to_query
    sel = Selection(experiment="cifar20", pair=3, neuron_sort=key)
    default = key == Selection().neuron_sort  # the default sort stays out of the link
    assert to_query(sel).get("neuron_sort") == (None if default else key) and from_query(to_query(sel)) == sel
    assert from_query({"exp": "cifar20", "neuron_sort": key}).neuron_sort == key


def test_every_measure_on_a_real_pair(cifar20_store, weight20):
    from core import neuron_measures as nm
    from core.analysis import Analysis
    an = Analysis(cifar20_store)
    pair = 0  # the pair whose maps (stride 4) the page and view tests compute too
    plain = an.neuron_measures(pair)
    curves = {"benign_axw", "adversarial_axw", "benign_lo", "benign_hi", "adversarial_lo", "adversarial_hi"}
    assert set(plain) == curves | {m.key for m in nm.MEASURES if not m.needs_maps}
    maps = {"top": 0.2, "stride": 4, "precision": "auto"}
    full = an.neuron_measures(pair, maps=maps)
    assert set(full) == curves | set(nm.SORT_KEYS)
    for key, values in full.items():
        assert values.shape == (an.num_neurons,) and values.dtype == np.float64, key
        if key in plain:  # asking for the maps changes no other number
            np.testing.assert_array_equal(values, plain[key])
    for m in nm.MEASURES:
        if m.vmap:
            np.testing.assert_array_equal(full[m.key], an.iou_ranking(pair, m.vmap, **maps)[0])
    # compute reads only the PairInput: the same numbers from the store's arrays directly
    row = cifar20_store.pairs.iloc[pair]
    head = an.head
    inp = nm.pair_input(cifar20_store.class_stats, head[0], head[1],
                        cifar20_store.array("benign_pooled")[pair],
                        cifar20_store.array("adversarial_pooled")[pair],
                        int(row["label"]), int(row["adv_label"]))
    for m in nm.MEASURES:
        if not m.needs_maps:
            np.testing.assert_array_equal(m.compute(inp), plain[m.key])
        else:
            with pytest.raises(ValueError, match="vulnerability maps"):
                m.compute(inp)


# -- the paper's "straightforward" sort (§5.2.1) -----------------------------------------------------------
def test_activation_difference_vs_loop_and_as_a_sort_of_the_link(cifar20_store):
    from core import neuron_measures as nm
    from core.analysis import Analysis
    from core.ui.state import NEURON_SORTS, Selection, from_query, to_query
    an = Analysis(cifar20_store)
    for pair in (0, 3, 7):
        pb = cifar20_store.array("benign_pooled")[pair]
        pa = cifar20_store.array("adversarial_pooled")[pair]
        ref = []
        for j in range(len(pb)):  # the paper's words, one neuron at a time: adversarial minus benign
            ref.append(float(pa[j]) - float(pb[j]))
        got = an.neuron_measures(pair)["activation_difference"]
        assert got.dtype == np.float64 and got.tolist() == ref
        assert nm.activation_difference(pb, pa).tolist() == ref
        assert rank(got).tolist() == sorted(range(len(ref)), key=lambda j: (-ref[j], j))  # descending
    assert NEURON_SORTS["activation_difference"] == "activation difference (no weights)"
    sel = Selection(experiment="cifar20", pair=3, neuron=5, neuron_sort="activation_difference")
    query = to_query(sel)
    assert query["neuron_sort"] == "activation_difference" and from_query(query) == sel
