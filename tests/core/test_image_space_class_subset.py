"""The class subset of many-class experiments (paper §6.2.2: "the top-10 benign classes that contain the
largest number of misclassified images ... the top-10 adversarial labels observed within the selected
benign classes") against a Counter-based reference; the subset's filters, matrix and colours; WebGL
scatterplots at scale; and the subset's place in the selection model and its URL."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from core import image_space as isp
from core.ui import overview_charts as oc
from core.ui.palette import TAB20
from core.ui.state import Selection, from_query, to_query


def _pairs(labels, adv_labels, seed: int = 0) -> pd.DataFrame:
    """A pairs table with the columns the views read (t-SNE coordinates random)."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    return pd.DataFrame({"pair": np.arange(n, dtype=np.int64), "label": np.asarray(labels, dtype=np.int64),
                         "adv_label": np.asarray(adv_labels, dtype=np.int64),
                         **{c: rng.normal(size=n).astype(np.float32)
                            for c in ("tsne_benign_x", "tsne_benign_y", "tsne_adv_x", "tsne_adv_y")}})


def _random_pairs(n: int, k: int, seed: int) -> pd.DataFrame:
    """Skewed labels (few classes hold most pairs, many tie at small counts), adv_label != label."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, k + 1) ** 1.2
    labels = rng.permutation(k)[rng.choice(k, size=n, p=weights / weights.sum())]
    adv = (labels + rng.choice(np.arange(1, k), size=n, p=np.r_[weights[:k - 1] / weights[:k - 1].sum()])) % k
    return _pairs(labels, adv, seed)


# -- slow references -----------------------------------------------------------------------------
def _ref_top(counter: Counter, k: int) -> list[int]:
    ranked = sorted(counter, key=lambda c: (-counter[c], c))  # most first, ties: lower class id
    return sorted(ranked[:k])


def _ref_subset(pairs, top_benign=10, top_adversarial=10, benign=None):
    """The paper's two steps, one row at a time."""
    if benign is None:
        benign = _ref_top(Counter(int(r.label) for r in pairs.itertuples()), top_benign)
    benign = sorted(set(benign))
    within = Counter(int(r.adv_label) for r in pairs.itertuples() if int(r.label) in benign)
    return benign, _ref_top(within, top_adversarial)


def _ref_select(pairs, benign, adversarial, cell=None):
    out = []
    for r in pairs.itertuples():
        if int(r.label) in benign and int(r.adv_label) in adversarial and (
                cell is None or (int(r.label), int(r.adv_label)) == cell):
            out.append(int(r.pair))
    return out


# -- class_subset ----------------------------------------------------------------------------------
def test_constants():
    assert isp.TOP_CLASSES == 10
    assert isp.SUBSET_ABOVE == len(TAB20) == 20  # above it the palette has no distinct colours left


def test_hand_made_ties_go_to_the_lower_class_id():
    # true labels: 5 x3, 2 x3, 7 x3, 1 x2, 9 x1
    labels = [5, 5, 5, 2, 2, 2, 7, 7, 7, 1, 1, 9]
    adv = [3, 3, 8, 8, 3, 0, 4, 4, 4, 6, 6, 2]
    p = _pairs(labels, adv)
    b, a = isp.class_subset(p, 12, top_benign=2, top_adversarial=2)
    assert b.tolist() == [2, 5]            # 7 ties with them at 3 and loses on its id
    assert a.tolist() == [3, 8]            # within 2 and 5: 3 x3, 8 x2, 0 x1
    b, a = isp.class_subset(p, 12, top_benign=3, top_adversarial=1)
    assert b.tolist() == [2, 5, 7] and a.tolist() == [3]   # 3 and 4 tie at 3: the lower id
    assert (b.tolist(), a.tolist()) == _ref_subset(p, 3, 1)
    assert b.dtype == a.dtype == np.int64


def test_fewer_classes_than_the_top():
    p = _pairs([0, 0, 3, 3, 3], [3, 2, 0, 1, 1])
    b, a = isp.class_subset(p, 400)
    assert b.tolist() == [0, 3] and a.tolist() == [0, 1, 2, 3]  # only classes that occur
    assert (b.tolist(), a.tolist()) == _ref_subset(p)
    empty = _pairs([], [])
    assert [x.tolist() for x in isp.class_subset(empty, 30)] == [[], []]
    assert [x.tolist() for x in isp.class_subset(p, 400, top_benign=0)] == [[], []]


@pytest.mark.parametrize("n, k, seed", [(3000, 365, 0), (500, 365, 1), (2000, 40, 2), (60, 25, 3)])
@pytest.mark.parametrize("top_b, top_a", [(10, 10), (3, 15)])
def test_matches_the_reference(n, k, seed, top_b, top_a):
    p = _random_pairs(n, k, seed)
    b, a = isp.class_subset(p, k, top_b, top_a)
    assert (b.tolist(), a.tolist()) == _ref_subset(p, top_b, top_a)
    # the draws really tie at the cut (else the tie rule would go untested)
    counts = Counter(p["label"].tolist())
    ranked = sorted(counts.values(), reverse=True)
    if seed == 3 and top_b == 10:
        assert ranked[9] == ranked[10]


