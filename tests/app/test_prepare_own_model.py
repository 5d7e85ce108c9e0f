"""The Prepare page with a lab's own model (AppTest): a model file exported here with its card, what the
page found in it before the run, a class-count mismatch refused before anything runs, the card's
normalization, and a timm name."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest
from torch import nn

from core import jobs
from core.ui import prepare_form
from tests.helpers import displayed

APP = str(Path(__file__).resolve().parents[2] / "app.py")
CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.247, 0.2435, 0.2616]


class OwnCNN(nn.Module):
    """A lab's own architecture, written here (not in core/)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 24, 3, 2, 1), nn.ReLU())
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))

    def forward(self, x):
        return self.classifier(self.body(self.stem(x)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """OwnCNN exported to .pt2, with a card giving CIFAR-10's normalization and input size."""
    pytest.importorskip("core.exported_programs", reason="core.exported_programs (.pt2 loading) is missing")
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("own-model")
    ep = torch.export.export(OwnCNN().eval(), (torch.rand(2, 3, 32, 32),),
                             dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(ep, folder / "own.pt2")
    (folder / "own.json").write_text(json.dumps({"mean": CIFAR_MEAN, "std": CIFAR_STD,
                                                 "input_size": [3, 32, 32], "trained_on": "nothing"}))
    return folder / "own.pt2"


@pytest.fixture
def cache(tmp_path, monkeypatch, exported):
    monkeypatch.setenv("NVE_CACHE", str(tmp_path))
    # as an administrator lists the folders of the lab's data and models
    monkeypatch.setenv("NVE_DATA_ROOTS", os.pathsep.join([str(tmp_path), str(exported.parent)]))
    return tmp_path


def page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page("pages/prepare.py")
    return at.run()


def errors(at) -> list[str]:
    return [displayed(e.value) for e in at.error]


def found(at) -> str:
    return "\n".join(t.value for t in at.text)


def own_model(at, model: Path, root: Path, source: str = "cifar10") -> AppTest:
    at.selectbox(key="prepare_preset").set_value("custom").run()
    at.selectbox(key="prepare_source").set_value(source).run()
    at.text_input(key="prepare_root").set_value(str(root))
    at.selectbox(key="prepare_arch").set_value(prepare_form.FROM_FILE).run()
    at.text_input(key="prepare_ckpt_path").set_value(str(model))
    return at.text_input(key="prepare_id").set_value("own").run()


def test_a_model_file_shows_what_was_found_and_its_cards_normalization(cache, exported, cifar_root):
    at = own_model(page(), exported, cifar_root)
    assert not at.exception and not errors(at), errors(at)
    # choosing "carried by the model file" empties the normalization: the card decides
    assert at.text_input(key="prepare_mean").value == "" and at.text_input(key="prepare_std").value == ""
    text = found(at)
    assert re.search(r"Analysed layer: body\S* \(24 neurons, 8×8 maps\)", text), text  # its last ReLU
    assert "Head: linear" in text and "Classes: 10" in text and "Input: 3 channel(s), 32×32 pixels" in text
    assert "mean 0.4914, 0.4822, 0.4465, std 0.247, 0.2435, 0.2616 (from the model's card)" in text
    assert "not read: trained_on" in text
    assert not at.button(key="prepare_start").disabled
    # a preset normalization is one click away, and what was found follows it
    at.button(key="prepare_norm_ImageNet").click().run()
    assert at.text_input(key="prepare_mean").value == "0.485, 0.456, 0.406"
    assert "mean 0.485, 0.456, 0.406, std 0.229, 0.224, 0.225 (as set)" in found(at)
    at.button(key="prepare_norm_model").click().run()
    assert "(from the model's card)" in found(at)


def test_a_class_count_mismatch_is_refused_before_anything_runs(cache, exported, cifar_root):
    """A 3-class image folder for a 10-class model: said at once, Prepare disabled, no job."""
    folder = cache / "three"
    folder.mkdir()
    for name in ("cat", "dog", "frog"):
        os.symlink(cifar_root / name, folder / name)
    at = own_model(page(), exported, folder, source="image_folder")
    assert not at.exception
    assert any("classifies into 10 classes but the experiment has 3" in e for e in errors(at)), errors(at)
    assert at.button(key="prepare_start").disabled
    assert jobs.get("own", cache) is None


def test_a_timm_name_with_its_checkpoint(cache, cifar_root):
    from core import models
    try:
        net = models.build_architecture("timm:resnet10t", 10)
    except models.ModelError:
        pytest.skip("core.models cannot build timm:<name> architectures here (branch i15-heads adds them)")
    torch.save(net.state_dict(), cache / "resnet10t.pt")
    at = page()
    at.selectbox(key="prepare_preset").set_value("custom").run()
    at.selectbox(key="prepare_source").set_value("cifar10").run()
    at.text_input(key="prepare_root").set_value(str(cifar_root))
    at.selectbox(key="prepare_arch").set_value(prepare_form.TIMM).run()
    at.text_input(key="prepare_timm").set_value("timm:no_such_net").run()
    assert any("timm has no model 'no_such_net'" in e for e in errors(at)), errors(at)
    at.text_input(key="prepare_timm").set_value("timm:resnet10t")
    at.text_input(key="prepare_ckpt_path").set_value(str(cache / "resnet10t.pt")).run()
    assert not at.exception and not errors(at), errors(at)
    text = found(at)
    assert "Analysed layer:" in text and "Classes: 10" in text and "(the architecture's)" in text, text
