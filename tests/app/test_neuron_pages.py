"""The Neuron ranking and Receptive fields pages through AppTest, on the small real store (selections are
injected through session_state; AppTest cannot click a chart). Vulnerability maps use stride 4."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core import clustering, context, neuron_measures, vulnerability
from core import receptive_fields as rf
from core.analysis import Analysis
from core.ui import neuron_charts as nc
from core.ui.images import coverage, data_uri, heatmap, map_scale, rf_overlay
from core.ui.state import KEY, NEURON_SORTS, Selection
from core.ui.text import number

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
    order = neuron_measures.rank(m["band_gap"])
    n, pos = len(order), int(np.flatnonzero(order == NEURON)[0])
    table = at.dataframe[0].value  # both ends of the order, the selected neuron marked (and between them)
    rows = sorted(set(range(10)) | set(range(n - 10, n)) | {pos})
    assert n > 20 and table["neuron"].tolist() == order[rows].tolist()
    assert table["rank"].tolist() == [r + 1 for r in rows]
    assert table.loc[table["selected"] != "", "neuron"].tolist() == [NEURON]

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
    assert benign["customdata"][0][0] == int(neuron_measures.rank(iou)[0])
    at_iou = nc.hover_columns(iou=True).index("iou_bmap")  # hover columns are addressed by name
    assert f"IoU with bMap: %{{customdata[{at_iou}]}}" in benign["hovertemplate"]
    assert benign["customdata"][0][at_iou] == f"{iou.max():.3f}"
    details = [md.value for md in at.markdown]
    assert f"IoU of its receptive field with bMap: {iou[NEURON]:.3f}" in details


def test_typing_a_neuron_id_selects_it(cifar20_store, monkeypatch):
    at = _open(cifar20_store, monkeypatch, RANKING, pair=PAIR, stride=STRIDE)
    assert any("Click a neuron" in i.value for i in at.info)
    at.number_input(key="neuron_ranking_neuron").set_value(7).run()
    assert not at.exception and _sel(at).neuron == 7
    assert any(m.value.startswith("**Neuron 7**") for m in at.markdown)
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    line = next(s for s in spec["layout"]["shapes"] if s["type"] == "line")
    assert _plotted(at)[int(line["x0"])] == 7


def test_ranking_explains_every_measure_and_number_in_plain_words(cifar20_store, analysis, monkeypatch):
    at = _open(cifar20_store, monkeypatch, RANKING, pair=PAIR, neuron=NEURON, stride=STRIDE)
    sort_help = at.selectbox(key="neuron_ranking_sort").proto.help
    for key, label in NEURON_SORTS.items():
        assert label in sort_help and neuron_measures.SUMMARY[key] in sort_help
    for key in ("neuron_ranking_interval", "neuron_ranking_coverage"):
        assert at.selectbox(key=key).proto.help
    assert at.number_input(key="neuron_ranking_zoom").proto.help == nc.CONTROL_HELP["zoom"]
    assert at.number_input(key="neuron_ranking_neuron").proto.help == nc.CONTROL_HELP["neuron_id"]
    # every line of the selected neuron's numbers has its "?", and reads without "-0"
    m = analysis.neuron_measures(PAIR)
    details = [md for md in at.markdown if md.proto.help]
    assert details[0].value.startswith(f"**Neuron {NEURON}**")
    keys = ["activation_times_weight", "band_gap", "curve_difference", "substitution"]
    keys += [x.key for x in neuron_measures.MEASURES  # every other measure: its own line, in registry order
             if not x.needs_maps and x.key not in ("band_gap", "curve_difference", "benign_decrease",
                                                   "adversarial_increase")]
    keys += ["iou_bmap", "iou_amap"] if len(details) > len(keys) + 1 else []  # once the maps are computed
    assert [md.proto.help for md in details[1:]] == [neuron_measures.HELP[k] for k in keys]
    substituted = details[4].value
    change = -m["benign_decrease"][NEURON]
    assert ("P(" in substituted and ("rises by" if change > 0 else "falls by") in substituted) \
        or "does not change" in substituted
    for md in at.markdown:
        assert not re.search(r"(?<![\w.])-0(\.0*)?(?![.\d])", md.value), md.value
        assert not re.search(r"(rises|falls|drops) (by )?-", md.value), md.value
    table = at.dataframe[0]
    assert table.proto.columns  # the column help travels in the column config
    config = json.loads(table.proto.columns)
    assert config["band gap"]["help"] == neuron_measures.HELP["band_gap"]
    assert config["region"]["help"] == neuron_measures.HELP["regions"]


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
    assert sum(c.startswith("bMap, top 20% outlined · scale: 0 → ") for c in captions) == 1, captions
    assert sum(c.startswith("aMap, top 20% outlined · scale: 0 → ") for c in captions) == 1, captions
    bmap, amap = analysis.vulnerability_maps(PAIR, stride=STRIDE, precision="auto")
    # every image travels inline (no media file a late browser fetch could miss), and the maps are
    # drawn over their own side's image with the top-% outlined and the colour strip
    assert all(i.value[0].startswith("data:image/png;base64,") for i in images)
    benign, adversarial = cifar20_store.pair_images(PAIR)
    for vmap, img, name in ((bmap, benign, "bMap"), (amap, adversarial, "aMap")):
        shown = next(i for i in images if i.captions[0].startswith(name)).value[0]
        expected = heatmap(vmap, mask=vulnerability.binarize(vmap, 0.2), image=img, legend=True)
        assert shown == data_uri(expected)
        assert f"→ {number(map_scale(vmap), '.2g')} (" in next(c for c in captions if c.startswith(name))
    # plain-words help on the controls and measures
    for widget in (at.radio(key="receptive_fields_rf_mode"), at.slider(key="receptive_fields_top"),
                   at.selectbox(key="receptive_fields_stride"),
                   at.slider(key="receptive_fields_rf_value_quantile")):
        assert len(widget.help) > 60, widget
    assert all(len(m.proto.help) > 60 for m in at.metric)
    expected = [float(rf.iou(analysis.rf(PAIR, side)[1][NEURON], vulnerability.binarize(vmap, 0.2)))
                for side, vmap in (("benign", bmap), ("adversarial", amap))]
    assert [float(m.value) for m in at.metric] == pytest.approx(expected, abs=1e-3)
    charts = [json.loads(c.proto.spec)["data"][0] for c in at.get("plotly_chart")]
    for chart, name in zip(charts, ("benign_probs", "adversarial_probs"), strict=True):
        top = nc.top_classes(cifar20_store.array(name)[PAIR], 5)
        assert chart["y"] == [cifar20_store.classes[k] for k in top[::-1]]

    at.slider(key="receptive_fields_top").set_value(10).run()
    assert _sel(at).top == pytest.approx(0.1) and any(i.captions[0].startswith("bMap, top 10% ")
                                                        for i in at.get("image"))
    at.selectbox(key="receptive_fields_stride").select(2).run()
    assert _sel(at).stride == 2
    at.radio(key="receptive_fields_rf_mode").set_value("fraction").run()
    assert not at.exception and (_sel(at).rf_mode, _sel(at).rf_value) == ("fraction", None)
    at.slider(key="receptive_fields_rf_value_fraction").set_value(0.3).run()
    assert _sel(at).rf_value == pytest.approx(0.3)


def _ctx(at) -> int:
    """The index of the context images' caption (the one saying what each row is)."""
    return next(k for k, c in enumerate(at.caption) if "Adversarial row:" in c.value)


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
        expected += [f"#{p} · {number(s, '.3g')}" for p, s in zip(table["pair"], table["score"], strict=True)]
    assert captions == expected and len(expected) >= 2
    assert at.radio(key="receptive_fields_context_reading").value == "own"
    assert "adversarial images ranked on their own" in at.caption[_ctx(at)].value

    # the other reading: the adversarial counterparts of the benign row, same pairs, same order, each
    # captioned with the neuron's activation on the adversarial image shown
    at.radio(key="receptive_fields_context_reading").set_value("counterparts").run()
    assert not at.exception
    shown = at.get("image")[6:]
    benign = context.top_images(cifar20_store, NEURON, ids, m=6, sort="activation", side="benign")
    adv = np.asarray(cifar20_store.array("adversarial_pooled")[:, NEURON], dtype=np.float64)
    half = len(benign)
    assert [i.captions[0] for i in shown] == \
        [f"#{p} · {number(s, '.3g')}" for p, s in zip(benign["pair"], benign["score"], strict=True)] + \
        [f"#{p} · {number(adv[p], '.3g')}" for p in benign["pair"]]
    assert "adversarial counterparts of the benign row's images" in at.caption[_ctx(at)].value
    for img, p in zip(shown[half:], benign["pair"], strict=True):  # the adversarial image, its RF outlined
        mask = analysis.rf_masks_for(int(p), "adversarial", [NEURON])[0].numpy()
        assert img.value[0] == data_uri(rf_overlay(cifar20_store.pair_images(int(p))[1], mask))


