"""The config schema (core.config): every field checked against its annotation, then its range, in one
place; every mistake one ConfigError naming the table, the key, the value and what is expected. Config
files and ``--set`` overrides: every parse problem names the file or the override."""
import dataclasses
import math
import os
import typing

import pytest

from core import config
from core.config import SECTIONS, ConfigError, DataConfig, ExperimentConfig, ModelConfig, PrepareConfig, show
from core.hosting import settings
from core.presets import PRESETS, apply_override, preset

pytestmark = pytest.mark.reliability


@pytest.fixture(autouse=True)
def default_limits(monkeypatch, tmp_path):
    """The default server limits, whatever nve-server.toml or NVE_* the machine has."""
    monkeypatch.setenv("NVE_SERVER_CONFIG", str(tmp_path / "no-server-config.toml"))
    for name in os.environ:
        if name.startswith("NVE_MAX_"):
            monkeypatch.delenv(name)


def demo(**values) -> dict:
    """The demo preset as a dict, with ``section__key=value`` set."""
    d = PRESETS["demo"].to_dict()
    for name, value in values.items():
        section, key = name.split("__")
        d[section][key] = value
    return d


def error(d) -> str:
    with pytest.raises(ConfigError) as e:
        ExperimentConfig.from_dict(d)
    return str(e.value)


# --- the schema covers every field ------------------------------------------------------------------

def test_every_field_has_a_rule_and_the_defaults_and_presets_validate():
    rules = config._rules()
    for name, sub in SECTIONS.items():
        assert set(rules[name]) == {f.name for f in dataclasses.fields(sub)}, name
        for f in dataclasses.fields(sub):
            assert config._conform(getattr(sub(), f.name), typing.get_type_hints(sub)[f.name])[0], f.name
    ExperimentConfig().validate()
    for name, cfg in PRESETS.items():
        again = preset(name)
        assert again == cfg, name  # validation keeps the presets' values (normalized types only)


def test_valid_values_are_normalized_to_the_fields_types():
    cfg = ExperimentConfig.from_dict(demo(attack__eps=0, attack__alpha=1, prepare__tsne_perplexity=5,
                                          model__mean=[0], model__std=[1], data__classes=("a", "b"),
                                          model__checkpoint="", model__head=""))
    assert type(cfg.attack.eps) is float and type(cfg.attack.alpha) is float  # an int is a fine float
    assert type(cfg.prepare.tsne_perplexity) is float
    assert cfg.model.mean == (0.0,) and type(cfg.model.mean[0]) is float and cfg.model.std == (1.0,)
    assert cfg.data.classes == ["a", "b"]
    assert cfg.model.checkpoint is None and cfg.model.head is None  # "" is TOML's "none"
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg


