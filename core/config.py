"""Experiment configuration: what `prepare` needs, as plain dataclasses that round-trip through TOML.

A config file has four tables, each mapping to one dataclass below::

    [model]   arch, checkpoint, num_classes, in_channels, width, mean, std, feature_layer, head
    [data]    source, root, split, classes, per_class, image_size, on_corrupt, download
    [attack]  method, the attacks' parameters (eps, alpha, steps, random_start, early_stop, ...), precision
    [prepare] batch_size, tsne_perplexity, seed, device, maps, maps_stride, maps_output, maps_precision

The [attack] keys come from the attack registry (``core.attacks.ATTACKS``): ``method`` names an attack, and
every registered attack's parameter is a key, checked against the range the chosen attack declares. A key
a file leaves out takes the chosen attack's default (for PGD and FGSM, today's: eps = 8/255, alpha =
2/255, steps = 7).

Relative paths in a config file are resolved against the file's folder, so a config can sit beside
its checkpoint.

Validation happens in one place, :meth:`ExperimentConfig.validate` (``from_dict``, ``from_toml``, the
CLI's ``--set``, the Prepare page and ``core.pipeline.prepare`` all go through it). Every field is
checked against its annotation first, strictly: a bool is not a number, a float is never truncated to
an int (``steps = 1.5`` and ``num_classes = 10.0`` are refused; an int is fine where a float is
expected), numbers must be finite, strings hold no NUL character. Then its range or choices
(``_rules``; bounds on work come from ``core.hosting.settings()``), then the rules that tie fields
together. Anything wrong raises one :class:`ConfigError` of the form
``[attack] steps = 1.5: expected a whole number from 0 to 10000``. An empty string in an optional
string field (``model.checkpoint = ""``, the only way TOML can say "none") means None.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import reprlib
import stat
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.attacks import ATTACKS, MAX_STEPS, PARAMS, param  # noqa: F401 (MAX_STEPS: the config's bound)
from core.hosting import Settings, settings


class ConfigError(ValueError):
    """A config that cannot be run; the message says which key and how to fix it."""


@dataclass
class ModelConfig:
    # None: the architecture a model file carries (.pt2, .onnx: core.models.NETWORK_FILES), else
    # resnet18_cifar (core.models.DEFAULT_ARCH); a weights-only checkpoint needs its architecture named
    arch: str | None = None
    checkpoint: str | None = None  # None: random weights (tests only)
    # None: decided by core.model_cards.resolve: the model's card, its file or architecture, else the
    # defaults of earlier versions (10 classes, 3 channels, mean 0 / std 1: the pixels as they are)
    num_classes: int | None = None
    in_channels: int | None = None
    width: int = 64  # base width of the CIFAR ResNet18 family (64 = the paper's 512 neurons)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
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


def _attack_config() -> type:
    """``AttackConfig``: ``method``, one field per parameter of the registered attacks
    (``core.attacks.PARAMS``: name, type and default of its first declaration), and ``precision``."""
    def params(self) -> dict[str, Any]:
        """The parameters of the chosen attack, as ``core.attacks.run`` takes them."""
        return {name: getattr(self, name) for name in ATTACKS[self.method].params}

    fields = [("method", str, field(default=next(iter(ATTACKS))))]
    fields += [(p.name, p.kind, field(default=p.default)) for p in PARAMS.values()]
    # Precision of the attack's search: "fp32", "bf16" (autocast; success re-verified in fp32),
    # or "auto" (bf16 where the device has fast bf16, else fp32).
    fields += [("precision", str, field(default="auto"))]
    cls = dataclasses.make_dataclass("AttackConfig", fields, namespace={"params": params})
    cls.__module__ = __name__  # pickled (a job's config) by its name here
    cls.__doc__ = ("[attack]: the method (a name in core.attacks.ATTACKS), every registered attack's "
                   "parameters (a file that leaves one out gets the chosen method's default), and the "
                   "precision of the search.")
    return cls


AttackConfig = _attack_config()


@dataclass
class PrepareConfig:
    batch_size: int = 0  # 0 = auto: 128 on a CPU, from free memory on a GPU (core.device)
    tsne_perplexity: float = 30.0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Vulnerability maps precomputed into the store (paper §8: Places365's 266 images): this many pairs,
    # those of the most populated prediction-matrix cells first; the app computes the others live.
    maps: int = 0
    maps_stride: int = 0  # 0 = the app's default stride for the image size (vulnerability.default_stride)
    maps_output: str = "probability"  # probability | logit
    maps_precision: str = "auto"  # auto | fp32 | bf16


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "attack": AttackConfig,
                             "prepare": PrepareConfig}
# Bounds that are not server settings (core.hosting) but what the fields mean:
MIN_IMAGE_SIZE = 8  # every built-in architecture still yields last-conv maps; smaller shows nothing
MAX_WIDTH = 512  # resnet18_cifar's base width (64 = the paper's 512 neurons; 512 = 4096 neurons)
MAX_STRING = 4096  # characters in a path or name (PATH_MAX on Linux)
MAX_CONFIG_BYTES = 1 << 20  # a config file is a few hundred bytes; never read a huge file whole
_CHOICES = {"on_corrupt": ("skip", "error"), "precision": ("auto", "fp32", "bf16"),
            "maps_output": ("probability", "logit"), "maps_precision": ("auto", "fp32", "bf16")}
_DEVICE = re.compile(r"auto|cpu|cuda|cuda:\d{1,4}")


class _Rule(typing.NamedTuple):
    """What a good value is, in words (ends every message about the field), and the test of a value
    that already has the field's type."""
    expected: str
    ok: Callable[[Any], bool] = lambda v: True


