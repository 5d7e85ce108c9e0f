"""The app's experiment list, through Streamlit's AppTest (real store, real manifest)."""
from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def test_lists_experiments_with_manifest_figures(cifar20_store, monkeypatch):
    monkeypatch.setenv("NVE_CACHE", str(cifar20_store.path.parent))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    df = at.dataframe[0].value
    assert list(df["experiment"]) == ["cifar20"]
    assert df["successful pairs"][0] == cifar20_store.counts["n_success"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == "100"
    assert metrics["Clean accuracy"] == f"{cifar20_store.counts['clean_accuracy']:.1%}"


def test_empty_cache_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("NVE_CACHE", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert "prepare --preset demo" in at.info[0].value


def test_unusable_store_is_explained(tmp_path, monkeypatch):
    (tmp_path / "broken").mkdir()
    monkeypatch.setenv("NVE_CACHE", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert any("broken" in w.value and "manifest" in w.value for w in at.warning)

