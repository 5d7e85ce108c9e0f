"""Experiment configuration: what `prepare` needs, as plain dataclasses that round-trip through TOML.

A config file has three tables, each mapping to one dataclass below::

    [model]   arch, checkpoint, num_classes, in_channels, mean, std, feature_layer, head
    [data]    source, root, split, classes, per_class, image_size, on_corrupt, download
    [attack]  method, eps, alpha, steps, random_start, early_stop, precision
    [prepare] batch_size, tsne_perplexity, seed, device

Relative paths in a config file are resolved against the file's folder, so a config can sit beside
its checkpoint.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config that cannot be run; the message says which key and how to fix it."""


@dataclass
class ModelConfig:
    arch: str = "resnet18_cifar"
    checkpoint: str | None = None  # None: random weights (tests only)
    num_classes: int = 10
    in_channels: int = 3
    width: int = 64  # base width of the CIFAR ResNet18 family (64 = the paper's 512 neurons)
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    feature_layer: str | None = None  # override the analysed layer by module name
    head: str | None = None  # override the final linear layer by module name


@dataclass
class DataConfig:
    source: str = "demo"  # demo | fashion_mnist | cifar10 | image_folder
    root: str | None = None
    split: str = "test"
    classes: list[str] | None = None  # class subset by name (paper §6.2.2); None = all
    per_class: int | None = None  # at most this many images per class (first in index order)
    image_size: int | None = None  # resize to this square size; None = keep (all must match)
    on_corrupt: str = "skip"  # skip (and report) | error (name the file)
    download: bool = False  # torchvision download, only when asked


@dataclass
class AttackConfig:
    method: str = "pgd"  # pgd | fgsm
    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 7
    random_start: bool = False
    early_stop: bool = False  # stop at the first misclassifying iterate (faster; not the paper's PGD)
    # Precision of the attack's search: "fp32", "bf16" (autocast; success re-verified in fp32),
    # or "auto" (bf16 where the device has fast bf16, else fp32).
    precision: str = "auto"


@dataclass
class PrepareConfig:
    batch_size: int = 0  # 0 = auto: 128 on a CPU, from free memory on a GPU (core.device)
    tsne_perplexity: float = 30.0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    # Vulnerability maps precomputed into the store (paper §8: Places365's 266 images): this many pairs,
    # those of the most populated prediction-matrix cells first; the app computes the others live.
    maps: int = 0
    maps_stride: int = 0  # 0 = the app's default stride for the image size (vulnerability.default_stride)
    maps_output: str = "probability"  # probability | logit
    maps_precision: str = "auto"  # auto | fp32 | bf16


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], base_dir: Path | None = None) -> ExperimentConfig:
        parts = {}
        for name, sub in (("model", ModelConfig), ("data", DataConfig),
                          ("attack", AttackConfig), ("prepare", PrepareConfig)):
            table = dict(d.get(name) or {})
            known = {f.name for f in dataclasses.fields(sub)}
            unknown = set(table) - known
            if unknown:
                raise ConfigError(f"[{name}] has unknown key(s) {sorted(unknown)}; "
                                  f"known keys: {sorted(known)}")
            for key in ("mean", "std"):
                if key in table:
                    table[key] = tuple(float(v) for v in table[key])
            parts[name] = sub(**table)
        extra = set(d) - set(parts)
        if extra:
            raise ConfigError(f"unknown table(s) {sorted(extra)}; expected model, data, attack, prepare")
        cfg = cls(**parts)
        if base_dir is not None:
            for obj, key in ((cfg.model, "checkpoint"), (cfg.data, "root")):
                value = getattr(obj, key)
                if value and not Path(value).expanduser().is_absolute():
                    setattr(obj, key, str((base_dir / value).resolve()))
        cfg.validate()
        return cfg

    @classmethod
    def from_toml(cls, path: str | Path) -> ExperimentConfig:
        path = Path(path)
        try:
            d = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        return cls.from_dict(d, base_dir=path.parent)

    def validate(self) -> None:
        a = self.attack
        if a.method not in ("pgd", "fgsm"):
            raise ConfigError(f"[attack] method={a.method!r}: use 'pgd' or 'fgsm'")
        if not (0 <= a.eps <= 1) or a.alpha < 0 or a.steps < 0:
            raise ConfigError("[attack] needs 0 <= eps <= 1, alpha >= 0 and steps >= 0 "
                              "(eps and alpha are in [0,1] pixel units, e.g. 8/255 = 0.0314)")
        if a.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"[attack] precision={a.precision!r}: use auto, fp32 or bf16")
        if self.data.on_corrupt not in ("skip", "error"):
            raise ConfigError(f"[data] on_corrupt={self.data.on_corrupt!r}: use 'skip' or 'error'")
        if self.model.num_classes < 2:
            raise ConfigError("[model] num_classes must be at least 2")
        if len(self.model.mean) not in (1, self.model.in_channels) or \
                len(self.model.std) != len(self.model.mean):
            raise ConfigError("[model] mean and std need one value or one per input channel")
        if any(s <= 0 for s in self.model.std):
            raise ConfigError("[model] std values must be positive")
        p = self.prepare
        if p.batch_size < 0:
            raise ConfigError("[prepare] batch_size must be at least 1, or 0 to choose it from the device")
        if p.maps < 0 or p.maps_stride < 0:
            raise ConfigError("[prepare] maps must be >= 0 (pairs whose vulnerability maps are "
                              "precomputed) and maps_stride >= 1 (0: the app's default stride)")
        if p.maps_output not in ("probability", "logit") or p.maps_precision not in ("auto", "fp32", "bf16"):
            raise ConfigError("[prepare] maps_output must be probability or logit, and maps_precision "
                              "auto, fp32 or bf16")
