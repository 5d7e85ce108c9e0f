"""The selection model's transitions and its URL round trip (pure, no Streamlit), and the codec under
hostile links (a property test: every value is clamped or ignored)."""
import math
from dataclasses import fields

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst
from scipy.cluster import hierarchy

from core import clustering
from core.ui import state
from core.ui.state import MAX_LASSO_IN_URL, Selection, from_query, to_query


def test_default_selection_has_an_empty_query():
    assert to_query(Selection()) == {}
    assert from_query({}) == Selection()
    assert to_query(Selection(experiment="a", pair=3)) == {"exp": "a", "pair": "3"}  # defaults left out


def test_round_trip_of_every_field():
    sel = Selection(experiment="cifar10-resnet18", cell=(3, 5), lasso=(1, 4, 9), color_by="predicted",
                    benign_classes=(2, 7), adversarial_classes=(), grid_sort="benign_drop", grid_page=2,
                    pair=17, neuron=403, neuron_sort="iou_bmap", zoom=25, clusters=((3, 4, 5, 6, 9), (12,)),
                    set_op="intersection", n_clusters=5, rf_mode="fraction", rf_value=0.4, top=0.1,
                    stride=1, k=3, interval="ci", coverage=0.9, distance="iou", method="complete")
    default = Selection()
    assert [f.name for f in fields(Selection) if getattr(sel, f.name) == getattr(default, f.name)] == []
    q = to_query(sel)
    assert len(q) == len(fields(Selection)) and all(isinstance(v, str) for v in q.values())
    assert from_query(q) == sel


def test_the_codec_follows_the_fields():
    """Every field has one link parameter (the experiment's is ``exp``), with its bounds or options."""
    assert sorted(f.name for f, _ in state.PARAMS.values()) == sorted(f.name for f in fields(Selection))
    assert "exp" in state.PARAMS and "experiment" not in state.PARAMS
    assert state.INT_RANGES["k"] == state.INT_RANGES["stride"] == (1, 64)
    assert state.CHOICES["neuron_sort"] == tuple(state.NEURON_SORTS)
    assert from_query({"k": "0"}).k is None and from_query({"k": "65"}).k is None
    assert from_query({"k": "64", "stride": "2"}) == Selection(k=64, stride=2)
    assert Selection().stride is None and Selection().k is None  # the image size decides (Analysis)


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
    sel = Selection(experiment="a", cell=(1, 2), grid_page=3, pair=5, neuron=7, clusters=((600, 601),))
    assert sel.with_experiment("b") == Selection(experiment="b")
    assert sel.with_experiment("a") is sel
    moved = sel.with_pair(6)
    assert moved.pair == 6 and moved.clusters == () and moved.neuron == 7
    assert sel.with_cell((2, 1)).grid_page == 0 and sel.with_cell(None).cell is None
    assert sel.with_lasso([3, 1, 3]).lasso == (1, 3)
    assert sel.toggle_cluster([9, 8, 9]).clusters == ((600, 601), (8, 9))
    assert sel.toggle_cluster((601, 600)).clusters == ()
    assert sel.toggle_cluster([]) is sel


def test_long_lasso_is_left_out_of_the_link():
    sel = Selection(experiment="a", lasso=tuple(range(MAX_LASSO_IN_URL + 1)))
    assert "lasso" not in to_query(sel)


# -- hostile links (issue 12): every value is clamped or ignored, never an exception ---------------------
HOSTILE = ["", " ", "-1", "0", "1e-300", "-1e308", "1e308", "nan", "NaN", "inf", "-inf", "1" * 40,
           "9" * 5000, "2147483648", "0x10", "1_000", "١٢", "1,2,3", ",,,", "1," * 2000, "-5,3", "3-4",
           "3-4-5", "99999999999-1", "<img src=x onerror=alert(1)>", "[a](http:evil)", ":red[x]", "$x$",
           "\x00", "quantile", "absolute"]
