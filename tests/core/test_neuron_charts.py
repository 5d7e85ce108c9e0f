"""The neuron views' pure helpers and chart builders (core.ui.neuron_charts), on small hand-made inputs."""
import json
import math
import re

import numpy as np
import pytest

from core import neuron_measures
from core.ui import neuron_charts as nc

RED, BLUE = "#d62728", "#1f77b4"


def _measures(n: int = 8) -> dict:
    """Made-up measures of n neurons: band gaps +, 0 and − (and one NaN) in a scrambled order; every other
    registered measure that needs no maps gets made-up values too, so the charts show all of them."""
    gap = np.array([0.0, 0.5, -0.2, 0.0, 1.5, -1.0, np.nan, 0.1])[:n]
    b = np.linspace(0.1, 0.8, n)
    a = b + gap
    m = {"benign_axw": b, "adversarial_axw": np.nan_to_num(a), "benign_lo": b - 0.05,
         "benign_hi": b + 0.05, "adversarial_lo": b - 0.1, "adversarial_hi": b + 0.1, "band_gap": gap,
         "curve_difference": np.nan_to_num(a) - b, "benign_decrease": np.arange(n) * 0.01,
         "adversarial_increase": np.arange(n)[::-1] * 0.02}
    for i, measure in enumerate(neuron_measures.MEASURES):
        if not measure.needs_maps and measure.key not in m:
            m[measure.key] = np.linspace(-0.3, 0.4, n) * (i + 1)
    return m


def _trace(spec, meta):
    return next(t for t in spec["data"] if t.get("meta") == meta)


def _hover(trace) -> list[str]:
    """What plotly shows on hover for each point: the template with its %{customdata[i]} filled in."""
    def fill(row) -> str:
        return re.sub(r"%\{customdata\[(\d+)\]\}", lambda m: str(row[int(m.group(1))]),
                      trace["hovertemplate"])
    return [fill(row) for row in trace["customdata"]]


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
    # a click in a column selects the benign curve's point there (its row starts with the id) ...
    ({"selection": {"points": [{"curve_number": 4, "point_index": 1, "x": 1, "y": 0.3,
                                "customdata": [40, 2, 0.3, 0.5, 0.1, 0.2, 0.01, 0.02]}]}}, 40),
    # ... or the adversarial curve's (only the id), or the strip's
    ({"selection": {"points": [{"curve_number": 5, "point_index": 0, "x": 0, "customdata": [30]}]}}, 30),
    ({"selection": {"points": [{"x": 0, "customdata": [None]}, {"x": 2}]}}, 30),  # no id: its x position
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
    assert [row[0] for row in benign["customdata"]] == order.tolist()  # the id first, for a click
    hover = _hover(benign)
    assert [re.search(r"rank (\d+)", t).group(1) for t in hover] == [str(r) for r in range(1, 9)]
    j = int(order[0])
    assert f"(benign) act×w: {m['benign_axw'][j]:.4g}<br>" in hover[0]
    assert f"band gap: {m['band_gap'][j]:.4g} · " in hover[0]
    assert "band gap: n/a · " in hover[-1]  # the NaN band gap
    assert benign["y"][0] == pytest.approx(m["benign_axw"][j])
    assert benign["line"]["color"] == RED and _trace(spec, "adversarial curve")["line"]["color"] == BLUE
    assert not any("IoU" in t for t in hover)
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
    assert "IoU with bMap: 0.700 · with aMap: 0.000" in _hover(benign)[0]
    assert not [s for s in spec["layout"].get("shapes", []) if s["type"] == "rect"]  # regions: strip only
    assert not [s for s in spec["layout"].get("shapes", []) if s["type"] == "line"]  # neuron 0 not shown
    assert spec["layout"]["xaxis"]["range"] == [-0.5, 2.5]


def test_ticks_stay_readable_for_many_neurons():
    assert len(nc._ticks(512)) <= nc.MAX_TICKS and nc._ticks(10) == list(range(10))


def test_probability_bars():
    probs = np.array([0.05, 0.5, 0.05, 0.3, 0.1, 0.0])
    assert nc.top_classes(probs, 3).tolist() == [1, 3, 4]
    assert nc.top_classes(probs, 5).tolist() == [1, 3, 4, 0, 2]  # ties: the lower class id first
    names = [f"c{i}" for i in range(6)]
    colors = [f"#00000{i}" for i in range(6)]
    bar = json.loads(nc.probability_figure(probs, names, colors, k=3).to_json())["data"][0]
    assert bar["y"] == ["c4", "c3", "c1"] and bar["marker"]["color"] == ["#000004", "#000003", "#000001"]
    assert bar["text"] == ["10.0%", "30.0%", "50.0%"]