# (section, key, bad value, words the message must hold besides "[section] key = repr(value)")
BAD = [
    ("model", "arch", "resnet9", "one of 'resnet18_cifar'"),
    ("model", "arch", 18, "one of"),
    ("model", "checkpoint", 5, "path of a weights file"),
    ("model", "checkpoint", "a\x00b", "NUL"),
    ("model", "checkpoint", "x" * 5000, "5000 characters"),
    ("model", "num_classes", 10.0, "whole number from 2 to 2000"),
    ("model", "num_classes", 1, "whole number from 2"),
    ("model", "num_classes", True, "not a number"),
    ("model", "num_classes", 10**400, "whole number"),
    ("model", "in_channels", 2, "1 (grayscale) or 3 (RGB)"),
    ("model", "in_channels", 0, "1 (grayscale) or 3 (RGB)"),
    ("model", "width", 0, "from 1 to 512"),
    ("model", "width", 100_000, "from 1 to 512"),
    ("model", "mean", 0.5, "a list of numbers"),
    ("model", "mean", [], "a list of numbers"),
    ("model", "mean", [float("nan")], "finite"),
    ("model", "mean", ["0.5"], "a list of numbers"),
    ("model", "std", [0.0], "> 0"),
    ("model", "std", [-1.0], "> 0"),
    ("model", "std", [float("inf")], "finite"),
    ("model", "feature_layer", 3, "module name"),
    ("model", "head", ["fc"], "module name"),
    ("data", "source", "imagenet", "one of 'demo', 'fashion_mnist', 'cifar10', 'image_folder'"),
    ("data", "root", ["/data"], "folder"),
    ("data", "split", "val", "one of 'test', 'train'"),
    ("data", "classes", "cat", "list of 1 to 2000 distinct, non-empty class names"),
    ("data", "classes", [], "list of 1 to 2000"),
    ("data", "classes", ["cat", "cat"], "distinct"),
    ("data", "classes", ["cat", ""], "non-empty"),
    ("data", "classes", [3, 5], "class names"),
    ("data", "classes", [f"c{i}" for i in range(2001)], "1 to 2000"),
    ("data", "per_class", 0, "from 1 to 100000"),
    ("data", "per_class", 2.5, "whole number"),
    ("data", "image_size", True, "from 8 to 1024"),
    ("data", "image_size", 100_000, "from 8 to 1024"),
    ("data", "image_size", 4, "from 8 to 1024"),
    ("data", "image_size", "224", "without quotes"),
    ("data", "on_corrupt", "ignore", "one of 'skip', 'error'"),
    ("data", "download", "yes", "true or false"),
    ("data", "download", 1, "true or false"),
    ("attack", "method", "cw", "one of 'pgd', 'fgsm'"),
    ("attack", "eps", "0.03", "without quotes"),
    ("attack", "eps", 8, "from 0 to 1"),
    ("attack", "eps", -0.1, "from 0 to 1"),
    ("attack", "eps", float("nan"), "finite"),
    ("attack", "eps", float("inf"), "finite"),
    ("attack", "eps", 10**400, "number from 0 to 1"),
    ("attack", "alpha", float("nan"), "finite"),
    ("attack", "alpha", 2, "from 0 to 1"),
    ("attack", "steps", 1.5, "whole number from 0 to 10000"),
    ("attack", "steps", -1, "whole number from 0 to 10000"),
    ("attack", "steps", 10_001, "whole number from 0 to 10000"),
    ("attack", "random_start", 1, "true or false"),
    ("attack", "early_stop", None, "true or false"),
    ("attack", "precision", "fp16", "one of 'auto', 'fp32', 'bf16'"),
    ("prepare", "batch_size", -1, "from 0 to 2048"),
    ("prepare", "batch_size", 10**6, "from 0 to 2048"),
    ("prepare", "tsne_perplexity", 0, "> 0"),
    ("prepare", "tsne_perplexity", -5.0, "> 0"),
    ("prepare", "tsne_perplexity", float("inf"), "finite"),
    ("prepare", "seed", -1, "from 0 to 4294967295"),
    ("prepare", "seed", 2**32, "from 0 to 4294967295"),
    ("prepare", "seed", 1.0, "whole number"),
    ("prepare", "device", "tpu", "auto, cpu, cuda or cuda:N"),
    ("prepare", "device", "cuda:x", "auto, cpu, cuda or cuda:N"),
    ("prepare", "device", 0, "auto, cpu, cuda or cuda:N"),
    ("prepare", "maps", -1, "whole number from 0"),
    ("prepare", "maps_stride", -2, "whole number from 0 to 1024"),
    ("prepare", "maps_output", "prob", "one of 'probability', 'logit'"),
    ("prepare", "maps_precision", "fp64", "one of 'auto', 'fp32', 'bf16'"),
]


@pytest.mark.parametrize("section,key,value,words", BAD,
                         ids=[f"{s}.{k}={show(v)[:20]}" for s, k, v, _ in BAD])
def test_each_bad_value_names_the_key_the_value_and_what_is_expected(section, key, value, words):
    d = demo()
    if section == "model" and key == "std":
        d["model"]["mean"] = [0.5] * len(value)
    d[section][key] = value
    message = error(d)
    assert message.startswith(f"[{section}] {key} = {show(value)}: expected "), message
    assert words in message, message
    assert "\n" not in message and len(message) < 600


def test_show_keeps_values_short_and_printable():
    assert show(True) == "true" and show("0.03") == "'0.03'" and show(1.5) == "1.5"
    assert show(10**5000) == "<a 5000-digit number>" and show(-(10**300)).startswith("-<a 300-digit")
    assert len(show("x" * 10**6)) < 80 and len(show(list(range(10**5)))) < 80
    assert show("a\udcffb\nc") == repr("a\udcffb\nc")  # escapes: one line, encodable
    deep: list = []
    for _ in range(10_000):
        deep = [deep]
    assert len(show(deep)) < 80  # no RecursionError


def test_rules_between_fields():
    # mean/std: one value, or one per channel, and as many std as mean
    assert "one per input channel (in_channels = 1)" in error(demo(model__mean=[0.1, 0.2], model__std=[1, 1]))
    assert "mean = [0.286] and std = [1.0, 2.0]" in error(demo(model__std=[1, 2]))
    ExperimentConfig.from_dict(demo(model__in_channels=3, model__mean=[0.1, 0.2, 0.3], model__std=[1, 1, 1]))
    # alpha: a PGD with steps needs a step; FGSM and zero steps ignore it
    assert error(demo(attack__alpha=0)).startswith("[attack] alpha = 0: expected a step > 0 for PGD with 7")
    ExperimentConfig.from_dict(demo(attack__alpha=0, attack__method="fgsm"))
    ExperimentConfig.from_dict(demo(attack__alpha=0, attack__steps=0))


