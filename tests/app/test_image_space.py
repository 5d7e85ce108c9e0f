"""The Image space page (paper §5.1, Fig. 2-a/b) through AppTest on the real cifar20 store: the data
overview (two t-SNE scatterplots, the prediction matrix) and the image grid it filters. Chart selections
cannot be simulated by AppTest, so cells and lasso sets are injected into the selection model; their
event mappings are unit-tested in tests/core/test_image_space.py."""
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

from core import image_space
from core.ui.state import Selection

APP = str(Path(__file__).resolve().parents[2] / "app.py")
PAGE = "pages/image_space.py"
PER_PAGE = 12



@pytest.fixture
def store(cifar20_store, monkeypatch):
    monkeypatch.setenv("NVE_CACHE", str(cifar20_store.path.parent))
    return cifar20_store


def _open(**fields) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page(PAGE)
    at.session_state["nve_selection"] = Selection(experiment="cifar20", **fields)
    at.run()
    assert not at.exception, at.exception
    return at


def _grid(at) -> list[int]:
    """The pairs on the grid, in order, from their "Select pair" buttons."""
    keys = [b.key for b in at.button if b.key and b.key.startswith("image_space_pick_")]
    pairs = [int(k.rsplit("_", 1)[1]) for k in keys]
    assert [b.label for b in at.button if b.key in keys] == [f"Select pair #{p}" for p in pairs]
    return pairs


def _sel(at) -> Selection:
    return at.session_state["nve_selection"]


def _status(at) -> str:
    return next(m.value for m in at.markdown
                if m.value.startswith("**") and (" selected**" in m.value or m.value.startswith("**All ")))


def _selected(n: int) -> str:
    return f"**{n} pair{'' if n == 1 else 's'} selected**"


def _expected(store, sort=image_space.DEFAULT_SORT, cell=None, lasso=None, page=0):
    ids = image_space.sort_pairs(store.pairs, image_space.select(store.pairs, cell, lasso), sort)
    return ids[page * PER_PAGE:(page + 1) * PER_PAGE].tolist(), len(ids)


def _busiest_cell(store) -> tuple[int, int]:
    m = image_space.prediction_matrix(store.pairs, len(store.classes))
    t, a = np.unravel_index(int(np.argmax(m)), m.shape)
    return int(t), int(a)


def test_renders_every_pair_with_both_scatterplots_and_the_matrix(store):
    at = _open()
    n = len(store)
    assert at.header[0].value == "Image space"
    assert _status(at).startswith(f"**All {n} pairs**") and "select a cell or lasso" in _status(at)
    want, _ = _expected(store)
    assert _grid(at) == want
    assert len(at.get("image")) == 2 * len(want)  # benign + adversarial per pair
    # Scatterplots: one Scattergl trace per class, every pair once, pair ids as customdata.
    plots = at.get("plotly_chart")
    assert len(plots) == 2
    for plot, (xc, yc) in zip(plots, (("tsne_benign_x", "tsne_benign_y"), ("tsne_adv_x", "tsne_adv_y")),
                              strict=True):
        spec = json.loads(plot.proto.spec)
        assert {t["type"] for t in spec["data"]} == {"scattergl"}
        ids = np.concatenate([_array(t["customdata"]) for t in spec["data"]]).astype(int)
        assert sorted(ids.tolist()) == list(range(n))
        xs = np.concatenate([_array(t["x"]) for t in spec["data"]])
        np.testing.assert_allclose(xs, store.pairs[xc].to_numpy()[ids], rtol=1e-6)
        ys = np.concatenate([_array(t["y"]) for t in spec["data"]])
        np.testing.assert_allclose(ys, store.pairs[yc].to_numpy()[ids], rtol=1e-6)
        assert all("selectedpoints" not in t for t in spec["data"])  # nothing narrowed: no fading
    # Prediction matrix: counts equal core.image_space.prediction_matrix, clickable cells.
    chart = at.get("vega_lite_chart")[0]
    spec = json.loads(chart.proto.spec)
    assert spec["params"][0]["select"]["fields"] == ["label", "adv_label"]
    table = pa.ipc.open_stream(io.BytesIO(chart.proto.datasets[0].data.data)).read_all().to_pandas()
    m = image_space.prediction_matrix(store.pairs, len(store.classes))
    assert len(table) == m.size
    for r in table.itertuples():
        assert r.count == m[r.label, r.adv_label]


def _array(v):
    """A plotly JSON array: a list, or a typed array {dtype, bdata} (base64)."""
    if isinstance(v, dict):
        import base64
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
    return np.asarray(v)


@pytest.mark.parametrize("sort", ["l2_decreasing", "benign_drop"])
def test_cell_shows_exactly_its_pairs_in_sort_order(store, sort):
    cell = _busiest_cell(store)
    at = _open(cell=cell, grid_sort=sort)
    want, n = _expected(store, sort, cell=cell)
    classes = store.classes
    assert _status(at) == f"{_selected(n)} (cell {classes[cell[0]]} → {classes[cell[1]]})"
    assert _grid(at) == want
    for p in want:
        assert (store.pairs["label"][p], store.pairs["adv_label"][p]) == cell
    # Both scatterplots highlight the cell's pairs.
    for plot in at.get("plotly_chart"):
        spec = json.loads(plot.proto.spec)
        chosen = set()
        for t in spec["data"]:
            ids = _array(t["customdata"]).astype(int)
            chosen |= set(ids[_array(t["selectedpoints"]).astype(int)].tolist())
        assert chosen == set(image_space.select(store.pairs, cell).tolist())