def test_user_benign_classes_drive_the_adversarial_top():
    p = _random_pairs(2000, 365, 4)
    mine = [300, 7, 7, 120]
    b, a = isp.class_subset(p, 365, benign=mine)
    assert b.tolist() == [7, 120, 300]
    assert (b.tolist(), a.tolist()) == _ref_subset(p, benign=mine)


def test_resolve_subset():
    p = _random_pairs(1500, 50, 5)
    rule = [x.tolist() for x in isp.class_subset(p, 50)]
    b, a, bad = isp.resolve_subset(p, 50)
    assert [b.tolist(), a.tolist()] == rule and bad == []
    b, a, bad = isp.resolve_subset(p, 50, benign=(3, 77, 9, -2))
    assert b.tolist() == [3, 9] and bad == [-2, 77]
    assert a.tolist() == _ref_subset(p, benign=[3, 9])[1]       # None: follows the benign classes
    b, a, bad = isp.resolve_subset(p, 50, benign=(3, 9), adversarial=(40, 1, 60))
    assert b.tolist() == [3, 9] and a.tolist() == [1, 40] and bad == [60]
    b, a, bad = isp.resolve_subset(p, 50, benign=(99, 100), adversarial=(500,))  # a stale link
    assert [b.tolist(), a.tolist()] == rule and bad == [99, 100, 500]
    b, a, _ = isp.resolve_subset(p, 50, benign=(), adversarial=(4,))           # emptied by the user
    assert b.tolist() == [] and a.tolist() == [4]
    assert isp.select(p, None, None, b, a).tolist() == []


# -- filters and the restricted matrix ---------------------------------------------------------------
def test_select_and_in_subset_match_the_reference():
    p = _random_pairs(2500, 365, 6)
    b, a = isp.class_subset(p, 365)
    want = _ref_select(p, set(b.tolist()), set(a.tolist()))
    assert 0 < len(want) < len(p)
    assert isp.select(p, None, None, b, a).tolist() == want
    assert np.flatnonzero(isp.in_subset(p, b, a)).tolist() == want
    assert isp.in_subset(p).all() and isp.select(p).tolist() == list(range(len(p)))
    only_b = [int(r.pair) for r in p.itertuples() if int(r.label) in set(b.tolist())]
    assert np.flatnonzero(isp.in_subset(p, benign=b)).tolist() == only_b
    cell = (int(p["label"][want[0]]), int(p["adv_label"][want[0]]))
    lasso = list(range(0, len(p), 2))
    assert isp.select(p, cell, lasso, b, a).tolist() == [
        i for i in _ref_select(p, set(b.tolist()), set(a.tolist()), cell) if i % 2 == 0]


def test_restrict_matrix_and_cell_in_subset():
    p = _random_pairs(2500, 365, 7)
    b, a = isp.class_subset(p, 365)
    sub = isp.restrict_matrix(isp.prediction_matrix(p, 365), b, a)
    assert sub.shape == (len(b), len(a))
    for i, t in enumerate(b.tolist()):
        for j, v in enumerate(a.tolist()):
            assert sub[i, j] == sum(1 for r in p.itertuples() if (r.label, r.adv_label) == (t, v))
    assert sub.sum() == len(_ref_select(p, set(b.tolist()), set(a.tolist())))
    assert isp.cell_in_subset(None, b, a)
    assert isp.cell_in_subset((int(b[0]), int(a[-1])), b, a)
    outside = next(c for c in range(365) if c not in b.tolist())
    assert not isp.cell_in_subset((outside, int(a[0])), b, a)
    assert not isp.cell_in_subset((int(b[0]), next(c for c in range(365) if c not in a.tolist())), b, a)


# -- charts ----------------------------------------------------------------------------------------------
def test_subset_colors_give_the_distinct_palette_to_the_subset():
    colors = oc.subset_colors(365, [300, 4, 77, 4])
    assert len(colors) == 365
    assert [colors[c] for c in (4, 77, 300)] == TAB20[:3]
    assert all(colors[c] == oc.OTHER_COLOR for c in range(365) if c not in (4, 77, 300))
    twenty = list(range(0, 200, 10))
    assert [oc.subset_colors(365, twenty)[c] for c in twenty] == TAB20


