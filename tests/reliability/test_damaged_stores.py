"""Damaged stores (issue 12): each kind of damage is found when a store is opened, without reading array
data; the damaged store is listed with the reason by ``list_stores``, ``python -m core list`` and the
Experiments page, ``python -m core check`` explains it, and nothing else breaks: the healthy store beside
it (named after it alphabetically, so the sidebar would have opened the damaged one first) still lists,
opens and works on every page. Also: ``derived/`` files are validated and recomputed, an empty or garbled
``state.json`` resumes nothing instead of crashing, and FGSM is one step.

The stores are real: the shipped demo model and data (3 images per class, FGSM), copied and damaged."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.analysis import Analysis
from core.config import ExperimentConfig
from core.pipeline import prepare
from core.store import (
    Store,
    StoreError,
    StoreWriter,
    check_experiment,
    check_store,
    list_stores,
    summary_row,
)
from core.ui.state import KEY
from core.vulnerability import default_k, map_file_name
from tests.helpers import displayed
from tests.reliability.test_bad_input import cli, config, error_line
from tests.reliability.test_crash_safety import identical_stores

pytestmark = pytest.mark.reliability

APP = str(Path(__file__).resolve().parents[2] / "app.py")
HEALTHY = "healthy"


def small() -> dict:
    return config(None, {"data.per_class": 3})


@pytest.fixture(scope="module")
def healthy(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("healthy")
    return prepare(ExperimentConfig.from_dict(small()), HEALTHY, cache_dir=cache, show_bars=False)


def _manifest(path: Path, change) -> None:
    m = json.loads((path / "manifest.json").read_text())
    change(m)
    (path / "manifest.json").write_text(json.dumps(m))


def _rewrite(path: Path, name: str, change) -> None:
    a = np.load(path / f"{name}.npy")
    np.save(path / f"{name}.npy", change(a))


def _truncate(p: Path) -> None:
    f = p / "benign_fmaps.npy"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


DAMAGE = {  # kind -> (damage, what `check` must say, whether prepare with the same settings repairs it)
    "truncated-array": (_truncate, "benign_fmaps.npy is cut short", True),
    "missing-array": (lambda p: (p / "adversarial_pooled.npy").unlink(), "adversarial_pooled.npy is missing",
                      True),
    "wrong-dtype": (lambda p: _rewrite(p, "benign_pooled", lambda a: a.astype(np.float64)),
                    "benign_pooled.npy holds float64 values, expected float32", True),
    "wrong-shape": (lambda p: _rewrite(p, "benign_logits", lambda a: a[:, :-1]),
                    "benign_logits.npy has shape", True),
    "counts-too-large": (lambda p: _manifest(p, lambda m: m["counts"].update(
        n_success=m["counts"]["n_attacked"])), "expected (29,", True),
    "counts-missing": (lambda p: _manifest(p, lambda m: m.pop("counts")), "manifest.json has no 'counts'",
                       True),
    "count-wrong-type": (lambda p: _manifest(p, lambda m: m["counts"].update(n_success="26")),
                         "counts.n_success is not a whole number (str)", True),
    "classes-not-names": (lambda p: _manifest(p, lambda m: m.update(classes=[1, 2])),
                          "'classes' is not a non-empty list of class names", True),
    "missing-parquet": (lambda p: (p / "pairs.parquet").unlink(), "pairs.parquet is missing", True),
    "short-parquet": (lambda p: shutil.copy(p / "class_stats.npz", p / "pairs.parquet"),
                      "pairs.parquet is not readable", True),
    "missing-class-stats": (lambda p: (p / "class_stats.npz").unlink(), "class_stats.npz is missing", True),
    "garbage-manifest": (lambda p: (p / "manifest.json").write_bytes(b"\x00{garbage"),
                         "unreadable manifest.json", False),
    "manifest-not-object": (lambda p: (p / "manifest.json").write_text("[1, 2]"), "schema unknown", False),
}


def damaged_copy(healthy: Path, cache: Path, kind: str) -> str:
    """A copy of the healthy store named before it (``aaa-<kind>``), damaged in one way."""
    ident = f"aaa-{kind}"
    shutil.copytree(healthy, cache / ident)
    DAMAGE[kind][0](cache / ident)
    return ident


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damage_is_found_and_never_hides_the_healthy_store(healthy, tmp_path, capsys, kind):
    shutil.copytree(healthy, tmp_path / HEALTHY)
    ident = damaged_copy(healthy, tmp_path, kind)
    _, says, repairable = DAMAGE[kind]
    # opening it: one StoreError with the reason, the fix, and no server path
    with pytest.raises(StoreError) as e:
        Store(tmp_path / ident)
    assert says in str(e.value) and str(tmp_path) not in str(e.value), str(e.value)
    assert e.value.repairable is repairable
    # the listing: the damaged one with its reason (not usable), then the healthy one
    infos = list_stores(tmp_path)
    assert [i.id for i in infos] == [ident, HEALTHY]
    assert infos[0].manifest is None and says in infos[0].error
    assert infos[1].manifest and infos[1].error is None
    # the CLI: `list` shows both, `check` explains the damage (exit 1) and passes the healthy one (exit 0)
    rc, out, err = cli(capsys, "--cache", str(tmp_path), "list")
    assert rc == 0 and not err, err
    lines = out.splitlines()
    assert lines[0].startswith(ident) and "unusable:" in lines[0] and says in lines[0], out
    assert lines[1].startswith(HEALTHY) and "26 pairs" in lines[1], out
    rc, out, err = cli(capsys, "--cache", str(tmp_path), "check", ident)
    assert rc == 1 and f"{ident}: DAMAGED" in out and says in out, out
    assert ("re-running prepare with the same settings rebuilds it" in out) is repairable, out
    rc, out, err = cli(capsys, "--cache", str(tmp_path), "check", HEALTHY)
    assert rc == 0 and out.startswith(f"{HEALTHY}: OK, 26 pairs"), out
    rc, out, err = cli(capsys, "--cache", str(tmp_path), "check", "--all")
    assert rc == 1 and "DAMAGED" in out and f"{HEALTHY}: OK" in out, out
    rc, out, err = cli(capsys, "--cache", str(tmp_path), "info", ident)
    assert rc == 2 and says in error_line(err), err
    rc, out, err = cli(capsys, "--cache", str(tmp_path), "info", HEALTHY)
    assert rc == 0 and "26 pairs" in out


def test_repair_by_the_printed_settings(healthy, tmp_path, capsys):
    """`check` prints the settings; prepare with them and --force rebuilds the store equal to the original."""
    ident = HEALTHY  # the same id: the manifests compare equal
    shutil.copytree(healthy, tmp_path / ident)
    DAMAGE["truncated-array"][0](tmp_path / ident)
    rc, out, _ = cli(capsys, "--cache", str(tmp_path), "check", ident)
    assert rc == 1
    toml = out.split("--force\n", 1)[1]
    (tmp_path / "settings.toml").write_text("\n".join(line.strip() for line in toml.splitlines()) + "\n")
    rc, out, err = cli(capsys, "--cache", str(tmp_path), "prepare", "--quiet", "--config",
                       str(tmp_path / "settings.toml"), "--out", ident, "--force")
    assert rc == 0, err
    assert check_store(tmp_path / ident).ok
    identical_stores(tmp_path / ident, healthy)


def test_check_usage_errors(healthy, capsys):
    cache = str(healthy.parent)
    for args in (["check"], ["check", HEALTHY, "--all"], ["check", "nope"], ["check", "../x"]):
        rc, out, err = cli(capsys, "--cache", cache, *args)
        assert rc == 2, (args, out, err)
        error_line(err)


def test_app_lists_damaged_stores_and_works_on_the_healthy_one(healthy, tmp_path, monkeypatch):
    """Every kind of damage at once, all named before the healthy store: the Experiments page lists each
    with its reason as plain text and the healthy one in its table; every page runs for the healthy one."""
    shutil.copytree(healthy, tmp_path / HEALTHY)
    for kind in DAMAGE:
        damaged_copy(healthy, tmp_path, kind)
    monkeypatch.setenv("NVE_CACHE", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert list(at.dataframe[0].value["experiment"]) == [HEALTHY]
    said = [displayed(w.value) for w in at.warning]
    for kind, (_, says, _) in DAMAGE.items():
        assert any(f"'aaa-{kind}' cannot be opened" in w and says in w for w in said), (kind, said)
    assert at.sidebar.selectbox[0].options == [HEALTHY]
    assert at.sidebar.selectbox[0].value == HEALTHY
    for page in ("image_space", "neuron_ranking", "receptive_fields", "clustering", "prepare"):
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, page
        assert not [e.value for e in at.error], (page, [e.value for e in at.error])
        assert at.session_state[KEY].experiment == HEALTHY, page  # (AppTest shows no sidebar after a switch)


def test_store_damaged_after_it_was_listed(healthy, tmp_path):
    """A store that passed when opened but was cut short later: its arrays give a StoreError, and a new
    open finds the damage (the check's memo is keyed by the files' sizes and times)."""
    shutil.copytree(healthy, tmp_path / "s")
    store = Store(tmp_path / "s")
    (tmp_path / "s" / "benign_pooled.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(StoreError, match="benign_pooled.npy cannot be read"):
        store.array("benign_pooled")
    with pytest.raises(StoreError, match="benign_pooled.npy is not a readable array"):
        Store(tmp_path / "s")


@pytest.mark.parametrize("bad", ["wrong-shape", "nan", "wrong-dtype", "not-npy"])
def test_bad_derived_files_are_recomputed(healthy, tmp_path, bad):
    shutil.copytree(healthy, tmp_path / "s")
    store = Store(tmp_path / "s")
    h, w = store.manifest["input_shape"][1:]
    k, stride = default_k(h, w), 7
    vmap = tmp_path / "s" / "derived" / map_file_name(0, k, stride, "probability", "fp32")
    quant = tmp_path / "s" / "derived" / "rf-quantile-0.9900.npy"
    vmap.parent.mkdir()
    n = store.manifest["model"]["num_neurons"]
    forged = {"wrong-shape": (np.zeros((2, h - 1, w), np.float32), np.zeros(n - 1, np.float32)),
              "nan": (np.full((2, h, w), np.nan, np.float32), np.full(n, np.nan, np.float32)),
              "wrong-dtype": (np.zeros((2, h, w), np.float64), np.zeros(n, np.float64))}
    if bad == "not-npy":
        vmap.write_bytes(b"garbage")
        quant.write_bytes(b"")
    else:
        np.save(vmap, forged[bad][0])
        np.save(quant, forged[bad][1])
    r = check_experiment(tmp_path / "s")
    assert r.ok and sum("derived/" in note for note in r.notes) == 2, r.notes
    a = Analysis(store, memory_bytes=0)
    assert not a.has_vulnerability_maps(0, k=k, stride=stride)
    b_map, a_map = a.vulnerability_maps(0, k=k, stride=stride)
    shutil.copytree(healthy, tmp_path / "ref")
    reference = Analysis(Store(tmp_path / "ref"), memory_bytes=0)
    expected = reference.vulnerability_maps(0, k=k, stride=stride)
    np.testing.assert_array_equal(b_map, expected[0])
    np.testing.assert_array_equal(a_map, expected[1])
    thresholds = a.rf_thresholds(0.99)
    assert thresholds.shape == (n,) and np.isfinite(thresholds).all()
    # both files were replaced (atomically, by save_npy) with the valid results
    np.testing.assert_array_equal(np.load(vmap), np.stack(expected))
    np.testing.assert_array_equal(np.load(quant), thresholds)
    assert check_experiment(tmp_path / "s").notes == []


def test_empty_state_json_starts_afresh(healthy, tmp_path):
    """An empty state.json in the partial folder of an interrupted prepare: the run starts its stages
    afresh (no crash) and the store equals an uninterrupted one."""
    cfg = ExperimentConfig.from_dict(small())

    def stop(stage, done, total):
        if stage == "attack" and done >= 8:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, HEALTHY, cache_dir=tmp_path, show_bars=False, progress=stop)
    (tmp_path / f".partial-{HEALTHY}" / "state.json").write_text("")
    seen: list = []
    prepare(cfg, HEALTHY, cache_dir=tmp_path, show_bars=False, progress=lambda s, d, t: seen.append((s, d)))
    assert ("clean", 0) in seen and ("attack", 0) in seen
    identical_stores(tmp_path / HEALTHY, healthy)


@pytest.mark.parametrize("state", ["", "{", "[1]", "\x00\xff", '{"clean_done": "x", "attack_done": -3}',
                                   '{"clean_done": 8, "attack_done": true}'])
def test_garbled_state_json_is_no_progress(tmp_path, state):
    w = StoreWriter("x", "key", tmp_path)
    w.mark("clean_done", 8)
    w.release()
    (tmp_path / ".partial-x" / "state.json").write_text(state)
    w = StoreWriter("x", "key", tmp_path)
    assert w.resumed and w.state == ({"clean_done": 8} if "8" in state else {})
    w.release()


def test_fgsm_is_one_step(healthy, capsys):
    m = Store(healthy).manifest
    assert m["config"]["attack"]["method"] == "fgsm" and "steps" not in m["config"]["attack"]
    row = summary_row(m)
    assert row["steps"] == 1 and row["attack"] == "FGSM"
    m["config"]["attack"]["steps"] = 7  # a manifest written before issue 14 carries PGD's unused steps
    assert summary_row(m)["steps"] == 1


def _random_value(rng):
    return [None, True, -1, 0, 2**70, 1.5, float("nan"), "", "x" * 300, [], {}, [1, "a"], {"a": None}][
        int(rng.integers(13))]


def _random_damage(path: Path, rng) -> str:
    """One seeded random damage of the store at ``path``; returns what it did."""
    files = sorted(p for p in path.rglob("*") if p.is_file())
    f = files[int(rng.integers(len(files)))]
    size = f.stat().st_size
    op = ["truncate", "header-bytes", "any-bytes", "delete", "append", "manifest-value"][int(rng.integers(6))]
    if op == "manifest-value":
        m = json.loads((path / "manifest.json").read_text())
        node, keys = m, []
        while isinstance(node, dict) and node and rng.random() < 0.7:
            key = sorted(node)[int(rng.integers(len(node)))]
            keys.append(key)
            if not isinstance(node[key], dict):
                break
            node = node[key]
        if isinstance(node, dict) and keys:
            node[keys[-1]] = _random_value(rng)
        (path / "manifest.json").write_text(json.dumps(m))
        return f"manifest {'.'.join(keys)}"
    data = bytearray(f.read_bytes())
    if op == "truncate":
        data = data[: int(rng.integers(max(size, 1)))]
    elif op in ("header-bytes", "any-bytes") and size:
        end = min(size, 256) if op == "header-bytes" else size
        for at in rng.integers(0, end, int(rng.integers(1, 9))):
            data[at] = int(rng.integers(256))
    elif op == "delete":
        f.unlink()
        return f"delete {f.name}"
    elif op == "append":
        data += bytes(rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8))
    f.write_bytes(bytes(data))
    return f"{op} {f.relative_to(path)}"


def test_random_damage_never_escapes(healthy, tmp_path):
    """A seeded fuzz of store damage (truncations, flipped bytes in headers or data, deleted or extended
    files, manifest values of any type): listing always works and keeps the healthy store usable; opening
    either refuses with a StoreError or opens, and then every read the app makes either works or is a
    StoreError; ``check`` always answers. Damage that only changes array values (not their shape) cannot
    be seen without reading the data: such a store opens, as it should."""
    rng = np.random.default_rng(12)
    shutil.copytree(healthy, tmp_path / HEALTHY)
    for case in range(60):
        damaged = tmp_path / "aaa-fuzz"
        shutil.rmtree(damaged, ignore_errors=True)
        shutil.copytree(healthy, damaged)
        what = _random_damage(damaged, rng)
        infos = {i.id: i for i in list_stores(tmp_path)}
        assert infos[HEALTHY].manifest is not None and "aaa-fuzz" in infos, (case, what)
        report = check_experiment(damaged)
        assert report.ok or report.problems, (case, what)
        try:
            store = Store(damaged)
        except StoreError:
            assert infos["aaa-fuzz"].manifest is None, (case, what)
            continue
        try:  # what the pages read
            _ = store.pairs, store.class_stats, store.classes, len(store)
            for name in ("benign_images", "adversarial_images", "benign_fmaps", "adversarial_fmaps",
                         "benign_pooled", "adversarial_probs"):
                np.asarray(store.array(name)[: 2])
            store.pair_images(0)
        except StoreError:
            pass
