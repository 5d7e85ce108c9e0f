"""Model cards: what a model file says about its input and output, and the one place that decides them.

A card is a small JSON object in ``<model file stem>.json`` beside the model file (``model.pt2`` +
``model.json``; also beside ``.onnx`` files and weights checkpoints: ``resnet.pth.tar`` + ``resnet.json``).
Every key is optional::

    {"num_classes": 10, "mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616],
     "input_size": [3, 32, 32], "in_channels": 3, "class_names": ["airplane", ...]}

``input_size`` is [C, H, W] or [H, W]; ``{"normalization": {"mean": ..., "std": ...}}`` (what
``core.train`` writes) is read as mean and std. Each value is checked with the [model] rules of the
config (``core.config._rules``: the same words and ranges); ``class_names`` as ``core.data`` checks class
folder names. Other keys are ignored (a card may also describe the training; ``ModelCard.ignored`` lists
them), since the project's own cards already carry such notes. A card is read as JSON only, at most
``MAX_CARD_BYTES``; anything wrong is one ModelError that names the card and the key.

A format may carry a card inside the file (ONNX's ``metadata_props``): ``FILE_CARDS`` maps a suffix to a
"module:function" returning the card's keys as a dict (or None); a card file beside the model wins over it.

Resolution (:func:`resolve`, used by ``core.models.load_model``, the pipeline and the Prepare page), per
field, the first that gives a value:

1. the explicit [model] value (a config key that is set, i.e. not None);
2. the card (the file beside the model, else the one inside it);
3. what the format or architecture says: ``in_channels`` of a model file from its first convolution;
   mean, std and input size of a named non-built-in architecture (timm's ``pretrained_cfg``) from
   ``core.models.model_defaults(arch)`` where that exists;
4. the defaults of every earlier version: identity normalization (mean 0, std 1), 3 input channels,
   10 classes for an architecture built here. A model file's class count stays None: the discovered
   head decides it (``ExplainedModel.num_classes``).

So a config that gives neither a card nor a format default resolves exactly as before (the stores'
cache keys hash the resolved config).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import ConfigError, ExperimentConfig, ModelConfig

MAX_CARD_BYTES = 64 << 10  # a card is a few hundred bytes; never read a large file whole
DEFAULT_NUM_CLASSES = 10  # [model] num_classes of an architecture built here, when nothing says otherwise
DEFAULT_IN_CHANNELS = 3
IDENTITY = ((0.0,), (1.0,))  # [model] mean/std when nothing says otherwise: the pixels as they are
CARD_KEYS = ("num_classes", "mean", "std", "input_size", "in_channels", "class_names")
# suffix -> "module:function(path) -> dict | None": a card carried inside the model file (filled in by the
# module that reads that format; a missing module or function means no such card)
FILE_CARDS: dict[str, str] = {".onnx": "core.onnx_models:file_card"}


@dataclass(frozen=True)
class ModelCard:
    """A checked card. ``input_size`` is (H, W) (a [C, H, W] card's C is ``in_channels``)."""
    source: str  # where it was read, for messages
    num_classes: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_size: tuple[int, int] | None = None
    in_channels: int | None = None
    class_names: tuple[str, ...] | None = None
    ignored: tuple[str, ...] = ()  # keys this version does not read


def card_path(model_path: str | os.PathLike) -> Path:
    """``<stem>.json`` beside ``model_path``; the stem drops a known model suffix whole (``x.pth.tar``)."""
    from core.models import CHECKPOINT_SUFFIXES, NETWORK_FILES
    path = Path(os.fsdecode(model_path))
    name = path.name
    for suffix in sorted((*CHECKPOINT_SUFFIXES, *NETWORK_FILES), key=len, reverse=True):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return path.with_name(name[:-len(suffix)] + ".json")
    return path.with_suffix(".json")


def _error(source: str, text: str):
    from core.models import ModelError
    return ModelError(f"model card {source}: {text}")


def parse_card(data: bytes, source: str) -> ModelCard:
    """The checked card in ``data`` (JSON text); ``source`` names it in the ModelError of a bad card."""
    if len(data) > MAX_CARD_BYTES:
        raise _error(source, f"larger than {MAX_CARD_BYTES >> 10} KiB; a card is a small JSON object "
                             f"with {', '.join(CARD_KEYS)}")
    try:
        obj = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _error(source, f"not valid JSON ({type(e).__name__}); write a JSON object such as "
                             '{"mean": [0.5], "std": [0.5]}') from None
    return card_from_dict(obj, source)


def card_from_dict(obj: Any, source: str) -> ModelCard:
    """A checked card from parsed JSON (or a format's metadata): each key checked like its [model] key."""
    from core.data import _class_name_problem
    if not isinstance(obj, dict):
        raise _error(source, "expected a JSON object ({...}) of " + ", ".join(CARD_KEYS))
    obj = dict(obj)
    norm = obj.pop("normalization", None)  # core.train's cards: {"normalization": {"mean", "std"}}
    if isinstance(norm, dict):
        for k in ("mean", "std"):
            if k in norm and k not in obj:
                obj[k] = norm[k]
    values: dict[str, Any] = {}
    model_keys = {k: obj[k] for k in ("num_classes", "in_channels", "mean", "std") if k in obj}
    if model_keys:  # the config's own checks: types, ranges, one mean/std per channel
        d = ExperimentConfig().to_dict()
        d["model"].update(model_keys)
        try:
            m = ExperimentConfig.from_dict(d).model
        except ConfigError as e:
            raise _error(source, str(e).replace("[model] ", "")) from None
        values.update({k: getattr(m, k) for k in model_keys})
    if "input_size" in obj:
        size = obj["input_size"]
        if not (isinstance(size, list) and len(size) in (2, 3)
                and all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
            raise _error(source, f"input_size = {size!r:.60}: expected [C, H, W] or [H, W] whole numbers")
        from core.config import MIN_IMAGE_SIZE
        from core.hosting import settings
        hi = settings().max_image_size
        if not all(MIN_IMAGE_SIZE <= v <= hi for v in size[-2:]):
            raise _error(source, f"input_size = {size}: height and width from {MIN_IMAGE_SIZE} to {hi} "
                                 "pixels")
        if len(size) == 3:
            if size[0] not in (1, 3):
                raise _error(source, f"input_size = {size}: C must be 1 (grayscale) or 3 (RGB)")
            if values.get("in_channels", size[0]) != size[0]:
                raise _error(source, f"input_size = {size} and in_channels = {values['in_channels']} "
                                     "disagree")
            values["in_channels"] = size[0]
        values["input_size"] = (size[-2], size[-1])
    channels = values.get("in_channels")
    if channels and "mean" in values and len(values["mean"]) not in (1, channels):
        raise _error(source, f"mean has {len(values['mean'])} values but the model takes {channels} channels")
    if "class_names" in obj:
        names = obj["class_names"]
        if not (isinstance(names, list) and names and all(isinstance(n, str) and n for n in names)):
            raise _error(source, "class_names: expected a list of non-empty strings, in the model's class "
                                 "order")
        problems = [(n, p) for n in names if (p := _class_name_problem(n))]
        if problems:
            name, why = problems[0]
            raise _error(source, f"class name {name[:40]!r} {why}; fix it in the card")
        if len(set(names)) != len(names):
            raise _error(source, "class_names holds the same name twice")
        if values.get("num_classes", len(names)) != len(names):
            raise _error(source, f"{len(names)} class_names but num_classes = {values['num_classes']}")
        values["class_names"] = tuple(names)
        values.setdefault("num_classes", len(names))
    ignored = tuple(sorted(str(k) for k in obj if k not in CARD_KEYS))
    return ModelCard(source, ignored=ignored, **values)


def read_card(model_path: str | os.PathLike | None) -> ModelCard | None:
    """The card of ``model_path``: the JSON file beside it, else the one its format carries
    (``FILE_CARDS``), else None."""
    if not model_path:
        return None
    path = card_path(model_path)
    try:
        if not path.is_file():  # a folder or a pipe of that name is no card (and a pipe would block)
            return _file_card(Path(os.fsdecode(model_path)))
        with open(path, "rb") as f:
            data = f.read(MAX_CARD_BYTES + 1)
    except OSError as e:
        raise _error(str(path), f"cannot be read ({e.strerror or type(e).__name__})") from None
    return parse_card(data, str(path))


def _file_card(path: Path) -> ModelCard | None:
    spec = FILE_CARDS.get(path.suffix.lower())
    if spec is None or not path.is_file():
        return None
    st = path.stat()
    return _carried_card(str(path), spec, (st.st_mtime_ns, st.st_size, st.st_ino))


@functools.lru_cache(maxsize=16)
def _carried_card(path: str, spec: str, _stamp: tuple) -> ModelCard | None:
    """The card a model file carries, read once per file version (reading it parses the whole file, and
    the Prepare page asks on every rerun)."""
    module, function = spec.split(":")
    try:
        reader = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError):  # the format's module does not offer a card (yet)
        return None
    fields = reader(Path(path))
    return None if fields is None else card_from_dict(fields, f"in {Path(path).name}")


@functools.lru_cache(maxsize=16)
def _file_channels(path: str, _stamp: tuple) -> int | None:
    from torch import nn

    from core.models import load_network_file
    net = load_network_file(path)
    for m in net.modules():  # the first convolution in module order: the stem
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    for _name, p in net.named_parameters():  # a graph module without Conv2d modules: the first kernel
        if p.dim() == 4:
            return int(p.shape[1])
    return None


def file_in_channels(path: str | os.PathLike) -> int | None:
    """The input channels of a model file (``core.models.NETWORK_FILES``), from its first convolution;
    read once per file version."""
    from core.models import check_checkpoint
    p = check_checkpoint(path)
    st = p.stat()
    return _file_channels(str(p), (st.st_mtime_ns, st.st_size, st.st_ino))


def format_defaults(cfg: ModelConfig) -> dict[str, Any]:
    """What the architecture says (mean, std, input_size, num_classes) for a named architecture that is
    not built in (e.g. timm's ``pretrained_cfg``), via ``core.models.model_defaults`` where it exists.
    Built-in architectures give nothing: their configs have always meant identity normalization."""
    from core import models
    arch = cfg.arch
    get = getattr(models, "model_defaults", None)
    if not arch or arch in models.ARCHITECTURES or get is None:
        return {}
    found = get(arch) or {}
    return {k: v for k, v in dict(found).items() if v is not None}


@dataclass(frozen=True)
class Resolution:
    """A [model] config with every field decided, where each decided value came from, and the input size
    (H, W) the card or architecture names (None: the images' own)."""
    model: ModelConfig
    sources: dict[str, str]  # field -> "config", "card", "file", "architecture" or "default"
    input_size: tuple[int, int] | None
    card: ModelCard | None


def resolution(cfg: ModelConfig, num_classes: int | None = None) -> Resolution:
    """Decide ``cfg``'s unset fields (see the module docstring for the order). ``num_classes``: the
    dataset's class count, used for an architecture built here when neither config nor card gives one."""
    from core.models import ModelError, resolved_arch
    if (cfg.mean is None) != (cfg.std is None):
        raise ModelError("[model] mean and std go together: give both, or neither to take them from the "
                         "model's card or defaults")
    card = read_card(cfg.checkpoint)
    is_file = resolved_arch(cfg) == "file"
    arch = format_defaults(cfg)
    out, sources = {}, {}

    def decide(key: str, *candidates: tuple[str, Any]) -> None:
        for where, value in candidates:
            if value is not None:
                out[key], sources[key] = value, where
                return
        out[key], sources[key] = None, "default"

    card_get = (lambda k: getattr(card, k)) if card else (lambda k: None)
    decide("mean", ("config", cfg.mean), ("card", card_get("mean")),
           ("architecture", arch.get("mean")), ("default", IDENTITY[0]))
    decide("std", ("config", cfg.std), ("card", card_get("std")),
           ("architecture", arch.get("std")), ("default", IDENTITY[1]))
    if sources["mean"] != sources["std"]:  # one pair from one place, never a card's mean with a default std
        out["mean"], out["std"] = IDENTITY
        sources["mean"] = sources["std"] = "default"
    file_channels = (lambda: file_in_channels(cfg.checkpoint)) if is_file and cfg.in_channels is None \
        and not (card and card.in_channels) else (lambda: None)
    decide("in_channels", ("config", cfg.in_channels), ("card", card_get("in_channels")),
           ("file", file_channels()), ("default", DEFAULT_IN_CHANNELS))
    decide("num_classes", ("config", cfg.num_classes), ("card", card_get("num_classes")),
           ("architecture", arch.get("num_classes")),
           ("dataset", None if is_file else num_classes),
           ("default", None if is_file else DEFAULT_NUM_CLASSES))
    size = card.input_size if card and card.input_size else arch.get("input_size")
    if size is not None:
        size = tuple(int(v) for v in size)[-2:]
    if not is_file and cfg.arch is None:  # as every earlier version wrote it (the cache keys stay the same)
        from core.models import DEFAULT_ARCH
        out["arch"] = DEFAULT_ARCH
    model = dataclasses.replace(cfg, **out)
    if len(model.mean) not in (1, model.in_channels):
        raise ModelError(f"the normalization ({sources['mean']}) has {len(model.mean)} values but the model "
                         f"takes {model.in_channels} input channel(s) ({sources['in_channels']}); set "
                         "[model] mean and std to one value each or one per channel")
    return Resolution(model, sources, size, card)


def resolve(cfg: ModelConfig, num_classes: int | None = None) -> ModelConfig:
    """``cfg`` with its unset fields decided (:func:`resolution`); a model file's class count may stay
    None."""
    return resolution(cfg, num_classes).model
