import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.neuron_measures import QUANTILE_LEVELS, class_statistics
from core.pipeline import prepare
from core.probability import PAIR_SCORES
from core.store import PAIR_COLUMNS, SCHEMA_VERSION, Store, StoreError, list_stores, open_store

ROOT = Path(__file__).resolve().parents[2]


def test_store_contents_are_consistent(cifar20_store, cifar20_config):
    s = cifar20_store
    m, c = s.manifest, s.counts
    assert m["schema_version"] == SCHEMA_VERSION
    assert c["n_images"] == 100 and c["n_attacked"] == c["n_correct"]
    assert c["clean_accuracy"] == pytest.approx(c["n_correct"] / c["n_images"])
    assert c["attack_success_rate"] == pytest.approx(c["n_success"] / c["n_attacked"])
    assert c["attack_success_rate"] > 0.9  # ResNet20 falls to PGD-7 (models/README.md)
    for key in ("config", "fingerprints", "versions", "timings_s"):
        assert m[key]
    assert set(m["timings_s"]) >= {"clean", "attack", "features", "statistics", "tsne"}
    n = c["n_success"]
    pairs = s.pairs
    assert list(pairs.columns) == [*PAIR_COLUMNS, *PAIR_SCORES] and len(pairs) == n
    assert (pairs.label != pairs.adv_label).all()
    eps = cifar20_config.attack.eps
    assert (pairs.linf <= eps + 1e-6).all() and (pairs.l2 > 0).all()
    b, a = s.array("benign_images"), s.array("adversarial_images")
    assert isinstance(b, np.memmap) and b.dtype == np.uint8 and a.dtype == np.float32
    assert b.shape == a.shape == (n, 3, 32, 32)
    delta = a.reshape(n, -1) - b.reshape(n, -1) / 255.0
    np.testing.assert_allclose(np.linalg.norm(delta, axis=1), pairs.l2, rtol=1e-5)
    bp, ap = s.array("benign_probs"), s.array("adversarial_probs")
    assert (bp.argmax(1) == pairs.label).all() and (ap.argmax(1) == pairs.adv_label).all()
    np.testing.assert_allclose(ap[np.arange(n), pairs.adv_label], pairs.adv_prob, rtol=1e-6)
    np.testing.assert_allclose(bp[np.arange(n), pairs.adv_label], pairs.adv_prob_benign, rtol=1e-6)
    fm, pooled = s.array("adversarial_fmaps"), s.array("adversarial_pooled")
    assert fm.dtype == np.float16 and fm.shape == (n, 64, 8, 8)
    np.testing.assert_allclose(fm.astype(np.float32).mean((2, 3)), pooled, atol=2e-2, rtol=2e-3)
    for col in ("tsne_benign_x", "tsne_adv_y"):
        assert np.isfinite(pairs[col]).all() and pairs[col].std() > 0
    # the dataset index is the image's rank in the ImageFolder's sorted order (1000 per class)
    assert (pairs["index"] // 1000 == pairs.label).all()


def test_class_statistics_match_a_slow_reference(cifar20_store):
    s = cifar20_store
    st = s.class_stats
    labels = s.pairs.adv_label.to_numpy()
    pooled = np.asarray(s.array("adversarial_pooled"), dtype=np.float64)
    for k in range(10):
        rows = [pooled[i] for i in range(len(labels)) if labels[i] == k]
        assert st["adversarial_count"][k] == len(rows)
        if len(rows) > 1:
            for j in (0, 17, 63):
                col = sorted(r[j] for r in rows)
                mean = sum(col) / len(col)
                std = (sum((v - mean) ** 2 for v in col) / (len(col) - 1)) ** 0.5
                assert st["adversarial_mean"][k, j] == pytest.approx(mean, rel=1e-5, abs=1e-6)
                assert st["adversarial_std"][k, j] == pytest.approx(std, rel=1e-4, abs=1e-6)
                assert st["adversarial_quantiles"][k, -1, j] == pytest.approx(col[-1], rel=1e-6)
                assert st["adversarial_quantiles"][k, 0, j] == pytest.approx(col[0], rel=1e-6)
    # benign statistics cover every correctly classified image of the class
    correct = s.array("dataset_pred") == s.array("dataset_labels")
    assert st["benign_count"].sum() == correct.sum() == s.counts["n_correct"]


def test_class_statistics_empty_and_single_classes():
    pooled = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    st = class_statistics(pooled, np.array([0, 0, 2]), 3)
    assert st["count"].tolist() == [2, 0, 1]
    assert np.isnan(st["mean"][1]).all() and (st["std"][2] == 0).all()
    assert st["quantiles"].shape == (3, len(QUANTILE_LEVELS), 2)


def test_list_open_and_ids(cifar20_store, tmp_path):
    cache = cifar20_store.path.parent
    infos = list_stores(cache)
    assert [i.id for i in infos] == ["cifar20"] and infos[0].manifest
    assert open_store("cifar20", cache).counts == cifar20_store.counts
    for bad in ("../etc", "/abs", "a/b", "..", ""):
        with pytest.raises(StoreError, match="invalid experiment id"):
            open_store(bad, cache)
    with pytest.raises(StoreError, match="no experiment"):
        open_store("missing", cache)
    # an old schema is refused with a clear message, and listed as unusable
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"schema_version": 0}))
    with pytest.raises(StoreError, match="prepare it again"):
        Store(old)
    assert list_stores(tmp_path)[0].error


