"""Small loaders shared by tests (real images from ../shared, real checkpoints)."""
import re
from pathlib import Path

import torch

from core.config import ModelConfig
from core.data import lossless_pngs
from core.models import load_model
from core.presets import PRESETS


def lossless20(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The 20 lossless CIFAR-10 test images (indices 0-19) as (20,3,32,32) floats and labels."""
    return lossless_pngs(root)


def shared_model(name: str, models_dir: Path):
    """A pretrained CIFAR model from ../shared by preset name (cifar10-resnet18 | cifar10-resnet56)."""
    cfg = PRESETS[name].model
    ck = models_dir / Path(cfg.checkpoint).name
    return load_model(ModelConfig(**{**cfg.__dict__, "checkpoint": str(ck)}), (3, 32, 32))


def resnet20(models_dir: Path):
    cfg = PRESETS["cifar10-resnet56"].model
    return load_model(ModelConfig(**{**cfg.__dict__, "arch": "resnet20_cifar",
                                     "checkpoint": str(models_dir / "resnet20-12fca82f.th")}), (3, 32, 32))


def displayed(markdown: str) -> str:
    """What a user reads of Markdown made safe by ``core.ui.text.plain``: the text without its backslash
    escapes and invisible word joiners (AppTest returns an element's Markdown source)."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown).replace("\u2060", "")
