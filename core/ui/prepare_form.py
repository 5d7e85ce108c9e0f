"""The Prepare page's pure helpers (no Streamlit): the attack's fields (generated from the attack registry,
``core.attacks.ATTACKS``), the class names of a data source, the server folders
the page may read, a checked image folder, checkpoint and model-file uploads (with an optional card) saved
under a content-addressed name, a config built from a preset plus the form's values, the model choices
(a built-in architecture, a timm name, or a model file that carries its architecture) with the common
normalizations, and a model check that loads the model with the project's safe loaders before any long run
starts and reports what it found (:class:`ModelSummary`). The jobs themselves run in processes of their
own (``core.jobs``).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import os
import re
import shutil
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from core import model_cards, models
from core.attacks import ATTACKS, PARAMS, Param, param, resolve
from core.config import AttackConfig, ConfigError, ExperimentConfig
from core.data import CIFAR10_CLASSES, FASHION_MNIST_CLASSES, IMAGE_EXTENSIONS, DataError
from core.hosting import settings
from core.models import (
    ARCHITECTURES,
    CHECKPOINT_SUFFIXES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NETWORK_FILES,
    ModelError,
)
from core.presets import KEPT_ON_NEW_METHOD, PRESETS

CUSTOM = "custom"  # the form's start without a preset
CKPT_MODES = ("A file on the server", "Upload a file")
SOURCE_LABELS = {"demo": "Fashion-MNIST sample shipped with the app", "fashion_mnist": "Fashion-MNIST files",
                 "cifar10": "CIFAR-10 folder", "image_folder": "My images (one folder per class)"}
UPLOADS = ".uploads"  # under the cache folder; hidden names are never listed as experiments
MAX_UPLOAD_BYTES = 256 * 2**20  # the page passes Streamlit's server.maxUploadSize instead
MODEL_SUFFIXES = (*CHECKPOINT_SUFFIXES, *NETWORK_FILES)  # weights checkpoints and model files
TIMM = "timm"          # the architecture choice "a timm model by name" (the name goes in its own field)
FROM_FILE = "file"     # the architecture choice "carried by the model file" (.pt2, .onnx)
ARCH_CHOICES = (*ARCHITECTURES, TIMM, FROM_FILE)
TIMM_EXAMPLES = ("timm:resnet18", "timm:mobilenetv3_small_100", "timm:efficientnet_b0", "timm:convnext_atto",
                 "timm:vgg11")
_TIMM_NAME = re.compile(r"timm:[a-z0-9][a-z0-9_.]{0,127}")
# one click away on the page; "none" keeps the pixels in [0, 1] as they are
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "ImageNet": (IMAGENET_MEAN, IMAGENET_STD),
    "CIFAR-10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "[0, 1] (none)": model_cards.IDENTITY,
}
CHANNEL_CHOICES = (0, 3, 1)  # 0: from the model (its card or first convolution; else 3)


# -- form helpers ---------------------------------------------------------------------------------------
def readable_roots(cache_dir) -> list[Path]:
    """The server folders the Prepare page may read: the cache's uploads, the folders of the presets' own
    datasets and checkpoints (chosen by whoever installed the app), and the administrator's ``data_roots``
    (``core.hosting``: nve-server.toml or NVE_DATA_ROOTS). Nothing else, existing or not."""
    roots = {Path(cache_dir).resolve() / UPLOADS, *(Path(r) for r in settings().data_roots)}
    for cfg in PRESETS.values():
        if cfg.data.root and Path(cfg.data.root).is_absolute():
            roots.add(Path(cfg.data.root).resolve())
        if cfg.model.checkpoint and Path(cfg.model.checkpoint).is_absolute():
            roots.add(Path(cfg.model.checkpoint).resolve().parent)
    return sorted(roots)


def server_path(text: str | Path, cache_dir, what: str, error: type[Exception] = DataError) -> Path:
    """``text`` as a resolved path inside ``readable_roots``, or ``error``. Symlinks are resolved first (a
    link inside an allowed folder that points out of it is refused), and the refusal reads the same
    whether the path exists or not, so the page reveals nothing about the rest of the server."""
    raw = str(text).strip()
    roots = readable_roots(cache_dir)
    refusal = error(f"the {what} {raw!r} is not in a folder this server lets the app read. Use a path under "
                    f"{' or '.join(str(r) for r in roots)}, or ask the server's administrator to add its "
                    "folder to data_roots (nve-server.toml or NVE_DATA_ROOTS)")
    try:
        path = Path(raw).expanduser()
    except RuntimeError:  # "~nobody": no such home
        path = Path(raw)
    if not path.is_absolute():
        raise error(f"the {what} {raw!r} must be an absolute path on the server, e.g. {roots[-1]}")
    try:
        resolved = path.resolve()
    except (OSError, ValueError, RuntimeError):  # NUL bytes, symlink loops, unreadable parents
        raise refusal from None
    if not any(resolved == r or resolved.is_relative_to(r) for r in roots):
        raise refusal
    return resolved


def check_folder(root: str | Path | None, cache_dir) -> list[str]:
    """The class names (sorted sub-folder names, as ``core.data.image_folder``) of an image folder the
    page may read, or a DataError that says what is wrong with the path."""
    if not root or not str(root).strip():
        raise DataError("enter the dataset folder: a folder holding one sub-folder of images per class")
    path = server_path(root, cache_dir, "dataset folder")
    if not path.exists():
        raise DataError(f"the dataset folder {str(path)!r} does not exist (the path is read on the server)")
    if not path.is_dir():
        raise DataError(f"{str(path)!r} is a file, not a folder; enter the folder that holds the class "
                        "folders")
    if not os.access(path, os.R_OK | os.X_OK):
        raise DataError(f"the dataset folder {str(path)!r} cannot be read (permissions)")
    limit = settings().max_scan_files
    with os.scandir(path) as entries:  # a folder of millions of entries is refused, not listed
        found = list(itertools.islice(entries, limit + 1))
    if len(found) > limit:
        raise DataError(f"the dataset folder {str(path)!r} holds more than {limit:,} entries; use a folder "
                        "with one sub-folder per class")
    classes = sorted(d.name for d in found if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{str(path)!r} has no class folders: put the images in one sub-folder per class, "
                        "e.g. cats/001.jpg, dogs/001.jpg")
    return classes


def dataset_classes(source: str, root: str | None, cache_dir) -> list[str]:
    """Every class name of a data source (the model's output order)."""
    if source in ("demo", "fashion_mnist") and not (root and str(root).strip()):
        return list(FASHION_MNIST_CLASSES)
    if source in ("demo", "fashion_mnist"):
        server_path(root, cache_dir, "Fashion-MNIST folder")
        return list(FASHION_MNIST_CLASSES)
    if source == "cifar10":
        if not root or not server_path(root, cache_dir, "CIFAR-10 folder").is_dir():
            raise DataError(f"the CIFAR-10 folder {root or '(empty)'} does not exist")
        return list(CIFAR10_CLASSES)
    if source == "image_folder":
        return check_folder(root, cache_dir)
    raise DataError(f"unknown data source {source!r}")


def check_server_paths(cfg: ExperimentConfig, cache_dir) -> None:
    """The page's job may read only allowed folders: its dataset folder and its checkpoint."""
    if cfg.data.root:
        server_path(cfg.data.root, cache_dir, "dataset folder")
    if cfg.model.checkpoint:
        server_path(cfg.model.checkpoint, cache_dir, "checkpoint file", ModelError)


def checkpoint_suffix(filename: str) -> str:
    """The type of an uploaded checkpoint or model file by its name (the name is never used as a path)."""
    lower = filename.lower()
    for suffix in sorted(MODEL_SUFFIXES, key=len, reverse=True):  # .pth.tar before .tar
        if lower.endswith(suffix):
            return suffix
    raise ModelError(f"{filename}: unsupported checkpoint type; use one of {', '.join(MODEL_SUFFIXES)}")


def save_upload(data: bytes, filename: str, cache_dir, max_bytes: int = MAX_UPLOAD_BYTES) -> Path:
    """Keep an uploaded checkpoint as ``<cache>/.uploads/<sha256><suffix>`` (content-addressed, written
    atomically) once it has passed every check: its type (by the name's suffix: the name itself is never
    a path), its size (1 byte to ``max_bytes``), and that it holds the plain weights of a CNN
    (``core.models.check_cnn_checkpoint``, with its size limits) or, for a model file that carries its
    architecture (.pt2, .onnx), that it loads (``core.models.load_network_file``, one check at a time). A
    file that fails is never kept; its ModelError is raised."""
    suffix = checkpoint_suffix(filename)
    if not data:
        raise ModelError(f"{filename}: the uploaded file is empty; upload the checkpoint again")
    if len(data) > max_bytes:
        raise ModelError(f"{filename}: {len(data) / 2**20:.0f} MB is more than the "
                         f"{max_bytes / 2**20:.0f} MB an upload may have; put the checkpoint on the server "
                         "and give its path instead")
    folder = Path(cache_dir).resolve() / UPLOADS  # an absolute path: the page's folder check needs one
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(data).hexdigest()
    path = folder / f"{digest}{suffix}"
    if path.is_file():
        return path
    tmp = folder / f".tmp-{os.getpid()}-{threading.get_ident()}-{digest}{suffix}"
    try:
        tmp.write_bytes(data)
        if suffix in NETWORK_FILES:
            with _CHECKS:
                models.load_network_file(tmp)
        else:
            models.check_cnn_checkpoint(tmp, source=filename)
        os.replace(tmp, path)
    except ModelError as e:  # name the user's file, not the server's temporary path
        raise ModelError(str(e).replace(str(tmp), filename).replace(tmp.name, filename)) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_card(data: bytes, filename: str, model_path: str | Path) -> Path:
    """Keep an uploaded model card (``core.model_cards``) with the uploaded model ``model_path``, once it
    parses and passes every check (otherwise its ModelError is raised), and return the model path to use.

    Uploads are shared by content (``save_upload``), so a card is never written beside the model's own
    file: another user's upload of the same model, with another card or none, would read it. The pair is
    kept as a model file of its own, ``<sha256 of model and card><suffix>`` (a link to the model's bytes)
    with the card beside it as its ``<stem>.json``, the card written first."""
    model_cards.parse_card(data, filename)
    model = Path(model_path)
    digest = hashlib.sha256(model.name.encode() + b"\0" + data).hexdigest()  # the name is the model's hash
    pair = model.with_name(digest + checkpoint_suffix(model.name))
    tag = f".tmp-{os.getpid()}-{threading.get_ident()}-"
    for target, write in ((model_cards.card_path(pair), lambda t: t.write_bytes(data)),
                          (pair, lambda t: _link_or_copy(model, t))):
        if target.exists():
            continue  # content-addressed: the same bytes
        tmp = target.with_name(tag + target.name)
        try:
            write(tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return pair


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copyfile(source, target)


def timm_arch(text: str) -> str:
    """``text`` as a timm architecture name (``timm:<name>``, a model timm knows), or a ModelError."""
    name = text.strip()
    if not name.startswith("timm:"):
        name = f"timm:{name}"
    if not _TIMM_NAME.fullmatch(name):
        raise ModelError(f"{name[:80]!r} is not a timm model name: write timm:<name> with lower-case "
                         f"letters, digits, '_' or '.', e.g. {', '.join(TIMM_EXAMPLES[:3])}")
    try:
        import timm
    except ImportError:
        raise ModelError("timm models need the timm package: pip install timm") from None
    if not timm.is_model(name.removeprefix("timm:")):
        close = timm.list_models(f"*{name.removeprefix('timm:')[:20]}*")[:5]
        raise ModelError(f"timm has no model {name.removeprefix('timm:')!r}"
                         + (f"; similar: {', '.join(close)}" if close else "; see timm.list_models()"))
    return name


def default_normalization(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The registry's (mean, std) for a built-in architecture; None for a timm name or a model file,
    whose normalization comes from its card or defaults (``core.model_cards``)."""
    if arch in (TIMM, FROM_FILE) or (isinstance(arch, str) and arch.startswith("timm:")):
        return None
    if arch not in ARCHITECTURES:
        raise ModelError(f"unsupported architecture {arch!r}")
    return tuple(ARCHITECTURES[arch][1]), tuple(ARCHITECTURES[arch][2])


def build_config(preset_name: str | None, values: Mapping[str, object]) -> ExperimentConfig:
    """A validated config: the preset (or the defaults) with ``values`` ("section.key" -> value) set."""
    if preset_name is not None and preset_name not in PRESETS:
        raise ConfigError(f"unknown preset {preset_name!r}; presets: {', '.join(PRESETS)}")
    d = copy.deepcopy(PRESETS[preset_name] if preset_name else ExperimentConfig()).to_dict()
    for key, value in values.items():
        section, _, name = key.partition(".")
        if section not in d or not name:
            raise ConfigError(f"unknown setting {key!r}")
        d[section][name] = value
    return ExperimentConfig.from_dict(d)  # checks unknown keys and validates


_CHECKS = threading.Semaphore(1)  # one checkpoint in the server's memory at a time, however many ask
NATIVE_SIZE = {"demo": 28, "fashion_mnist": 28, "cifar10": 32}  # pixels of a source's images
ASSUMED_SIZE = 224  # an image folder's size before it is scanned, when neither config nor card says


@dataclass(frozen=True)
class ModelSummary:
    """What the model check found, for the page to show before the run."""
    feature_layer: str
    num_neurons: int
    fmap_size: tuple[int, int]
    head_type: str  # ExplainedModel.head_type: "linear", "conv1x1" or "other"
    num_classes: int
    input_shape: tuple[int, int, int]
    size_assumed: bool  # the input size was assumed (an image folder not yet scanned)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    sources: dict  # field -> where its value came from (core.model_cards.Resolution.sources)
    card: model_cards.ModelCard | None


def input_shape(cfg: ExperimentConfig, found: model_cards.Resolution) -> tuple[tuple[int, int, int], bool]:
    """(C, H, W) to check the model on, and whether H, W were assumed: [data] image_size, else the card's
    or architecture's input size, else the source's native size, else the size of an image folder's first
    image (``cfg.data.root`` already checked against the readable roots: ``check_server_paths``), else
    ``ASSUMED_SIZE``."""
    size = cfg.data.image_size
    hw = (size, size) if size else found.input_size or (
        (NATIVE_SIZE[cfg.data.source],) * 2 if cfg.data.source in NATIVE_SIZE else None)
    if hw is None and cfg.data.source == "image_folder" and cfg.data.root:
        hw = first_image_size(cfg.data.root)
    return (found.model.in_channels, *(hw or (ASSUMED_SIZE, ASSUMED_SIZE))), hw is None


def first_image_size(root: str | Path, most: int = 64) -> tuple[int, int] | None:
    """(H, W) of the first readable image of the first class folder that has one (sorted names, as
    ``core.data.image_folder`` orders them), reading file headers only and at most ``most`` entries per
    folder and folders; None when there is none (the scan will say why). The check before a run uses the
    images' own size, so what it finds (or refuses) is what the run will."""
    try:
        with os.scandir(root) as entries:
            folders = sorted(e.path for e in itertools.islice(entries, most)
                             if e.is_dir() and not e.name.startswith("."))
        for folder in folders:
            with os.scandir(folder) as entries:
                names = sorted(e.path for e in itertools.islice(entries, most)
                               if e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file())
            for name in names:
                try:
                    with Image.open(name) as im:  # the header: no pixels are decoded
                        return int(im.height), int(im.width)
                except (OSError, ValueError, Image.DecompressionBombError):
                    continue
    except OSError:
        return None
    return None


def _stamp(path) -> tuple:
    try:
        st = Path(path).stat()
        return st.st_mtime_ns, st.st_size, st.st_ino
    except (OSError, ValueError, TypeError):
        return ()


_SUMMARIES: OrderedDict[str, ModelSummary] = OrderedDict()  # the last few checks, by what they read


def check_model(cfg: ExperimentConfig) -> ModelSummary:
    """Load the model as the pipeline will (``core.models.load_model``: strict, safe, within the checkpoint
    limits; unset [model] fields decided by ``core.model_cards``) on one random input of the experiment's
    size, and say what was found: a ModelError now rather than after minutes of work. A model file's class
    count is checked against the dataset's (``cfg.model.num_classes``) with load_model's message. One check
    at a time per server; a model (file, card, settings) checked before is not loaded again."""
    if not cfg.model.checkpoint:
        raise ModelError("choose the model's checkpoint (a weights file): without one the model would "
                         "have random weights and explain nothing")
    m = cfg.model
    with _CHECKS:
        found = model_cards.resolution(m)
        shape, assumed = input_shape(cfg, found)
        key = json.dumps([dataclasses.asdict(m), shape, _stamp(m.checkpoint),
                          _stamp(model_cards.card_path(m.checkpoint))], default=str)
        summary = _SUMMARIES.get(key)
        if summary is None:
            # a model file's classes are what its head says; compared with the dataset's below
            probe = dataclasses.replace(m, num_classes=None) if models.resolved_arch(m) == "file" else m
            model = models.load_model(probe, shape)
            summary = ModelSummary(model.feature_layer, model.num_neurons, tuple(model.fmap_size),
                                   getattr(model, "head_type", "linear"), model.num_classes, shape, assumed,
                                   tuple(found.model.mean), tuple(found.model.std), dict(found.sources),
                                   found.card)
            del model
            _SUMMARIES[key] = summary
            while len(_SUMMARIES) > 16:
                _SUMMARIES.popitem(last=False)
    if m.num_classes is not None and summary.num_classes != m.num_classes:
        raise ModelError(f"the model classifies into {summary.num_classes} classes but the experiment has "
                         f"{m.num_classes} ([model] num_classes; the app counts the dataset's class "
                         f"folders): use images of the {summary.num_classes} classes it was trained on, one "
                         "folder per class in its class order")
    return summary


def class_names_problem(s: ModelSummary, classes: list[str]) -> str | None:
    """A warning when the card's class names are not the dataset's classes in the same order (labels
    would then mean other classes than the model's outputs), else None."""
    names = list(s.card.class_names) if s.card is not None and s.card.class_names else None
    if names is None or names == list(classes):
        return None
    if sorted(names) == sorted(classes):
        return ("the model's card lists the same classes as the dataset but in another order: the images of "
                "each class folder would be labelled as another class; the folders sort as "
                f"{', '.join(classes[:6])}{', ...' if len(classes) > 6 else ''}, the card says "
                f"{', '.join(names[:6])}{', ...' if len(names) > 6 else ''}")
    missing = [c for c in classes if c not in names]
    return (f"the model's card does not name the dataset's class(es) {', '.join(missing[:6])}: check that "
            "the images are of the classes the model was trained on" if missing else None)


_SOURCE_WORDS = {"config": "as set", "card": "from the model's card", "file": "from the model file",
                 "architecture": "the architecture's", "dataset": "the dataset's",
                 "default": "none given: the pixels as they are"}


_HEAD_WORDS = {"linear": "global average pooling, then one linear layer",
               "conv1x1": "a 1×1 convolution on the maps, then global average pooling",
               "other": "neither of the usual forms"}


def summary_lines(s: ModelSummary) -> list[str]:
    """What the check found, as plain sentences (shown as text, never Markdown: names come from files)."""
    h, w = s.fmap_size
    c, ih, iw = s.input_shape
    lines = [f"Analysed layer: {s.feature_layer} ({s.num_neurons:,} neurons, {h}×{w} maps)",
             f"Head: {s.head_type} ({_HEAD_WORDS.get(s.head_type, 'as found')})",
             f"Classes: {s.num_classes:,}" + (f" ({_SOURCE_WORDS[s.sources['num_classes']]})"
                                              if s.sources.get("num_classes") == "card" else ""),
             f"Input: {c} channel(s), {ih}×{iw} pixels" + (" (assumed until the images are read)"
                                                           if s.size_assumed else ""),
             f"Normalization: mean {numbers(s.mean)}, std {numbers(s.std)} "
             f"({_SOURCE_WORDS[s.sources.get('mean', 'default')]})"]
    if s.head_type == "other":
        lines.append("This head is not global average pooling followed by one linear layer, so the "
                     "activation×weight measures will not be available; the image-perturbation measures, "
                     "receptive fields, clustering and context images still work.")
    if s.card is not None and s.card.ignored:
        lines.append(f"The card's other keys are not read: {', '.join(s.card.ignored)[:200]}")
    return lines


def suggest_id(name: str, cache_dir) -> str:
    """``name``, or ``name-2``, ``name-3``... whichever is free in the cache folder."""
    base = "".join(c if c.isalnum() or c in "._-" else "-" for c in name).strip(".-_")[:56] or "experiment"
    candidate, k = base, 2
    while (Path(cache_dir) / candidate).exists() or (Path(cache_dir) / f".partial-{candidate}").exists():
        candidate, k = f"{base}-{k}", k + 1
    return candidate


# -- the attack's fields: one per parameter of the registered attacks (core.attacks.PARAMS) -------------
METHOD_HELP = "How the images are changed to fool the model. " + " ".join(a.help for a in ATTACKS.values())


def attack_key(name: str) -> str:
    """The form's session-state key of an [attack] key (``prepare_eps``)."""
    return f"prepare_{name}"


def attack_fields() -> tuple[str, ...]:
    """The form's session-state keys of the attack: the method, then every parameter."""
    return tuple(attack_key(n) for n in ("method", *PARAMS))


def attack_widget_range(p: Param) -> tuple[float, float] | tuple[int, int]:
    """A number field's (min, max) as the form shows it (× the parameter's scale), in its type."""
    if p.kind is int:
        return int(p.lo) + p.lo_open, int(p.hi)
    return float(p.lo * p.scale), float(p.hi * p.scale)


def attack_form_values(a: AttackConfig) -> dict[str, object]:
    """The form's values of an [attack] config (a value with a scale shown × scale). Rounded to 6
    decimals, not to the 2 the field displays: the demo's α = 0.025 is 6.375/255, and 6.38/255 would
    make the page's demo another experiment than the CLI's."""
    out: dict[str, object] = {attack_key("method"): a.method}
    for name in PARAMS:
        value, p = getattr(a, name), param(a.method, name)
        out[attack_key(name)] = round(value * p.scale, 6) if p.scale != 1 else value
    return out


def method_values(method: str, state: Mapping[str, object]) -> dict[str, object]:
    """The form's attack values when the method becomes ``method``: its own defaults (a derived one, such
    as MI-FGSM's α = ε/steps, from them), keeping the form's ε and precision as a config override of the
    method does (``core.presets.KEPT_ON_NEW_METHOD``)."""
    kept = {k: attack_config_values(state)[f"attack.{k}"] for k in KEPT_ON_NEW_METHOD
            if attack_key(k) in state}
    chosen = {k: v for k, v in kept.items() if k in ATTACKS[method].params}
    return attack_form_values(AttackConfig(method=method, **resolve(method, chosen)))


def attack_config_values(state: Mapping[str, object]) -> dict[str, object]:
    """The form's attack values as ``attack.KEY`` config values (``build_config``'s input)."""
    method = state[attack_key("method")]
    out: dict[str, object] = {"attack.method": method}
    for name in PARAMS:
        value, p = state[attack_key(name)], param(method, name)
        out[f"attack.{name}"] = (bool(value) if p.kind is bool else int(value) if p.kind is int
                                 else float(value) / p.scale)
    return out


# -- the form's values (widget key -> value) and the config they make ------------------------------------
def numbers(values) -> str:
    """Normalization numbers as the form shows them: ``0.485, 0.456, 0.406``."""
    return ", ".join(f"{v:g}" for v in values)


def parse_floats(text: str, what: str) -> tuple[float, ...]:
    """The numbers typed in a normalization field (commas or semicolons between them); ConfigError when
    there is none or one is not a number."""
    try:
        values = tuple(float(v) for v in text.replace(";", ",").split(",") if v.strip())
    except ValueError:
        values = ()
    if not values:
        raise ConfigError(f"normalization {what}: enter one number, or one per channel separated by "
                          "commas (e.g. 0.485, 0.456, 0.406)")
    return values


def preset_values(name: str, cache_dir) -> dict[str, object]:
    """The form's values for a preset, or for the custom start (``CUSTOM``), with a free experiment id."""
    if name == CUSTOM:
        cfg = build_config(None, {"data.source": "image_folder", "model.arch": "resnet18"})
        mean, std = default_normalization("resnet18")
        ident = "my-experiment"
    else:
        cfg, (mean, std), ident = PRESETS[name], (PRESETS[name].model.mean, PRESETS[name].model.std), name
    arch = cfg.model.arch or (FROM_FILE if models.is_network_file(cfg.model.checkpoint)
                              else models.DEFAULT_ARCH)
    d, m, p = cfg.data, cfg.model, cfg.prepare
    return {"prepare_source": d.source, "prepare_root": d.root or "", "prepare_image_size": d.image_size or 0,
            "prepare_classes": list(d.classes or []), "prepare_per_class": d.per_class or 0,
            "prepare_arch": TIMM if arch.startswith("timm:") else arch,
            "prepare_timm": arch if arch.startswith("timm:") else TIMM_EXAMPLES[0],
            "prepare_ckpt_mode": CKPT_MODES[0], "prepare_ckpt_path": m.checkpoint or "",
            "prepare_channels": m.in_channels or 0, "prepare_width": m.width,
            "prepare_mean": numbers(mean or ()), "prepare_std": numbers(std or ()),
            **attack_form_values(cfg.attack),
            "prepare_batch_size": p.batch_size, "prepare_maps": p.maps,
            "prepare_perplexity": float(p.tsne_perplexity),
            "prepare_device": p.device, "prepare_id": suggest_id(ident, cache_dir)}


def form_checkpoint(s: Mapping[str, object]) -> str:
    """The checkpoint or model file the form names: the uploaded file, or the server path."""
    if s["prepare_ckpt_mode"] == CKPT_MODES[1]:
        return str(s.get("prepare_upload_path") or "")
    return str(s.get("prepare_ckpt_path", "")).strip()


def own_file_note(s: Mapping[str, object]) -> str | None:
    """What to tell a user whose model file carries the architecture the menu still names (the file wins,
    ``config_values``), or None."""
    checkpoint = form_checkpoint(s)
    if models.is_network_file(checkpoint) and s["prepare_arch"] != FROM_FILE:
        return (f"{Path(checkpoint).name} carries its own architecture and input channels: the "
                "Architecture menu is not used.")
    return None


def form_arch(s: Mapping[str, object]) -> str | None:
    """The [model] arch of the form's choice: a built-in name, the checked timm name, or None (the model
    file carries it)."""
    arch = s["prepare_arch"]
    if arch == TIMM:
        return timm_arch(str(s.get("prepare_timm", "")))
    return None if arch == FROM_FILE else arch


def config_values(s: Mapping[str, object], num_classes: int | None) -> dict[str, object]:
    """The config overrides (``build_config``'s ``values``) of the form's values ``s`` (widget key ->
    value) for a dataset of ``num_classes`` classes; ConfigError for unreadable normalization numbers
    (both fields empty: from the model's card or defaults, ``core.model_cards``)."""
    checkpoint = form_checkpoint(s)
    mean_text, std_text = str(s.get("prepare_mean", "")), str(s.get("prepare_std", ""))
    from_model = not mean_text.strip() and not std_text.strip()
    own_file = models.is_network_file(checkpoint)
    return {"data.source": s["prepare_source"], "data.root": s.get("prepare_root", "").strip() or None,
            "data.image_size": int(s["prepare_image_size"]) or None,
            "data.classes": list(s.get("prepare_classes", [])) or None,
            "data.per_class": int(s["prepare_per_class"]) or None,
            # a model file carries its architecture and input channels, whatever the menus still say
            "model.arch": None if own_file else form_arch(s),
            "model.checkpoint": checkpoint or None,
            "model.num_classes": num_classes,
            "model.in_channels": None if own_file else int(s["prepare_channels"]) or None,
            "model.width": int(s["prepare_width"]),
            "model.mean": None if from_model else parse_floats(mean_text, "mean"),
            "model.std": None if from_model else parse_floats(std_text, "std"), **attack_config_values(s),
            "prepare.batch_size": int(s["prepare_batch_size"]), "prepare.maps": int(s["prepare_maps"]),
            "prepare.tsne_perplexity": float(s["prepare_perplexity"]), "prepare.device": s["prepare_device"]}
