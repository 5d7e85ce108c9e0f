"""Image space (paper §5.1): the prediction matrix, the cell/lasso selection, the four grid sorts and
paging against slow loop references, on a hand-made table and on the real cifar20 store's pairs; and
the Image space page's pure chart builders and chart-event mappings (core.ui.overview_charts)."""
from __future__ import annotations

from decimal import Decimal, getcontext

import numpy as np
import pandas as pd
import pytest

from core.image_space import DEFAULT_SORT, SORTS, page, prediction_matrix, select, sort_key, sort_pairs
from core.ui import overview_charts as oc
from core.ui.palette import class_colors


def _frame(rows) -> pd.DataFrame:
    """Pairs from (label, adv_label, l2, benign_prob, benign_prob_adv, adv_prob, adv_prob_benign)."""
    cols = ["label", "adv_label", "l2", "benign_prob", "benign_prob_adv", "adv_prob", "adv_prob_benign"]
    df = pd.DataFrame(rows, columns=cols)
    df.insert(0, "pair", np.arange(len(df), dtype=np.int64))
    for c in cols[2:]:
        df[c] = df[c].astype(np.float32)
    return df


@pytest.fixture
def hand() -> pd.DataFrame:
    # Ties on purpose (dyadic values, exact in float32): pairs 0/3 share l2, 0/5 and 1/4 the benign
    # drop, 2/5 the adversarial rise.
    return _frame([
        (0, 1, 0.5, 1.0, 0.25, 0.875, 0.0625),
        (0, 1, 0.25, 0.75, 0.375, 0.625, 0.25),
        (1, 0, 0.875, 1.0, 0.0625, 0.5625, 0.0625),
        (2, 0, 0.5, 1.0, 0.5, 0.9375, 0.0),
        (2, 1, 0.75, 0.625, 0.25, 0.75, 0.5),
        (0, 2, 0.125, 0.75, 0.0, 0.625, 0.125),
    ])


@pytest.fixture(scope="module")
def real(cifar20_store) -> pd.DataFrame:
    return cifar20_store.pairs


@pytest.fixture(scope="module")
def real_logits(cifar20_store) -> tuple[np.ndarray, np.ndarray]:
    return tuple(np.asarray(cifar20_store.array(f"{side}_logits")) for side in ("benign", "adversarial"))


# -- slow references -----------------------------------------------------------------------------
def _ref_matrix(pairs, k):
    m = [[0] * k for _ in range(k)]
    for _, r in pairs.iterrows():
        m[int(r["label"])][int(r["adv_label"])] += 1
    return np.array(m)


def _ref_select(pairs, cell, ids):
    out = []
    wanted = None if ids is None else {int(i) for i in ids}
    for _, r in pairs.iterrows():
        if cell is not None and (int(r["label"]), int(r["adv_label"])) != tuple(cell):
            continue
        if wanted is not None and int(r["pair"]) not in wanted:
            continue
        out.append(int(r["pair"]))
    return sorted(out)


def _dec_softmax(z, c) -> Decimal:
    getcontext().prec = 60
    e = [Decimal(float(v)).exp() for v in z]
    return e[c] / sum(e)


def _ref_value(r, sort, logits=None):
    """The paper's four measures and whether larger comes first: Python floats from the probability
    columns, or, given the pair's (benign, adversarial) logits, 60-digit decimals from the logits."""
    if logits is not None and sort in ("benign_drop", "adversarial_rise"):
        zb, za = logits
        if sort == "benign_drop":  # p_b(B) - p_a(B)
            return _dec_softmax(zb, int(r["label"])) - _dec_softmax(za, int(r["label"])), True
        return _dec_softmax(za, int(r["adv_label"])) - _dec_softmax(zb, int(r["adv_label"])), True
    if sort == "l2_increasing":
        return float(r["l2"]), False
    if sort == "l2_decreasing":
        return float(r["l2"]), True
    if sort == "benign_drop":      # p_b(B) - p_a(B)
        return float(r["benign_prob"]) - float(r["benign_prob_adv"]), True
    if sort == "adversarial_rise":  # p_a(A) - p_b(A)
        return float(r["adv_prob"]) - float(r["adv_prob_benign"]), True
    raise AssertionError(sort)


