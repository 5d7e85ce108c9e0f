"""The selection model's transitions and its URL round trip (pure, no Streamlit)."""
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
