"""The Prepare page through AppTest (form, errors, a real small run in the background) and the job
registry and form helpers behind it (core.ui.prepare_form)."""
from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from core import jobs
from core.config import ConfigError
from core.data import DataError
from core.models import ModelError, build_architecture
from core.pipeline import PrepareError
from core.presets import PRESETS
from core.store import Store, StoreError
from core.ui import prepare_form
from tests.helpers import displayed

APP = str(Path(__file__).resolve().parents[2] / "app.py")
RESNET20 = "resnet20-12fca82f.th"



@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NVE_CACHE", str(tmp_path))
    monkeypatch.setenv("NVE_DATA_ROOTS", str(tmp_path))  # as an administrator lists a data folder
    return tmp_path


def page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page("pages/prepare.py")
    return at.run()


def errors(at) -> list[str]:
    return [displayed(e.value) for e in at.error]


def wait(job: jobs.Job, seconds: float = 120) -> None:
    assert job.wait(seconds), f"the job did not finish in {seconds} s (at {job.describe()})"


def test_form_renders_with_the_default_preset(cache):
    at = page()
    assert not at.exception
    preset = at.selectbox(key="prepare_preset")
    assert preset.value == "demo" and len(preset.options) == len(PRESETS) + 1
    assert at.text_input(key="prepare_id").value == "demo"
    assert at.number_input(key="prepare_eps").value == pytest.approx(PRESETS["demo"].attack.eps * 255)
    assert at.number_input(key="prepare_steps").value == PRESETS["demo"].attack.steps
    assert at.text_input(key="prepare_ckpt_path").value == PRESETS["demo"].model.checkpoint
    assert len(at.multiselect(key="prepare_classes").options) == 10
    assert at.button(key="prepare_start")
    assert not errors(at)


def test_bad_id_and_missing_folder_are_explained(cache):
    at = page()
    at.text_input(key="prepare_id").set_value("../etc").run()
    assert any("invalid experiment id" in e for e in errors(at))
    at.selectbox(key="prepare_preset").set_value("custom").run()
    assert at.selectbox(key="prepare_source").value == "image_folder"
    at.text_input(key="prepare_root").set_value(str(cache / "nowhere")).run()
    assert any("nowhere' does not exist" in e for e in errors(at))
    at.text_input(key="prepare_id").set_value("fine-id").run()
    at.button(key="prepare_start").click().run()
    assert not at.exception
    assert any("nowhere' does not exist" in e for e in errors(at))
    assert jobs.get("fine-id", cache) is None  # nothing started


def test_existing_experiment_and_wrong_checkpoint_are_refused(cache, cifar_root, models_dir):
    (cache / "taken").mkdir()
    at = page()
    at.text_input(key="prepare_id").set_value("taken").run()
    assert any("'taken' already exists" in e for e in errors(at))
    at.selectbox(key="prepare_preset").set_value("cifar10-resnet56").run()
    at.text_input(key="prepare_root").set_value(str(cifar_root))
    at.text_input(key="prepare_ckpt_path").set_value(str(models_dir / RESNET20))  # resnet56 arch kept
    at.text_input(key="prepare_id").set_value("mismatch").run()
    assert not at.exception  # said at once, before any click, and Prepare cannot start it
    assert any("does not match the architecture" in e for e in errors(at)), errors(at)
    assert at.button(key="prepare_start").disabled
    assert jobs.get("mismatch", cache) is None


def test_a_small_real_run_from_the_form(cache, cifar_root, models_dir):
    """The cifar20 fixture's set-up with 2 images per class, started from the form, run in the
    background; the page then reports it and "Explore it" selects it."""
    at = page()
    at.selectbox(key="prepare_preset").set_value("cifar10-resnet56").run()
    at.text_input(key="prepare_root").set_value(str(cifar_root))
    at.number_input(key="prepare_per_class").set_value(2)
    at.selectbox(key="prepare_arch").set_value("resnet20_cifar")
    at.text_input(key="prepare_ckpt_path").set_value(str(models_dir / RESNET20))
    assert at.number_input(key="prepare_batch_size").value == 0  # auto, as the preset says
    at.number_input(key="prepare_batch_size").set_value(16)
    at.number_input(key="prepare_maps").set_value(2)
    at.number_input(key="prepare_perplexity").set_value(10.0)
    at.checkbox(key="prepare_random_start").check()
    at.text_input(key="prepare_id").set_value("small").run()
    assert not errors(at)
    at.button(key="prepare_start").click().run()
    assert not at.exception and not errors(at)
    job = jobs.get("small", cache)
    assert job is not None
    wait(job)
    assert job.ok, job.error
    store = Store(cache / "small")
    cfg = store.manifest["config"]
    assert cfg["model"]["arch"] == "resnet20_cifar" and cfg["data"]["per_class"] == 2
    assert cfg["attack"]["eps"] == pytest.approx(8 / 255) and cfg["attack"]["steps"] == 7
    assert cfg["attack"]["random_start"] is True  # the form's checkbox reached the attack and the manifest
    assert store.counts["n_images"] == 20
    assert len(store.manifest["vulnerability_maps"]["pairs"]) == min(2, len(store))
    at.run()
    assert not at.exception
    box = at.status[0]
    assert box.state == "complete" and "small is ready" in displayed(box.label)
    assert any("successful attacks out of" in s.value for s in at.success)
    at.button(key="prepare_explore").click().run()
    assert at.session_state["nve_selection"].experiment == "small"