def test_existing_store_needs_force(cifar20_store, cifar20_config):
    with pytest.raises(StoreError, match="already exists"):
        prepare(cifar20_config, "cifar20", cache_dir=cifar20_store.path.parent, show_bars=False)


def _same_store(p1: Path, p2: Path):
    s1, s2 = Store(p1), Store(p2)
    assert s1.counts == s2.counts
    for name in ("benign_images", "adversarial_images", "adversarial_probs", "benign_pooled",
                 "adversarial_fmaps", "dataset_pooled"):
        np.testing.assert_array_equal(s1.array(name), s2.array(name), err_msg=name)
    assert s1.pairs.equals(s2.pairs)


def test_interrupt_then_resume_equals_uninterrupted(cifar20_store, cifar20_config, tmp_path):
    seen = []

    def stop_in_attack(stage, done, total):
        seen.append((stage, done))
        if stage == "attack" and done >= 64:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare(cifar20_config, "cifar20", cache_dir=tmp_path, progress=stop_in_attack, show_bars=False)
    assert not (tmp_path / "cifar20").exists(), "an interrupted prepare must publish nothing"
    assert (tmp_path / ".partial-cifar20").is_dir()
    assert list_stores(tmp_path) == []
    stages = []
    prepare(cifar20_config, "cifar20", cache_dir=tmp_path, show_bars=False,
            progress=lambda st, d, t: stages.append((st, d)))
    assert ("attack", 64) in stages, "the resumed run must start the attack where it stopped"
    assert ("attack", 0) not in stages, "the attacked chunks must not run again"
    assert ("clean", 0) not in stages, "the finished clean stage must not run again"
    assert not (tmp_path / ".partial-cifar20").exists()
    _same_store(tmp_path / "cifar20", cifar20_store.path)


@pytest.mark.slow
def test_kill9_during_prepare_then_resume(cifar20_store, cifar20_config, tmp_path):
    cfg = tmp_path / "cifar20.toml"
    d = cifar20_config.to_dict()
    lines = []
    for section, table in d.items():
        lines.append(f"[{section}]")
        for k, v in table.items():
            if v is not None:
                lines.append(f"{k} = {json.dumps(list(v) if isinstance(v, tuple) else v)}")
    cfg.write_text("\n".join(lines) + "\n")
    cmd = [sys.executable, "-m", "core", "--cache", str(tmp_path), "prepare", "--config", str(cfg),
           "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for stop_at in ("attack_done", "features_done"):
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        state = tmp_path / ".partial-cifar20" / "state.json"
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if state.is_file() and stop_at in state.read_text():
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
        assert not (tmp_path / "cifar20").exists()
        assert list_stores(tmp_path) == []
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr
    _same_store(tmp_path / "cifar20", cifar20_store.path)


def test_cli_list_info_and_errors(cifar20_store, tmp_path):
    cache = str(cifar20_store.path.parent)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "core", "--cache", cache, *args], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=120)
    out = run("list")
    assert out.returncode == 0 and "cifar20" in out.stdout and "attack success" in out.stdout
    out = run("info", "cifar20", "--json")
    assert json.loads(out.stdout)["counts"] == cifar20_store.counts
    out = run("info", "../x")
    assert out.returncode == 2 and "invalid experiment id" in out.stderr
    out = run("prepare", "--preset", "nope")
    assert out.returncode == 2 and "unknown preset" in out.stderr
    out = run("prepare", "--preset", "cifar10-resnet18", "--set", "model.checkpoint=/nonexistent.pt",
              "--set", "data.per_class=1", "--out", "x")
    assert out.returncode == 2 and "/nonexistent.pt" in out.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[attack]\neps = 0.1\nunknown_key = 3\n")
    out = run("prepare", "--config", str(bad))
    assert out.returncode == 2 and "unknown_key" in out.stderr


