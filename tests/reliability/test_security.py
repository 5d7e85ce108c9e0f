"""Security (issue 5): checkpoints never run code, uploads are checked and stored under generated names,
experiment ids cannot leave the cache folder, and no secret ends up in a log or a manifest.

Each refusal is checked where a user meets it: ``core`` itself, ``python -m core`` (a real subprocess
where it matters: the crafted checkpoint) and the app (the prepare page through AppTest, or the upload
helper the page calls: AppTest cannot drive ``st.file_uploader``, so ``core.ui.prepare_form.save_upload``,
which the page's upload callback calls with the uploaded bytes and name, is tested directly).
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from streamlit.testing.v1 import AppTest

from core import jobs
from core.models import ModelError, load_state_dict
from core.presets import DEMO_CHECKPOINT
from core.store import StoreError, list_stores, open_store, validate_id
from core.ui import prepare_form
from tests.helpers import displayed
from tests.reliability.test_bad_input import cli, config, error_line, write_toml

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
MARKER = "PAYLOAD-ARGUMENT-7f3a"  # a string inside the crafted pickle: it must never be echoed


class Touch:
    """Unpickling this calls ``pathlib.Path(target).touch()``: code that leaves a trace on disk."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.target),)


class WriteText:
    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return pathlib.Path.write_text, (pathlib.Path(self.target), MARKER)