def _ref_sort(pairs, ids, sort, logits=None):
    rows = {int(r["pair"]): r for _, r in pairs.iterrows()}
    keyed = []
    for i in ids:
        v, desc = _ref_value(rows[int(i)], sort, None if logits is None else (logits[0][i], logits[1][i]))
        keyed.append(((-v if desc else v), int(i)))
    keyed.sort()  # ties: lower pair id first
    return [i for _, i in keyed]


def _ref_page(ids, p, per_page):
    ids = list(ids)
    pages = 1
    while pages * per_page < len(ids):
        pages += 1
    p = min(max(p, 0), pages - 1)
    return ids[p * per_page:(p + 1) * per_page], p, pages


# -- core.image_space ------------------------------------------------------------------------------
def test_sorts_are_the_papers_four():
    assert list(SORTS) == ["l2_increasing", "l2_decreasing", "benign_drop", "adversarial_rise"]
    assert DEFAULT_SORT == "l2_increasing"
    with pytest.raises(ValueError, match="unknown grid sort"):
        sort_key(_frame([(0, 1, 0.1, 0.9, 0.1, 0.8, 0.1)]), "nope")


def test_prediction_matrix_hand_made(hand):
    m = prediction_matrix(hand, 3)
    assert m.dtype == np.int64 and m.shape == (3, 3)
    assert m.tolist() == [[0, 2, 1], [1, 0, 0], [1, 1, 0]]
    np.testing.assert_array_equal(m, _ref_matrix(hand, 3))


def test_prediction_matrix_real(real, cifar20_store):
    k = len(cifar20_store.classes)
    m = prediction_matrix(real, k)
    np.testing.assert_array_equal(m, _ref_matrix(real, k))
    assert m.sum() == len(real) == len(cifar20_store)
    assert np.trace(m) == 0  # only successful attacks are stored


@pytest.mark.parametrize("cell, ids", [(None, None), ((0, 1), None), ((2, 2), None), (None, [5, 1, 1, 3]),
                                       ((0, 1), [1, 2, 5]), ((0, 1), []), (None, [-1, 4, 99])])
def test_select_hand_made(hand, cell, ids):
    got = select(hand, cell, ids)
    assert got.dtype == np.int64
    assert got.tolist() == _ref_select(hand, cell, ids)