def _job_page(experiment: str) -> AppTest:
    """The Prepare page of a session that started the job ``experiment``."""
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page("pages/prepare.py")
    at.session_state["prepare_job"] = experiment
    at.run()
    assert not at.exception, at.exception
    return at


@pytest.mark.reliability
def test_the_progress_box_says_running_while_it_runs_then_failed(cache, monkeypatch):
    """The box shows the spinner state while the job runs (never the ✓ a finished `with st.status`
    block gets), then the error state with the reason once it has failed."""
    gate = cache / "gate"
    monkeypatch.setenv("NVE_TEST_GATE", str(gate))
    job = jobs.start(PRESETS["demo"], "busy", cache, target="tests.job_targets:slow")
    at = _job_page("busy")
    assert len(at.status) == 1
    assert at.status[0].state == "running" and "Preparing busy" in displayed(at.status[0].label)
    assert at.button(key="prepare_cancel") and at.get("progress")
    gate.touch()
    wait(job)
    at.run()
    assert not at.exception
    assert at.status[0].state == "error" and "busy failed" in displayed(at.status[0].label)
    assert any("the images are gone" in e for e in errors(at))
    at.button(key="prepare_dismiss").click().run()
    assert len(at.status) == 0 and "prepare_job" not in at.session_state


@pytest.mark.reliability
def test_the_progress_box_says_cancelled_not_done(cache):
    job = jobs.start(PRESETS["demo"], "stopped", cache, target="tests.job_targets:hang")
    at = _job_page("stopped")
    assert at.status[0].state == "running"
    at.button(key="prepare_cancel").click().run()  # the page's own Cancel button
    wait(job)
    at.run()
    assert not at.exception
    assert at.status[0].state == "error" and "was cancelled" in displayed(at.status[0].label)
    assert not at.success


def test_random_start_goes_from_the_form_into_the_attack_config(cache, monkeypatch):
    """The checkbox is off by default (the paper's PGD); checked, the job's config asks for it."""
    started = []
    monkeypatch.setattr(jobs, "start", lambda cfg, ident, cache_dir: started.append((cfg, ident)))
    at = page()
    assert at.checkbox(key="prepare_random_start").value is False
    at.checkbox(key="prepare_random_start").check().run()
    at.button(key="prepare_start").click().run()
    assert not at.exception and not errors(at)
    (cfg, ident), = started
    assert ident == "demo" and cfg.attack.random_start is True and cfg.attack.method == "pgd"


def test_every_form_field_has_plain_words_help(cache):
    """Each input of the form carries a tooltip (the ``?``) that says what it is, without code words."""
    def fields(at) -> dict:
        kinds = ("selectbox", "multiselect", "number_input", "text_input", "radio", "checkbox")
        return {w.key: w for kind in kinds for w in at.get(kind) if (w.key or "").startswith("prepare_")}
    at = page()
    seen = fields(at)  # the demo preset: the class list
    at.selectbox(key="prepare_preset").set_value("custom").run()  # the dataset folder field
    seen |= fields(at)
    assert {"prepare_classes", "prepare_root", "prepare_random_start", "prepare_perplexity"} <= set(seen)
    missing = sorted(k for k, w in seen.items() if not (w.help or "").strip())
    assert not missing, f"fields without help: {missing}"
    at.radio(key="prepare_ckpt_mode").set_value("Upload a file").run()
    assert not at.exception