def _whole(lo: int, hi: int, what: str = "") -> _Rule:
    return _Rule(f"a whole number from {lo} to {hi}{what}", lambda v: lo <= v <= hi)


def _one_of(options) -> _Rule:
    return _Rule("one of " + ", ".join(repr(o) for o in options), lambda v: v in options)


# no server bound on work (every limit of core.hosting as large as a whole number gets here)
_UNBOUNDED = Settings(**{f.name: 2**62 for f in dataclasses.fields(Settings) if f.type == "int"})


def _rules(limits: bool = True) -> dict[str, dict[str, _Rule]]:
    """The range or choices of every field, by section (read when validating: the limits can change).
    ``limits=False``: the server's bounds on work (``core.hosting``) are not applied."""
    from core.data import SOURCES, SPLITS  # lazily: core.data and core.models import this module
    from core.device import GPU_MAX_BATCH  # the most the automatic choice ever picks
    from core.models import ARCHITECTURES, TIMM_PREFIX
    s = settings() if limits else _UNBOUNDED
    name = _Rule(f"a module name (at most {MAX_STRING} characters), or leave the key out to find it")
    return {
        "model": {
            # a timm name is checked when the model is built (core.models.architecture: close matches)
            "arch": _Rule("one of " + ", ".join(repr(o) for o in list(ARCHITECTURES)[:5])
                          + f", ... ({len(ARCHITECTURES)} built in: core.models.ARCHITECTURES), or "
                          f"\"{TIMM_PREFIX}<name>\" for a model timm knows (timm.list_models())",
                          lambda v: v in ARCHITECTURES or (v.startswith(TIMM_PREFIX) and v != TIMM_PREFIX)),
            "checkpoint": _Rule("the path of a weights file (.pt, .pth, .th, .safetensors, ...) or of a "
                                "model file that carries its architecture (.pt2, .onnx)"),
            "num_classes": _whole(2, s.max_classes, " (the model's outputs; leave the key out to take it "
                                  "from the model's card or file)"),
            "in_channels": _Rule("1 (grayscale) or 3 (RGB), or leave the key out to take it from the model",
                                 lambda v: v in (1, 3)),
            "width": _whole(1, MAX_WIDTH, " (resnet18_cifar's base width; 64 = 512 neurons)"),
            "mean": _Rule("a list of numbers, one or one per input channel, e.g. [0.5] or "
                          "[0.485, 0.456, 0.406]", lambda v: len(v) > 0),
            "std": _Rule("a list of numbers > 0, one or one per input channel, e.g. [0.5] or "
                         "[0.229, 0.224, 0.225]", lambda v: len(v) > 0 and all(x > 0 for x in v)),
            "feature_layer": name,
            "head": name,
        },
        "data": {
            "source": _one_of(SOURCES),
            "root": _Rule("the path of the dataset's folder"),
            "split": _one_of(SPLITS),
            "classes": _Rule(f"a list of 1 to {s.max_classes} distinct, non-empty class names, e.g. "
                             "[\"cat\", \"dog\"] (leave the key out for every class)",
                             lambda v: 0 < len(v) <= s.max_classes and all(v) and len(set(v)) == len(v)),
            "per_class": _whole(1, s.max_per_class, " (images per class; leave the key out for all)"),
            "image_size": _whole(MIN_IMAGE_SIZE, s.max_image_size,
                                 " (pixels; leave the key out to keep the images' size)"),
            "on_corrupt": _one_of(_CHOICES["on_corrupt"]),
            "download": _Rule("true or false"),
        },
        "attack": _attack_rules(next(iter(ATTACKS))),
        "prepare": {
            "batch_size": _whole(0, GPU_MAX_BATCH, " (0: chosen for the device and image size)"),
            "tsne_perplexity": _Rule("a number > 0 (t-SNE's neighbourhood size, e.g. 30)", lambda v: v > 0),
            "seed": _whole(0, 2**32 - 1),
            "device": _Rule("auto, cpu, cuda or cuda:N (a GPU's number)",
                            lambda v: bool(_DEVICE.fullmatch(v))),
            "maps": _whole(0, s.max_images, " (pairs whose vulnerability maps are precomputed)"),
            "maps_stride": _whole(0, s.max_image_size, " (pixels; 0: the app's default for the image size)"),
            "maps_output": _one_of(_CHOICES["maps_output"]),
            "maps_precision": _one_of(_CHOICES["maps_precision"]),
        },
    }


