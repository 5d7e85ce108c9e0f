"""Bad input gets a clear message in both the CLI and the app (issue 5, "Bad input").

Each case runs ``python -m core prepare --config ...`` (``core.cli.main``, in-process: the same code as
the console entry point) and expects exit status 2 and exactly one ``error:`` line, the last one, that
names the file or the problem and the fix. The app side goes the prepare page's way: the checkpoint
check it runs before starting (``core.ui.prepare_form.check_model``), then the background job
(``core.jobs.start``), whose error the page shows in ``st.error``; the page itself is rendered
(AppTest) for every case. Nothing is ever published for a failed input.

The data are tiny ImageFolders written from the Fashion-MNIST test images shipped with the app, and the
model is the shipped demo model (or a broken copy of its weights), so no ../shared is needed.

Choices this file pins down:
- unreadable files (corrupt, truncated, a non-image under an image name) are skipped and counted
  (``on_corrupt = "skip"``, the default) or are an error naming the file (``on_corrupt = "error"``);
  files without an image extension are ignored and counted;
- grayscale, RGBA, RGB and palette images are converted to the model's channels (noted in the log);
- different image sizes are an error unless ``[data] image_size`` resizes them (noted in the log);
- an empty class folder stays in the class list (labels keep matching the model) and is noted; no
  readable image at all is an error;
- an attack that succeeds on nothing (eps = 0, or 0 PGD steps) is refused by ``prepare`` with the fix,
  rather than publishing a store with no pairs to explore (the explore pages need at least one);
- a store from an older (or newer) schema is listed as unusable with the reason, by the CLI and the app.
"""
from __future__ import annotations

import copy
import functools
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from streamlit.testing.v1 import AppTest

from core import data, jobs
from core.config import ExperimentConfig
from core.data import FASHION_MNIST_CLASSES
from core.models import load_state_dict
from core.presets import DEMO_CHECKPOINT, PRESETS
from core.store import Store, StoreError, list_stores, open_store
from core.ui import prepare_form
from tests.helpers import displayed

# the scan's notes are DataWarnings too (for library users); here they are checked in the logs
pytestmark = [pytest.mark.reliability, pytest.mark.filterwarnings("ignore::core.data.DataWarning")]

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
FOLDERS = [f"{k}-{name.replace('/', '-')}" for k, name in enumerate(FASHION_MNIST_CLASSES)]  # sorted = k


# -- helpers (also used by the other reliability files) -------------------------------------------------
@functools.cache
def demo_set() -> data.ImageSet:
    return data.demo()


def fm_folder(root: Path, per_class: int = 2, classes=range(10), folders: int = 10) -> Path:
    """``root/<k>-<class name>/<i>.png``: the first ``per_class`` demo images of each class in
    ``classes`` (grayscale 28×28 PNGs); ``folders`` class folders in all (the others stay empty)."""
    ds = demo_set()
    for k in range(folders):
        (root / FOLDERS[k]).mkdir(parents=True, exist_ok=True)
        if k in classes:
            for i, pos in enumerate(np.flatnonzero(ds.labels == k)[:per_class]):
                Image.fromarray(ds.get_uint8([pos])[0, 0]).save(root / FOLDERS[k] / f"{i:02d}.png")
    return root


def config(folder: Path | None = None, values: dict | None = None) -> dict:
    """The demo preset on ``folder`` (an ImageFolder; None: the shipped demo data), made small and fast:
    FGSM in fp32, batches of 8, perplexity 5; ``values`` ("section.key" -> value) set on top."""
    d = copy.deepcopy(PRESETS["demo"]).to_dict()
    if folder is not None:
        d["data"] |= {"source": "image_folder", "root": str(folder), "per_class": None}
    d["attack"] |= {"method": "fgsm", "precision": "fp32"}
    d["prepare"] |= {"batch_size": 8, "tsne_perplexity": 5.0, "device": "cpu"}
    for key, value in (values or {}).items():
        section, name = key.split(".")
        d[section][name] = value
    return d


def write_toml(d: dict, path: Path) -> Path:
    lines = []
    for section, table in d.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(list(v) if isinstance(v, tuple) else v)}"
                  for k, v in table.items() if v is not None]
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """``python -m core ARGS`` in this process: (exit status, stdout, stderr)."""
    from core.cli import main
    capsys.readouterr()
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def error_line(err: str) -> str:
    """The CLI's one ``error:`` line (it must be the only one, and the last line), without the prefix."""
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0].removeprefix("error: ")