# -- the job registry and form helpers -------------------------------------------------------------------
@pytest.mark.reliability
def test_one_job_per_experiment_with_progress_and_errors(tmp_path, monkeypatch):
    gate = tmp_path / "gate"
    monkeypatch.setenv("NVE_TEST_GATE", str(gate))
    job = jobs.start(PRESETS["demo"], "busy", tmp_path, target="tests.job_targets:slow")
    assert job.process.pid != os.getpid()  # the job runs in a process of its own
    for _ in range(600):
        if job.stage == "attack" and job.log:
            break
        time.sleep(0.05)
    assert (job.stage, job.done, job.total, job.fraction) == ("attack", 3, 12, 0.25)
    assert job.describe() == "Step 3 of 8, attacking the correctly classified images: 3 of 12"
    assert job in jobs.running(tmp_path)
    with pytest.raises(StoreError, match="already being prepared"):
        jobs.start(PRESETS["demo"], "busy", tmp_path, target="tests.job_targets:slow")
    gate.touch()
    assert job.wait(60)
    assert job.error == "the images are gone" and list(job.log) == ["hello"] and not job.ok
    assert job not in jobs.running(tmp_path)
    with pytest.raises(StoreError, match="invalid experiment id"):
        jobs.start(PRESETS["demo"], "a/b", tmp_path, target="tests.job_targets:slow")
    (tmp_path / "done").mkdir()
    with pytest.raises(StoreError, match="already exists"):
        jobs.start(PRESETS["demo"], "done", tmp_path, target="tests.job_targets:slow")


@pytest.mark.reliability
def test_a_job_outlives_the_thread_that_started_it(tmp_path, monkeypatch):
    """Streamlit starts a job from a script run's thread, which ends at once: the job goes on (the child
    must not take that thread's end for the server's)."""
    gate = tmp_path / "gate"
    monkeypatch.setenv("NVE_TEST_GATE", str(gate))
    started = []
    run = threading.Thread(target=lambda: started.append(
        jobs.start(PRESETS["demo"], "orphan", tmp_path, target="tests.job_targets:slow")))
    run.start()
    run.join()
    job = started[0]
    for _ in range(600):  # the child has imported everything and reported
        if job.log:
            break
        time.sleep(0.05)
    time.sleep(1)
    assert job.running, job.error
    gate.touch()
    assert job.wait(60)
    assert job.error == "the images are gone", job.error


@pytest.mark.reliability
@pytest.mark.parametrize("target, says", [
    ("out_of_memory", "ran out of memory"),
    ("bug", "unexpected error (KeyError)"),
    ("killed", "killed, most likely because the server ran out of memory"),
    ("bus_error", "bus error, most likely a full disk"),
])
def test_a_failing_job_is_reported_and_the_server_lives_on(tmp_path, target, says):
    """A crash, an OOM kill or a SIGBUS ends the job's process only; the user reads one sentence (no
    traceback, no server path) and learns that the work so far is kept."""
    job = jobs.start(PRESETS["demo"], target.replace("_", "-"), tmp_path,
                     target=f"tests.job_targets:{target}")
    assert job.wait(60)
    assert says in job.error and "Traceback" not in job.error and "/srv/secret" not in job.error
    assert job.process.returncode != 0 and not job.ok


@pytest.mark.reliability
def test_cancel_and_the_job_limit(tmp_path, monkeypatch):
    monkeypatch.setenv("NVE_MAX_JOBS", "1")
    first = jobs.start(PRESETS["demo"], "first", tmp_path, target="tests.job_targets:hang")
    with pytest.raises(PrepareError, match="at most 1 experiment.*'first'"):
        jobs.start(PRESETS["demo"], "second", tmp_path, target="tests.job_targets:hang")
    monkeypatch.setenv("NVE_MAX_JOBS", "2")
    second = jobs.start(PRESETS["demo"], "second", tmp_path, target="tests.job_targets:hang")
    for job in (first, second):
        jobs.cancel(job)
        assert job.wait(30)
        assert job.error.startswith("cancelled") and job.process.returncode is not None
    assert jobs.running() == []