def _attack_rules(method: Any) -> dict[str, _Rule]:
    """The rules of the [attack] fields when ``method`` is chosen: each parameter's range as that attack
    declares it (``core.attacks.param``), the first declaration for the parameters it does not use."""
    rules = {"method": _one_of(tuple(ATTACKS))}
    for name in PARAMS:
        p = param(method, name) if isinstance(method, str) else PARAMS[name]
        rules[name] = _Rule(p.expected, p.accepts)
    return rules | {"precision": _one_of(_CHOICES["precision"])}


def _attack_table(table: dict) -> dict:
    """The [attack] table with the chosen method's defaults for the parameters it leaves out (a derived
    default, such as a step of eps/steps, only where the values it is derived from can give one)."""
    method = table.get("method", next(iter(ATTACKS)))
    spec = ATTACKS.get(method) if isinstance(method, str) else None
    if spec is None:
        return table
    out = dict(table)
    for p in sorted(spec.params.values(), key=lambda p: callable(p.default)):
        if p.name not in out:
            try:
                out[p.name] = p.default_for(out)
            except (TypeError, ValueError, ArithmeticError, KeyError):
                pass  # the values it derives from are wrong: their own check says so
    return out


# --- type checks against the dataclasses' annotations -------------------------------------------
_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _conform(value: Any, hint: Any) -> tuple[bool, Any]:
    """(True, ``value`` as the annotation's type) or (False, None). Strict: see the module docstring."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return True, None
        if isinstance(value, str) and value == "" and str in args and type(None) in args:
            return True, None  # TOML has no null: an empty string unsets an optional path or name
        for a in args:
            if a is not type(None) and (r := _conform(value, a))[0]:
                return r
        return False, None
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False, None
        try:
            number = float(value)
        except OverflowError:  # an int beyond float range
            return False, None
        return math.isfinite(number), number
    if hint is str:
        return isinstance(value, str) and "\x00" not in value and len(value) <= MAX_STRING, value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple) or len(value) > 10_000:
            return False, None
        items = [_conform(v, args[0]) for v in value]
        return all(ok for ok, _ in items), origin(v for _, v in items)
    raise TypeError(f"no type check for annotation {hint!r}")  # a new field type: teach _conform


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = 6
_REPR.repr_bool = lambda x, level: "true" if x else "false"  # type: ignore[attr-defined]  # as in TOML
_REPR.repr_int = lambda x, level: (repr(x) if x.bit_length() < 200 else  # type: ignore[method-assign]
                                   f"{'-' if x < 0 else ''}<a {int(x.bit_length() * 0.30103)}-digit number>")


def show(value: Any) -> str:
    """A short, one-line, printable repr of a user's value (long strings, lists and numbers shortened)."""
    return _REPR.repr(value)


