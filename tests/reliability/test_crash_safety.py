"""Crash safety of ``prepare`` (issue 5): kill -9 at several points, never a store that looks complete,
then a resume whose result equals an uninterrupted run, array for array.

The moment of each kill is picked exactly with the pipeline's test hook (``core.store.pause_point``):
with ``NVE_TEST_PAUSE_AT=<point>`` the ``python -m core prepare`` process writes a marker file at that
point and waits; the test then kills it with SIGKILL, a real kill -9. The points, in order:

- ``clean:8``, ``attack:8``, ``features:8``: inside a chunk of each chunked stage, after the chunk's
  work and before its results are flushed and recorded (the worst moment: that chunk must be redone);
- ``statistics``: after the class statistics were written;
- ``tsne:benign``: after the first of the two t-SNE layouts;
- ``publish``: everything written but the manifest;
- ``publish-rename``: the manifest is written inside ``.partial-<id>/``, the rename not yet done.

One chain: each run is killed at the next point, so each rerun resumes the previous one's work (its log
says how far that got), and the last run completes. A kill inside ``publish`` (after the resume key is
dropped) makes the next run start afresh: also tested, also equal. A tiny config keeps it small:
the shipped demo model and data, 3 images per class, FGSM, batches of 2 (chunks of 8 images).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.config import ExperimentConfig
from core.pipeline import prepare
from core.store import Store, StoreError, list_stores, open_store
from tests.core.test_pipeline import _same_store
from tests.reliability.test_bad_input import config, write_toml

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]
ID = "crash"
POINTS = ["clean:8", "attack:8", "features:8", "statistics", "tsne:benign", "publish", "publish-rename"]


def small_config() -> dict:
    return config(None, {"data.per_class": 3, "prepare.batch_size": 2})


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same experiment prepared without interruption."""
    cache = tmp_path_factory.mktemp("reference")
    return prepare(ExperimentConfig.from_dict(small_config()), ID, cache_dir=cache, show_bars=False)


def identical_stores(path: Path, ref: Path) -> None:
    """``_same_store`` (tests/core/test_pipeline.py), then every other file too: all arrays, the class
    statistics, the pair table and the manifest (but its creation time and timings)."""
    _same_store(path, ref)
    names = sorted(p.name for p in ref.iterdir())
    assert sorted(p.name for p in path.iterdir()) == names
    for name in names:
        if name.endswith(".npy"):
            np.testing.assert_array_equal(np.load(path / name), np.load(ref / name), err_msg=name)
    with np.load(path / "class_stats.npz") as a, np.load(ref / "class_stats.npz") as b:
        assert a.files == b.files
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    m1, m2 = (json.loads((p / "manifest.json").read_text()) for p in (path, ref))
    for m in (m1, m2):
        del m["created"], m["timings_s"]
    assert m1 == m2


def _run_until(cmd: list[str], env: dict, point: str, marker: Path) -> subprocess.CompletedProcess:
    """Start the command, wait for it to reach ``point``, kill -9 it there."""
    marker.unlink(missing_ok=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**env, "NVE_TEST_PAUSE_AT": point, "NVE_TEST_PAUSE_FILE": str(marker)})
    deadline = time.monotonic() + 300
    while not marker.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    reached = marker.is_file()
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert reached, f"prepare never reached {point!r} (exit {proc.returncode}):\n{err}"
    assert proc.returncode == -signal.SIGKILL, err
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _assert_not_a_store(cache: Path) -> None:
    assert not (cache / ID).exists(), "a killed prepare must publish nothing"
    assert list_stores(cache) == [], "nothing half-written may be listed"
    with pytest.raises(StoreError, match="no experiment"):
        open_store(ID, cache)
    with pytest.raises(StoreError, match="invalid experiment id"):  # the partial folder is never an id
        open_store(f".partial-{ID}", cache)


def _done(cache: Path) -> dict:
    """Chunked progress recorded in the partial folder (empty once publishing has begun)."""
    state = cache / f".partial-{ID}" / "state.json"
    return {k: v for k, v in json.loads(state.read_text()).items()} if state.is_file() else {}


def test_kill9_at_every_stage_then_resume_equals_uninterrupted(reference, tmp_path):
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "core", "--cache", str(cache), "prepare", "--quiet", "--out", ID,
           "--config", str(write_toml(small_config(), tmp_path / "small.toml"))]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    n_images = Store(reference).counts["n_images"]
    n_correct, n_pairs = Store(reference).counts["n_correct"], Store(reference).counts["n_success"]
    expected_done = {  # what each kill leaves recorded: the chunk it interrupted is not
        "clean:8": {"clean_done": 8},
        "attack:8": {"clean_done": n_images, "attack_done": 8},
        "features:8": {"clean_done": n_images, "attack_done": n_correct, "features_done": 8},
        "statistics": {"clean_done": n_images, "attack_done": n_correct, "features_done": n_pairs},
        "tsne:benign": {"clean_done": n_images, "attack_done": n_correct, "features_done": n_pairs},
        "publish": {"clean_done": n_images, "attack_done": n_correct, "features_done": n_pairs},
        "publish-rename": {},  # the resume key and work files are gone: the manifest is being published
    }
    before: dict = {}
    for point in POINTS:
        run = _run_until(cmd, env, point, tmp_path / "paused")
        if before:  # it resumed from what the previous kill left, and said so
            shown = ", ".join(f"{k.removesuffix('_done')} {v}" for k, v in before.items())
            assert f"resuming the interrupted prepare of '{ID}'" in run.stderr, run.stderr
            assert f"(items already done: {shown})" in run.stderr, run.stderr
        _assert_not_a_store(cache)
        before = _done(cache)
        assert before == expected_done[point], point
    partial = cache / f".partial-{ID}"
    assert (partial / "manifest.json").is_file() and not (partial / "config_key").exists()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "resuming" not in done.stderr  # killed while publishing: started afresh
    assert not partial.exists()
    assert [s.id for s in list_stores(cache)] == [ID]
    identical_stores(cache / ID, reference)


def test_lost_or_cut_work_files_are_recomputed(reference, tmp_path):
    """A resume never trusts recorded progress whose files are gone or cut short: the attack's results
    truncated (as by a disk-full crash), or the work folder deleted (as by a crash while publishing in
    an older version) make the stage start over, and the store still equals the reference."""
    cfg = ExperimentConfig.from_dict(small_config())

    def stop_after(stage: str, at: int):
        def progress(st, done, total):
            if st == stage and done >= at:
                raise KeyboardInterrupt
        return progress

    for damage in ("truncate", "delete"):
        cache = tmp_path / damage
        with pytest.raises(KeyboardInterrupt):
            prepare(cfg, ID, cache_dir=cache, show_bars=False, progress=stop_after("features", 8))
        work = cache / f".partial-{ID}" / "work"
        if damage == "truncate":
            adv = work / "adv_images.npy"
            adv.write_bytes(adv.read_bytes()[:100])
        else:
            shutil.rmtree(work)
        seen: list = []
        prepare(cfg, ID, cache_dir=cache, show_bars=False,
                progress=lambda st, d, t, seen=seen: seen.append((st, d)))
        assert ("attack", 0) in seen and ("clean", 0) not in seen, seen
        identical_stores(cache / ID, reference)