def test_scatter_figure_is_webgl_above_10k_points():
    p = _random_pairs(12_000, 40, 8)
    names = [f"c{i}" for i in range(40)]
    fig = oc.scatter_figure(p, names, oc.subset_colors(40, range(40)), "adversarial", "predicted")
    assert sum(len(t.x) for t in fig.data) == 12_000
    assert {t.type for t in fig.data} == {"scattergl"}
    b, a = isp.class_subset(p, 40)
    fig = oc.scatter_figure(p, names, oc.subset_colors(40, np.r_[b, a]), "benign", "true",
                            subset=isp.in_subset(p, b, a))
    assert sum(len(t.x) for t in fig.data) == 12_000
    assert {t.type for t in fig.data} == {"scattergl"}


@pytest.mark.parametrize("side, color_by", [("benign", "true"), ("adversarial", "predicted")])
def test_scatter_figure_greys_the_pairs_outside_the_subset(side, color_by):
    p = _random_pairs(3000, 365, 9)
    names = [f"class{i}" for i in range(365)]
    b, a = isp.class_subset(p, 365)
    inside = isp.in_subset(p, b, a)
    colors = oc.subset_colors(365, np.r_[b, a])
    fig = oc.scatter_figure(p, names, colors, side, color_by, subset=inside, highlight=[0, 1, 2])
    other, *coloured = fig.data
    assert other.name == oc.OTHER_NAME and other.marker.color == oc.OTHER_COLOR
    assert sorted(np.asarray(other.customdata).tolist()) == np.flatnonzero(~inside).tolist()
    group = oc.color_labels(p, side, color_by)
    allowed = set((b if side == "benign" or color_by == "true" else a).tolist())
    seen = []
    for t in coloured:
        c = names.index(t.name)
        assert c in allowed and t.marker.color == colors[c] != oc.OTHER_COLOR
        ids = np.asarray(t.customdata)
        assert inside[ids].all() and (group[ids] == c).all()
        seen += ids.tolist()
    assert sorted(seen) == np.flatnonzero(inside).tolist()
    highlighted = {int(t.customdata[j]) for t in fig.data for j in t.selectedpoints}
    assert highlighted == {0, 1, 2}
    # every pair inside: no grey trace
    assert oc.OTHER_NAME not in [t.name for t in oc.scatter_figure(p, names, colors, side, color_by,
                                                                    subset=np.ones(len(p), bool)).data]


def test_matrix_of_a_subset_keeps_class_ids_and_shows_counts():
    p = _random_pairs(3000, 365, 10)
    names = [f"class{i}" for i in range(365)]
    m = isp.prediction_matrix(p, 365)
    b, a = isp.class_subset(p, 365)
    df = oc.matrix_frame(m, names, b, a)
    assert len(df) == len(b) * len(a)
    for r in df.itertuples():
        assert r.label in b and r.adv_label in a
        assert r.count == m[r.label, r.adv_label]
        assert (r.true_name, r.adv_name) == (names[r.label], names[r.adv_label])
    assert df["count"].sum() == len(_ref_select(p, set(b.tolist()), set(a.tolist())))
    spec = oc.matrix_chart(m, names, None, rows=b, cols=a).to_dict()
    rect = spec["layer"][0]
    assert rect["encoding"]["y"]["sort"] == [names[c] for c in b]
    assert rect["encoding"]["x"]["sort"] == [names[c] for c in a]
    assert [layer["mark"]["type"] for layer in spec["layer"]] == ["rect", "text"]  # 10 x 10: counts shown
    assert oc.matrix_spec(m, names, (int(b[0]), int(a[0])), rows=b, cols=a) == \
        oc.with_cell(spec, (int(b[0]), int(a[0])))


# -- selection model and URL ---------------------------------------------------------------------------
def test_subset_in_the_selection_and_the_link():
    sel = Selection(experiment="places", cell=(3, 5), grid_page=4)
    moved = sel.with_classes([9, 3, 3], None)
    assert moved.benign_classes == (3, 9) and moved.adversarial_classes is None
    assert moved.grid_page == 0 and moved.cell == (3, 5)  # the page clears a cell outside the subset
    assert sel.with_classes([], [1]).benign_classes == ()
    assert moved.with_classes(None, None).benign_classes is None
    assert moved.with_experiment("other").benign_classes is None
    q = to_query(moved.with_classes([3, 9], [5, 200]))
    assert q["benign_classes"] == "3,9" and q["adversarial_classes"] == "5,200"
    assert from_query(q) == moved.with_classes([3, 9], [5, 200])
    assert "benign_classes" not in to_query(sel)
    emptied = sel.with_classes((), None)
    assert from_query(to_query(emptied)) == emptied


@pytest.mark.parametrize("text", ["1,x", "-1,3", "a", "1-2", "3.5"])
def test_a_bad_class_list_in_the_link_is_ignored(text):
    sel = from_query({"exp": "places", "benign_classes": text, "adversarial_classes": ["4", "7,2"]})
    assert sel.experiment == "places" and sel.benign_classes is None
    assert sel.adversarial_classes == (2, 7)
