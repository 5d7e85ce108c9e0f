"""The selection model's transitions and its URL round trip (pure, no Streamlit), and the codec under
hostile links (a property test: every value is clamped or ignored)."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from core.ui.state import MAX_LASSO_IN_URL, Selection, from_query, to_query


def test_default_selection_has_an_empty_query():
    assert to_query(Selection()) == {}
    assert from_query({}) == Selection()


def test_round_trip_of_every_field():
    sel = Selection(experiment="cifar10-resnet18", cell=(3, 5), lasso=(1, 4, 9), color_by="predicted",
                    grid_sort="benign_drop", grid_page=2, pair=17, neuron=403, neuron_sort="iou_bmap",
                    zoom=25, clusters=(700, 12), set_op="intersection", n_clusters=5, rf_mode="fraction",
                    rf_value=0.4, top=0.1, stride=1, interval="ci", coverage=0.9, distance="iou",
                    method="complete")
    q = to_query(sel)
    assert all(isinstance(v, str) for v in q.values())
    assert from_query(q) == sel


def test_malformed_or_hostile_values_are_ignored():
    q = {"exp": "demo", "cell": "3-x", "pair": "../../etc", "neuron": "12", "grid_sort": "rm -rf",
         "top": "nan", "clusters": "1,a", "unknown": "1", "lasso": "5,5,2", "stride": "0",
         "coverage": "7", "grid_page": "-3"}
    sel = from_query(q)
    assert sel.experiment == "demo" and sel.neuron == 12 and sel.lasso == (2, 5)
    assert sel.cell is None and sel.pair is None and sel.grid_sort == Selection().grid_sort
    assert sel.clusters == () and sel.top == Selection().top and sel.stride == Selection().stride
    assert sel.coverage == Selection().coverage and sel.grid_page == 0


def test_streamlit_style_list_values_take_the_last():
    assert from_query({"pair": ["1", "2"]}).pair == 2


def test_transitions_clear_what_depends_on_them():
    sel = Selection(experiment="a", cell=(1, 2), grid_page=3, pair=5, neuron=7, clusters=(600,))
    assert sel.with_experiment("b") == Selection(experiment="b")
    assert sel.with_experiment("a") is sel
    moved = sel.with_pair(6)
    assert moved.pair == 6 and moved.clusters == () and moved.neuron == 7
    assert sel.with_cell((2, 1)).grid_page == 0 and sel.with_cell(None).cell is None
    assert sel.with_lasso([3, 1, 3]).lasso == (1, 3)
    assert sel.toggle_cluster(601).clusters == (600, 601)
    assert sel.toggle_cluster(600).clusters == ()


def test_long_lasso_is_left_out_of_the_link():
    sel = Selection(experiment="a", lasso=tuple(range(MAX_LASSO_IN_URL + 1)))
    assert "lasso" not in to_query(sel)


# -- hostile links (issue 12): every value is clamped or ignored, never an exception ---------------------
HOSTILE = ["", " ", "-1", "0", "1e-300", "-1e308", "1e308", "nan", "NaN", "inf", "-inf", "1" * 40,
           "9" * 5000, "2147483648", "0x10", "1_000", "١٢", "1,2,3", ",,,", "1," * 2000, "-5,3", "3-4",
           "3-4-5", "99999999999-1", "<img src=x onerror=alert(1)>", "[a](http:evil)", ":red[x]", "$x$",
           "\x00", "quantile", "absolute"]
KEYS = ["exp", "cell", "lasso", "color_by", "benign_classes", "adversarial_classes", "grid_sort",
        "grid_page", "pair", "neuron", "neuron_sort", "zoom", "clusters", "set_op", "n_clusters", "rf_mode",
        "rf_value", "top", "stride", "interval", "coverage", "distance", "method", "unknown"]


def _check_bounds(sel: Selection) -> None:
    """Every field of a decoded link is within what the pages and their widgets accept."""
    from core.ui import state
    for key, (lo, hi) in state.INT_RANGES.items():
        v = getattr(sel, key)
        assert v is None or (isinstance(v, int) and lo <= v <= hi), (key, v)
    for key, (lo, hi) in state.FLOAT_RANGES.items():
        v = getattr(sel, key)
        assert v is None or (math.isfinite(v) and lo <= v <= hi), (key, v)
    if sel.rf_mode != "absolute" and sel.rf_value is not None:
        assert 0 <= sel.rf_value <= 1
    ids = [*(sel.cell or ()), *(sel.lasso or ()), *sel.clusters, *(sel.benign_classes or ()),
           *(sel.adversarial_classes or ())]
    assert all(isinstance(i, int) and 0 <= i <= state.MAX_ID for i in ids)
    assert len(sel.clusters) == len(set(sel.clusters)) <= state.MAX_LIST["clusters"]
    assert sel.experiment is None or len(sel.experiment) <= state.MAX_EXPERIMENT_CHARS + 1
    for key, options in state._CHOICES.items():
        assert getattr(sel, key) in options


@pytest.mark.reliability
def test_hostile_values_of_the_issue_are_ignored():
    sel = from_query({"n_clusters": "1" * 40, "top": "1e-300", "rf_value": "-1e308", "zoom": "9" * 5000,
                      "stride": "inf", "coverage": "nan", "pair": "-1", "neuron": "2147483648",
                      "clusters": "5,5,-1", "lasso": "1," * 200_000, "grid_page": "1e9", "exp": "x" * 500})
    d = Selection()
    assert (sel.n_clusters, sel.top, sel.rf_value) == (d.n_clusters, d.top, None)
    assert (sel.zoom, sel.stride) == (0, d.stride)
    assert sel.pair is None and sel.neuron is None and sel.clusters == () and sel.lasso is None
    assert sel.grid_page == 0 and sel.experiment.endswith("…") and len(sel.experiment) == 65
    assert from_query({"rf_value": "5"}).rf_value is None  # a quantile above 1
    assert from_query({"rf_mode": "absolute", "rf_value": "5"}).rf_value == 5.0
    assert from_query({"clusters": "7,3,7"}).clusters == (7, 3)
    assert from_query({"pair": []}) == Selection()


@pytest.mark.reliability
@settings(max_examples=400, derandomize=True, deadline=None)
@given(hst.dictionaries(hst.sampled_from(KEYS),
                        hst.one_of(hst.sampled_from(HOSTILE), hst.text(max_size=30),
                                   hst.integers().map(str), hst.floats().map(repr),
                                   hst.lists(hst.sampled_from(HOSTILE), max_size=3))))
def test_any_link_decodes_within_bounds_and_round_trips(query):
    sel = from_query(query)
    _check_bounds(sel)
    again = from_query(to_query(sel))
    assert again == sel or (sel.lasso is not None and len(sel.lasso) > MAX_LASSO_IN_URL)
