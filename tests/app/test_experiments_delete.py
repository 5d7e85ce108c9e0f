"""Deleting an experiment: ``core.store.delete_experiment`` (what it refuses, that it never follows a
link out of the cache and never leaves a half-deleted store listed), ``core.ui.stores.delete`` (a
running prepare job of the id is refused; the caches forget the store) and the Experiments page's
confirmation flow (AppTest)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import jobs
from core import store as core_store
from core.presets import PRESETS
from core.store import StoreError, StoreWriter, delete_experiment, list_stores
from core.ui import stores
from tests.helpers import displayed

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A small real store (the demo model on 2 classes × 6 images), prepared once and copied per test."""
    from core.pipeline import prepare
    from core.presets import preset
    cfg = preset("demo", ['data.classes=["T-shirt/top", "Trouser"]', "data.per_class=6",
                          "prepare.tsne_perplexity=3"])
    return prepare(cfg, "small", cache_dir=tmp_path_factory.mktemp("built"), show_bars=False)


def _fake(cache: Path, ident: str) -> Path:
    """A folder shaped like a store (nested files; not a valid one: delete does not need one)."""
    d = cache / ident
    (d / "derived").mkdir(parents=True)
    (d / "manifest.json").write_text("{}")
    (d / "derived" / "vmap-1.npy").write_bytes(b"x" * 100)
    return d


def _hidden(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.startswith(".trash"))


# -- core.store.delete_experiment -------------------------------------------------------------------
def test_delete_removes_the_folder_and_nothing_else(tmp_path):
    cache = tmp_path / "cache"
    _fake(cache, "gone")
    keep = _fake(cache, "keep")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    os.symlink(outside, cache / "gone" / "link-out")  # a link inside the store: removed, not followed
    os.symlink(outside / "precious.txt", cache / "gone" / "derived" / "file-link")
    delete_experiment("gone", cache)
    assert not (cache / "gone").exists() and not (cache / "gone").is_symlink()
    assert (outside / "precious.txt").read_text() == "keep me"
    assert (keep / "derived" / "vmap-1.npy").is_file()
    assert _hidden(cache) == []  # the hidden trash folder went too


