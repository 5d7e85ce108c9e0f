"""Model cards (core.model_cards): reading a card safely, and the resolution order of the [model] keys
(explicit > card > file/architecture > the defaults of earlier versions) on real checkpoints and images."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from core import data as datasets
from core import model_cards, models
from core.config import DataConfig, ExperimentConfig, ModelConfig
from core.models import ModelError
from core.presets import PRESETS


def _card(tmp_path, obj, name="model.pt") -> str:
    (tmp_path / name).write_bytes(b"")  # the card is read beside it; the weights are not read here
    (tmp_path / model_cards.card_path(name).name).write_text(json.dumps(obj) if not isinstance(obj, str)
                                                            else obj)
    return str(tmp_path / name)


def test_a_card_gives_every_key_and_lists_the_keys_it_does_not_read(tmp_path):
    card = model_cards.read_card(_card(tmp_path, {
        "num_classes": 3, "mean": [0.5], "std": [0.25], "input_size": [1, 28, 28],
        "class_names": ["cat", "dog", "<b>eel</b>"], "trained_on": "somewhere"}))
    assert (card.num_classes, card.mean, card.std, card.in_channels, card.input_size) == \
        (3, (0.5,), (0.25,), 1, (28, 28))
    assert card.class_names == ("cat", "dog", "<b>eel</b>") and card.ignored == ("trained_on",)


def test_the_projects_own_cards_are_read(models_dir):
    """core.train's cards (and the shared CIFAR model's) nest mean and std under "normalization"."""
    card = model_cards.read_card(models_dir / "resnet18-cifar10.pt")
    assert card.mean == (0.4914, 0.4822, 0.4465) and card.std == (0.247, 0.2435, 0.2616)
    assert "sha256" in card.ignored and card.num_classes is None


@pytest.mark.parametrize("name, card", [("model.pth.tar", "model.json"), ("m.pt2", "m.json"),
                                        ("a.b.onnx", "a.b.json"), ("w.safetensors", "w.json")])
def test_the_card_sits_beside_the_model_under_its_stem(name, card):
    assert model_cards.card_path(f"/models/{name}") == model_cards.card_path(f"/models/{name}").parent / card


@pytest.mark.parametrize("card, words", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ({"num_classes": 1}, "num_classes = 1: expected a whole number from 2"),
    ({"num_classes": 10.0}, "whole number has no decimal point"),
    ({"mean": [float("nan")], "std": [1]}, "finite"),
    ({"mean": [0.5], "std": [0]}, "numbers > 0"),
    ({"mean": [0.5]}, "mean is set without std"),
    ({"in_channels": 2}, "1 (grayscale) or 3 (RGB)"),
    ({"input_size": [2, 32, 32]}, "C must be 1"),
    ({"input_size": [32]}, "[C, H, W] or [H, W]"),
    ({"input_size": [3, 2, 2]}, "height and width from 8"),
    ({"input_size": [1, 32, 32], "in_channels": 3}, "disagree"),
    ({"mean": [0.1, 0.2, 0.3], "std": [1, 1, 1], "in_channels": 1}, "one per input channel"),
    ({"class_names": ["a", "b\x07"]}, "control character(s) U+0007"),
    ({"class_names": ["a", "a"]}, "same name twice"),
    ({"class_names": ["a", "b"], "num_classes": 3}, "2 class_names but num_classes = 3"),
    ({"class_names": "a,b"}, "list of non-empty strings"),
])
def test_a_bad_card_is_a_clear_error_naming_the_card(tmp_path, card, words):
    with pytest.raises(ModelError, match="model card .*model.json") as e:
        model_cards.read_card(_card(tmp_path, card))
    assert words in str(e.value)


def test_a_huge_card_is_refused_unread(tmp_path):
    path = _card(tmp_path, '{"x": "' + "a" * (model_cards.MAX_CARD_BYTES + 10) + '"}')
    with pytest.raises(ModelError, match="larger than 64 KiB"):
        model_cards.read_card(path)


def test_no_card_and_a_folder_named_like_one_are_no_card(tmp_path):
    (tmp_path / "m.pt").write_bytes(b"")
    assert model_cards.read_card(tmp_path / "m.pt") is None and model_cards.read_card(None) is None
    (tmp_path / "m.json").mkdir()
    assert model_cards.read_card(tmp_path / "m.pt") is None


def test_explicit_beats_card_beats_defaults(tmp_path):
    path = _card(tmp_path, {"mean": [0.5], "std": [0.25], "num_classes": 4, "in_channels": 1})
    found = model_cards.resolution(ModelConfig(arch="resnet20_cifar", checkpoint=path))
    assert (found.model.mean, found.model.std, found.model.num_classes, found.model.in_channels) == \
        ((0.5,), (0.25,), 4, 1)
    assert found.sources == {"mean": "card", "std": "card", "num_classes": "card", "in_channels": "card"}
    mine = model_cards.resolution(ModelConfig(arch="resnet20_cifar", checkpoint=path, mean=(0.1,),
                                              std=(0.2,), num_classes=7, in_channels=3))
    assert (mine.model.mean, mine.model.std, mine.model.num_classes, mine.model.in_channels) == \
        ((0.1,), (0.2,), 7, 3)
    assert set(mine.sources.values()) == {"config"}


def test_without_card_or_file_defaults_every_config_resolves_as_before():
    """The identity normalization, 3 channels and 10 classes of earlier versions: the stores' cache keys
    (which hash the resolved config) do not change for existing configs and presets."""
    assert model_cards.resolve(ModelConfig()) == ModelConfig(arch="resnet18_cifar", num_classes=10,
                                                             in_channels=3, mean=(0.0,), std=(1.0,))
    for name, preset in PRESETS.items():
        resolved = model_cards.resolve(preset.model)
        before = {"num_classes": preset.model.num_classes or 10, "in_channels": preset.model.in_channels or 3}
        assert resolved == dataclasses.replace(preset.model, **before), name
    d = ExperimentConfig().to_dict()
    d["model"] |= {"arch": "resnet18_cifar", "mean": [0.0], "std": [1.0], "num_classes": 10, "in_channels": 3}
    cfg = ExperimentConfig()
    cfg.model = model_cards.resolve(cfg.model)
    assert cfg.to_dict() == ExperimentConfig.from_dict(d).to_dict()


def test_the_dataset_class_count_is_the_last_resort_for_a_built_architecture():
    assert model_cards.resolve(ModelConfig(arch="resnet20_cifar"), num_classes=5).num_classes == 5
    given = ModelConfig(arch="resnet20_cifar", num_classes=7)
    assert model_cards.resolve(given, num_classes=5).num_classes == 7


def test_a_card_on_a_checkpoint_reaches_the_model(tmp_path, models_dir):
    """load_model reads the card: its normalization is the wrapper's, and its class count is checked
    against the checkpoint's head (with load_model's message)."""
    ckpt = tmp_path / "resnet20.th"
    os.symlink(models_dir / "resnet20-12fca82f.th", ckpt)
    (tmp_path / "resnet20.json").write_text(json.dumps({"mean": [0.4914, 0.4822, 0.4465],
                                                        "std": [0.247, 0.2435, 0.2616]}))
    model = models.load_model(ModelConfig(arch="resnet20_cifar", checkpoint=str(ckpt)), (3, 32, 32))
    assert model.mean.flatten().tolist() == pytest.approx([0.4914, 0.4822, 0.4465])
    (tmp_path / "resnet20.json").write_text(json.dumps({"num_classes": 100}))
    with pytest.raises(ModelError, match="classifies into 100 classes|does not match the architecture"):
        models.load_model(ModelConfig(arch="resnet20_cifar", checkpoint=str(ckpt)), (3, 32, 32))


def test_a_grayscale_model_on_rgb_images(tmp_path, cifar_root):
    """A 1-channel model whose card says so: the RGB images are converted to grayscale by the data layer
    (core.data's conversion for in_channels = 1) and the model runs on them."""
    torch.manual_seed(0)
    net = models.build_architecture("resnet20_cifar", 10, in_channels=1)
    ckpt = tmp_path / "gray.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(ckpt))
    (tmp_path / "gray.json").write_text(json.dumps({"input_size": [1, 32, 32], "mean": [0.5], "std": [0.25]}))
    m = model_cards.resolve(ModelConfig(arch="resnet20_cifar", checkpoint=str(ckpt)))
    assert m.in_channels == 1
    ds = datasets.load_dataset(DataConfig(source="cifar10", root=str(cifar_root), per_class=1),
                               channels=m.in_channels)
    x = ds.get(list(range(len(ds))))
    assert x.shape[1] == 1
    model = models.load_model(m, (1, *ds.image_size))
    logits = model(x)
    with torch.no_grad():
        expected = net.eval()((x - 0.5) / 0.25)
    assert logits.shape == (len(ds), 10) and torch.allclose(logits, expected, atol=1e-5)


class _GrayCNN(torch.nn.Module):
    """A 1-channel CNN written here (not in core/), exported with torch.export."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, 2, 1), torch.nn.ReLU(),
                                            torch.nn.Conv2d(8, 16, 3, 2, 1), torch.nn.ReLU())
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def test_a_grayscale_model_file_says_its_channels(tmp_path, cifar_root):
    """in_channels of a .pt2 file without a card comes from its first convolution; the RGB images are
    converted to grayscale for it, and the loaded file computes what the exported module does."""
    pytest.importorskip("core.exported_programs", reason="core.exported_programs (.pt2 loading) is missing")
    torch.manual_seed(0)
    net = _GrayCNN().eval()
    path = tmp_path / "gray.pt2"
    ep = torch.export.export(net, (torch.rand(2, 1, 32, 32),),
                             dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(ep, path)
    found = model_cards.resolution(ModelConfig(checkpoint=str(path)))
    assert (found.model.in_channels, found.sources["in_channels"]) == (1, "file")
    assert found.model.num_classes is None and found.model.mean == (0.0,)  # the head and the defaults decide
    ds = datasets.load_dataset(DataConfig(source="cifar10", root=str(cifar_root), per_class=1),
                               channels=found.model.in_channels)
    x = ds.get(list(range(len(ds))))
    model = models.load_model(ModelConfig(checkpoint=str(path)), (1, 32, 32))
    assert model.num_classes == 10 and model.num_neurons == 16
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), atol=1e-5)


def test_a_config_without_arch_resolves_to_the_default_as_before(tmp_path):
    """Earlier versions wrote arch = "resnet18_cifar" when a config left it out: the resolved config (which
    the cache key hashes) still does, so an interrupted prepare resumes after the upgrade; a model file
    keeps no arch (it carries its own)."""
    from core.config import ModelConfig
    from core.model_cards import resolve
    from core.models import DEFAULT_ARCH
    assert resolve(ModelConfig()).arch == DEFAULT_ARCH == "resnet18_cifar"
    assert resolve(ModelConfig(arch="resnet20_cifar")).arch == "resnet20_cifar"
    assert resolve(ModelConfig(checkpoint=str(tmp_path / "x.pt2"), in_channels=3)).arch is None
