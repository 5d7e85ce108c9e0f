import os
import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from core.config import ModelConfig
from core.features import extract
from core.models import (
    ARCHITECTURES,
    TORCHVISION_ARCHITECTURES,
    ExplainedModel,
    ModelError,
    build_architecture,
    check_cnn_checkpoint,
    load_model,
    load_state_dict,
    load_weights,
)
from tests.helpers import lossless20 as load_lossless20
from tests.helpers import resnet20, shared_model

SIZES = {"resnet18_cifar": 32, "wrn18_places365": 224, "efficientnet_lite0": 224}


# the torchvision families beyond ResNets have their own expected layers in tests/core/test_discovery.py
@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if a not in TORCHVISION_ARCHITECTURES
                                  or a.startswith(("resnet", "wide_resnet", "resnext"))])
def test_every_architecture_builds_and_is_discovered(arch):
    size = SIZES.get(arch, 32 if arch.endswith("_cifar") else 64)
    net = build_architecture(arch, num_classes=7)
    m = ExplainedModel(net, (0.5,), (0.25,), (3, size, size))
    assert m.num_classes == 7
    assert isinstance(m.head_module, nn.Linear)
    # the outermost module whose output is average-pooled into the head
    assert m.feature_layer == ("_head_act" if arch == "efficientnet_lite0" else
                               "layer3" if arch.endswith("_cifar") and arch != "resnet18_cifar" else "layer4")
    assert m.num_neurons == m.head_weight.shape[1]


def test_places365_wrn18_has_14x14_maps_at_224():
    m = ExplainedModel(build_architecture("wrn18_places365", 365), (0.5,), (0.25,), (3, 224, 224))
    assert m.fmap_size == (14, 14) and m.num_neurons == 512 and m.num_classes == 365


def test_demo_width_gives_256_neurons():
    m = ExplainedModel(build_architecture("resnet18_cifar", 10, in_channels=1, width=32),
                       (0.3,), (0.3,), (1, 28, 28))
    assert m.num_neurons == 256 and m.fmap_size == (4, 4)


@pytest.mark.parametrize("which,neurons,fmap", [("cifar10-resnet18", 512, (4, 4)),
                                                 ("cifar10-resnet56", 64, (8, 8)),
                                                 ("resnet20", 64, (8, 8))])
def test_shared_checkpoints_load_and_classify(models_dir, lossless20, which, neurons, fmap):
    model = resnet20(models_dir) if which == "resnet20" else shared_model(which, models_dir)
    assert (model.num_neurons, model.fmap_size) == (neurons, fmap)
    x, y = load_lossless20(lossless20)
    with torch.no_grad():
        assert (model(x).argmax(1) == y).all(), "models/README.md: 20/20 on the lossless images"


def test_normalization_lives_inside_the_wrapper():
    net = build_architecture("resnet20_cifar", 10).eval()
    m = ExplainedModel(net, (0.4, 0.5, 0.6), (0.2, 0.3, 0.4), (3, 32, 32))
    x = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1), torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(m(x), net((x - mean) / std))


def _roundtrip(tmp_path, name, obj):
    path = tmp_path / name
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("name,wrap", [
    ("a.pt", lambda s: s),
    ("b.pth", lambda s: {"state_dict": s, "epoch": 3}),
    ("c.th", lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}, "best_prec1": 90.0}),
    ("d.pth.tar", lambda s: {"model": {f"module.{k}": v for k, v in s.items()}}),
])
def test_checkpoint_formats(tmp_path, name, wrap):
    net = build_architecture("resnet20_cifar", 10)
    path = _roundtrip(tmp_path, name, wrap(net.state_dict()))
    fresh = build_architecture("resnet20_cifar", 10)
    load_weights(fresh, load_state_dict(path))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), fresh.state_dict().values(),
                                             strict=True))


def test_safetensors(tmp_path):
    net = build_architecture("resnet20_cifar", 10)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    cfg = ModelConfig(arch="resnet20_cifar", checkpoint=str(tmp_path / "w.safetensors"))
    m = load_model(cfg, (3, 32, 32))
    assert torch.equal(m.net.conv1.weight, net.conv1.weight)


