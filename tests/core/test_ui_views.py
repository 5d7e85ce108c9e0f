"""The pages' view models (core.ui.views), without Streamlit, on the small real ResNet20 store: each
value a page shows is recomputed here from the store and the core functions."""
from pathlib import Path

import numpy as np
import pytest

from core import clustering, context, image_space, vulnerability
from core import receptive_fields as rf
from core.analysis import Analysis
from core.ui import pages
from core.ui.images import data_uri, rf_overlay
from core.ui.state import Selection
from core.ui.views import map_settings
from core.ui.views.clustering import cluster_view
from core.ui.views.image_space import PER_PAGE, image_space_view, with_subset
from core.ui.views.receptive_fields import context_view, pair_view, rf_view
from core.ui.views.selected_clusters import selected_rfs

PAIR, NEURON, STRIDE = 0, 11, 4  # stride 4: the cheapest maps of a 32-px store


@pytest.fixture(scope="module")
def analysis(cifar20_store):
    return Analysis(cifar20_store)


def test_every_page_of_the_table_exists():
    root = Path(__file__).resolve().parents[2]
    assert all((root / p.path).is_file() for p in pages.PAGES.values())
    assert {k for keys in pages.SECTIONS.values() for k in keys} == set(pages.PAGES)
    assert pages.DEFAULT in pages.PAGES and pages.path("clustering") == "pages/clustering.py"


def test_map_arguments_follow_the_image_size(analysis):
    default = vulnerability.default_stride(*analysis.image_shape[1:])
    assert map_settings(analysis, Selection()) == analysis.map_settings(stride=default, precision="auto")
    assert map_settings(analysis, Selection(stride=STRIDE)).stride == STRIDE
    assert map_settings(analysis, Selection(stride=3)).stride == default  # not offered at 32 px
    assert map_settings(analysis, Selection(k=3)).k == 3 and map_settings(analysis, Selection()).k == 2


def test_selected_rfs_combine_the_members_once(analysis):
    Z = analysis.linkage(PAIR)
    big = tuple(clustering.subtree(Z, clustering.nodes_containing(Z, NEURON)[2]).tolist())
    n = analysis.num_neurons
    sets = (big, (3,), (n + 5,))  # an old link's node number is no neuron
    kw = {"mode": "fraction", "value": 0.5}
    members = sorted(set(big) | {3})
    union = selected_rfs(analysis, PAIR, sets, "union", kw)
    inter = selected_rfs(analysis, PAIR, sets, "intersection", kw)
    assert union.valid == [big, (3,)] and union.ignored == [(n + 5,)]
    assert union.members.tolist() == members
    for side in ("benign", "adversarial"):
        masks = analysis.rf_masks_for(PAIR, side, members, **kw).numpy()
        np.testing.assert_array_equal(union.masks[side], masks.any(0))
        np.testing.assert_array_equal(inter.masks[side], masks.all(0))
        assert inter.masks[side].sum() < union.masks[side].sum()
    none = selected_rfs(analysis, PAIR, ((n,),), "intersection", kw)
    assert none.valid == [] and len(none.members) == 0 and none.masks == {}
    with pytest.raises(ValueError):
        rf.combine(masks, "xor")


def test_rf_view_is_what_the_page_shows(analysis, cifar20_store):
    sel = Selection(experiment="cifar20", pair=PAIR, neuron=NEURON, stride=STRIDE, top=0.1,
                    clusters=((2, 5),), set_op="intersection")
    view = rf_view(analysis, sel)
    assert view.stride == STRIDE and view.strides == analysis.map_strides and view.rf_kw["mode"] == "quantile"
    bmap, amap = analysis.vulnerability_maps(PAIR, stride=STRIDE, precision="auto")
    classes = cifar20_store.classes
    bc, ac = analysis.classes_of(PAIR)
    assert view.title == f"**Neuron {NEURON}** on **pair #{PAIR}**: {classes[bc]} → {classes[ac]}"
    view = pair_view(analysis, sel)
    images = cifar20_store.pair_images(PAIR)
    for side, vmap, image in (("benign", bmap, images[0]), ("adversarial", amap, images[1])):
        v = view.sides[side]
        mask = analysis.rf(PAIR, side)[1][NEURON].numpy()
        assert v.map_name == ("bmap" if side == "benign" else "amap")
        assert v.iou == pytest.approx(float(rf.iou(mask, vulnerability.binarize(vmap, 0.1))))
        assert v.rf_picture == data_uri(rf_overlay(image, mask))
        assert v.map_caption.startswith(f"{v.map_name[0]}Map, top 10% outlined")
        both = analysis.rf_masks_for(PAIR, side, [2, 5]).numpy().all(0)
        picture, caption = view.cluster_pictures[side]
        assert picture == data_uri(rf_overlay(image, both))
        assert caption.startswith(f"intersection on the {side} image")
    alone = pair_view(analysis, Selection(experiment="cifar20", pair=PAIR, neuron=NEURON, stride=STRIDE))
    assert alone.cluster_pictures == {} and alone.clusters is None