@pytest.mark.reliability
def test_uploads_are_content_addressed_and_loaded_safely(tmp_path):
    weights = tmp_path / "w.pt"
    torch.save(build_architecture("resnet20_cifar", 10).state_dict(), weights)
    data = weights.read_bytes()
    path = prepare_form.save_upload(data, "../../My Model.pt", tmp_path)  # the name is never a path
    assert path.parent == tmp_path / prepare_form.UPLOADS and path.suffix == ".pt"
    assert path.stem == hashlib.sha256(data).hexdigest()
    assert prepare_form.save_upload(data, "again.pt", tmp_path) == path
    not_a_cnn = tmp_path / "mlp.pt"  # plain tensors, but no convolution: refused, never kept
    torch.save({"fc.weight": torch.ones(2, 3), "fc.bias": torch.ones(2)}, not_a_cnn)
    with pytest.raises(ModelError, match="mlp.pt has no convolution kernels") as refused:
        prepare_form.save_upload(not_a_cnn.read_bytes(), "mlp.pt", tmp_path)
    assert str(tmp_path) not in str(refused.value)  # the user's file name, not the server's path
    assert prepare_form.checkpoint_suffix("places.PTH.TAR") == ".pth.tar"
    with pytest.raises(ModelError, match="unsupported checkpoint type"):
        prepare_form.save_upload(data, "model.exe", tmp_path)

    class Payload:  # a pickle that would run code
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"x": Payload()}, evil)
    with pytest.raises(ModelError, match="refused to load"):
        prepare_form.save_upload(evil.read_bytes(), "evil.pt", tmp_path)
    assert sorted(p.name for p in (tmp_path / prepare_form.UPLOADS).iterdir()) == [path.name]


def test_form_helpers(tmp_path, monkeypatch):
    monkeypatch.setenv("NVE_DATA_ROOTS", str(tmp_path))
    (tmp_path / "imgs" / "dogs").mkdir(parents=True)
    (tmp_path / "imgs" / "cats").mkdir()
    (tmp_path / "imgs" / ".hidden").mkdir()
    assert prepare_form.check_folder(tmp_path / "imgs", tmp_path) == ["cats", "dogs"]
    assert prepare_form.dataset_classes("image_folder", str(tmp_path / "imgs"), tmp_path) == ["cats", "dogs"]
    for bad, why in (("", "enter the dataset folder"), (tmp_path / "no", "does not exist"),
                     (tmp_path / "empty", "no class folders")):
        (tmp_path / "empty").mkdir(exist_ok=True)
        with pytest.raises(DataError, match=why):
            prepare_form.check_folder(bad, tmp_path)
    cfg = prepare_form.build_config("cifar10-resnet56", {"data.per_class": 2, "attack.eps": 4 / 255})
    assert cfg.data.per_class == 2 and cfg.attack.eps == 4 / 255
    assert cfg.model.arch == PRESETS["cifar10-resnet56"].model.arch
    with pytest.raises(ConfigError, match="eps"):
        prepare_form.build_config(None, {"attack.eps": 2.0})
    with pytest.raises(ConfigError, match="unknown key"):
        prepare_form.build_config(None, {"model.colour": 1})
    with pytest.raises(ModelError, match="choose the model's checkpoint"):
        prepare_form.check_model(prepare_form.build_config(None, {}))
    (tmp_path / "demo").mkdir()
    assert prepare_form.suggest_id("demo", tmp_path) == "demo-2"
    assert prepare_form.suggest_id("my run/1", tmp_path) == "my-run-1"


@pytest.mark.reliability
def test_the_page_reads_only_allowed_folders(tmp_path, monkeypatch):
    """Outside the allowed folders every path is refused with the same words, whether it exists or not,
    so the page tells nothing about the rest of the server; a symlink out of an allowed folder too."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "cats").mkdir(parents=True)
    (outside / "dogs").mkdir(parents=True)
    (allowed / "escape").symlink_to(outside)
    monkeypatch.setenv("NVE_DATA_ROOTS", str(allowed))
    cache = tmp_path / "cache"
    assert prepare_form.check_folder(allowed, cache) == ["cats", "escape"]
    said = set()
    for path in (outside, tmp_path / "nowhere", "/etc", "/proc/self", allowed / "escape", "/etc/../etc"):
        with pytest.raises(DataError, match="not in a folder this server lets the app read") as e:
            prepare_form.check_folder(path, cache)
        said.add(str(e.value).replace(repr(str(path)), "PATH"))
    assert len(said) == 1, said
    with pytest.raises(DataError, match="absolute path"):
        prepare_form.check_folder("allowed", cache)
    with pytest.raises(ModelError, match="not in a folder"):
        prepare_form.check_server_paths(
            prepare_form.build_config("demo", {"model.checkpoint": str(outside / "m.pt")}), cache)
    prepare_form.check_server_paths(PRESETS["cifar10-resnet56"], cache)  # the presets' own folders: allowed
    upload = cache / prepare_form.UPLOADS / "x.pt"
    assert prepare_form.server_path(upload, cache, "checkpoint file") == upload.resolve()