HOSTILE += ["0-2147483647", "5-3", "1.2-", "1..2", "1-3.2,4", "0-99999,0-99999"]
KEYS = ["exp", "cell", "lasso", "color_by", "benign_classes", "adversarial_classes", "grid_sort",
        "grid_page", "pair", "neuron", "neuron_sort", "zoom", "clusters", "set_op", "n_clusters", "rf_mode",
        "rf_value", "top", "stride", "k", "interval", "coverage", "distance", "method", "unknown"]


def _check_bounds(sel: Selection) -> None:
    """Every field of a decoded link is within what the pages and their widgets accept."""
    for key, (lo, hi) in state.INT_RANGES.items():
        v = getattr(sel, key)
        assert v is None or (isinstance(v, int) and lo <= v <= hi), (key, v)
    for key, (lo, hi) in state.FLOAT_RANGES.items():
        v = getattr(sel, key)
        assert v is None or (math.isfinite(v) and lo <= v <= hi), (key, v)
    if sel.rf_mode != "absolute" and sel.rf_value is not None:
        assert 0 <= sel.rf_value <= 1
    ids = [*(sel.cell or ()), *(sel.lasso or ()), *(j for c in sel.clusters for j in c),
           *(sel.benign_classes or ()), *(sel.adversarial_classes or ())]
    assert all(isinstance(i, int) and 0 <= i <= state.MAX_ID for i in ids)
    assert len(sel.clusters) == len(set(sel.clusters)) <= state.MAX_LIST["clusters"]
    assert all(c and list(c) == sorted(set(c)) for c in sel.clusters)
    assert sum(len(c) for c in sel.clusters) <= state.MAX_CLUSTER_NEURONS
    assert sel.experiment is None or len(sel.experiment) <= state.MAX_EXPERIMENT_CHARS + 1
    for key, options in state.CHOICES.items():
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
    assert from_query({"clusters": "7,3,7"}).clusters == ((7,), (3,))
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


# -- clusters as neuron sets in the link (issue 13) --------------------------------------------------------
def test_neuron_sets_encode_compactly_and_round_trip():
    assert state.encode_set([9, 3, 4, 5, 6, 12, 13]) == "3-6.9.12.13"
    assert state.decode_set("3-6.9.12.13", 100) == (3, 4, 5, 6, 9, 12, 13)
    assert state.decode_set("5.5.1", 100) == (1, 5)
    sel = Selection(experiment="a", clusters=(tuple(range(200, 439)), (94,), (1, 3, 5)))
    q = to_query(sel)
    assert q["clusters"] == "200-438,94,1.3.5"
    assert from_query(q) == sel


def test_cluster_lists_out_of_bounds_are_ignored_whole():
    for bad in ("0-2147483647", "3-1", "1-", "-1", "1..2", "a", "2147483648", "1-2-3"):
        assert from_query({"clusters": bad}).clusters == (), bad
    n = state.MAX_CLUSTER_NEURONS
    assert from_query({"clusters": f"0-{n - 1}"}).clusters == (tuple(range(n)),)
    assert from_query({"clusters": f"0-{n - 1},{n + 5}"}).clusters == ()  # one id too many
    many = ",".join(str(i) for i in range(state.MAX_LIST["clusters"] + 1))
    assert from_query({"clusters": many}).clusters == ()
    assert from_query({"clusters": "4,,2.1,"}).clusters == ((4,), (1, 2))


def test_old_links_node_numbers_read_as_one_neuron_sets():
    """Before issue 13 ``clusters=`` held node numbers: a leaf's is its neuron id (the same set); an
    internal node's (>= n) names no neuron, and the Clustering page lists it as ignored."""
    assert from_query({"clusters": "700,12"}).clusters == ((700,), (12,))


