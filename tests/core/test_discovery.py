"""The analysed layer and the head found in torchvision and timm architectures (random weights, seeded)
and in small networks written here for the cases no registered architecture has (a 1×1-conv head, a
functional ReLU + pooling that no module outputs). Inputs are 64 px so every ImageNet model's last maps
are 2×2 (stride 32), which tells the analysed maps apart from the pooled 1×1 ones."""
import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from core.config import ConfigError, ExperimentConfig, ModelConfig
from core.features import extract
from core.models import (
    TAP,
    ExplainedModel,
    ModelError,
    architecture,
    build_architecture,
    capture,
    default_normalization,
    load_model,
    model_defaults,
)
from core.presets import PRESETS

SIZE = 64
CLASSES = 10

# arch -> (analysed layer, head, head type, neurons, map size), from each architecture's definition
EXPECTED = {
    # torchvision VGG-11 with BN: 8 × (conv, BN, ReLU) + 5 max-pools = features.0..28; the ReLU after the
    # last conv is features.27 (512 maps at stride 16); AdaptiveAvgPool2d(7) + a 3-layer MLP: "other"
    "vgg11_bn": ("features.27", "classifier.6", "other", 512, (4, 4)),
    # DenseNet-121 ends features with norm5 (1024 channels, before its ReLU) and applies F.relu +
    # F.adaptive_avg_pool2d in forward: no module outputs the pooled maps, the fx tap does
    "densenet121": (TAP, "classifier", "linear", 1024, (2, 2)),
    "mobilenet_v2": ("features", "classifier.1", "linear", 1280, (2, 2)),
    # MobileNetV3-small: the last conv block (576 channels), then Linear-Hardswish-Dropout-Linear
    "mobilenet_v3_small": ("features", "classifier.3", "other", 576, (2, 2)),
    # ConvNeXt-T: 768 channels; pooling, then LayerNorm2d, Flatten, Linear
    "convnext_tiny": ("features", "classifier.2", "other", 768, (2, 2)),
    "efficientnet_b0": ("features", "classifier.1", "linear", 1280, (2, 2)),
    "regnet_y_400mf": ("trunk_output", "fc", "linear", 440, (2, 2)),
    "timm:resnet18": ("layer4", "fc", "linear", 512, (2, 2)),
    # timm's ConvNeXt-atto: stages -> norm_pre (Identity); its head pools, norms (LayerNorm2d) and then fc
    "timm:convnext_atto": ("norm_pre", "head.fc", "other", 320, (2, 2)),
}


@pytest.fixture(scope="module")
def models():
    out = {}
    for arch in EXPECTED:
        torch.manual_seed(0)
        out[arch] = ExplainedModel(build_architecture(arch, CLASSES), (0.5,), (0.25,), (3, SIZE, SIZE))
    return out


