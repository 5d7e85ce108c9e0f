"""The Image space page on an experiment with many classes (paper §6.2.2, Places365): the class-subset
control with the paper's top-10 default, and the matrix, grid, scatterplots and legend restricted to it.

No real many-class store is at hand (a Places365 experiment needs the dataset and hours), so the test
store is the real cifar20 store (tests/conftest.py) with 40 class names and its labels remapped
deterministically in pairs.parquet: true label t of pair p becomes t + 10 * (p % 4), adversarial label v
becomes v + 10 * ((p // 4) % 4) (still != the true label, since t != v mod 10). Every other file is the
original (symlinked). The image space views read only the pairs table, the class names, the t-SNE
coordinates and the images, so the page sees a 40-class experiment; other pages would not (the logits
still have 10 columns) and are not opened on it."""
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

from core import image_space
from core.store import Store
from core.ui import overview_charts
from core.ui.state import Selection
from core.ui.text import html_text, plain
from tests.helpers import displayed

APP = str(Path(__file__).resolve().parents[2] / "app.py")
PAGE = "pages/image_space.py"
PER_PAGE = 12
GROUPS = 4  # 10 CIFAR classes x 4 = 40 classes


@pytest.fixture(scope="module")
def many(cifar20_store, tmp_path_factory) -> Store:
    src = cifar20_store.path
    dst = tmp_path_factory.mktemp("many-cache") / "many40"
    dst.mkdir()
    per_class = {f"{side}_{what}" for side in ("benign", "adversarial", "dataset")
                 for what in ("logits", "probs") if (src / f"{side}_{what}.npy").is_file()}
    for f in src.iterdir():
        if f.is_file() and f.name not in ("manifest.json", "pairs.parquet", "class_stats.npz") and \
                f.name.removesuffix(".npy") not in per_class:
            os.symlink(f, dst / f.name)
    k = len(cifar20_store.classes)
    for name in per_class:  # one column per class: the 30 classes with no images get none of the mass
        a = cifar20_store.array(name)
        np.save(dst / f"{name}.npy", np.pad(a, ((0, 0), (0, (GROUPS - 1) * k)),
                                             constant_values=-1e4 if "logits" in name else 0))
    stats = cifar20_store.class_stats
    np.savez(dst / "class_stats.npz", **{key: v if key.endswith("levels") else np.concatenate(
        [v] + [np.zeros_like(v)] * (GROUPS - 1)) for key, v in stats.items()})
    pairs = cifar20_store.pairs.copy()
    p = pairs["pair"].to_numpy(np.int64)
    pairs["label"] = pairs["label"].to_numpy(np.int64) + k * (p % GROUPS)
    pairs["adv_label"] = pairs["adv_label"].to_numpy(np.int64) + k * ((p // GROUPS) % GROUPS)
    pairs.to_parquet(dst / "pairs.parquet")
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["id"] = "many40"
    manifest["classes"] = [f"{name}-{g}" for g in range(GROUPS) for name in cifar20_store.classes]
    manifest["model"]["num_classes"] = manifest["config"]["model"]["num_classes"] = GROUPS * k
    (dst / "manifest.json").write_text(json.dumps(manifest))
    store = Store(dst)
    assert len(store.classes) == GROUPS * k > image_space.SUBSET_ABOVE
    assert (store.pairs["label"] != store.pairs["adv_label"]).all()
    return store


@pytest.fixture
def store(many, monkeypatch):
    monkeypatch.setenv("NVE_CACHE", str(many.path.parent))
    return many


def _open(**fields) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page(PAGE)
    at.session_state["nve_selection"] = Selection(experiment="many40", **fields)
    at.run()
    assert not at.exception, at.exception
    return at


def _sel(at) -> Selection:
    return at.session_state["nve_selection"]


def _grid(at) -> list[int]:
    keys = [b.key for b in at.button if b.key and b.key.startswith("image_space_pick_")]
    return [int(k.rsplit("_", 1)[1]) for k in keys]


def _matrix_table(at):
    chart = at.get("vega_lite_chart")[0]
    return pa.ipc.open_stream(io.BytesIO(chart.proto.datasets[0].data.data)).read_all().to_pandas()


def _array(v):
    if isinstance(v, dict):
        import base64
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
    return np.asarray(v)


def _check_views(at, store, benign, adversarial):
    """Matrix, grid, scatterplots and legend show exactly the subset (benign rows x adversarial columns)."""
    pairs = store.pairs
    inside = set(image_space.select(pairs, None, None, benign, adversarial).tolist())
    assert 0 < len(inside) < len(pairs)
    # Matrix: exactly the subset's cells, with the full matrix's counts.
    table = _matrix_table(at)
    m = image_space.prediction_matrix(pairs, len(store.classes))
    assert sorted(set(table["label"])) == sorted(benign)
    assert sorted(set(table["adv_label"])) == sorted(adversarial)
    assert len(table) == len(benign) * len(adversarial)
    for r in table.itertuples():
        assert r.count == m[r.label, r.adv_label]
    assert table["count"].sum() == len(inside)
    # Grid: the subset's pairs in the default sort.
    want = image_space.sort_pairs(pairs, sorted(inside))[:PER_PAGE].tolist()
    assert _grid(at) == want
    # Scatterplots: the pairs outside are one grey trace; the coloured ones are the subset's pairs.
    for plot in at.get("plotly_chart"):
        data = json.loads(plot.proto.spec)["data"]
        assert {t["type"] for t in data} == {"scattergl"}
        assert data[0]["name"] == overview_charts.OTHER_NAME
        assert set(_array(data[0]["customdata"]).astype(int).tolist()) == set(range(len(pairs))) - inside
        coloured = set()
        for t in data[1:]:
            coloured |= set(_array(t["customdata"]).astype(int).tolist())
        assert coloured == inside
    # Legend: the subset's classes only.
    legend = next(md.value for md in at.markdown if "border-radius:2px" in md.value)
    shown = set(benign) | set(adversarial)
    for c, name in enumerate(store.classes):
        assert (f">{name}</span>" in legend) == (c in shown), name


def test_default_is_the_papers_top_10_and_restricts_every_view(store):
    at = _open()
    benign, adversarial = (x.tolist() for x in image_space.class_subset(store.pairs, len(store.classes)))
    assert len(benign) == 10 and len(adversarial) == 10
    assert at.multiselect(key="image_space_benign_classes").value == benign
    assert at.multiselect(key="image_space_adversarial_classes").value == adversarial
    assert at.multiselect(key="image_space_benign_classes").options == store.classes
    assert at.button(key="image_space_reset_classes").disabled  # already the default
    assert any("class subset (paper §6.2.2)" in c.value for c in at.caption)
    n = len(image_space.select(store.pairs, None, None, benign, adversarial))
    assert any(md.value.startswith(f"**All {n} pairs of the class subset** ({len(store)} in all)")
               for md in at.markdown)
    _check_views(at, store, benign, adversarial)
    assert _sel(at).benign_classes is None and _sel(at).adversarial_classes is None  # link stays short


def test_changing_the_classes_and_resetting(store):
    at = _open(grid_page=1)
    k = len(store.classes)
    counts = np.bincount(store.pairs["label"], minlength=k)
    mine = [int(c) for c in np.argsort(counts, kind="stable")[-15:-12]]  # not the top 10
    at.multiselect(key="image_space_benign_classes").set_value(mine).run()
    assert not at.exception
    assert _sel(at).benign_classes == tuple(sorted(mine)) and _sel(at).grid_page == 0
    # the adversarial classes follow the user's benign classes (the same rule's second step)
    _, adversarial = image_space.class_subset(store.pairs, k, benign=mine)
    assert at.multiselect(key="image_space_adversarial_classes").value == adversarial.tolist()
    _check_views(at, store, sorted(mine), adversarial.tolist())
    assert not at.button(key="image_space_reset_classes").disabled
    three = adversarial.tolist()[:3]
    at.multiselect(key="image_space_adversarial_classes").set_value(three).run()
    assert _sel(at).adversarial_classes == tuple(three)
    _check_views(at, store, sorted(mine), three)
    at.button(key="image_space_reset_classes").click().run()
    assert _sel(at).benign_classes is None and _sel(at).adversarial_classes is None
    benign, adversarial = (x.tolist() for x in image_space.class_subset(store.pairs, k))
    assert at.multiselect(key="image_space_benign_classes").value == benign
    _check_views(at, store, benign, adversarial)


def test_a_cell_outside_a_new_subset_is_cleared(store):
    benign, adversarial = image_space.class_subset(store.pairs, len(store.classes))
    m = image_space.restrict_matrix(image_space.prediction_matrix(store.pairs, len(store.classes)),
                                    benign, adversarial)
    i, j = np.unravel_index(int(np.argmax(m)), m.shape)
    cell = (int(benign[i]), int(adversarial[j]))
    at = _open(cell=cell)
    assert _grid(at) == image_space.sort_pairs(store.pairs, image_space.select(store.pairs, cell)
                                               )[:PER_PAGE].tolist()
    rest = [int(c) for c in benign if c != cell[0]]
    at.multiselect(key="image_space_benign_classes").set_value(rest).run()
    assert not at.exception and _sel(at).cell is None


def test_an_empty_subset_says_what_to_do(store):
    at = _open(benign_classes=())
    assert _grid(at) == [] and len(_matrix_table(at)) == 0
    assert "class subset is empty" in at.info[0].value


def test_stale_or_bad_links_are_ignored(store):
    k = len(store.classes)
    benign, adversarial = (x.tolist() for x in image_space.class_subset(store.pairs, k))
    outside = next(c for c in range(k) if c not in benign)
    at = _open(benign_classes=(benign[0], k + 5), cell=(outside, adversarial[0]))
    warnings = [w.value for w in at.warning]
    assert any(f"Class ids {k + 5} do not exist" in w for w in warnings)
    assert any("outside the class subset" in w for w in warnings)
    assert at.multiselect(key="image_space_benign_classes").value == [benign[0]]
    # from the URL: a shared subset is taken, a malformed list is dropped (the rule stays)
    for query, want in (({"benign_classes": "7,3", "adversarial_classes": "1,2"}, ([3, 7], [1, 2])),
                        ({"benign_classes": "1,x", "adversarial_classes": "-3"}, (benign, adversarial))):
        at = AppTest.from_file(APP, default_timeout=60)
        at.query_params.update({"exp": "many40", **query})
        at.switch_page(PAGE)
        at.run()
        assert not at.exception
        assert at.multiselect(key="image_space_benign_classes").value == want[0]
        assert at.multiselect(key="image_space_adversarial_classes").value == want[1]


def test_few_classes_get_no_subset_control(cifar20_store, monkeypatch):
    monkeypatch.setenv("NVE_CACHE", str(cifar20_store.path.parent))
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page(PAGE)
    at.session_state["nve_selection"] = Selection(experiment="cifar20", benign_classes=(0,))
    at.run()
    assert not at.exception
    assert len(at.multiselect) == 0
    assert len(_matrix_table(at)) == len(cifar20_store.classes) ** 2  # the whole matrix
    plots = [json.loads(p.proto.spec)["data"] for p in at.get("plotly_chart")]
    assert all(overview_charts.OTHER_NAME not in [t["name"] for t in data] for data in plots)


# -- an experiment prepared on a class subset ([data] classes) shows only its classes ----------------
TWO = ["T-shirt/top", "Trouser"]


@pytest.fixture(scope="module")
def two_built(tmp_path_factory) -> Store:
    """A real store of the demo model prepared on 2 of its 10 classes (no ../shared needed)."""
    from core.pipeline import prepare
    from core.presets import preset
    cfg = preset("demo", [f"data.classes={json.dumps(TWO)}", "data.per_class=12",
                          "prepare.tsne_perplexity=5"])
    return Store(prepare(cfg, "two", cache_dir=tmp_path_factory.mktemp("two-cache"), show_bars=False))


@pytest.fixture
def two(two_built, monkeypatch):
    monkeypatch.setenv("NVE_CACHE", str(two_built.path.parent))
    return two_built


def test_image_classes_reads_the_data_classes():
    from core.store import image_classes
    names = ["a", "b", "c", "d"]

    def manifest(classes):
        return {"classes": names, "config": {"data": {"classes": classes}}}
    assert image_classes(manifest(None)) == [0, 1, 2, 3]
    assert image_classes(manifest(["c", "a"])) == [0, 2]  # class-id order, whatever the config's order
    assert image_classes(manifest([3, "b", 3])) == [1, 3]  # ids and names, as core.data.select reads them
    assert image_classes(manifest(["zz", 9])) == [0, 1, 2, 3]  # nothing matches (hand-edited): every class
    assert image_classes({"classes": names, "config": {"data": {}}}) == [0, 1, 2, 3]


def test_prepared_subset_against_a_slow_reference():
    rng = np.random.default_rng(0)
    for _ in range(20):
        k = int(rng.integers(2, 12))
        mine = sorted(rng.choice(k, size=int(rng.integers(1, k + 1)), replace=False).tolist())
        label = rng.choice(mine, size=int(rng.integers(0, 30)))
        adv = rng.integers(0, k, size=len(label))
        pairs = pd.DataFrame({"label": label, "adv_label": adv})
        rows, cols = overview_charts.prepared_subset(pairs, mine[::-1])
        want_cols = list(mine)
        for a in adv.tolist():  # every adversarial label reached, once, then sorted
            if a not in want_cols:
                want_cols.append(int(a))
        assert list(rows) == sorted(mine) and list(cols) == sorted(want_cols)
        assert all(isinstance(c, int) for c in rows + cols)


def test_a_two_class_experiment_shows_only_its_classes(two):
    from core.ui.palette import class_colors
    pairs = two.pairs
    assert set(pairs["label"]) <= {0, 1}  # labels stay ids into the model's 10 classes
    reached = sorted(set(pairs["adv_label"].tolist()))
    assert set(reached) - {0, 1}  # the attacks turned images into classes outside the subset
    cols = sorted({0, 1} | set(reached))
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page(PAGE)
    at.session_state["nve_selection"] = Selection(experiment="two", benign_classes=(5,))  # ignored here
    at.run()
    assert not at.exception, at.exception
    assert len(at.multiselect) == 0  # a fixed subset: no class picker
    assert any("2 of the model's 10 classes" in c.value for c in at.caption)
    # Matrix: rows = the 2 classes, columns = those and the labels reached, with the pairs' counts
    table = _matrix_table(at)
    assert sorted(set(table["label"])) == [0, 1] and sorted(set(table["adv_label"])) == cols
    assert len(table) == 2 * len(cols) and table["count"].sum() == len(pairs)
    m = image_space.prediction_matrix(pairs, len(two.classes))
    assert all(r.count == m[r.label, r.adv_label] for r in table.itertuples())
    # Legend: exactly those classes, in the colours every other page gives them
    legend = next(md.value for md in at.markdown if "border-radius:2px" in md.value)
    colors = class_colors(len(two.classes))
    for c, name in enumerate(two.classes):
        assert (f">{html_text(name)}</span>" in legend) == (c in cols), name
        assert (colors[c] in legend) == (c in cols), name
    # Scatterplots: every pair in its class colour (no grey "other classes" trace)
    for plot in at.get("plotly_chart"):
        data = json.loads(plot.proto.spec)["data"]
        assert overview_charts.OTHER_NAME not in [t["name"] for t in data]
        assert {t["marker"]["color"] for t in data} <= {colors[c] for c in cols}
    # Grid: every pair, each captioned with its own classes' names
    assert any(md.value.startswith(f"**All {len(pairs)} pairs**") for md in at.markdown)
    shown = _grid(at)
    assert shown == image_space.sort_pairs(pairs, pairs["pair"])[:PER_PAGE].tolist()
    for pair in shown:
        r = pairs.iloc[pair]
        caption = next(c.value for c in at.caption if f"#{pair} · L2" in c.value)
        assert f"{plain(two.classes[int(r['label'])])} " in caption
        assert f"→ {plain(two.classes[int(r['adv_label'])])} " in caption


def test_the_experiments_page_counts_its_classes(two):
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception
    assert at.dataframe[0].value.set_index("experiment").loc["two", "classes"] == 2
    captions = [displayed(c.value) for c in at.caption]
    assert any("T-shirt" in c and "Trouser" in c and "2 of the model's 10" in c and "Dress" not in c
               for c in captions), captions


def test_a_store_written_before_random_start_existed_still_opens(two, tmp_path):
    """Manifests from before ``[attack] random_start`` lack the key: they open, reading it as false."""
    import shutil
    old = tmp_path / "old"
    shutil.copytree(two.path, old)
    m = json.loads((old / "manifest.json").read_text())
    assert m["config"]["attack"]["random_start"] is False  # recorded in new stores
    del m["config"]["attack"]["random_start"]
    (old / "manifest.json").write_text(json.dumps(m))
    from core.config import ExperimentConfig
    store = Store(old)
    assert ExperimentConfig.from_dict(store.manifest["config"], limits=False).attack.random_start is False