def test_context_view_follows_the_reading(analysis, cifar20_store):
    pairs = cifar20_store.pairs
    cell = tuple(int(v) for v in pairs[["label", "adv_label"]].iloc[PAIR])
    sel = Selection(experiment="cifar20", pair=PAIR, neuron=NEURON, cell=cell)
    ids = image_space.select(pairs, cell, None)
    own = context_view(analysis, sel, "activation", "own", 3)
    counter = context_view(analysis, sel, "activation", "counterparts", 3)
    benign = context.top_images(cifar20_store, NEURON, ids, m=3, side="benign")
    assert [c for _, c in own.rows["benign"]] == [f"#{p} · {s:.3g}" for p, s in
                                                  zip(benign["pair"], benign["score"], strict=True)]
    assert [c.split(" · ")[0] for _, c in counter.rows["adversarial"]] == [f"#{p}" for p in benign["pair"]]
    assert f"Top 3 of the selected pairs ({len(ids)})" in own.caption
    assert "ranked on their own" in own.caption and "counterparts" in counter.caption


def test_cluster_view_says_what_is_selected(analysis, cifar20_store):
    Z = analysis.linkage(PAIR)
    n = analysis.num_neurons
    node = clustering.nodes_containing(Z, NEURON)[1]
    members = tuple(clustering.subtree(Z, node).tolist())
    loose = (members[0], NEURON + 1 if NEURON + 1 not in members else NEURON + 2, n - 1)
    sel = Selection(experiment="cifar20", pair=PAIR, neuron=NEURON, clusters=(members, (n + 1,)))
    view = cluster_view(analysis, sel, Z)
    assert view.title == f"Union of {len(members)} neurons' RFs" and len(view.pictures) == 2
    assert view.selected.members.tolist() == list(members) and view.climbed == 0
    assert f"node {node} ({len(members)} neurons" in view.selected_text
    assert view.ignored.startswith("Ignored: 1 selected set(s)") and view.loose is None
    assert "climbed 2 levels up" in view.neuron_caption
    dead = clustering.blind_neurons(cifar20_store.pair_images(PAIR),
                                    [analysis.rf_masks(PAIR, s) for s in ("benign", "adversarial")])
    assert view.dead == tuple(int(j) for j in dead)
    odd = cluster_view(analysis, Selection(experiment="cifar20", pair=PAIR, clusters=(loose,)), Z)
    if clustering.cluster_node(Z, loose) is None:
        assert odd.loose.startswith("1 selected set is no longer one cluster") and odd.neuron is None
    nothing = cluster_view(analysis, Selection(experiment="cifar20", pair=PAIR), Z)
    assert nothing.selected.valid == [] and nothing.pictures == [] and "No neuron selected" in \
        nothing.neuron_caption


def test_image_space_view_filters_sorts_and_pages(cifar20_store):
    pairs = cifar20_store.pairs
    cell = tuple(int(v) for v in pairs[["label", "adv_label"]].iloc[PAIR])
    view = image_space_view(cifar20_store, Selection(experiment="cifar20", cell=cell, pair=PAIR))
    inside = pairs.index[(pairs["label"] == cell[0]) & (pairs["adv_label"] == cell[1])].to_numpy()
    assert view.narrowed and sorted(view.shown.tolist()) == sorted(inside.tolist())
    assert view.heading.startswith(f"**{len(inside)} pair") and view.outside is None
    ordered = image_space.sort_pairs(pairs, view.shown, "l2_increasing")
    assert [c.pair for c in view.cards] == ordered[:PER_PAGE].tolist()
    assert [c.chosen for c in view.cards] == [c.pair == PAIR for c in view.cards]
    assert view.empty is None and view.subset is None
    everything = image_space_view(cifar20_store, Selection(experiment="cifar20", cell=(99, 0), grid_page=1))
    assert everything.cell is None and everything.cell_warnings == ["Cell (99, 0) does not exist in this "
                                                                   "experiment: it is ignored."]
    assert len(everything.shown) == len(pairs) and everything.page_no == min(1, everything.pages - 1)
    assert everything.heading == f"**All {len(pairs)} pairs** — select a cell or lasso points to narrow down."


def test_another_class_subset_clears_a_cell_outside_it(cifar20_store):
    pairs, n = cifar20_store.pairs, len(cifar20_store.classes)
    sel = Selection(experiment="cifar20", cell=(2, 3), grid_page=4)
    moved = with_subset(sel, pairs, n, [2, 0], [3])
    assert (moved.benign_classes, moved.adversarial_classes) == ((0, 2), (3,))
    assert (moved.cell, moved.grid_page) == ((2, 3), 0)
    assert with_subset(sel, pairs, n, [0], [3]).cell is None
    assert with_subset(moved, pairs, n, None, None).benign_classes is None