def test_limits_follow_the_server_settings(monkeypatch):
    monkeypatch.setenv("NVE_MAX_IMAGE_SIZE", "64")
    monkeypatch.setenv("NVE_MAX_CLASSES", "5")
    monkeypatch.setenv("NVE_MAX_PER_CLASS", "7")
    assert settings().max_image_size == 64
    ok = {"model__num_classes": 5, "data__per_class": 7, "data__image_size": 64}
    ExperimentConfig.from_dict(demo(**ok))
    assert "from 2 to 5" in error(demo(**ok | {"model__num_classes": 10}))
    assert "from 8 to 64" in error(demo(**ok | {"data__image_size": 65}))
    assert "1 to 5 distinct" in error(demo(**ok | {"data__classes": list("abcdef")}))
    assert "from 1 to 7" in error(demo(**ok | {"data__per_class": 8}))


def test_structure_of_the_config_dict():
    assert "not 3" in error(3)
    assert "unknown table(s) 'modle'" in error({"modle": {}})
    assert "[[model]] is an array of tables; write one [model] table" in error({"model": [{"arch": "x"}]})
    assert "model = 'x': expected a [model] table" in error({"model": "x"})
    message = error({"data": {"sourse": "demo", 3: 1}})
    assert "[data] has unknown key(s) 3, 'sourse' (did you mean source?)" in message
    assert "known keys: source, root," in message
    assert ExperimentConfig.from_dict({"model": None}) == ExperimentConfig()
    cfg = ExperimentConfig()
    cfg.model = {"arch": "resnet18"}
    with pytest.raises(ConfigError, match=r"\[model\] must be a table"):
        cfg.validate()


def test_validate_checks_configs_built_in_code():
    """``prepare`` calls validate() on configs built from the dataclasses, not only from dicts."""
    cfg = ExperimentConfig(data=DataConfig(image_size=True), prepare=PrepareConfig(seed=-1))
    with pytest.raises(ConfigError, match=r"^\[data\] image_size = true: expected a whole number"):
        cfg.validate()
    cfg = ExperimentConfig(model=ModelConfig(mean=[0.5], std=[2]), prepare=PrepareConfig(tsne_perplexity=3))
    cfg.validate()
    assert cfg.model.mean == (0.5,) and cfg.model.std == (2.0,) and cfg.prepare.tsne_perplexity == 3.0


# --- config files -----------------------------------------------------------------------------------

def test_config_file_problems_name_the_file(tmp_path):
    def file_error(path) -> str:
        with pytest.raises(ConfigError) as e:
            ExperimentConfig.from_toml(path)
        message = str(e.value)
        assert message.startswith(f"config file {path}"), message
        return message

    cases = {
        "missing.toml": (None, "does not exist"),
        "aot.toml": (b"[[model]]\narch = 'resnet18'\n", "[[model]] is an array of tables"),
        "binary.toml": (bytes(range(256)), "is a binary file, not TOML text"),
        "latin1.toml": ("[data]\nroot = 'caf\u00e9'\n".encode("latin-1"),
                        "is not UTF-8 text (byte 0xe9 at offset"),
        "broken.toml": (b"[attack\neps = 0.1\n", "is not valid TOML: Expected ']'"),
        "deep.toml": (b"x = " + b"[" * 100_000, "nests arrays or tables too deeply"),
        "types.toml": (b"[attack]\nsteps = 1.5\n", ": [attack] steps = 1.5: expected a whole number"),
        "nul.toml": (b'[model]\ncheckpoint = "a\\u0000b"\n', "[model] checkpoint = 'a\\x00b'"),
        "table.toml": (b"model = 3\n", "model = 3: expected a [model] table"),
        "big.toml": (b"# " + b"x" * config.MAX_CONFIG_BYTES + b"\n", "is larger than 1 MiB"),
    }
    for name, (content, words) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        assert words in file_error(tmp_path / name), name
    (tmp_path / "folder.toml").mkdir()
    assert "is a folder" in file_error(tmp_path / "folder.toml")
    os.mkfifo(tmp_path / "fifo.toml")  # reading it would block forever
    assert "is not a regular file" in file_error(tmp_path / "fifo.toml")
    assert "is not a regular file" in file_error("/dev/zero")
    (tmp_path / "file").write_text("")
    assert "does not exist" in file_error(tmp_path / "file" / "x.toml")
    if os.geteuid() != 0:  # root reads any file
        (tmp_path / "secret.toml").write_text("")
        (tmp_path / "secret.toml").chmod(0)
        assert "cannot be read (Permission denied)" in file_error(tmp_path / "secret.toml")
    odd = tmp_path / os.fsdecode(b"\xff.toml")  # a file name that is not UTF-8
    odd.write_bytes(b"[attack]\neps = 2\n")
    with pytest.raises(ConfigError) as e:
        ExperimentConfig.from_toml(odd)
    assert str(e.value).startswith(f"config file {tmp_path}/\\xff.toml: [attack] eps = 2: expected")
    str(e.value).encode("utf-8")  # printable anywhere