def test_select_real_every_cell_and_a_lasso(real, cifar20_store):
    k = len(cifar20_store.classes)
    rng = np.random.default_rng(0)
    lasso = rng.choice(len(real), size=len(real) // 2, replace=False)
    assert select(real).tolist() == list(range(len(real)))
    for t in range(k):
        for a in range(k):
            assert select(real, (t, a)).tolist() == _ref_select(real, (t, a), None)
            assert select(real, (t, a), lasso).tolist() == _ref_select(real, (t, a), lasso)
    assert select(real, None, lasso).tolist() == sorted(lasso.tolist())


@pytest.mark.parametrize("sort", list(SORTS))
def test_sort_pairs_hand_made_ties_by_lower_id(hand, sort):
    ids = [5, 4, 3, 2, 1, 0]
    assert sort_pairs(hand, ids, sort).tolist() == _ref_sort(hand, ids, sort)


def test_sort_pairs_hand_made_known_orders(hand):
    assert sort_pairs(hand, range(6), "l2_increasing").tolist() == [5, 1, 0, 3, 4, 2]
    assert sort_pairs(hand, range(6), "l2_decreasing").tolist() == [2, 4, 0, 3, 1, 5]
    # drops: .75 .375 .9375 .5 .375 .75 -> 2, the tie 0/5, 3, the tie 1/4
    assert sort_pairs(hand, range(6), "benign_drop").tolist() == [2, 0, 5, 3, 1, 4]
    # rises: .8125 .375 .5 .9375 .25 .5 -> 3, 0, the tie 2/5, 1, 4
    assert sort_pairs(hand, range(6), "adversarial_rise").tolist() == [3, 0, 2, 5, 1, 4]


def test_sort_measures_keep_the_precision_of_tiny_probabilities():
    """Strong attacks saturate p_a(A) at 1.0 (float32), so the rise p_a(A) - p_b(A) differs only by
    p_b(A) ~ 1e-9: the difference must be taken in float64, not in the stored float32."""
    df = _frame([(0, 1, 0.1, 1.0, 2e-9, 1.0, 2e-9),
                 (0, 1, 0.1, 1.0, 1e-9, 1.0, 1e-9)])
    assert sort_pairs(df, [0, 1], "adversarial_rise").tolist() == [1, 0]
    assert sort_pairs(df, [0, 1], "benign_drop").tolist() == [1, 0]


@pytest.mark.parametrize("sort", list(SORTS))
def test_sort_pairs_real(real, real_logits, sort):
    """The real store's pairs against the measures in 60-digit decimals from the stored logits."""
    ids = select(real)
    assert sort_pairs(real, ids, sort).tolist() == _ref_sort(real, ids, sort, real_logits)
    sub = ids[::3][::-1]
    assert sort_pairs(real, sub, sort).tolist() == _ref_sort(real, sub, sort, real_logits)
    assert sort_pairs(real, [], sort).tolist() == []


def test_store_pairs_has_exact_drop_and_rise_from_the_logits(real, real_logits):
    """Store.pairs adds the float64 drop/rise (and log-odds) computed from the logits; ResNet20 gives many
    benign images a float32 probability of exactly 1.0, where the stored probabilities lose the drop's
    last digits."""
    zb, za = real_logits
    assert (real["benign_prob"] == 1.0).sum() >= 3
    for i in range(len(real)):
        b, a = int(real["label"][i]), int(real["adv_label"][i])
        for col, ref in (("benign_drop", _dec_softmax(zb[i], b) - _dec_softmax(za[i], b)),
                         ("adversarial_rise", _dec_softmax(za[i], a) - _dec_softmax(zb[i], a))):
            got = Decimal(float(real[col][i]))
            assert abs(got - ref) <= abs(ref) * Decimal("1e-12"), (i, col)
    assert real["benign_drop"].dtype == np.float64 and real["adversarial_rise"].dtype == np.float64


def test_exact_sort_orders_pairs_whose_probabilities_round_to_one():
    """Pairs whose benign probability is 1.0 in float32 and whose adversarial p_a(B) is below float64's
    resolution next to 1: the probability columns tie them, the exact column does not."""
    df = _frame([(0, 1, 0.1, 1.0, 1e-20, 1.0, 1e-20),
                 (0, 1, 0.1, 1.0, 1e-20, 1.0, 1e-20)])
    assert sort_pairs(df, [0, 1], "benign_drop").tolist() == [0, 1]  # tie: pair id order
    df["benign_drop"] = [1 - 1e-9, 1 - 1e-12]  # what Store.pairs computes from the logits
    df["adversarial_rise"] = [1 - 3e-12, 1 - 2e-12]
    assert sort_pairs(df, [0, 1], "benign_drop").tolist() == [1, 0]
    assert sort_pairs(df, [0, 1], "adversarial_rise").tolist() == [1, 0]


@pytest.mark.parametrize("n, per_page", [(0, 12), (1, 12), (12, 12), (13, 12), (50, 7)])
def test_page_against_reference(n, per_page):
    ids = np.arange(100, 100 + n)
    for p in (-3, 0, 1, 2, 5, 100):
        got, shown, pages = page(ids, p, per_page)
        want, want_p, want_pages = _ref_page(ids, p, per_page)
        assert got.tolist() == want and shown == want_p and pages == want_pages


# -- core.ui.overview_charts -----------------------------------------------------------------------
def test_selected_pairs_reads_customdata():
    event = {"selection": {"points": [{"curve_number": 0, "point_index": 3, "customdata": 17},
                                      {"curve_number": 2, "point_index": 0, "customdata": [4]},
                                      {"curve_number": 1, "point_index": 9, "customdata": 17},
                                      {"curve_number": 1, "point_index": 2}],
                           "point_indices": [3, 0, 9, 2], "box": [], "lasso": [{"x": [0], "y": [0]}]}}
    assert oc.selected_pairs(event) == [4, 17]


@pytest.mark.parametrize("event", [None, {}, {"selection": {}}, {"selection": {"points": []}},
                                   {"selection": {"points": [], "box": [{"x": [0, 1], "y": [0, 1]}]}}])
def test_selected_pairs_empty_clears(event):
    assert oc.selected_pairs(event) is None


def test_selected_pairs_attribute_style_event():
    class Event:  # Streamlit hands out attribute-access dicts
        selection = {"points": [{"customdata": 2.0}]}
    assert oc.selected_pairs(Event()) == [2]


def test_clicked_cell_selects_toggles_and_clears():
    m = np.array([[0, 3, 0], [2, 0, 1], [0, 4, 0]])

    def ev(*cells):
        return {"selection": {oc.MATRIX_PARAM: [{"label": t, "adv_label": a} for t, a in cells]}}

    assert oc.clicked_cell(ev((0, 1)), None, m) == (0, 1)
    assert oc.clicked_cell(ev((0, 1)), (0, 1), m) is None            # same cell again: toggle off
    assert oc.clicked_cell(ev((0, 1), (2, 1)), (0, 1), m) == (2, 1)  # shift-click adds: the new one
    assert oc.clicked_cell(ev((1, 1)), (0, 1), m) is None            # empty (diagonal) cell
    assert oc.clicked_cell(ev((7, 1)), None, m) is None              # outside the matrix
    assert oc.clicked_cell(ev((1, 2)), None) == (1, 2)               # no matrix: no count check
    assert oc.clicked_cell({"selection": {oc.MATRIX_PARAM: {}}}, (0, 1), m) is None
    assert oc.clicked_cell({"selection": {oc.MATRIX_PARAM: []}}, None, m) is None
    assert oc.clicked_cell(None, (0, 1), m) is None
    assert oc.clicked_cell({"selection": {oc.MATRIX_PARAM: [{"label": "x"}]}}, None, m) is None


def test_color_labels(hand):
    assert oc.color_labels(hand, "benign", "true").tolist() == hand["label"].tolist()
    assert oc.color_labels(hand, "benign", "predicted").tolist() == hand["label"].tolist()
    assert oc.color_labels(hand, "adversarial", "true").tolist() == hand["label"].tolist()
    assert oc.color_labels(hand, "adversarial", "predicted").tolist() == hand["adv_label"].tolist()
    with pytest.raises(ValueError):
        oc.color_labels(hand, "left", "true")
    with pytest.raises(ValueError):
        oc.color_labels(hand, "adversarial", "nope")


@pytest.mark.parametrize("side, color_by", [("benign", "true"), ("adversarial", "predicted"),
                                            ("adversarial", "true")])
def test_scatter_figure_one_trace_per_class(real, cifar20_store, side, color_by):
    classes = cifar20_store.classes
    colors = class_colors(len(classes))
    fig = oc.scatter_figure(real, classes, colors, side, color_by)
    group = oc.color_labels(real, side, color_by)
    x_col, y_col = oc.SIDES[side]
    assert [t.type for t in fig.data] == ["scattergl"] * len(np.unique(group))
    seen = []
    for t in fig.data:
        c = classes.index(t.name)
        assert t.marker.color == colors[c] and t.selectedpoints is None
        ids = np.asarray(t.customdata)
        assert (group[ids] == c).all()
        np.testing.assert_array_equal(t.x, real[x_col].to_numpy()[ids])
        np.testing.assert_array_equal(t.y, real[y_col].to_numpy()[ids])
        i = int(ids[0])
        assert t.hovertext[0] == (f"true: {classes[real['label'][i]]}<br>"
                                  f"adversarial: {classes[real['adv_label'][i]]}")
        assert "%{customdata}" in t.hovertemplate
        seen += ids.tolist()
    assert sorted(seen) == list(range(len(real)))


def test_scatter_figure_highlight_marks_the_same_pairs(real, cifar20_store):
    classes = cifar20_store.classes
    want = {3, 10, 11, 40}
    fig = oc.scatter_figure(real, classes, class_colors(len(classes)), "adversarial", "predicted",
                            highlight=sorted(want))
    got = set()
    for t in fig.data:
        got |= {int(t.customdata[j]) for j in t.selectedpoints}
    assert got == want


def test_matrix_frame_and_chart(real, cifar20_store):
    classes = cifar20_store.classes
    k = len(classes)
    m = prediction_matrix(real, k)
    df = oc.matrix_frame(m, classes)
    assert len(df) == k * k and df["count"].sum() == len(real)
    for r in df.itertuples():
        assert r.count == m[r.label, r.adv_label]
        assert r.true_name == classes[r.label] and r.adv_name == classes[r.adv_label]
    spec = oc.matrix_chart(m, classes, (3, 5)).to_dict()
    current = {p["name"]: p for p in spec["params"]}[oc.CELL_PARAM]
    assert current["value"] == [3, 5]
    assert oc.CELL_PARAM in spec["layer"][0]["encoding"]["stroke"]["condition"]["test"]
    assert oc.with_cell(spec, None) is spec and current["value"] == [-1, -1]
    oc.with_cell(spec, (np.int64(1), 2))
    assert current["value"] == [1, 2]
    assert spec == oc.matrix_chart(m, classes, (1, 2)).to_dict()  # same as building it for that cell
    with pytest.raises(ValueError, match="not a prediction-matrix spec"):
        oc.with_cell({"params": []}, (0, 1))
    rect = spec["layer"][0]
    assert rect["mark"]["type"] == "rect"
    # Altair lifts a layer's params to the top, naming the layer it sits on.
    param = {p["name"]: p for p in spec["params"]}[oc.MATRIX_PARAM]
    assert param["name"] == oc.MATRIX_PARAM and param["select"]["type"] == "point"
    assert param["select"]["fields"] == ["label", "adv_label"] and param["views"] == [rect["name"]]
    assert rect["encoding"]["y"]["field"] == "true_name" and rect["encoding"]["x"]["field"] == "adv_name"
    assert rect["encoding"]["y"]["sort"] == classes
    assert "oranges" in str(rect["encoding"]["color"])
    assert spec["layer"][1]["mark"]["type"] == "text"


def test_matrix_chart_drops_text_for_many_classes():
    classes = [f"c{i}" for i in range(25)]
    m = np.ones((25, 25), dtype=np.int64)
    spec = oc.matrix_chart(m, classes).to_dict()
    assert [layer["mark"]["type"] for layer in spec["layer"]] == ["rect"]


def test_probability_bar_and_legend():
    bar = oc.probability_bar(0.873, "#ff7f0e", "cat")
    assert "width:87.3%" in bar and "#ff7f0e" in bar and "cat: 87.3%" in bar
    assert "width:100.0%" in oc.probability_bar(1.7, "#000000", "x")
    assert "width:0.0%" in oc.probability_bar(-1, "#000000", "x")
    key = oc.legend(["a<b", "c"], ["#111111", "#222222"])
    assert "a&lt;b" in key and "#222222" in key