# -- a click anywhere in a neuron's column ------------------------------------------------------------
def _hovered_first(spec: dict, position: int):
    """The trace plotly's click-to-select picks at plotted ``position`` of the main plot: with hover mode
    "x" every trace with a point there is hovered, at the same horizontal distance (ties in trace
    order); traces with hoverinfo "skip" are not hovered, and only a trace with markers can be selected
    (a lines-only trace makes the click select nothing)."""
    for t in spec["data"]:
        if t.get("xaxis", "x") != "x" or t.get("hoverinfo") == "skip":
            continue
        if t["y"][position] is None:  # no point there (NaN): plotly hovers the next trace's
            continue
        return t
    return None


@pytest.mark.parametrize("n", [8, 256])  # visible markers, and invisible ones beyond MARKER_MAX
def test_a_click_anywhere_in_a_column_selects_its_neuron(n):
    rng = np.random.default_rng(0)
    m = {k: rng.normal(size=n) for k in ("benign_axw", "adversarial_axw", *nc.MEASURES)}  # every measure
    m |= {"benign_lo": m["benign_axw"] - 1, "benign_hi": m["benign_axw"] + 1,
          "adversarial_lo": m["adversarial_axw"] - 1, "adversarial_hi": m["adversarial_axw"] + 1}
    m["benign_axw"][3] = np.nan  # a missing point on the first curve: the second curve's is hovered
    order = nc.shown_order(m["band_gap"])
    spec = json.loads(nc.ranking_figure(m, order, classes=("cat", "dog"), colors=(RED, BLUE),
                                        sort="band_gap", sort_label="band gap").to_json())
    layout = spec["layout"]
    # the whole plot hovers the nearest column, and a click selects what it hovers
    assert layout["hovermode"] == "x" and layout["hoverdistance"] == -1
    assert "select" in layout["clickmode"] and "event" in layout["clickmode"]
    for t in spec["data"]:
        if t.get("meta") in nc.CURVE_NAMES:
            assert "markers" in t["mode"]
            opacity = 1 if n <= nc.MARKER_MAX else 0
            assert t["marker"]["opacity"] == opacity  # drawn invisible beyond MARKER_MAX, still there
            assert t["unselected"]["marker"]["opacity"] == t["selected"]["marker"]["opacity"] == opacity
    position = {j: i for i, j in enumerate(order.tolist())}[3]
    for pos in range(n):
        t = _hovered_first(spec, pos)
        assert t is not None and "markers" in t["mode"]
        event = {"selection": {"points": [{"x": pos, "customdata": t["customdata"][pos]}]}}
        assert nc.neuron_from_selection(event, order) == order[pos]
    assert _hovered_first(spec, position)["meta"] == "adversarial curve"
    strip = _trace(spec, "regions")
    assert strip["unselected"]["marker"]["opacity"] == 1  # a selection dims nothing


# -- both ends of the order -------------------------------------------------------------------------
def test_ends_table_shows_both_ends_and_marks_the_selected_neuron():
    m = _measures()
    order = nc.shown_order(m["band_gap"])  # [4, 1, 7, 0, 3, 2, 5, 6]: 6 is NaN, last
    t = nc.ends_table(order, m["curve_difference"], m["band_gap"], "value", k=2, selected=1)
    assert t.columns.tolist() == ["selected", "rank", "neuron", "value", "band gap", "region"]
    assert t["rank"].tolist() == [1, 2, 7, 8] and t["neuron"].tolist() == [4, 1, 5, 6]
    assert t["selected"].tolist() == ["", nc.SELECTED_MARK, "", ""]
    assert t["value"].tolist() == pytest.approx(m["curve_difference"][[4, 1, 5, 6]].tolist())
    assert t["region"].tolist() == ["A: excited", "A: excited", "C: inhibited", "no band"]
    assert math.isnan(t["band gap"].iloc[-1])
    # a selected neuron in neither end gets its row between them, in rank order
    t = nc.ends_table(order, m["band_gap"], m["band_gap"], "value", k=2, selected=3)
    assert t["rank"].tolist() == [1, 2, 5, 7, 8] and t["neuron"].tolist() == [4, 1, 3, 5, 6]
    assert t["selected"].tolist() == ["", "", nc.SELECTED_MARK, "", ""]
    # few neurons: every neuron once; no selection or an unknown one: no mark
    for sel in (None, 99):
        t = nc.ends_table(order, m["band_gap"], m["band_gap"], "value", k=5, selected=sel)
        assert t["neuron"].tolist() == order.tolist() and set(t["selected"]) == {""}
    # a negative zero is shown as zero
    t = nc.ends_table([0, 1], np.array([-0.0, 1.0]), np.array([-0.0, 0.0]), "value", k=1)
    assert not any(math.copysign(1, v) < 0 for v in t["value"].tolist() + t["band gap"].tolist())


