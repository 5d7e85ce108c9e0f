"""The Neuron ranking page's view model (core.ui.views.ranking) on the small real store, without Streamlit:
for every registered sort, what the page draws follows the measures (vulnerability maps at stride 4)."""
import json

import numpy as np
import pytest

from core import neuron_measures
from core.analysis import Analysis
from core.ui import neuron_charts as nc
from core.ui.state import NEURON_SORTS, Selection
from core.ui.text import plain
from core.ui.views import ranking

PAIR, NEURON, STRIDE = 0, 11, 4


@pytest.fixture(scope="module")
def analysis(cifar20_store):
    return Analysis(cifar20_store)


def _sel(**kw) -> Selection:
    return Selection(experiment="cifar20", **({"pair": PAIR, "neuron": NEURON, "stride": STRIDE} | kw))


@pytest.mark.parametrize("sort", list(NEURON_SORTS))
def test_every_sort_orders_plots_and_tabulates_its_measure(analysis, sort):
    measure = neuron_measures.BY_KEY[sort]
    maps = measure.needs_maps or analysis.has_vulnerability_maps(PAIR, stride=STRIDE, precision="auto")
    view = ranking.ranking_view(analysis, _sel(neuron_sort=sort))
    # the values: the registered measure's, on the page's settings (with the maps' IoU when asked)
    rf_kw = nc.rf_kw(_sel(), analysis)
    expected = analysis.neuron_measures(PAIR, maps={"top": 0.2, "stride": STRIDE, "precision": "auto",
                                                    **rf_kw} if maps else None)
    assert set(view.measures) == set(expected)
    assert nc.has_maps(view.measures) == maps and (sort in view.measures)
    np.testing.assert_array_equal(view.values, expected[sort])
    if measure.needs_maps:  # the same numbers as the IoU ranking the Receptive fields page shows
        iou, order = analysis.iou_ranking(PAIR, measure.vmap, top=0.2, stride=STRIDE, precision="auto",
                                          **rf_kw)
        np.testing.assert_array_equal(view.values, iou)
        np.testing.assert_array_equal(view.full_order, order)
    assert view.full_order.tolist() == neuron_measures.rank(expected[sort]).tolist() == view.order.tolist()
    spec = json.loads(view.figure.to_json())
    assert nc.plotted_neurons(spec) == view.order.tolist()
    assert spec["layout"]["xaxis2"]["title"]["text"].startswith(f"neurons sorted by {NEURON_SORTS[sort]}")
    # the table: both ends, the sort's value under its short name, its words in the column's help
    assert view.label == NEURON_SORTS[sort] and view.value_label == measure.name
    assert view.ends[measure.name].tolist() == pytest.approx(
        expected[sort][view.ends["neuron"].to_numpy()].tolist(), nan_ok=True)
    assert view.columns[measure.name] == ("NumberColumn", {"format": "%.4g", "help": measure.help})
    assert f"by {NEURON_SORTS[sort]}:" in view.ends_caption
    # the selected neuron: its rank in this order and one line per measure shown
    assert view.neuron == NEURON and view.full_order[view.rank - 1] == NEURON
    assert view.details[0][0].startswith(f"**Neuron {NEURON}**: rank {view.rank} of {view.num_neurons}")
    helps = [h for _, h in view.details]
    for x in neuron_measures.MEASURES:
        if x.key in view.measures:
            assert x.help in helps or neuron_measures.HELP[x.line("detail")] in helps, x.key
    if measure.vmap is None:
        assert view.notice is None
    else:  # said exactly when the mask is empty or short, or no RF overlaps it
        info = analysis.map_mask_status(PAIR, measure.vmap, top=0.2, stride=STRIDE, precision="auto")
        assert (view.notice is not None) == (info.empty or info.short or not view.values.any())
    assert view.chart_caption.startswith(nc.CONTROL_HELP["chart"]) and (sort == "band_gap") == (
        view.chart_caption == nc.CONTROL_HELP["chart"])


def test_header_controls_zoom_and_no_neuron(analysis, cifar20_store):
    view = ranking.ranking_view(analysis, _sel(neuron=None, zoom=7, coverage=0.7, interval="quantile"))
    bc, ac = analysis.classes_of(PAIR)
    b, a = plain(cifar20_store.classes[bc]), plain(cifar20_store.classes[ac])
    row = cifar20_store.pairs.iloc[PAIR]
    assert view.header == (f"**Pair #{PAIR}**: **{b}** → **{a}** · P({b}) {row['benign_prob']:.1%} → "
                           f"{row['benign_prob_adv']:.1%} · P({a}) {row['adv_prob_benign']:.1%} → "
                           f"{row['adv_prob']:.1%}")
    assert view.coverage == 0.8 and view.coverage in view.coverages["quantile"]  # the nearest offered
    assert view.coverages["std"] == list(nc.OTHER_COVERAGES) == view.coverages["ci"]
    assert len(view.order) == 7 and view.order.tolist() == view.full_order[:7].tolist()
    assert view.neuron is None and view.rank is None and view.details == []
    assert set(view.ends["selected"]) == {""}
    for key, label in NEURON_SORTS.items():
        assert f"- **{label}**: {neuron_measures.SUMMARY[key]}" in view.sort_help
    assert all(label in view.interval_help for label in neuron_measures.INTERVAL_LABELS.values())
    # a neuron id from another model is no selection here
    assert ranking.ranking_view(analysis, _sel(neuron=10_000)).neuron is None


def test_a_partial_map_mask_is_said_before_the_iou_ranking(analysis):
    sel = _sel(neuron_sort="iou_amap", top=1.0)  # the whole image asked: fewer pixels raise the map
    info = analysis.map_mask_status(PAIR, "amap", top=1.0, stride=STRIDE, precision="auto")
    view = ranking.ranking_view(analysis, sel)
    assert info.short and not info.empty
    kind, text = view.notice
    assert kind == "info" and f"so its mask holds {info.kept} pixels instead of the top 100%" in text
    assert ranking.ranking_view(analysis, _sel(neuron_sort="band_gap", top=1.0)).notice is None
    assert not ranking.computes_maps(analysis, sel)  # computed now: the page shows no spinner
    assert not ranking.computes_maps(analysis, _sel(neuron_sort="band_gap", stride=1))
