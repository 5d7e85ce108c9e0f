"""The neuron views' pure helpers and chart builders (core.ui.neuron_charts), on small hand-made inputs."""
import json
import math

import numpy as np
import pytest

from core import neuron_measures
from core.ui import neuron_charts as nc

RED, BLUE = "#d62728", "#1f77b4"


def _measures(n: int = 8) -> dict:
    """Made-up measures of n neurons: band gaps +, 0 and − (and one NaN) in a scrambled order."""
    gap = np.array([0.0, 0.5, -0.2, 0.0, 1.5, -1.0, np.nan, 0.1])[:n]
    b = np.linspace(0.1, 0.8, n)
    a = b + gap
    return {"benign_axw": b, "adversarial_axw": np.nan_to_num(a), "benign_lo": b - 0.05,
            "benign_hi": b + 0.05, "adversarial_lo": b - 0.1, "adversarial_hi": b + 0.1, "band_gap": gap,
            "curve_difference": np.nan_to_num(a) - b, "benign_decrease": np.arange(n) * 0.01,
            "adversarial_increase": np.arange(n)[::-1] * 0.02}


def _trace(spec, meta):
    return next(t for t in spec["data"] if t.get("meta") == meta)


def test_regions_follow_the_sign_of_the_band_gap():
    assert nc.regions([0.5, 0.0, -0.1, np.nan]).tolist() == ["A", "B", "C", "?"]
    assert nc.region_spans(["A", "A", "B", "C", "C", "C"]) == [(0, 1, "A"), (2, 2, "B"), (3, 5, "C")]
    assert nc.region_spans(["A", "C", "A"]) == [(0, 0, "A"), (1, 1, "C"), (2, 2, "A")]
    assert nc.region_spans([]) == []


def test_sort_values_and_order_use_neuron_measures_rank():
    m = _measures()
    iou = {"bmap": np.array([0.1, 0.9, 0.3, 0.0, 0.2, 0.5, 0.4, 0.6]), "amap": np.zeros(8)}
    for sort in nc.MEASURES:
        assert np.array_equal(nc.sort_values(sort, m), m[sort], equal_nan=True)
    assert np.array_equal(nc.sort_values("iou_bmap", m, iou), iou["bmap"])
    assert nc.shown_order(m["band_gap"]).tolist() == [4, 1, 7, 0, 3, 2, 5, 6]  # NaN last
    assert nc.shown_order(m["band_gap"], 3).tolist() == [4, 1, 7]
    assert np.array_equal(nc.shown_order(iou["bmap"]), neuron_measures.rank(iou["bmap"]))
    with pytest.raises(ValueError, match="IoU"):
        nc.sort_values("iou_amap", m)
    with pytest.raises(ValueError, match="unknown"):
        nc.sort_values("random", m)


def test_coverages_offered_and_a_stale_coverage_is_replaced():
    levels = np.array([0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0], dtype=np.float32)
    assert nc.coverage_options("quantile", levels) == pytest.approx([0.5, 0.9, 1.0])
    assert nc.coverage_options("std", levels) == list(nc.OTHER_COVERAGES)
    assert nc.valid_coverage(0.9, [0.5, 0.9, 1.0]) == 0.9
    assert nc.valid_coverage(0.8, [0.5, 0.9, 1.0]) == 0.9
    assert nc.valid_coverage(1.0, nc.OTHER_COVERAGES) == 0.99


@pytest.mark.parametrize("event, expected", [
    ({"selection": {"points": [{"x": 2, "customdata": [17, 3, 0.1]}]}}, 17),
    ({"selection": {"points": [{"x": 2, "customdata": 5}]}}, 5),
    ({"selection": {"points": [{"x": 2, "customdata": {"0": 9, "1": 1.0}}]}}, 9),  # a stringified typed array
    ({"selection": {"points": [{"x": 1}]}}, 40),  # no customdata: the x position in the order
    ({"selection": {"points": [{"x": 7}]}}, None),  # outside the order
    ({"selection": {"points": []}}, None),  # a cleared selection keeps the current neuron
    ({"selection": {}}, None),
    (None, None),
])
def test_chart_event_to_neuron(event, expected):
    assert nc.neuron_from_selection(event, order=[30, 40, 50]) == expected


def test_table_event_to_neuron():
    assert nc.neuron_from_rows({"selection": {"rows": [2], "columns": []}}, [5, 6, 7]) == 7
    assert nc.neuron_from_rows({"selection": {"rows": []}}, [5, 6, 7]) is None
    assert nc.neuron_from_rows({"selection": {"rows": [3]}}, [5, 6, 7]) is None


def test_rf_value_defaults_only_the_absolute_mode():
    calls = []

    def default():
        calls.append(1)
        return 0.7
    assert nc.rf_value("quantile", None, default) is None and nc.rf_value("fraction", 0.3, default) == 0.3
    assert calls == []  # the absolute default is not computed unless needed
    assert nc.rf_value("absolute", None, default) == 0.7 and nc.rf_value("absolute", 2.0, default) == 2.0
    assert nc.rf_slider("quantile")["default"] == 0.9 and nc.rf_slider("fraction")["default"] == 0.5
    with pytest.raises(ValueError):
        nc.rf_slider("absolute")