def test_a_link_or_a_path_out_of_the_cache_is_refused(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    outside = _fake(tmp_path, "elsewhere")
    os.symlink(outside, cache / "linked")  # a link named like an experiment, pointing out of the cache
    with pytest.raises(StoreError, match="symbolic link"):
        delete_experiment("linked", cache)
    assert (cache / "linked").is_symlink() and (outside / "derived" / "vmap-1.npy").is_file()
    for bad in ("../elsewhere", "..", "a/b", "/tmp", ".hidden", "", "x" * 65):
        with pytest.raises(StoreError, match="invalid experiment id"):
            delete_experiment(bad, cache)
    assert (outside / "manifest.json").is_file()
    (cache / "afile").write_text("not a folder")
    with pytest.raises(StoreError, match="not an experiment folder"):
        delete_experiment("afile", cache)
    with pytest.raises(StoreError, match="no experiment 'missing'"):
        delete_experiment("missing", cache)
    assert (cache / "afile").is_file()


def test_a_planted_lock_link_is_not_followed(tmp_path):
    cache = tmp_path / "cache"
    _fake(cache, "gone")
    target = tmp_path / "victim"
    target.write_text("unchanged")
    os.symlink(target, cache / ".partial-gone.lock")
    with pytest.raises(StoreError, match="cannot be deleted"):
        delete_experiment("gone", cache)
    assert target.read_text() == "unchanged" and (cache / "gone").is_dir()


def test_a_prepare_writing_the_same_id_is_not_raced(tmp_path):
    cache = tmp_path / "cache"
    _fake(cache, "gone")
    writer = StoreWriter("gone", "key", cache)  # holds the id's lock, as a running prepare (app or CLI)
    try:
        with pytest.raises(StoreError, match="being prepared now"):
            delete_experiment("gone", cache)
        assert (cache / "gone").is_dir()
    finally:
        writer.release()
    delete_experiment("gone", cache)
    assert not (cache / "gone").exists()


def test_no_listing_ever_sees_a_half_deleted_store(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    _fake(cache, "gone")
    _fake(cache, "keep")
    real = shutil.rmtree
    seen = []

    def rmtree(path, *args, **kwargs):  # while the files are being removed
        seen.append(([i.id for i in list_stores(cache)], Path(path).name))
        real(path, *args, **kwargs)
    monkeypatch.setattr(core_store.shutil, "rmtree", rmtree)
    delete_experiment("gone", cache)
    assert seen and seen[0][0] == ["keep"] and seen[0][1].startswith(".trash-gone-")


def test_files_that_cannot_be_removed_are_reported(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    _fake(cache, "gone")
    real = shutil.rmtree

    def rmtree(path, *args, onexc=None, onerror=None, **kwargs):  # one file refuses (e.g. read-only)
        err = PermissionError(13, "Permission denied")
        p = os.path.join(path, "manifest.json")
        onexc(os.unlink, p, err) if onexc else onerror(os.unlink, p, (PermissionError, err, None))
        real(path)
    monkeypatch.setattr(core_store.shutil, "rmtree", rmtree)
    with pytest.raises(StoreError, match=r"'gone' was deleted, but 1 of its files.*manifest.json "
                                         r"\(Permission denied\)"):
        delete_experiment("gone", cache)
    assert [i.id for i in list_stores(cache)] == []


# -- core.ui.stores.delete: the app's delete --------------------------------------------------------
@pytest.mark.reliability
def test_the_app_refuses_while_this_server_prepares_the_id(tmp_path, monkeypatch, built):
    """A job of the id that has not yet taken the store's lock (it is still loading) is refused too."""
    gate = tmp_path / "gate"
    monkeypatch.setenv("NVE_TEST_GATE", str(gate))
    job = jobs.start(PRESETS["demo"], "busy", tmp_path, target="tests.job_targets:slow")
    shutil.copytree(built, tmp_path / "busy")  # e.g. the CLI published it meanwhile
    try:
        assert stores.being_prepared("busy", tmp_path)
        with pytest.raises(StoreError, match="being prepared now"):
            stores.delete("busy", tmp_path)
        assert (tmp_path / "busy" / "manifest.json").is_file()
    finally:
        gate.touch()
        assert job.wait(60)
    assert not stores.being_prepared("busy", tmp_path)
    stores.delete("busy", tmp_path)
    assert not (tmp_path / "busy").exists()


def test_the_app_forgets_the_deleted_store(tmp_path, monkeypatch, built):
    from core.ui import services
    monkeypatch.setenv("NVE_CACHE", str(tmp_path))
    for ident in ("gone", "keep"):
        shutil.copytree(built, tmp_path / ident)
    assert [i.id for i in stores.experiments(str(tmp_path))] == ["gone", "keep"]
    first = services.analysis("gone")
    assert services.analysis("gone") is first  # cached
    kept = services.analysis("keep")
    stores.delete("gone", tmp_path)
    assert [i.id for i in stores.experiments(str(tmp_path))] == ["keep"]  # not the 10 s old listing
    assert services.analysis("keep") is kept  # the others stay open
    shutil.copytree(built, tmp_path / "gone")  # the same id again (same manifest time): opened afresh
    assert services.analysis("gone") is not first


# -- the Experiments page -------------------------------------------------------------------------
def _page(cache: Path, experiment: str) -> AppTest:
    """The Experiments page opened from a link to ``experiment`` (a first run from the address, as a
    browser's: the app's navigation and sidebar then run on every rerun)."""
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["exp"] = experiment
    at.run()
    assert at.session_state["nve_selection"].experiment == experiment
    assert not at.exception, at.exception
    return at


def test_the_page_deletes_after_the_id_is_typed(tmp_path, monkeypatch, built):
    monkeypatch.setenv("NVE_CACHE", str(tmp_path))
    for ident in ("gone", "keep"):
        shutil.copytree(built, tmp_path / ident)
    at = _page(tmp_path, "gone")
    assert at.selectbox(key="experiments_delete_target").value is None
    at.selectbox(key="experiments_delete_target").set_value("gone").run()
    assert any("cannot be undone" in displayed(w.value) for w in at.warning)
    button = at.button(key="experiments_delete")
    assert button.disabled  # nothing typed yet
    at.text_input(key="experiments_delete_confirm").set_value("keep").run()
    assert at.button(key="experiments_delete").disabled  # another id
    at.text_input(key="experiments_delete_confirm").set_value("gone").run()
    assert not at.button(key="experiments_delete").disabled
    assert (tmp_path / "gone").is_dir()  # typing alone deletes nothing
    at.button(key="experiments_delete").click().run()
    assert not at.exception
    assert not (tmp_path / "gone").exists() and (tmp_path / "keep").is_dir() and _hidden(tmp_path) == []
    assert any("Deleted" in displayed(s.value) and "gone" in s.value for s in at.success)
    assert list(at.dataframe[0].value["experiment"]) == ["keep"]
    # the selection pointed to it: cleared, so the sidebar opens the first one left without a "not here"
    # warning (AppTest reruns only the page after the first run: the browser test sees the sidebar)
    assert at.session_state["nve_selection"].experiment is None
    assert not any("is not here" in displayed(w.value) for w in at.warning)
    assert at.selectbox(key="experiments_delete_target").value is None  # the confirmation is reset
    at.run()
    assert not any("Deleted" in displayed(s.value) for s in at.success)  # said once


def test_the_page_deletes_a_damaged_experiment_and_says_why_not(tmp_path, monkeypatch, built):
    monkeypatch.setenv("NVE_CACHE", str(tmp_path))
    for ident in ("keep", "broken", "broken2"):
        shutil.copytree(built, tmp_path / ident)
    for ident in ("broken", "broken2"):
        m = json.loads((tmp_path / ident / "manifest.json").read_text())
        m["schema_version"] = 99
        (tmp_path / ident / "manifest.json").write_text(json.dumps(m))
    at = _page(tmp_path, "keep")
    assert any("'broken'" in (t := displayed(w.value)) and "cannot be opened" in t for w in at.warning)
    for ident in ("broken", "broken2"):
        at.selectbox(key="experiments_delete_target").set_value(ident).run()
        at.text_input(key="experiments_delete_confirm").set_value(ident).run()
        if ident == "broken2":
            shutil.rmtree(tmp_path / ident)  # someone else deleted it meanwhile
        at.button(key="experiments_delete").click().run()
        assert not at.exception
    assert not (tmp_path / "broken").exists()
    assert any("no experiment 'broken2'" in displayed(e.value) for e in at.error)  # said, not a traceback
    assert at.session_state["nve_selection"].experiment == "keep" and (tmp_path / "keep").is_dir()
    assert [i.id for i in stores.experiments(str(tmp_path))] == ["keep"]
