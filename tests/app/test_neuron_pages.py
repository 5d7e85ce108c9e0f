"""The Neuron ranking and Receptive fields pages through AppTest, on the small real store (selections are
injected through session_state; AppTest cannot click a chart). Vulnerability maps use stride 4."""
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core import clustering, context, neuron_measures, vulnerability
from core import receptive_fields as rf
from core.analysis import Analysis
from core.ui import neuron_charts as nc
from core.ui.state import KEY, Selection

APP = str(Path(__file__).resolve().parents[2] / "app.py")
RANKING, RF_PAGE = "pages/neuron_ranking.py", "pages/receptive_fields.py"
PAIR, NEURON, STRIDE = 0, 11, 4



@pytest.fixture(scope="module")
def analysis(cifar20_store):
    return Analysis(cifar20_store)


def _open(store, monkeypatch, page: str, **sel) -> AppTest:
    monkeypatch.setenv("NVE_CACHE", str(store.path.parent))
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state[KEY] = Selection(experiment="cifar20", **sel)
    at.switch_page(page)
    at.run()
    assert not at.exception, at.exception
    return at


def _plotted(at) -> list[int]:
    return nc.plotted_neurons(json.loads(at.get("plotly_chart")[0].proto.spec))


def _sel(at) -> Selection:
    return at.session_state[KEY]


# -- Neuron ranking --------------------------------------------------------------------------------------
def test_ranking_without_a_pair_says_to_pick_one(cifar20_store, monkeypatch):
    at = _open(cifar20_store, monkeypatch, RANKING)
    assert "Pick a pair in Image space" in at.info[0].value
    assert not at.get("plotly_chart")


def test_ranking_follows_the_band_gap_then_the_sort_widget(cifar20_store, analysis, monkeypatch):
    at = _open(cifar20_store, monkeypatch, RANKING, pair=PAIR, neuron=NEURON, stride=STRIDE)
    m = analysis.neuron_measures(PAIR)
    assert _plotted(at) == neuron_measures.rank(m["band_gap"]).tolist()
    bc, ac = analysis.classes_of(PAIR)
    header = at.markdown[0].value
    assert f"Pair #{PAIR}" in header
    assert cifar20_store.classes[bc] in header and cifar20_store.classes[ac] in header
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert f"neuron {NEURON}" in [a["text"] for a in spec["layout"]["annotations"]]  # the highlight
    table = at.dataframe[0].value
    assert table["neuron"].tolist() == neuron_measures.rank(m["band_gap"])[:10].tolist()

    at.selectbox(key="neuron_ranking_sort").select("curve_difference").run()
    assert not at.exception and _sel(at).neuron_sort == "curve_difference"
    assert _plotted(at) == neuron_measures.rank(m["curve_difference"]).tolist()

    at.number_input(key="neuron_ranking_zoom").set_value(10).run()
    assert _sel(at).zoom == 10 and _plotted(at) == neuron_measures.rank(m["curve_difference"])[:10].tolist()


def test_ranking_by_iou_with_bmap(cifar20_store, analysis, monkeypatch):
    at = _open(cifar20_store, monkeypatch, RANKING, pair=PAIR, neuron=NEURON, stride=STRIDE,
               neuron_sort="iou_bmap")
    iou, _ = analysis.iou_ranking(PAIR, "bmap", top=0.2, stride=STRIDE, precision="auto")
    assert _plotted(at) == neuron_measures.rank(iou).tolist()
    benign = next(t for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]
                  if t.get("meta") == "benign curve")
    assert "IoU with bMap" in benign["hovertemplate"]
    assert benign["customdata"][0][8] == pytest.approx(iou.max(), abs=1e-4)


def test_typing_a_neuron_id_selects_it(cifar20_store, monkeypatch):
    at = _open(cifar20_store, monkeypatch, RANKING, pair=PAIR, stride=STRIDE)
    assert any("Click a neuron" in i.value for i in at.info)
    at.number_input(key="neuron_ranking_neuron").set_value(7).run()
    assert not at.exception and _sel(at).neuron == 7
    assert any(m.value.startswith("**Neuron 7**") for m in at.markdown)
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    line = next(s for s in spec["layout"]["shapes"] if s["type"] == "line")
    assert _plotted(at)[int(line["x0"])] == 7


def test_band_settings_change_the_bands(cifar20_store, monkeypatch):
    at = _open(cifar20_store, monkeypatch, RANKING, pair=PAIR, stride=STRIDE, coverage=1.0)
    at.selectbox(key="neuron_ranking_interval").select("std").run()
    assert not at.exception
    assert _sel(at).interval == "std" and _sel(at).coverage == 0.99  # 1.0 is not a valid std coverage
    at.selectbox(key="neuron_ranking_coverage").select(0.5).run()
    assert _sel(at).coverage == 0.5