# -- numbers in words ---------------------------------------------------------------------------------
@pytest.mark.parametrize("change, words", [
    (0.00094, "rises by 0.00094"), (-0.00094, "falls by 0.00094"), (-1.23456e-7, "falls by 1.23e-07"),
    (0.0, "does not change"), (-0.0, "does not change"), (float("nan"), "n/a"),
])
def test_change_text_says_the_direction_in_words(change, words):
    assert nc.change_text(change) == words


def test_change_text_rounding_to_zero_does_not_change():
    assert nc.change_text(-0.0004, ".2f") == "does not change"  # "-0.00" carries no information
    assert nc.value_text(-0.00004, ".3f") == "0.000" and nc.value_text(float("nan")) == "n/a"
    assert nc.value_text(-0.5) == "-0.5"  # a real sign stays


def _signed_measures(n: int = 4) -> dict:
    """Measures with negative zeros and tiny negatives: what used to read "-0" or "rises -0.00094"."""
    m = _measures(n)
    m["curve_difference"] = np.array([-0.0, -1e-9, 0.5, -0.25])[:n]
    m["benign_decrease"] = np.array([0.00094, -0.00094, -0.0, 0.1])[:n]
    m["adversarial_increase"] = np.array([-0.00094, 0.00094, 0.0, 0.2])[:n]
    m["band_gap"] = np.array([-0.0, 0.0, 0.5, -0.2])[:n]
    return m


def test_hover_and_detail_texts_have_no_negative_zero_and_say_falls_or_rises():
    m = _signed_measures()
    iou = {"bmap": np.array([0.0, 0.5, 1.0, -0.0]), "amap": np.zeros(4)}
    spec = json.loads(nc.ranking_figure(m, [0, 1, 2, 3], classes=("cat", "dog"), colors=(RED, BLUE),
                                        sort="band_gap", sort_label="band gap", iou=iou).to_json())
    texts = _hover(_trace(spec, "benign curve")) + _hover(_trace(spec, "adversarial curve"))
    assert "P(cat) falls by 0.00094, P(dog) falls by 0.00094" in texts[0]
    assert "P(cat) rises by 0.00094, P(dog) rises by 0.00094" in texts[1]
    assert "P(cat) does not change, P(dog) does not change" in texts[2]
    assert texts[0].startswith("<b>neuron 0</b> · rank 1") and "IoU with bMap: 0.000" in texts[0]
    lines = [t for j in range(4) for t, _ in nc.detail_lines(m, j, rank=j + 1, total=4,
                                                            classes=("cat", "dog"), iou=iou)]
    for text in texts + lines:
        assert not re.search(r"-0(\.0*)?(?![.\d])", text), text  # no "-0", "-0.000"
        assert not re.search(r"(rises|falls) by -", text), text
    for t in spec["data"]:  # no plotly number format (d3 writes "-0"): the numbers come as text
        assert not re.search(r"%\{[^}]*:", t.get("hovertemplate", "")), t["hovertemplate"]
    row = dict(zip(nc.hover_columns(iou=True), nc.hover_rows(m, [2], iou)[0], strict=True))
    assert {k: row[k] for k in ("neuron", "rank", "benign_axw", "adversarial_axw", "band_gap",
                                "curve_difference", "benign_decrease", "adversarial_increase", "iou_bmap",
                                "iou_amap")} == {
        "neuron": 2, "rank": 1, "benign_axw": "0.5667", "adversarial_axw": "0.3667", "band_gap": "0.5",
        "curve_difference": "0.5", "benign_decrease": "does not change",
        "adversarial_increase": "does not change", "iou_bmap": "1.000", "iou_amap": "0.000"}