def test_mismatched_keys_are_listed(tmp_path):
    state = build_architecture("resnet20_cifar", 10).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["linear.bias"]
    path = _roundtrip(tmp_path, "bad.pt", state)
    with pytest.raises(ModelError) as e:
        load_model(ModelConfig(arch="resnet20_cifar", checkpoint=str(path)), (3, 32, 32))
    assert "linear.bias" in str(e.value) and "extra.weight" in str(e.value)
    with pytest.raises(ModelError, match="shape mismatches: linear.weight"):
        load_model(ModelConfig(arch="resnet20_cifar", num_classes=5,
                               checkpoint=str(_roundtrip(tmp_path, "ok.pt", build_architecture(
                                   "resnet20_cifar", 10).state_dict()))), (3, 32, 32))


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("suffix", [".pt", ".pth.tar"])
def test_pickle_that_runs_code_is_refused(tmp_path, suffix):
    target = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Evil(target)}, f)
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Evil(target)}, tmp_path / f"evil2{suffix}")
    for p in (path, tmp_path / f"evil2{suffix}"):
        with pytest.raises(ModelError, match="refused"):
            load_state_dict(p)
    assert not target.exists(), "unpickling must never run the payload"


def test_bad_files(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_state_dict(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelError):
        load_state_dict(tmp_path / "junk.pt")
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(ModelError, match="unsupported file type"):
        load_state_dict(tmp_path / "w.txt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ModelError, match="safetensors"):
        load_state_dict(tmp_path / "bad.safetensors")
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(ModelError, match="is a folder, not a file"):
        load_state_dict(tmp_path / "dir.pt")
    (tmp_path / "text.pt").write_text("epoch 3, lr 0.1\n")
    with pytest.raises(ModelError, match="not a PyTorch checkpoint"):
        load_state_dict(tmp_path / "text.pt")


def test_check_cnn_checkpoint_loads_cnn_weights_and_refuses_others(tmp_path):
    state = build_architecture("resnet20_cifar", 10).state_dict()
    torch.save({"state_dict": state}, tmp_path / "cnn.pt")
    assert check_cnn_checkpoint(tmp_path / "cnn.pt").keys() == state.keys()
    torch.save({"fc.weight": torch.zeros(3, 4)}, tmp_path / "mlp.pt")
    with pytest.raises(ModelError, match="upload.pt has no convolution kernels"):
        check_cnn_checkpoint(tmp_path / "mlp.pt", source="upload.pt")
    state["conv1.weight"] = state["conv1.weight"].to(torch.int8)
    torch.save(state, tmp_path / "int8.pt")
    with pytest.raises(ModelError, match=r"conv1.weight \(int8\)"):
        check_cnn_checkpoint(tmp_path / "int8.pt")


def test_model_without_conv_or_head_gets_clear_error():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    with pytest.raises(ModelError, match="no convolutional feature maps"):
        ExplainedModel(mlp, (0.5,), (0.5,), (3, 8, 8))
    conv_only = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ModelError, match="linear head"):
        ExplainedModel(conv_only, (0.5,), (0.5,), (3, 8, 8))
    not_pooled = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    # a linear layer on the flattened maps (no global pooling) is a head of its own kind: activation×weight
    # does not apply, everything else does
    assert ExplainedModel(not_pooled, (0.5,), (0.5,), (3, 8, 8)).head_type == "other"


def test_override_by_module_name():
    net = build_architecture("resnet20_cifar", 10)
    m = ExplainedModel(net, (0.5,), (0.5,), (3, 32, 32), feature_layer="layer3", head="linear")
    assert (m.feature_layer, m.head) == ("layer3", "linear")
    with pytest.raises(ModelError, match="not a module"):
        ExplainedModel(net, (0.5,), (0.5,), (3, 32, 32), feature_layer="layer9")
    with pytest.raises(ModelError, match="global average"):
        ExplainedModel(net, (0.5,), (0.5,), (3, 32, 32), feature_layer="layer2")


def test_unknown_architecture_lists_choices():
    with pytest.raises(ModelError, match="resnet18_cifar"):
        build_architecture("vit_b_16", 10)


def test_features_one_forward_and_no_hooks_left(models_dir, lossless20):
    model = shared_model("cifar10-resnet18", models_dir)
    x, _ = load_lossless20(lossless20)
    f = extract(model, x, batch_size=8)
    assert f.logits.shape == (20, 10) and f.pooled.shape == (20, 512) and f.fmaps.shape == (20, 512, 4, 4)
    assert torch.allclose(f.probs.sum(1), torch.ones(20))
    assert torch.allclose(f.fmaps.mean((2, 3)), f.pooled, atol=1e-5)
    logits_direct = f.pooled @ model.head_weight.T + model.head_module.bias
    assert torch.allclose(logits_direct, f.logits, atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(model(x), f.logits, atol=1e-5)
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError):
        extract(model, torch.rand(2, 1, 32, 32))  # wrong channel count: the forward fails ...
    assert all(not m._forward_hooks for m in model.modules())  # ... and leaves no hook behind