def test_rf_page_union_and_intersection_of_selected_clusters(cifar20_store, analysis, monkeypatch):
    Z = analysis.linkage(PAIR)
    node = clustering.nodes_containing(Z, NEURON)[1]  # the grandparent: a few neurons
    members = clustering.subtree(Z, node)
    at = _open(cifar20_store, monkeypatch, RF_PAGE, pair=PAIR, neuron=NEURON, stride=STRIDE,
               clusters=(tuple(sorted(int(v) for v in members)),))  # selected clusters: neuron sets
    captions = [i.captions[0] for i in at.get("image")]
    assert len(captions) == 8 and captions[6].startswith("union on the benign image")
    assert f"**{len(members)} neurons**" in at.markdown[-1].value
    assert at.caption[-1].value == ", ".join(map(str, sorted(members)))
    union = rf.union(analysis.rf_masks_for(PAIR, "benign", members)).numpy()
    assert captions[6].endswith(f"{coverage(union)} of the pixels")

    at.toggle(key="receptive_fields_set_op").set_value(True).run()
    assert _sel(at).set_op == "intersection"
    inter = rf.intersection(analysis.rf_masks_for(PAIR, "benign", members)).numpy()
    assert [i.captions[0] for i in at.get("image")][6] == \
        f"intersection on the benign image · {coverage(inter)} of the pixels"
    assert np.all(inter <= union)

    # two sets: their neurons together (each counted once); ids that are no neurons are left out
    other = (0, 1, int(members[0]))
    at = _open(cifar20_store, monkeypatch, RF_PAGE, pair=PAIR, neuron=NEURON, stride=STRIDE,
               clusters=(tuple(sorted(int(v) for v in members)), other, (5, 10_000)))
    both = sorted(set(members.tolist()) | set(other))
    assert f"**{len(both)} neurons** (2 selected clusters)" in at.markdown[-1].value
    assert at.caption[-1].value == ", ".join(map(str, both))