def wait(job: jobs.Job, seconds: float = 300) -> jobs.Job:
    end = time.monotonic() + seconds
    while job.running and time.monotonic() < end:
        time.sleep(0.1)
    assert job.finished, f"the job did not finish in {seconds} s (at {job.describe()})"
    return job


def app_error(d: dict, ident: str, cache: Path) -> str:
    """What the prepare page reports for this config: the checkpoint check's error (shown when Prepare
    is pressed), else the background job's error (shown in the job panel)."""
    cfg = ExperimentConfig.from_dict(d)
    try:
        prepare_form.check_model(cfg)
    except jobs.USER_ERRORS as e:
        return str(e)
    job = wait(jobs.start(cfg, ident, cache))
    assert job.error is not None, f"the job should have failed: {job.path}"
    assert not job.error.startswith("unexpected"), job.log
    return job.error


def demo_weights(**changes) -> dict[str, torch.Tensor]:
    state = {k: v.clone() for k, v in load_state_dict(DEMO_CHECKPOINT).items()}
    for key, fn in changes.items():
        fn(state[key.replace("__", ".")])
    return state


# -- the cases -------------------------------------------------------------------------------------------
def _png_bytes(k: int = 0) -> bytes:
    import io
    buf = io.BytesIO()
    ds = demo_set()
    Image.fromarray(ds.get_uint8([int(np.flatnonzero(ds.labels == k)[5])])[0, 0]).save(buf, format="PNG")
    return buf.getvalue()


def case_corrupt(tmp: Path):
    root = fm_folder(tmp / "f")
    (root / FOLDERS[0] / "zz-junk.png").write_bytes(np.random.default_rng(0).bytes(3000))
    return config(root, {"data.on_corrupt": "error"}), ["cannot read image", "zz-junk.png",
                                                        'on_corrupt = "skip"', "fix or remove it"]