@pytest.fixture(scope="module")
def images():
    return torch.rand((4, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_discovery_finds_the_layer_the_head_and_its_type(arch, models, images):
    m = models[arch]
    assert (m.feature_layer, m.head, m.head_type, m.num_neurons, m.fmap_size) == EXPECTED[arch]
    assert m.num_classes == CLASSES
    f = extract(m, images)
    assert f.fmaps.shape == (4, m.num_neurons, *m.fmap_size) and f.pooled.shape == (4, m.num_neurons)
    assert all(not mod._forward_hooks for mod in m.modules())
    assert isinstance(m.net, fx.GraphModule) == (m.feature_layer == TAP)
    if m.head_type == "linear":  # activation×weight: the logits are W · pooled + b
        assert m.head_weight.shape == (CLASSES, m.num_neurons)
        direct = f.pooled @ m.head_weight.T + m.head_bias
        assert torch.allclose(direct, f.logits, atol=1e-4), (direct - f.logits).abs().max()
        assert torch.allclose(f.fmaps.mean((2, 3)), f.pooled, atol=1e-5)
    else:  # no activation×weight; the neurons' activations are their maps' averages
        assert m.head_weight is None and m.head_bias is None
        assert torch.allclose(f.fmaps.mean((2, 3)), f.pooled, atol=1e-6)


class FunctionalHead(nn.Module):
    """Pooling done by functions on a tensor no module outputs (a non-in-place ReLU): the maps are only
    reachable in the traced graph."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, 2, 1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1))


def test_functional_pooling_is_found_through_an_fx_tap():
    torch.manual_seed(0)
    net = FunctionalHead()
    with torch.no_grad():
        net.bn.bias.fill_(-0.5)  # so the ReLU matters: bn's output is not what the head pools
    m = ExplainedModel(net, (0.5,), (0.5,), (3, 16, 16))
    assert isinstance(m.net, fx.GraphModule)
    assert (m.feature_layer, m.head, m.head_type) == (TAP, "fc", "linear")
    assert (m.num_neurons, m.fmap_size) == (6, (8, 8))
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    f = extract(m, x)
    with torch.no_grad():
        maps = F.relu(net.bn(net.conv((x - 0.5) / 0.5)))
        assert torch.allclose(f.fmaps, maps, atol=1e-6) and torch.allclose(net((x - 0.5) / 0.5), f.logits)
    assert torch.allclose(f.pooled @ m.head_weight.T + m.head_bias, f.logits, atol=1e-5)


def test_a_1x1_conv_head_is_activation_times_weight():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    m = ExplainedModel(net, (0.5,), (0.5,), (3, 12, 12))
    assert (m.feature_layer, m.head, m.head_type) == ("1", "2", "conv1x1")
    assert (m.num_neurons, m.fmap_size) == (8, (12, 12))
    x = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    f = extract(m, x)
    assert m.head_weight.shape == (5, 8)
    assert torch.allclose(f.pooled @ m.head_weight.T + m.head_bias, f.logits, atol=1e-5)
    # a nonlinearity between the class maps and the pooling (SqueezeNet's ReLU) is not activation×weight
    relu_after = nn.Sequential(*net[:3], nn.ReLU(), *net[3:])
    with pytest.raises(ModelError, match="no linear head"):
        ExplainedModel(relu_after, (0.5,), (0.5,), (3, 12, 12))


def test_other_heads_keep_the_override_and_capture_the_map_average(models, images):
    vgg = models["vgg11_bn"].net
    m = ExplainedModel(vgg, (0.5,), (0.25,), (3, SIZE, SIZE), feature_layer="features.24")  # the last conv
    assert (m.head_type, m.num_neurons, m.fmap_size) == ("other", 512, (4, 4))
    with capture(m) as cap, torch.no_grad():
        m(images)
    assert torch.allclose(cap.pooled, cap.fmap.mean((2, 3)))
    # a local max-pool makes maps (a flat .pt2/ONNX graph has no container around it); one to 1×1 does not
    pooled = ExplainedModel(vgg, (0.5,), (0.25,), (3, SIZE, SIZE), feature_layer="features.28")
    assert (pooled.head_type, pooled.fmap_size) == ("other", (SIZE // 32, SIZE // 32))
    gap = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ModelError, match="no convolutional feature maps"):
        ExplainedModel(gap, (0.5,), (0.25,), (3, 8, 8), feature_layer="2")


def test_a_linear_head_on_an_unpooled_layer_named_is_an_error(models):
    with pytest.raises(ModelError, match="does not act on the global average.*'layer4'"):
        ExplainedModel(models["timm:resnet18"].net, (0.5,), (0.5,), (3, SIZE, SIZE), feature_layer="layer3")


def test_timm_names_defaults_and_errors():
    assert model_defaults("timm:convnext_atto") == {
        "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "input_size": (3, 224, 224)}
    assert default_normalization("timm:inception_v3") == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert architecture("timm:inception_v3")[1:] == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert model_defaults("resnet18_cifar")["mean"] == architecture("resnet18_cifar")[1]
    with pytest.raises(ModelError, match="timm has no model named 'resnet_18'.*timm:resnet18"):
        build_architecture("timm:resnet_18", 10)
    with pytest.raises(ModelError, match="timm:<name>"):
        build_architecture("resnet9", 10)
    demo = PRESETS["demo"].to_dict()
    assert ExperimentConfig.from_dict({**demo, "model": {**demo["model"], "arch": "timm:resnet18"}}
                                      ).model.arch == "timm:resnet18"
    with pytest.raises(ConfigError, match="timm:<name>"):
        ExperimentConfig.from_dict({**demo, "model": {**demo["model"], "arch": "timm:"}})


def test_timm_and_torchvision_checkpoints_load_strictly(tmp_path, models, images):
    src = models["timm:resnet18"]
    torch.save(src.net.state_dict(), tmp_path / "timm18.pt")
    cfg = ModelConfig(arch="timm:resnet18", checkpoint=str(tmp_path / "timm18.pt"), num_classes=CLASSES,
                      mean=(0.5,), std=(0.25,))
    loaded = load_model(cfg, (3, SIZE, SIZE))
    with torch.no_grad():
        assert torch.equal(loaded(images), src(images))
    with pytest.raises(ModelError, match="does not match the architecture"):  # resnet18 keys, MobileNet
        load_model(ModelConfig(arch="mobilenet_v2", checkpoint=cfg.checkpoint, num_classes=CLASSES),
                   (3, SIZE, SIZE))