def test_ranking_figure_plots_the_order_with_ids_values_and_regions():
    m = _measures()
    order = nc.shown_order(m["band_gap"])
    fig = nc.ranking_figure(m, order, classes=("cat", "dog"), colors=(RED, BLUE), sort="band_gap",
                            sort_label="band gap", selected=7)
    spec = json.loads(fig.to_json())
    assert nc.plotted_neurons(spec) == order.tolist()
    benign = _trace(spec, "benign curve")
    rows = benign["customdata"]
    assert [r[1] for r in rows] == list(range(1, 9))  # rank (1-based) in plotted order
    j = int(order[0])
    assert rows[0][2] == pytest.approx(m["benign_axw"][j], rel=1e-4)
    assert rows[0][4] == pytest.approx(m["band_gap"][j], rel=1e-4)
    assert rows[-1][4] is None  # the NaN band gap
    assert benign["line"]["color"] == RED and _trace(spec, "adversarial curve")["line"]["color"] == BLUE
    assert "IoU" not in benign["hovertemplate"]
    assert [c[0] for c in _trace(spec, "adversarial curve")["customdata"]] == order.tolist()
    strip = _trace(spec, "regions")
    assert strip["marker"]["color"] == [nc.REGION_COLORS[r] for r in "AAABBCC?"]
    fills = [t for t in spec["data"] if t.get("fill") == "tonexty"]
    assert [t["fillcolor"] for t in fills] == ["rgba(214,39,40,0.22)", "rgba(31,119,180,0.22)"]
    layout = spec["layout"]
    labels = [a["text"] for a in layout["annotations"]]
    assert {"A: excited", "B: unaffected", "C: inhibited", "neuron 7"} <= set(labels)
    rects = [s for s in layout["shapes"] if s["type"] == "rect"]
    assert [(r["x0"], r["x1"]) for r in rects] == [(-0.5, 2.5), (2.5, 4.5), (4.5, 6.5)]
    vline = next(s for s in layout["shapes"] if s["type"] == "line")
    assert vline["x0"] == order.tolist().index(7)
    assert layout["xaxis2"]["ticktext"] == [str(j) for j in order]


def test_ranking_figure_in_another_order_zoomed_with_iou():
    m = _measures()
    iou = {"bmap": np.linspace(0, 0.7, 8), "amap": np.linspace(0.7, 0, 8)}
    order = nc.shown_order(iou["bmap"], 3)
    fig = nc.ranking_figure(m, order, classes=("cat", "dog"), colors=(RED, BLUE), sort="iou_bmap",
                            sort_label="IoU with bMap", iou=iou, selected=0)
    spec = json.loads(fig.to_json())
    assert nc.plotted_neurons(spec) == [7, 6, 5]
    benign = _trace(spec, "benign curve")
    assert "IoU with bMap" in benign["hovertemplate"]
    assert benign["customdata"][0][8] == pytest.approx(0.7) and benign["customdata"][0][9] == 0.0
    assert not [s for s in spec["layout"].get("shapes", []) if s["type"] == "rect"]  # regions: strip only
    assert not [s for s in spec["layout"].get("shapes", []) if s["type"] == "line"]  # neuron 0 not shown
    assert spec["layout"]["xaxis"]["range"] == [-0.5, 2.5]


def test_ticks_stay_readable_for_many_neurons():
    assert len(nc._ticks(512)) <= nc.MAX_TICKS and nc._ticks(10) == list(range(10))


def test_top_table_and_probability_bars():
    m = _measures()
    order = nc.shown_order(m["band_gap"])
    t = nc.top_table(order, m["band_gap"], m["band_gap"], "band gap value", k=3)
    assert t["neuron"].tolist() == [4, 1, 7] and t["rank"].tolist() == [1, 2, 3]
    assert t["band gap value"].tolist() == [1.5, 0.5, 0.1] and set(t["region"]) == {"A: excited"}
    probs = np.array([0.05, 0.5, 0.05, 0.3, 0.1, 0.0])
    assert nc.top_classes(probs, 3).tolist() == [1, 3, 4]
    assert nc.top_classes(probs, 5).tolist() == [1, 3, 4, 0, 2]  # ties: the lower class id first
    names = [f"c{i}" for i in range(6)]
    colors = [f"#00000{i}" for i in range(6)]
    bar = json.loads(nc.probability_figure(probs, names, colors, k=3).to_json())["data"][0]
    assert bar["y"] == ["c4", "c3", "c1"] and bar["marker"]["color"] == ["#000004", "#000003", "#000001"]
    assert bar["text"] == ["10.0%", "30.0%", "50.0%"]
    assert math.isclose(sum(nc._rows([3], [[1.234567], [math.nan]])[0][1:2]), 1.2346)