def _hint(value: Any, hint: Any) -> str:
    """Why a value failed its type, when it is not obvious from the expected words."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        sequences = [a for a in args if typing.get_origin(a) in (tuple, list)]
        if sequences and isinstance(value, list | tuple):
            return _hint(value, sequences[0])
        wanted = set(args) - {type(None)}
    elif origin in (tuple, list):  # the first item that is wrong says why
        bad = [v for v in value if not _conform(v, args[0])[0]] if isinstance(value, list | tuple) else []
        return _hint(bad[0], args[0]) if bad else ""
    else:
        wanted = {hint}
    if isinstance(value, str):
        if "\x00" in value:
            return " (it contains a NUL character)"
        if len(value) > MAX_STRING:
            return f" (it has {len(value)} characters)"
        if wanted & {int, float, bool}:
            ok, unquoted = toml_value(value)
            return " (a quoted string: write it without quotes)" if ok and _conform(unquoted, hint)[0] else ""
    if isinstance(value, bool) and wanted & {int, float}:
        return " (true/false is not a number)"
    if isinstance(value, float) and int in wanted and math.isfinite(value):
        return " (a whole number has no decimal point)"
    if isinstance(value, float) and not math.isfinite(value):
        return " (a finite number is needed)"
    if isinstance(value, list | tuple):
        return " (a list, where one value is expected)"
    return ""


def _fail(section: str, key: str, value: Any, expected: str, why: str = "") -> ConfigError:
    return ConfigError(f"[{section}] {key} = {show(value)}: expected {expected}{why}")


def _table(section: str, table: Any) -> dict:
    if table is None:
        return {}
    if isinstance(table, list):
        raise ConfigError(f"[[{section}]] is an array of tables; write one [{section}] table "
                          f"(a single pair of brackets) with key = value lines")
    if not isinstance(table, dict):
        raise ConfigError(f"{section} = {show(table)}: expected a [{section}] table of key = value lines")
    sub = SECTIONS[section]
    known = [f.name for f in dataclasses.fields(sub)]
    unknown = sorted((k for k in table if k not in known), key=str)
    if unknown:
        close = [m for k in unknown if isinstance(k, str) for m in difflib.get_close_matches(k, known, 1)]
        raise ConfigError(f"[{section}] has unknown key(s) {', '.join(show(k) for k in unknown)}"
                          + (f" (did you mean {', '.join(close)}?)" if close else "")
                          + f"; known keys: {', '.join(known)}")
    return dict(table)


def _display_path(path: Path) -> str:
    """A path as printable text (a non-UTF-8 file name shows its bytes as \\x escapes)."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def read_config_text(path: Path) -> str:
    """The text of the config file ``path``; a ConfigError names the file and says what is wrong."""
    where = f"config file {_display_path(path)}"
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(f"{where} does not exist; check the path given to --config") from None
    except (OSError, ValueError) as e:  # permission on a parent, a NUL in the name, a loop of links
        raise ConfigError(f"{where} cannot be read ({getattr(e, 'strerror', None) or e})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{where} is a folder; give the path of a .toml file")
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device such as /dev/zero would hang or never end
        raise ConfigError(f"{where} is not a regular file; give the path of a .toml file")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{where} cannot be read ({e.strerror or e}); check its permissions") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where} is larger than {MAX_CONFIG_BYTES >> 20} MiB: a config is a small "
                          "TOML text file")
    if b"\x00" in data:
        raise ConfigError(f"{where} is a binary file, not TOML text")
    try:
        return data.decode("utf-8-sig")  # TOML is UTF-8; a leading byte-order mark is harmless
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                          "save it as UTF-8") from None


def toml_value(text: str) -> tuple[bool, Any]:
    """(True, the value) when ``text`` is exactly one TOML value (``50``, ``"x"``, ``[1, 2]``), else
    (False, None): a newline cannot smuggle in other keys."""
    try:
        parsed = tomllib.loads(f"v = {text}")
    except (tomllib.TOMLDecodeError, RecursionError):
        return False, None
    return (True, parsed["v"]) if list(parsed) == ["v"] else (False, None)