# -- Receptive fields ------------------------------------------------------------------------------------
def test_rf_page_says_what_to_select(cifar20_store, monkeypatch):
    at = _open(cifar20_store, monkeypatch, RF_PAGE)
    assert "Pick a pair in Image space" in at.info[0].value
    at = _open(cifar20_store, monkeypatch, RF_PAGE, pair=PAIR)
    assert "Pick a neuron" in at.info[0].value and not at.get("image")


def test_rf_page_shows_both_rfs_probabilities_and_maps(cifar20_store, analysis, monkeypatch):
    at = _open(cifar20_store, monkeypatch, RF_PAGE, pair=PAIR, neuron=NEURON, stride=STRIDE)
    images = at.get("image")
    captions = [i.captions[0] for i in images]
    assert len(images) == 6, captions  # per side: the image, the RF, the map
    assert sum("RF" in c for c in captions) == 2
    assert "bMap, top 20%" in captions and "aMap, top 20%" in captions
    bmap, amap = analysis.vulnerability_maps(PAIR, stride=STRIDE, precision="auto")
    expected = [float(rf.iou(analysis.rf(PAIR, side)[1][NEURON], vulnerability.binarize(vmap, 0.2)))
                for side, vmap in (("benign", bmap), ("adversarial", amap))]
    assert [float(m.value) for m in at.metric] == pytest.approx(expected, abs=1e-3)
    charts = [json.loads(c.proto.spec)["data"][0] for c in at.get("plotly_chart")]
    for chart, name in zip(charts, ("benign_probs", "adversarial_probs"), strict=True):
        top = nc.top_classes(cifar20_store.array(name)[PAIR], 5)
        assert chart["y"] == [cifar20_store.classes[k] for k in top[::-1]]

    at.slider(key="receptive_fields_top").set_value(10).run()
    assert _sel(at).top == pytest.approx(0.1) and "bMap, top 10%" in [i.captions[0] for i in at.get("image")]
    at.selectbox(key="receptive_fields_stride").select(2).run()
    assert _sel(at).stride == 2
    at.radio(key="receptive_fields_rf_mode").set_value("fraction").run()
    assert not at.exception and (_sel(at).rf_mode, _sel(at).rf_value) == ("fraction", None)
    at.slider(key="receptive_fields_rf_value_fraction").set_value(0.3).run()
    assert _sel(at).rf_value == pytest.approx(0.3)


def test_rf_page_context_images(cifar20_store, analysis, monkeypatch):
    monkeypatch.setenv("NVE_CACHE", str(cifar20_store.path.parent))
    at = AppTest.from_file(APP, default_timeout=120)
    cell = tuple(int(v) for v in cifar20_store.pairs[["label", "adv_label"]].iloc[PAIR])
    at.session_state[KEY] = Selection(experiment="cifar20", pair=PAIR, neuron=NEURON, stride=STRIDE,
                                      cell=cell)
    at.session_state["receptive_fields_context"] = True  # the expander, opened
    at.switch_page(RF_PAGE).run()
    assert not at.exception
    ids = cifar20_store.pairs.query("label == @cell[0] and adv_label == @cell[1]")["pair"].to_numpy()
    captions = [i.captions[0] for i in at.get("image")][6:]
    expected = []
    for side in ("benign", "adversarial"):
        table = context.top_images(cifar20_store, NEURON, ids, m=6, sort="activation", side=side)
        expected += [f"#{p} · {s:.3g}" for p, s in zip(table["pair"], table["score"], strict=True)]
    assert captions == expected and len(expected) >= 2


def test_rf_page_union_and_intersection_of_selected_clusters(cifar20_store, analysis, monkeypatch):
    Z = analysis.linkage(PAIR)
    node = clustering.nodes_containing(Z, NEURON)[1]  # the grandparent: a few neurons
    members = clustering.subtree(Z, node)
    at = _open(cifar20_store, monkeypatch, RF_PAGE, pair=PAIR, neuron=NEURON, stride=STRIDE, clusters=(node,))
    captions = [i.captions[0] for i in at.get("image")]
    assert len(captions) == 8 and captions[6].startswith("union on the benign image")
    assert f"**{len(members)} neurons**" in at.markdown[-1].value
    assert at.caption[-1].value == ", ".join(map(str, members))
    union = rf.union(analysis.rf_masks_for(PAIR, "benign", members)).numpy()
    assert captions[6].endswith(f"{union.mean():.0%} of the pixels")

    at.toggle(key="receptive_fields_set_op").set_value(True).run()
    assert _sel(at).set_op == "intersection"
    inter = rf.intersection(analysis.rf_masks_for(PAIR, "benign", members)).numpy()
    assert [i.captions[0] for i in at.get("image")][6] == \
        f"intersection on the benign image · {inter.mean():.0%} of the pixels"
    assert np.all(inter <= union)