def test_iou_distance_never_keeps_a_euclidean_only_linkage():
    sel = Selection(experiment="a")
    assert sel.method == clustering.DEFAULT_METHOD == "ward"
    iou = sel.with_distance("iou")
    assert (iou.distance, iou.method) == ("iou", clustering.default_method("iou"))
    assert iou.with_distance("l2").method == iou.method  # the user's linkage is kept when valid
    assert Selection(method="average").with_distance("iou").method == "average"
    assert from_query({"distance": "iou"}).method == "complete"  # a link without a linkage
    asked = Selection(distance="iou", method="ward")  # a link that asks for the refused combination
    assert to_query(asked)["method"] == "ward" and from_query(to_query(asked)) == asked


# -- climbing from the selected neuron: one level per press (§6.1.4 "two levels up") ----------------------
@pytest.fixture(scope="module")
def tree():
    x = np.random.default_rng(5).normal(size=(50, 4))
    x[40:] = 0.0  # ten identical neurons
    return hierarchy.linkage(x, "ward")


def _path_sets(Z, neuron):
    return [tuple(clustering.subtree(Z, v).tolist()) for v in clustering.nodes_containing(Z, neuron)]


def test_each_press_climbs_one_level_and_down_comes_back(tree):
    Z, j = tree, 7
    path = _path_sets(Z, j)
    other = (45, 46)  # another selected cluster, left alone by the climb
    sel = Selection(experiment="a", pair=0, neuron=j, clusters=(other,))
    assert sel.climbed() is None and sel.climb_level(Z) is None
    up1 = sel.climb_up(Z)
    assert up1.clusters == (other, path[0]) and up1.climb_level(Z) == 1
    up2 = up1.climb_up(Z)
    assert up2.clusters == (other, path[1]) and up2.climb_level(Z) == 2  # replaced, not added
    up3 = up2.climb_up(Z)
    assert up3.clusters == (other, path[2]) and up3.climb_level(Z) == 3
    assert up3.climb_down(Z) == up2 and up2.climb_down(Z) == up1
    assert up1.climb_down(Z) == sel  # from the parent: back to the neuron alone
    assert up3.climb_reset() == sel and sel.climb_reset() is sel and sel.climb_down(Z) is sel
    top = sel
    for _ in range(len(path) + 3):  # past the root: stays at the root
        top = top.climb_up(Z)
    assert top.clusters == (other, tuple(range(50))) and top.climb_level(Z) == len(path)


def test_climbing_needs_a_neuron_of_this_tree(tree):
    assert Selection().climb_up(tree) == Selection()
    far = Selection(neuron=99)
    assert far.climb_up(tree) is far and far.climb_down(tree) is far


def test_climbing_from_a_set_that_is_not_a_cluster_of_this_tree(tree):
    """After another linkage the climbed set may not be one cluster here: up gives the smallest cluster
    containing it, down the largest cluster of the neuron's path inside it; nothing else changes."""
    Z, j = tree, 7
    path = _path_sets(Z, j)
    far = next(v for v in range(50) if v not in path[2])
    loose = tuple(sorted(set(path[1]) | {far}))  # the grandparent's cluster and one neuron from elsewhere
    assert clustering.cluster_node(Z, loose) is None
    sel = Selection(neuron=j, clusters=(loose,))
    assert sel.climb_level(Z) is None
    up = sel.climb_up(Z)
    want = tuple(clustering.subtree(Z, clustering.common_ancestor(Z, loose)).tolist())
    assert up.clusters == (want,) and set(loose) < set(want)
    assert sel.climb_down(Z).clusters == (path[1],)


def test_a_climb_onto_a_set_already_selected_keeps_one_copy(tree):
    Z, j = tree, 7
    path = _path_sets(Z, j)
    sel = Selection(neuron=j, clusters=(path[1], path[0]))  # climbed: the last set holding the neuron
    assert sel.climbed() == 1
    assert sel.climb_up(Z).clusters == (path[1],)


def test_dead_neurons_set_is_one_cluster(tree):
    dead = tuple(range(40, 50))
    node = clustering.cluster_node(tree, dead)
    assert node is not None and tree[node - 50, 2] == 0
    sel = Selection(neuron=41).toggle_cluster(dead)
    assert sel.climbed() == 0 and sel.climb_level(tree) is not None