def case_truncated(tmp: Path):
    root = fm_folder(tmp / "f")
    png = _png_bytes()
    (root / FOLDERS[3] / "zz-trunc.png").write_bytes(png[:len(png) // 2])
    return config(root, {"data.on_corrupt": "error"}), ["cannot read image", "zz-trunc.png", "truncated",
                                                        "fix or remove it"]


def case_not_an_image(tmp: Path):
    root = fm_folder(tmp / "f")
    (root / FOLDERS[5] / "notes.jpg").write_text("these are my notes, not a picture\n")
    return config(root, {"data.on_corrupt": "error"}), ["cannot read image", "notes.jpg", "not an image",
                                                        'on_corrupt = "skip"']


def case_sizes_differ(tmp: Path):
    root = fm_folder(tmp / "f")
    Image.open(root / FOLDERS[1] / "00.png").resize((32, 40)).save(root / FOLDERS[1] / "00.png")
    return config(root), ["differ in size", "00.png", "32×40", "set [data] image_size"]


def case_no_readable_images(tmp: Path):
    root = fm_folder(tmp / "f", classes=())  # 10 empty class folders
    (root / FOLDERS[2] / "broken.png").write_bytes(b"\x89PNG broken")
    return config(root), ["no readable images", "1 unreadable", "check [data] root"]


def case_fewer_classes(tmp: Path):
    """3 class folders, a 10-class model. The CLI's config keeps num_classes = 10; the app sets it from
    the folders (3), so the checkpoint's 10-output head is what does not fit."""
    root = fm_folder(tmp / "f", classes=range(3), folders=3)
    return {"cli": config(root), "app": config(root, {"model.num_classes": 3}),
            "expect": ["the dataset has 3 classes", "but the model outputs 10",
                       "use the dataset of the model's 10 classes", "[model] num_classes = 3"],
            "app_expect": ["classifies into 10 classes but the model is set up for 3",
                           "use images of the 10 classes it was trained on"]}


def case_not_a_cnn(tmp: Path):
    ckpt = tmp / "mlp.safetensors"
    save_file({"fc1.weight": torch.randn(64, 784), "fc1.bias": torch.zeros(64),
               "fc2.weight": torch.randn(10, 64), "fc2.bias": torch.zeros(10)}, str(ckpt))
    return config(fm_folder(tmp / "f"), {"model.checkpoint": str(ckpt)}), [
        "mlp.safetensors", "no convolution kernels", "not a CNN", "use the checkpoint of a convolutional"]


def case_no_linear_head(tmp: Path):
    ckpt = tmp / "allconv.pt"
    # a 3×3 convolution into class maps (a 1×1 one would be a "conv1x1" head)
    torch.save({"conv1.weight": torch.randn(16, 1, 3, 3), "classifier.weight": torch.randn(10, 16, 3, 3),
                "classifier.bias": torch.zeros(10)}, ckpt)
    return config(fm_folder(tmp / "f"), {"model.checkpoint": str(ckpt)}), [
        "allconv.pt", "no classification head", "nn.Linear"]


def case_head_override_not_linear(tmp: Path):
    return config(fm_folder(tmp / "f"), {"model.head": "layer4"}), [
        "no linear head named 'layer4'", "[model] head must name the final nn.Linear"]


def case_feature_layer_not_conv(tmp: Path):
    return config(fm_folder(tmp / "f"), {"model.feature_layer": "fc"}), [
        "no convolutional feature maps", "[model] feature_layer = 'fc' must name a module with (N, C, H, W)"]


def case_nan_weights(tmp: Path):
    ckpt = tmp / "nan.safetensors"
    save_file(demo_weights(fc__weight=lambda w: w.__setitem__((0, 0), float("nan"))), str(ckpt))
    return config(fm_folder(tmp / "f"), {"model.checkpoint": str(ckpt)}), [
        "nan.safetensors", "NaN or infinite values in fc.weight", "use a checkpoint saved before"]


def case_nan_outputs(tmp: Path):
    """Finite weights whose forward gives NaN (a negative BatchNorm variance): found on the first batch."""
    ckpt = tmp / "nanout.safetensors"
    save_file(demo_weights(bn1__running_var=lambda v: v.fill_(-1.0)), str(ckpt))
    return config(fm_folder(tmp / "f"), {"model.checkpoint": str(ckpt)}), [
        "NaN or infinite logits", "check the checkpoint and the normalization"]


def case_nothing_correct(tmp: Path):
    """A model that always answers the one class that has no images classifies nothing correctly."""
    ckpt = tmp / "always9.safetensors"
    save_file(demo_weights(fc__bias=lambda b: b.__setitem__(9, 1e4)), str(ckpt))
    return config(fm_folder(tmp / "f", classes=range(9)), {"model.checkpoint": str(ckpt)}), [
        "classifies none of the 18 images correctly", "check that the checkpoint fits"]


def case_eps_zero(tmp: Path):
    return config(fm_folder(tmp / "f"), {"attack.eps": 0.0}), [
        "eps = 0", "no attack can succeed", "set eps > 0"]


def case_attack_succeeds_on_nothing(tmp: Path):
    return config(fm_folder(tmp / "f"), {"attack.method": "pgd", "attack.steps": 0}), [
        "succeeded on none of the", "correctly classified images", "raise [attack] eps or steps"]


CASES = {name.removeprefix("case_"): fn for name, fn in dict(globals()).items() if name.startswith("case_")}


@pytest.fixture(scope="module")
def app_cache(tmp_path_factory):
    """One cache folder for the module's app jobs (the page reads it from $NVE_CACHE)."""
    cache = tmp_path_factory.mktemp("app-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NVE_CACHE", str(cache))
        mp.setenv("NVE_DATA_ROOTS", str(tmp_path_factory.getbasetemp()))  # the admin's data folder
        yield cache


@pytest.fixture(scope="module")
def prepare_page(app_cache):
    """The prepare page (through app.py), rerun to show a given job's panel."""
    import streamlit as st
    st.cache_data.clear()
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("pages/prepare.py")
    at.run()
    assert not at.exception

    def show(ident: str) -> AppTest:
        at.session_state["prepare_job"] = ident
        at.run()
        assert not at.exception, at.exception
        return at
    return show


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_explained_in_cli_and_app(name, tmp_path, capsys, app_cache, prepare_page):
    made = CASES[name](tmp_path)
    if isinstance(made, tuple):
        made = {"cli": made[0], "expect": made[1]}
    cache = tmp_path / "cache"
    # CLI: exit 2, one error line that says what is wrong and what to do
    rc, out, err = cli(capsys, "--cache", str(cache), "prepare", "--quiet",
                       "--config", str(write_toml(made["cli"], tmp_path / f"{name}.toml")))
    assert rc == 2, err
    message = error_line(err)
    for part in made["expect"]:
        assert part in message, f"{part!r} not in: {message}"
    assert "Traceback" not in err
    assert list_stores(cache) == [] and not (cache / name).exists(), "nothing may be published"
    # app: the same message (or, where the app sets the config differently, its own)
    ident = name.replace("_", "-")
    shown = app_error(made.get("app", made["cli"]), ident, app_cache)
    for part in made.get("app_expect", made["expect"]):
        assert part in shown, f"{part!r} not in: {shown}"
    if "app" not in made:
        assert shown == message, "the CLI and the app must give the same explanation"
    assert not (app_cache / ident).exists()
    job = jobs.get(ident, app_cache)
    if job is not None:  # the page shows a failed job's error in its panel
        at = prepare_page(ident)
        said = [displayed(e.value) for e in at.error]
        assert any(shown in e and ident in e for e in said), said


def test_checkpoint_problems_show_on_the_form(tmp_path, app_cache):
    """Checkpoint problems are caught as soon as the checkpoint is named (before any run): the form shows
    the error, the Prepare button is disabled and nothing starts."""
    import streamlit as st
    st.cache_data.clear()
    cfg, _ = case_not_a_cnn(tmp_path)
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("pages/prepare.py")
    at.run()
    at.selectbox(key="prepare_source").set_value("image_folder").run()
    at.text_input(key="prepare_root").set_value(cfg["data"]["root"])
    at.text_input(key="prepare_ckpt_path").set_value(cfg["model"]["checkpoint"])
    at.text_input(key="prepare_id").set_value("mlp-form").run()
    assert not at.exception
    said = [displayed(e.value) for e in at.error]
    assert any("no convolution kernels" in e and "mlp.safetensors" in e for e in said), said
    assert at.button(key="prepare_start").disabled
    assert jobs.get("mlp-form", app_cache) is None


# -- what is tolerated: skipped, ignored, converted, resized, empty class folders ---------------------------
def _tolerable_folder(tmp: Path) -> tuple[Path, dict]:
    """18 readable images (2 per class, class 9's folder empty) with every tolerated oddity; returns the
    folder and the expected pixels (after conversion) by file name."""
    root = fm_folder(tmp / "odd", classes=range(9))
    one = root / FOLDERS[1]
    gray = np.asarray(Image.open(one / "00.png"))
    rgba = np.stack([gray, gray // 2, 255 - gray, np.full_like(gray, 128)], -1)
    Image.fromarray(rgba, "RGBA").save(one / "00.png")  # RGBA: alpha dropped, luma kept
    Image.open(one / "01.png").convert("RGB").save(one / "01.png")  # RGB with r = g = b
    two = root / FOLDERS[2] / "00.png"
    Image.open(two).resize((40, 40), Image.Resampling.BICUBIC).save(two)  # another size
    zero = root / FOLDERS[0]
    (zero / "junk.png").write_bytes(np.random.default_rng(1).bytes(500))
    png = _png_bytes()
    (zero / "trunc.png").write_bytes(png[:len(png) // 2])
    (zero / "notes.jpg").write_text("not an image")
    (zero / "readme.txt").write_text("labels from the lab's annotation tool")
    expected = {}
    for k in range(9):
        for f in sorted((root / FOLDERS[k]).glob("0*.png")):
            im = Image.open(f).convert("L")
            expected[f"{FOLDERS[k]}/{f.name}"] = np.asarray(im.resize((28, 28), Image.Resampling.BILINEAR)
                                                            if im.size != (28, 28) else im)
    assert len(expected) == 18
    return root, expected


TOLERATED_NOTES = ["skipped 3 unreadable image(s)", "ignored 1 file(s) that are not images", "readme.txt",
                   "converted 2 image(s) to grayscale", "1 RGB, 1 RGBA (alpha dropped)",
                   "resized 1 image(s) to 28×28", "hold no images (9-Ankle boot)",
                   "skipped unreadable image", "junk.png", "trunc.png", "notes.jpg"]


def _check_tolerated_store(store: Store, root: Path, expected: dict) -> None:
    c = store.counts
    assert c["n_images"] == 18 and c["n_skipped"] == 3 and store.classes == FOLDERS
    skipped = sorted(Path(p).name for p, _ in store.manifest["skipped"])
    assert skipped == ["junk.png", "notes.jpg", "trunc.png"]
    # dataset ids are positions in the sorted list of image files; compare every pair's benign pixels
    files = [f"{d}/{f.name}" for d in FOLDERS for f in sorted((root / d).iterdir())
             if f.suffix in (".png", ".jpg")]
    benign = store.array("benign_images")
    names = [files[i] for i in store.pairs["index"]]
    for row, name in enumerate(names):
        np.testing.assert_array_equal(benign[row, 0], expected[name], err_msg=name)
    assert len(names) >= 12 and {f"{FOLDERS[1]}/00.png", f"{FOLDERS[2]}/00.png"} & set(names), names


def test_tolerated_oddities_are_converted_and_reported(tmp_path, capsys, app_cache, prepare_page):
    root, expected = _tolerable_folder(tmp_path)
    d = config(root, {"data.image_size": 28})
    # CLI: it works, and says what it skipped, ignored, converted and resized
    rc, out, err = cli(capsys, "--cache", str(tmp_path / "cache"), "prepare", "--quiet", "--out", "odd",
                       "--config", str(write_toml(d, tmp_path / "odd.toml")))
    assert rc == 0, err
    for note in TOLERATED_NOTES:
        assert note in err, f"{note!r} not reported:\n{err}"
    assert "DataWarning" not in err  # notes are log lines, not Python warnings
    _check_tolerated_store(open_store("odd", tmp_path / "cache"), root, expected)
    # app: the same run from the page's job; the panel says how many files were skipped, and the
    # messages list the notes
    job = wait(jobs.start(ExperimentConfig.from_dict(d), "odd", app_cache))
    assert job.ok, job.error
    log = "\n".join(job.log)
    for note in TOLERATED_NOTES:
        assert note in log, f"{note!r} not in the job's messages:\n{log}"
    _check_tolerated_store(Store(job.path), root, expected)
    at = prepare_page("odd")
    said = [displayed(s.value) for s in at.success]
    assert any("is ready" in s and "3 unreadable file(s) were skipped" in s for s in said), said
    assert any("converted 2 image(s)" in t.value for t in at.text)


# -- stores of another schema ------------------------------------------------------------------------------
def test_store_of_another_schema_is_explained(tmp_path, capsys, monkeypatch):
    for ident, version in (("old", 0), ("future", 99), ("unversioned", None)):
        (tmp_path / ident).mkdir()
        manifest = {"id": ident, "counts": {"n_success": 3}}
        if version is not None:
            manifest["schema_version"] = version
        (tmp_path / ident / "manifest.json").write_text(json.dumps(manifest))
    why = {"old": ["older version", "store schema 0", "prepare it again", "--out old"],
           "future": ["newer version", "store schema 99", "update the app"],
           "unversioned": ["older version", "schema unknown", "prepare it again"]}
    # core
    for ident, parts in why.items():
        with pytest.raises(StoreError) as e:
            open_store(ident, tmp_path)
        assert all(p in str(e.value) for p in parts), str(e.value)
    # CLI: `list` marks them unusable with the reason; `info` fails with it
    rc, out, err = cli(capsys, "--cache", str(tmp_path), "list")
    assert rc == 0
    for ident, parts in why.items():
        line = next(x for x in out.splitlines() if x.startswith(ident + " "))
        assert "unusable:" in line and all(p in line for p in parts), line
    for ident, parts in why.items():
        rc, out, err = cli(capsys, "--cache", str(tmp_path), "info", ident)
        assert rc == 2 and all(p in error_line(err) for p in parts), err
    # app: the Experiments page explains each; the sidebar never offers them; a shared link to one
    # opens on an explore page with the reason
    import streamlit as st
    st.cache_data.clear()
    monkeypatch.setenv("NVE_CACHE", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception
    for ident, parts in why.items():
        said = [displayed(w.value) for w in at.warning]
        assert any(ident in w and all(p in w for p in parts) for w in said), said
    assert not at.sidebar.selectbox  # nothing usable to pick
    link = AppTest.from_file(APP, default_timeout=120)
    link.query_params["exp"] = "old"
    link.switch_page("pages/image_space.py")
    link.run()
    assert not link.exception
    said = [displayed(e.value) for e in link.error]
    assert any(all(p in e for p in why["old"]) for e in said), said