def test_a_good_config_file_resolves_paths_beside_it(tmp_path):
    (tmp_path / "exp").mkdir()
    path = tmp_path / "exp" / "c.toml"
    path.write_bytes("\ufeff[model]\ncheckpoint = 'w.pt'\nmean = [0.5]\nstd = [0.25]\nin_channels = 1\n"
                     "[data]\nroot = '/abs/data'\nimage_size = 32\n[attack]\neps = 0.1\n".encode())
    cfg = ExperimentConfig.from_toml(path)  # a byte-order mark is fine
    assert cfg.model.checkpoint == str(tmp_path / "exp" / "w.pt") and cfg.data.root == "/abs/data"
    assert (cfg.model.mean, cfg.model.std, cfg.data.image_size, cfg.attack.eps) == ((0.5,), (0.25,), 32, 0.1)


# --- --set overrides --------------------------------------------------------------------------------

def test_overrides_parse_toml_values_or_keep_bare_strings():
    d = PRESETS["demo"].to_dict()
    for item in ("data.per_class=5", " attack.eps = 0.05 ", 'data.root="/tmp/x y"', "model.checkpoint=",
                 "data.classes=[\"a\", \"b\"]", "attack.random_start=true", "data.split=train"):
        apply_override(d, item)
    assert (d["data"]["per_class"], d["attack"]["eps"], d["data"]["root"]) == (5, 0.05, "/tmp/x y")
    assert (d["model"]["checkpoint"], d["data"]["classes"]) == ("", ["a", "b"])
    assert (d["attack"]["random_start"], d["data"]["split"]) == (True, "train")
    apply_override(d, "attack.steps=3\nattack.eps=2")  # one value only: the rest is not another key
    assert d["attack"]["steps"] == "3\nattack.eps=2" and d["attack"]["eps"] == 0.05
    apply_override(d, "data.root=" + "[" * 50_000)  # too deep for TOML: a bare string
    assert d["data"]["root"] == "[" * 50_000


@pytest.mark.parametrize("item,words", [
    ("per_class=5", "use section.key=value"),
    ("data.per_class", "use section.key=value"),
    ("data.=5", "use section.key=value"),
    ("=5", "use section.key=value"),
    ("dat.per_class=5", "unknown table 'dat'; use one of model, data, attack, prepare"),
    ("data.nope=1", "[data] has unknown key(s) 'nope'"),
    ("attack.steps=1.5", "[attack] steps = 1.5: expected a whole number"),
    ("attack.eps=0.03x", "[attack] eps = '0.03x': expected a number"),
    ('attack.eps="0.03"', "[attack] eps = '0.03': expected a number from 0 to 1 (pixel units: 8/255 = "
                          "0.0314) (a quoted string: write it without quotes)"),
    ("prepare.device=tpu", "[prepare] device = 'tpu'"),
])
def test_bad_overrides_are_config_errors(item, words):
    with pytest.raises(ConfigError) as e:
        preset("demo", [item])
    assert words in str(e.value)


def test_an_override_can_unset_an_optional_path():
    assert preset("demo", ["model.checkpoint="]).model.checkpoint is None
    assert preset("demo", ["model.checkpoint=/m.pt"]).model.checkpoint == "/m.pt"
    assert math.isclose(preset("demo", ["attack.eps=8e-2"]).attack.eps, 0.08)



def test_random_start_defaults_off_and_old_manifests_without_it_still_load():
    """``[attack] random_start`` is off unless asked for (the paper's PGD) and validated with the other
    keys; a manifest's config written before the option existed is read (``limits=False``, as
    ``core.store.manifest_problems`` and the app read it) with random_start false, what it did."""
    assert ExperimentConfig().attack.random_start is False
    assert all(cfg.attack.random_start is False for cfg in PRESETS.values())
    assert ExperimentConfig.from_dict(demo(attack__random_start=True)).attack.random_start is True
    assert "random_start" in error(demo(attack__random_start="yes"))
    old = demo()
    del old["attack"]["random_start"]
    cfg = ExperimentConfig.from_dict(old, limits=False)
    assert cfg.attack.random_start is False and cfg.to_dict()["attack"]["random_start"] is False