def parse_toml(text: str, where: str) -> dict[str, Any]:
    """``tomllib.loads`` with every failure turned into a ConfigError that names ``where``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where} is not valid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{where} nests arrays or tables too deeply to be a config") from None


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)

    def to_dict(self) -> dict[str, Any]:
        """Every section as a dict; ``attack`` holds the method, its own parameters and the precision
        only, so a manifest names what ran and a registered attack's new parameter changes neither the
        manifests nor the resume key of other attacks' runs."""
        d = dataclasses.asdict(self)
        own = ATTACKS[self.attack.method].params
        d["attack"] = {k: v for k, v in d["attack"].items() if k in own or k in ("method", "precision")}
        return d

    @classmethod
    def from_dict(cls, d: Any, base_dir: Path | None = None, *, limits: bool = True) -> ExperimentConfig:
        """A validated config from nested dicts (a parsed TOML file, ``to_dict`` output with changes);
        anything wrong is a ConfigError naming the table and key. ``limits=False`` checks a config that
        has run already (a store's manifest): types and choices, not the server's current bounds on
        work, which an administrator may have lowered since."""
        if not isinstance(d, dict):
            raise ConfigError(f"a config is a set of tables ({', '.join(SECTIONS)}), not {show(d)}")
        extra = sorted((k for k in d if k not in SECTIONS), key=str)
        if extra:
            raise ConfigError(f"unknown table(s) {', '.join(show(k) for k in extra)}; expected "
                              f"{', '.join(SECTIONS)}")
        tables = {name: _table(name, d.get(name)) for name in SECTIONS}
        tables["attack"] = _attack_table(tables["attack"])
        cfg = cls(**{name: sub(**tables[name]) for name, sub in SECTIONS.items()})
        cfg.validate(limits)
        if base_dir is not None:
            for obj, key in ((cfg.model, "checkpoint"), (cfg.data, "root")):
                value = getattr(obj, key)
                try:
                    if value and not Path(value).expanduser().is_absolute():
                        setattr(obj, key, str((base_dir / value).resolve()))
                except (OSError, RuntimeError) as e:  # "~nobody/x", a loop of symbolic links
                    raise ConfigError(f"[{'model' if key == 'checkpoint' else 'data'}] {key} = "
                                      f"{show(value)}: the path cannot be resolved ({e})") from None
        return cfg

    @classmethod
    def from_toml(cls, path: str | Path) -> ExperimentConfig:
        """The config in TOML file ``path``; every problem is a ConfigError that names the file."""
        path = Path(path)
        where = f"config file {_display_path(path)}"
        d = parse_toml(read_config_text(path), where)
        try:
            return cls.from_dict(d, base_dir=path.parent)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None

    def validate(self, limits: bool = True) -> None:
        """Check every field (type, then range or choices), then the rules between fields; values are
        normalized in place (an int where a float is expected becomes a float, lists become the field's
        sequence type, "" in an optional string field None). Raises ConfigError naming the key."""
        rules = _rules(limits)
        for section, sub in SECTIONS.items():
            obj = getattr(self, section)
            if not isinstance(obj, sub):
                raise ConfigError(f"[{section}] must be a table of key = value lines, not {show(obj)}")
            section_rules = _attack_rules(obj.method) if section == "attack" else rules[section]
            for f in dataclasses.fields(sub):
                value, rule, hint = getattr(obj, f.name), section_rules[f.name], _hints(sub)[f.name]
                ok, normal = _conform(value, hint)
                if not ok:
                    raise _fail(section, f.name, value, rule.expected, _hint(value, hint))
                if normal is not None and not rule.ok(normal):
                    raise _fail(section, f.name, value, rule.expected)
                setattr(obj, f.name, normal)
        m, a = self.model, self.attack
        if (m.mean is None) != (m.std is None):
            raise ConfigError(f"[model] {'std' if m.mean is None else 'mean'} is set without "
                              f"{'mean' if m.mean is None else 'std'}: give both, or neither to take them "
                              "from the model's card or defaults")
        if m.mean is not None and (len(m.mean) not in (1, m.in_channels or 3)
                                   or len(m.std) != len(m.mean)):
            raise ConfigError(f"[model] mean = {show(list(m.mean))} and std = {show(list(m.std))}: expected "
                              f"one value each, or one per input channel (in_channels = {m.in_channels})")
        if (problem := ATTACKS[a.method].check(a.params())) is not None:
            raise ConfigError(f"[attack] {problem}")