def test_detail_lines_each_come_with_plain_words():
    m = _signed_measures()
    lines = nc.detail_lines(m, 1, rank=2, total=4, classes=("cat", "dog"), shown=1)
    texts = [t for t, _ in lines]
    assert texts[0] == "**Neuron 1**: rank 2 of 4 (outside the top 1 shown), region B: unaffected"
    assert texts[1] == "act×weight: 0.3333 (cat) → 0.8333 (dog)"
    assert texts[2:5] == ["band gap: 0", "curve difference: -1e-09",
                          "substituted alone: P(cat) rises by 0.00094, P(dog) rises by 0.00094"]
    words = neuron_measures.HELP
    assert [h for _, h in lines][:5] == [words["rank"] + "\n\n" + words["regions"], *(words[k] for k in (
        "activation_times_weight", "band_gap", "curve_difference", "substitution"))]
    # every other registered measure without maps: a line of its own, with its words, after those
    others = [x for x in neuron_measures.MEASURES
              if not x.needs_maps and x.key not in ("band_gap", "curve_difference", "benign_decrease",
                                                    "adversarial_increase")]
    assert lines[5:] == [(f"{x.words('detail')}: {nc.measure_text(x, m[x.key][1])}", x.help) for x in others]
    iou = {"bmap": np.full(4, 0.25), "amap": np.full(4, 0.5)}
    more = nc.detail_lines(m, 1, rank=2, total=4, classes=("cat", "dog"), iou=iou)
    assert more[-2:] == [("IoU of its receptive field with bMap: 0.250", neuron_measures.HELP["iou_bmap"]),
                         ("IoU of its receptive field with aMap: 0.500", neuron_measures.HELP["iou_amap"])]


def test_every_sort_option_and_control_has_help():
    from core.ui.state import NEURON_SORTS
    text = nc.options_help(nc.CONTROL_HELP["sort"], NEURON_SORTS, neuron_measures.SUMMARY, "more")
    for key, label in NEURON_SORTS.items():
        assert f"- **{label}**: {neuron_measures.SUMMARY[key]}" in text
    assert text.startswith(nc.CONTROL_HELP["sort"] + "\n\n- ") and text.endswith("\n\nmore")
    with pytest.raises(KeyError):
        nc.options_help("x", {"nope": "a measure without words"}, neuron_measures.HELP)
    intervals = nc.options_help("x", neuron_measures.INTERVAL_LABELS, neuron_measures.INTERVAL_HELP)
    assert all(label in intervals for label in neuron_measures.INTERVAL_LABELS.values())
    assert {"zoom", "neuron_id", "sort", "sort_more", "chart", "selected"} <= set(nc.CONTROL_HELP)


# -- the registry drives the hover and the detail text ---------------------------------------------------
def test_hover_columns_are_named_and_every_measure_is_in_the_hover_and_the_details():
    m = _measures()
    iou = {"bmap": np.linspace(0, 0.7, 8), "amap": np.linspace(0.7, 0, 8)}
    without, full = nc.hover_columns(), nc.hover_columns(iou=True)
    assert full[:len(without)] == without
    assert without[:4] == ["neuron", "rank", "benign_axw", "adversarial_axw"]
    assert set(full[4:]) == set(neuron_measures.SORT_KEYS) and len(full) == len(set(full))
    assert set(without[4:]) == {x.key for x in neuron_measures.MEASURES if not x.needs_maps}
    order = nc.shown_order(m["band_gap"])
    spec = json.loads(nc.ranking_figure(m, order, classes=("cat", "dog"), colors=(RED, BLUE), sort="band_gap",
                                        sort_label="band gap", iou=iou).to_json())
    benign = _trace(spec, "benign curve")
    cells = [int(i) for i in re.findall(r"%\{customdata\[(\d+)\]\}", benign["hovertemplate"])]
    assert sorted(cells) == list(range(len(full)))  # every column placed once
    text, values = _hover(benign)[0], nc.with_iou(m, iou)
    j = int(order[0])
    details = " ".join(t for t, _ in nc.detail_lines(m, j, rank=1, total=8, classes=("cat", "dog"), iou=iou))
    for x in neuron_measures.MEASURES:  # its words, then its value as the registry formats it
        value = re.escape(nc.measure_text(x, values[x.key][j]))
        for where, shown in (("hover", text), ("detail", details)):
            words = re.escape(x.words(where).format(benign="cat", adversarial="dog"))
            assert re.search(words + ":? " + value, shown), (x.key, where)
    # the adversarial curve's customdata: the id and its act×w, found by name
    at = full.index("adversarial_axw")
    assert _trace(spec, "adversarial curve")["customdata"][0] == [j, benign["customdata"][0][at]]
    assert nc.IOU_SORTS == {"iou_bmap": "bmap", "iou_amap": "amap"}
    for sort in neuron_measures.SORT_KEYS:
        assert np.array_equal(nc.sort_values(sort, m, iou), values[sort], equal_nan=True)
