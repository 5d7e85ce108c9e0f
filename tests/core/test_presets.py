"""The presets on real data: the paper's CIFAR case study, and the shipped offline demo."""
import numpy as np
import pytest
import torch

from core import data as datasets
from core.config import ConfigError
from core.features import extract
from core.models import load_model
from core.pipeline import prepare
from core.presets import DEMO_CHECKPOINT, PRESETS, preset
from core.store import Store


def test_every_preset_validates_and_overrides_parse():
    for name in PRESETS:
        assert preset(name).model.arch
    cfg = preset("demo", ["data.per_class=5", "attack.eps=0.05", 'data.root="/tmp/x y"'])
    assert (cfg.data.per_class, cfg.attack.eps, cfg.data.root) == (5, 0.05, "/tmp/x y")
    with pytest.raises(ConfigError, match="section.key=value"):
        preset("demo", ["per_class=5"])
    with pytest.raises(ConfigError, match="unknown key"):
        preset("demo", ["data.nope=1"])


def test_missing_probe_checkpoint_says_how_to_make_it(tmp_path, monkeypatch):
    from core import presets
    from core.models import ModelError
    monkeypatch.setattr(presets, "PROBE_CHECKPOINT", tmp_path / "probe.safetensors")
    cfg = preset("cifar10-224", [f'model.checkpoint="{tmp_path / "probe.safetensors"}"',
                                 f'data.root="{tmp_path / "nowhere"}"'])
    with pytest.raises(ModelError, match="train --preset cifar10-224"):
        prepare(cfg, "c224", cache_dir=tmp_path, show_bars=False)
    assert not any(tmp_path.glob("*c224*"))


@pytest.mark.slow
def test_cifar10_resnet18_preset_on_500_images(cifar_root, models_dir, tmp_path):
    cfg = preset("cifar10-resnet18", [f'data.root="{cifar_root}"', "data.per_class=50",
                                      f'model.checkpoint="{models_dir / "resnet18-cifar10.pt"}"'])
    s = Store(prepare(cfg, "c18", cache_dir=tmp_path, show_bars=False))
    c = s.counts
    assert c["n_images"] == 500
    # models/README.md: 89.4% clean on the first 50 per class (fp32), PGD-7 fools 93.1% of those
    assert c["clean_accuracy"] == pytest.approx(0.894, abs=0.002)
    assert c["attack_success_rate"] >= 0.90
    assert s.manifest["model"]["num_neurons"] == 512
    assert s.array("benign_fmaps").shape[1:] == (512, 4, 4)


@pytest.mark.slow
def test_resnet56_full_test_set_accuracy(cifar_root, models_dir):
    cfg = preset("cifar10-resnet56", [f'data.root="{cifar_root}"',
                                      f'model.checkpoint="{models_dir / "resnet56-4bfd9763.th"}"'])
    ds = datasets.load_dataset(cfg.data)
    model = load_model(cfg.model, (3, 32, 32))
    correct = 0
    for _pos, x, y in ds.batches(500):
        correct += int((extract(model, x, fmaps=False).logits.argmax(1) == y).sum())
    assert len(ds) == 10_000
    assert abs(correct / len(ds) - 0.832) <= 0.005  # models/README.md: 83.20%


@pytest.mark.slow
@pytest.mark.skipif(not DEMO_CHECKPOINT.exists(), reason="demo weights not trained yet")
def test_demo_preset_meets_its_targets(tmp_path):
    s = Store(prepare(preset("demo"), "demo", cache_dir=tmp_path, show_bars=False))
    c = s.counts
    assert c["n_images"] == 3000
    assert c["clean_accuracy"] >= 0.90
    assert c["attack_success_rate"] >= 0.95
    assert s.manifest["model"]["num_neurons"] >= 256
    assert np.isin(s.pairs.label.unique(), np.arange(10)).all()


def test_demo_weights_are_small_and_load():
    assert DEMO_CHECKPOINT.exists(), "core/assets must ship the demo weights"
    assert DEMO_CHECKPOINT.stat().st_size <= 25 * 2**20
    m = load_model(preset("demo").model, (1, 28, 28))
    assert m.num_neurons == 256
    with torch.no_grad():
        assert m(torch.rand(2, 1, 28, 28)).shape == (2, 10)