def test_lasso_filters_and_intersects_with_the_cell(store):
    lasso = tuple(range(0, len(store), 3))
    at = _open(lasso=lasso)
    want, n = _expected(store, lasso=lasso)
    assert _status(at) == f"{_selected(n)} ({len(lasso)} points lassoed)"
    assert _grid(at) == want and n == len(lasso)
    cell = _busiest_cell(store)
    at = _open(lasso=lasso, cell=cell)
    want, n = _expected(store, cell=cell, lasso=lasso)
    assert _status(at).startswith(_selected(n)) and _grid(at) == want
    # Clear selection empties both filters.
    at.button(key="image_space_clear").click().run()
    assert _sel(at).cell is None and _sel(at).lasso is None
    assert _grid(at) == _expected(store)[0]


def test_empty_intersection_says_what_to_do(store):
    cell = _busiest_cell(store)
    outside = [int(p) for p in range(len(store)) if p not in set(image_space.select(store.pairs, cell))]
    at = _open(cell=cell, lasso=tuple(outside[:3]))
    assert _status(at).startswith(_selected(0)) and _grid(at) == []
    assert "clear one of them" in at.info[0].value


def test_select_pair_button_sets_the_shared_selection(store):
    at = _open(neuron=7)
    first = _grid(at)[1]
    at.button(key=f"image_space_pick_{first}").click().run()
    assert not at.exception
    assert _sel(at).pair == first and _sel(at).neuron == 7
    assert at.button(key=f"image_space_pick_{first}").proto.type == "primary"
    assert [c.value for c in at.caption if c.value.startswith("✓ selected")] == [
        next(c.value for c in at.caption if f"#{first} · L2" in c.value)]
    assert [b.key for b in at.button if b.proto.type == "primary"] == [f"image_space_pick_{first}"]


def test_selected_pair_outside_a_new_selection_is_kept_and_flagged(store):
    cell = _busiest_cell(store)
    outside = next(p for p in range(len(store)) if p not in set(image_space.select(store.pairs, cell)))
    at = _open(cell=cell, pair=outside)
    assert _sel(at).pair == outside
    assert any(f"Pair #{outside} stays selected but is outside" in c.value for c in at.caption)


def test_sort_change_reorders_and_resets_the_page(store):
    at = _open(grid_page=2)
    at.selectbox(key="image_space_sort").set_value("adversarial_rise").run()
    assert not at.exception
    assert _sel(at).grid_sort == "adversarial_rise" and _sel(at).grid_page == 0
    assert _grid(at) == _expected(store, "adversarial_rise")[0]
    at.selectbox(key="image_space_sort").set_value("l2_decreasing").run()
    assert _grid(at) == _expected(store, "l2_decreasing")[0]


def test_pagination(store):
    n = len(store)
    pages = -(-n // PER_PAGE)
    assert pages >= 3, "the cifar20 store should fill several pages"
    at = _open()
    assert at.button(key="image_space_prev").disabled
    assert any(m.value == f"Page 1 of {pages}" for m in at.markdown)
    at.button(key="image_space_next").click().run()
    assert _sel(at).grid_page == 1 and _grid(at) == _expected(store, page=1)[0]
    assert any(m.value == f"Page 2 of {pages}" for m in at.markdown)
    at.button(key="image_space_prev").click().run()
    assert _sel(at).grid_page == 0 and _grid(at) == _expected(store)[0]
    at = _open(grid_page=10_000)  # a stale link: clamped to the last page
    assert _grid(at) == _expected(store, page=pages - 1)[0]
    assert at.button(key="image_space_next").disabled


def test_color_toggle_recolours_the_adversarial_plot(store):
    at = _open()
    names = [t["name"] for t in json.loads(at.get("plotly_chart")[1].proto.spec)["data"]]
    assert names == [store.classes[c] for c in np.unique(store.pairs["label"])]
    at.radio(key="image_space_color_by").set_value("predicted").run()
    assert _sel(at).color_by == "predicted"
    benign, adversarial = (json.loads(p.proto.spec)["data"] for p in at.get("plotly_chart"))
    assert [t["name"] for t in benign] == names  # the benign prediction is the true label
    for t in adversarial:
        ids = _array(t["customdata"]).astype(int)
        assert {store.classes[c] for c in store.pairs["adv_label"].to_numpy()[ids]} == {t["name"]}


def test_a_stale_link_is_clamped_not_fatal(store):
    n = len(store)
    at = _open(cell=(len(store.classes), 0), pair=n + 5, lasso=(1, n + 7), grid_page=-4)
    assert "does not exist in this experiment" in at.warning[0].value
    assert _status(at) == f"{_selected(1)} (2 points lassoed)" and _grid(at) == [1]
    assert not any("outside the current selection" in c.value for c in at.caption)


def test_without_an_experiment_the_page_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("NVE_CACHE", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page(PAGE)
    at.run()
    assert not at.exception
    assert "prepare" in at.info[0].value