def _small_folder(cifar_root: Path, dest: Path, classes=("cat", "dog"), n=4) -> Path:
    import shutil
    for cls in classes:
        (dest / cls).mkdir(parents=True)
        for i in range(n):
            shutil.copy(cifar_root / cls / f"{i:04d}.jpg", dest / cls / f"{i:04d}.jpg")
    return dest


def test_corrupt_image_is_skipped_and_reported_or_fails_by_name(cifar_root, cifar20_config, tmp_path):
    from core.data import CIFAR10_CLASSES
    root = _small_folder(cifar_root, tmp_path / "folder", classes=CIFAR10_CLASSES, n=2)
    bad = root / "cat" / "9999.jpg"
    bad.write_bytes((cifar_root / "cat" / "0000.jpg").read_bytes()[:300])  # truncated JPEG
    d = cifar20_config.to_dict()
    d["data"] |= {"source": "image_folder", "root": str(root), "per_class": None}
    from core.config import ExperimentConfig
    logs = []
    s = Store(prepare(ExperimentConfig.from_dict(d), "folder", cache_dir=tmp_path / "c", show_bars=False,
                      log=logs.append))
    assert s.counts["n_images"] == 20 and s.counts["n_skipped"] == 1
    assert s.manifest["skipped"][0][0].endswith("9999.jpg")
    assert any("9999.jpg" in line for line in logs)
    d["data"]["on_corrupt"] = "error"
    from core.data import DataError
    with pytest.raises(DataError, match="9999.jpg"):
        prepare(ExperimentConfig.from_dict(d), "folder2", cache_dir=tmp_path / "c", show_bars=False)
    assert not (tmp_path / "c" / "folder2").exists()


def test_class_count_mismatch_is_explained(cifar_root, cifar20_config, tmp_path):
    from core.config import ExperimentConfig
    from core.models import ModelError
    d = cifar20_config.to_dict()
    d["data"] |= {"source": "image_folder", "root": str(_small_folder(cifar_root, tmp_path / "f")),
                  "per_class": None}
    with pytest.raises(ModelError, match="2 classes but the model outputs 10"):
        prepare(ExperimentConfig.from_dict(d), "x", cache_dir=tmp_path / "c", show_bars=False)


def test_one_prepare_per_experiment_at_a_time(tmp_path):
    from core.store import StoreWriter
    first = StoreWriter("exp", "key", tmp_path)
    with pytest.raises(StoreError, match="another prepare"):
        StoreWriter("exp", "key", tmp_path)
    first.release()
    StoreWriter("exp", "key", tmp_path).release()  # free again once the first one is done


def test_tasks_are_typed_picklable_and_run_by_the_context(cifar20_config):
    """The runner's unit: a typed task (what a Ray worker receives, pickled) that a Context runs."""
    import pickle

    from core.pipeline import AttackTask, CleanTask, Context, FeaturesTask
    ctx = Context.build(cifar20_config)
    pos = np.arange(4)
    clean = ctx.run(CleanTask(pos))
    assert clean["logits"].shape == (4, 10) and clean["pooled"].shape == (4, 64)
    both = list(ctx.run_all([CleanTask(pos), CleanTask(pos + 4)]))
    assert np.array_equal(both[0]["logits"], clean["logits"]) and not np.array_equal(both[1]["logits"],
                                                                                     clean["logits"])
    sent = pickle.loads(pickle.dumps(AttackTask(pos, 7)))
    attacked = ctx.run(sent)
    assert np.array_equal(attacked["adv"], ctx.attack(pos, 7)["adv"])
    assert np.abs(attacked["adv"] - ctx.ds.get(pos).numpy()).max() <= cifar20_config.attack.eps + 1e-6
    features = ctx.run(FeaturesTask(pos, attacked["adv"]))
    assert np.allclose(features["benign_logits"], clean["logits"], atol=1e-5)
    with pytest.raises(AttributeError):
        ctx.run(("clean", pos))  # the positional tuples of before are no task