def crafted_checkpoints(folder: Path, target: Path) -> list[Path]:
    """Checkpoints that run code when unpickled: torch.save'd zips (the payload beside real tensors,
    and nested under ``state_dict``) and a legacy raw pickle with the usual suffixes."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v for k, v in list(load_state_dict(DEMO_CHECKPOINT).items())[:4]}
    torch.save({"state_dict": weights, "extra": Touch(target)}, folder / "evil.pt")
    torch.save({"state_dict": {"fc.weight": WriteText(target)}}, folder / "evil-nested.pth")
    with open(folder / "evil-raw.pth.tar", "wb") as f:
        pickle.dump({"state_dict": Touch(target)}, f)
    return [folder / "evil.pt", folder / "evil-nested.pth", folder / "evil-raw.pth.tar"]


def test_the_payload_is_live(tmp_path):
    """The crafted pickle does run code under a plain unpickler: the refusals below are real."""
    target = tmp_path / "made-by-pickle"
    raw = crafted_checkpoints(tmp_path / "ck", target)[2]
    with open(raw, "rb") as f:
        pickle.load(f)  # noqa: S301 - on purpose, in a tmp folder
    assert target.exists()


def test_code_carrying_checkpoints_are_refused_everywhere(tmp_path, monkeypatch):
    target = tmp_path / "pwned"
    evil = crafted_checkpoints(tmp_path / "ck", target)
    # core
    for path in evil:
        with pytest.raises(ModelError, match="refused to load") as e:
            load_state_dict(path)
        assert "only plain weights are loaded" in str(e.value) and MARKER not in str(e.value)
        assert "Unsupported" in str(e.value)  # the detail: what the safe unpickler would not build
        assert "weights_only=False" not in str(e.value)  # never advise the unsafe way out
    assert not target.exists()
    # CLI, a real `python -m core prepare --config ...`: exit 2, one error line, nothing created
    cache = tmp_path / "cache"
    cfg = write_toml(config(None, {"data.per_class": 1, "model.checkpoint": str(evil[0])}),
                     tmp_path / "e.toml")
    run = subprocess.run([sys.executable, "-m", "core", "--cache", str(cache), "prepare", "--quiet",
                          "--config", str(cfg)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 2, run.stderr
    message = error_line(run.stderr)
    assert "refused to load" in message and "evil.pt" in message and ".safetensors" in message
    assert MARKER not in run.stderr + run.stdout and "Traceback" not in run.stderr
    assert not target.exists() and list_stores(cache) == []
    # app: the prepare page's checkpoint check refuses it when Prepare is pressed; nothing starts
    monkeypatch.setenv("NVE_CACHE", str(cache))
    monkeypatch.setenv("NVE_DATA_ROOTS", str(tmp_path))  # the admin's data folder: the page may read it
    import streamlit as st
    st.cache_data.clear()
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("pages/prepare.py")
    at.run()
    for i, path in enumerate(evil):
        at.text_input(key="prepare_ckpt_path").set_value(str(path))
        at.text_input(key="prepare_id").set_value(f"evil-{i}").run()
        assert not at.exception  # refused as soon as it is named: shown, and Prepare cannot start
        said = [displayed(e.value) for e in at.error]
        assert any("refused to load" in e and path.name in e for e in said), said
        assert at.button(key="prepare_start").disabled
        assert jobs.get(f"evil-{i}", cache) is None
    # app: the same files uploaded are refused and not kept
    for path in evil:
        with pytest.raises(ModelError, match="refused to load"):
            prepare_form.save_upload(path.read_bytes(), path.name, cache)
    assert list((cache / prepare_form.UPLOADS).iterdir()) == []
    assert not target.exists(), "no unpickling anywhere may run the payload"


def test_safetensors_and_plain_state_dicts_are_accepted(tmp_path):
    weights = load_state_dict(DEMO_CHECKPOINT)
    save_file(weights, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights.items()}}, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        loaded = load_state_dict(tmp_path / name)
        assert loaded.keys() == weights.keys()
        assert all(torch.equal(loaded[k], weights[k]) for k in weights)
        stored = prepare_form.save_upload((tmp_path / name).read_bytes(), name, tmp_path / "cache")
        cfg = config(None, {"model.checkpoint": str(stored)})
        from core.config import ExperimentConfig
        prepare_form.check_model(ExperimentConfig.from_dict(cfg))  # the page's check passes


def test_uploads_are_checked_and_stored_under_generated_names(tmp_path):
    cache = tmp_path / "srv" / "cache"
    cache.mkdir(parents=True)
    data = DEMO_CHECKPOINT.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    outside_before = sorted(p for p in tmp_path.rglob("*"))
    for name in ("../../evil.safetensors", "/etc/cron.d/x.safetensors", "..\\..\\win.safetensors",
                 "a/b/../../../c.safetensors", "model.safetensors", ".hidden.SAFETENSORS"):
        path = prepare_form.save_upload(data, name, cache)
        assert path == cache / prepare_form.UPLOADS / f"{digest}.safetensors", name  # never the user's name
    assert sorted(p.name for p in (cache / prepare_form.UPLOADS).iterdir()) == [f"{digest}.safetensors"]
    new = sorted(set(tmp_path.rglob("*")) - set(outside_before))
    assert all(p == cache or cache in p.parents for p in new), new  # nothing written outside the cache
    # type: by the name's suffix (one the loader reads), then the content must load as plain weights
    for name in ("model.exe", "model.py", "model", "model.pt.exe", "model.pkl", "model.npy"):
        with pytest.raises(ModelError, match="unsupported checkpoint type"):
            prepare_form.save_upload(data, name, cache)
    with pytest.raises(ModelError, match="not a valid safetensors file"):
        prepare_form.save_upload(b"\x00" * 64, "weights.safetensors", cache)
    for junk in (b"this is not a checkpoint", b"not a checkpoint at all", data[:1000]):
        with pytest.raises(ModelError, match="could not be read|no PyTorch file at all"):
            prepare_form.save_upload(junk, "weights.pt", cache)
    # size: empty, and over the limit (the page passes Streamlit's server.maxUploadSize)
    with pytest.raises(ModelError, match="empty"):
        prepare_form.save_upload(b"", "w.pt", cache)
    with pytest.raises(ModelError, match="more than the 1 MB an upload may have"):
        prepare_form.save_upload(data, "w.safetensors", cache, max_bytes=2**20)
    assert sorted(p.name for p in (cache / prepare_form.UPLOADS).iterdir()) == [f"{digest}.safetensors"]
    # hidden folder: never listed or opened as an experiment
    assert list_stores(cache) == []
    with pytest.raises(StoreError, match="invalid experiment id"):
        open_store(prepare_form.UPLOADS, cache)


BAD_IDS = ["../x", "../../etc", "/abs", "/tmp/x", "a/b", "a\\b", "", " ", "..", ".", ".hidden", "x" * 65,
           "a b", "x\0y", "~root", "-rf", "é"]
GOOD_IDS = ["a", "x" * 64, "cifar10-resnet18", "v1.2_b", "Demo-2"]


def test_experiment_ids_cannot_leave_the_cache(tmp_path, capsys, monkeypatch):
    for ident in GOOD_IDS:
        assert validate_id(ident) == ident
    with pytest.raises(StoreError, match="invalid experiment id"):
        validate_id("gone\n")  # a pattern ending in "$" would let a final newline in (the form strips it)
    for ident in BAD_IDS:
        with pytest.raises(StoreError, match="invalid experiment id"):
            validate_id(ident)
        with pytest.raises(StoreError, match="invalid experiment id"):
            open_store(ident, tmp_path)
    # CLI: refused before any data or model is read (the config's data folder does not even exist)
    cache = tmp_path / "srv" / "cache"
    cfg = write_toml(config(tmp_path / "no-such-folder"), tmp_path / "c.toml")
    for ident in BAD_IDS:
        rc, out, err = cli(capsys, "--cache", str(cache), "prepare", "--quiet", "--config", str(cfg),
                           f"--out={ident}")
        assert rc == 2 and "invalid experiment id" in error_line(err), (ident, err)
        rc, out, err = cli(capsys, "--cache", str(cache), "info", "--", ident)
        assert rc == 2 and "invalid experiment id" in error_line(err), (ident, err)
    bad_name = write_toml(config(tmp_path / "no-such-folder"), tmp_path / "my config.toml")
    rc, out, err = cli(capsys, "--cache", str(cache), "prepare", "--quiet", "--config", str(bad_name))
    assert rc == 2 and "invalid experiment id 'my config'" in error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml", "my config.toml"]  # nothing created
    # app: the prepare page explains and starts nothing; a link with a bad id is explained too
    monkeypatch.setenv("NVE_CACHE", str(cache))
    monkeypatch.setenv("NVE_DATA_ROOTS", str(tmp_path))  # the admin's data folder: the page may read it
    import streamlit as st
    st.cache_data.clear()
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("pages/prepare.py")
    at.run()
    for ident in BAD_IDS:
        at.text_input(key="prepare_id").set_value(ident).run()
        if len(ident) > 64:  # the field takes at most 64 characters (Streamlit cuts longer values)
            assert at.text_input(key="prepare_id").value == ident[:64]
            continue
        said = [displayed(e.value) for e in at.error]
        assert any("invalid experiment id" in e for e in said), (ident, said)
        at.button(key="prepare_start").click().run()
        assert not at.exception and jobs.running(cache) == []
    assert not cache.exists() or list(cache.iterdir()) == []
    link = AppTest.from_file(APP, default_timeout=120)
    link.query_params["exp"] = "../../etc"
    link.switch_page("pages/image_space.py")
    link.run()
    assert not link.exception
    said = [displayed(e.value) for e in link.error]
    assert any("invalid experiment id" in e for e in said), said


def test_no_secrets_in_logs_or_manifests(tmp_path):
    """A prepare run on a server whose Streamlit secrets (auth client secret, cookie secret) sit beside
    the app, with secrets in its environment and a checkpoint holding a marker in its metadata, prints
    none of them and writes none of them into the store. prepare never reads secrets: this guards
    against a future log line that dumps the config, the environment or the checkpoint."""
    secrets = {"client_secret": "oidc-client-secret-9d1c", "cookie_secret": "cookie-secret-55ab",
               "env": "db-password-e0f2", "ckpt": "checkpoint-metadata-b7c4"}
    server = tmp_path / "server"
    (server / ".streamlit").mkdir(parents=True)
    (server / ".streamlit" / "secrets.toml").write_text(
        f'[auth]\nredirect_uri = "http://localhost:8501/oauth2callback"\n'
        f'cookie_secret = "{secrets["cookie_secret"]}"\nclient_id = "nve"\n'
        f'client_secret = "{secrets["client_secret"]}"\n')
    ckpt = tmp_path / "model.safetensors"
    save_file(load_state_dict(DEMO_CHECKPOINT), str(ckpt), metadata={"note": secrets["ckpt"]})
    cache = tmp_path / "cache"
    cfg = write_toml(config(None, {"data.per_class": 1, "model.checkpoint": str(ckpt)}), tmp_path / "s.toml")
    run = subprocess.run([sys.executable, "-m", "core", "--cache", str(cache), "prepare", "--out", "s",
                          "--config", str(cfg)], cwd=server, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "NVE_DB_PASSWORD": secrets["env"]})
    assert run.returncode == 0, run.stderr
    assert "wrote" in run.stderr  # the log was printed (progress bars too: not --quiet)
    texts = {"stdout": run.stdout, "stderr": run.stderr}
    texts |= {p.name: p.read_text(errors="replace") for p in (cache / "s").iterdir()
              if p.suffix in (".json", ".parquet", ".npz", ".npy")}
    for where, text in texts.items():
        for what, secret in secrets.items():
            assert secret not in text, f"the {what} secret leaked into {where}"
    manifest = json.loads((cache / "s" / "manifest.json").read_text())
    assert set(manifest["versions"]) <= {"python", "torch", "torchvision", "numpy", "scikit-learn",
                                         "platform"}  # no environment dump
