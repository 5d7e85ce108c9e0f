"""Every config mistake a user can make is one ``error:`` line and exit status 2, never a traceback (issue
12): the real CLI (``python -m core prepare ...`` in a subprocess) on the mistakes a tester found (wrong
TOML types, out-of-range values, bad config files, odd bytes in arguments) and more; then hypothesis
fuzzing of ``ExperimentConfig.from_dict`` over random types and values for every key, and of ``--set``
strings: each example is a valid config or a ConfigError, never any other exception."""
import concurrent.futures
import dataclasses
import math
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.config import SECTIONS, ConfigError, ExperimentConfig
from core.presets import PRESETS, apply_override, preset

pytestmark = pytest.mark.reliability
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def default_limits(monkeypatch, tmp_path):
    """The default server limits, whatever nve-server.toml or NVE_* the machine has."""
    monkeypatch.setenv("NVE_SERVER_CONFIG", str(tmp_path / "no-server-config.toml"))
    for name in list(os.environ):
        if name.startswith("NVE_MAX_"):
            monkeypatch.delenv(name)


def config_files(folder: Path) -> dict[str, Path]:
    """Broken config files, by what is wrong with them."""
    folder.mkdir()
    files = {"array of tables": b"[[model]]\narch = 'resnet18'\n",
             "binary": bytes(range(256)) * 4,
             "latin-1": "[data]\nroot = 'caf\u00e9'\n".encode("latin-1"),
             "bad TOML": b"[attack\neps = 0.1\n",
             "deep": b"x = " + b"[" * 100_000,
             "NUL in a path": b'[model]\ncheckpoint = "a\\u0000b"\n',
             "wrong type": b"[attack]\nsteps = 1.5\n",
             "unknown table": b"[modle]\narch = 'resnet18'\n"}
    paths = {}
    for name, content in files.items():
        paths[name] = folder / (name.replace(" ", "-") + ".toml")
        paths[name].write_bytes(content)
    paths["folder"] = folder / "folder.toml"
    paths["folder"].mkdir()
    paths["missing"] = folder / "missing.toml"
    paths["non-UTF-8 name"] = folder / os.fsdecode(b"caf\xe9.toml")
    paths["non-UTF-8 name"].write_bytes(b"[attack]\neps = 0.1\n[data]\nper_class = 0\n")
    return paths


def cases(folder: Path) -> list[tuple[list, str]]:
    """(arguments after ``prepare``, words the error line must hold)."""
    files = config_files(folder)
    sets = [  # the mistakes of issue 12, then more
        ('attack.eps="0.03"', "[attack] eps = '0.03': expected a number from 0 to 1"),
        ("attack.steps=1.5", "[attack] steps = 1.5: expected a whole number from 0 to 10000"),
        ("model.num_classes=10.0", "[model] num_classes = 10.0: expected a whole number from 2"),
        ("prepare.seed=-1", "[prepare] seed = -1: expected a whole number from 0 to 4294967295"),
        ("prepare.tsne_perplexity=0", "[prepare] tsne_perplexity = 0: expected a number > 0"),
        ('prepare.device="tpu"', "[prepare] device = 'tpu': expected auto, cpu, cuda or cuda:N"),
        ("data.image_size=true", "[data] image_size = true: expected a whole number from 8 to 1024"),
        ("attack.alpha=nan", "[attack] alpha = nan: expected a number from 0 to 1"),
        ("data.image_size=100000", "[data] image_size = 100000: expected a whole number from 8 to 1024"),
        ("attack.eps=inf", "[attack] eps = inf"),
        ("model.mean=0.5", "[model] mean = 0.5: expected a list of numbers"),
        ("model.std=[0]", "[model] std = [0]: expected a list of numbers > 0"),
        ("data.classes=cat", "[data] classes = 'cat': expected a list of 1 to 2000 distinct"),
        ("data.per_class=0", "[data] per_class = 0: expected a whole number from 1"),
        ("model.in_channels=2", "[model] in_channels = 2: expected 1 (grayscale) or 3 (RGB)"),
        ("attack.method=cw", "[attack] method = 'cw': expected one of 'pgd', 'fgsm'"),
        ("attack.alpha=0", "[attack] alpha = 0: expected a step > 0 for PGD"),
        ("data.sourc=demo", "[data] has unknown key(s) 'sourc' (did you mean source?)"),
        ("dat.per_class=5", "unknown table 'dat'"),
        ("data.per_class", "use section.key=value"),
        ("model.arch=" + "x" * 10_000, "[model] arch = 'xxxxxxxx"),
    ]
    out = [(["--preset", "demo", "--set", s, "--out", "x"], words) for s, words in sets]
    out += [(["--config", files[name], "--out", "x"], words) for name, words in [
        ("array of tables", "[[model]] is an array of tables"),
        ("binary", "is a binary file, not TOML text"),
        ("folder", "is a folder; give the path of a .toml file"),
        ("latin-1", "is not UTF-8 text (byte 0xe9"),
        ("missing", "does not exist"),
        ("bad TOML", "is not valid TOML"),
        ("deep", "nests arrays or tables too deeply"),
        ("NUL in a path", "[model] checkpoint = 'a\\x00b'"),
        ("wrong type", "[attack] steps = 1.5"),
        ("unknown table", "unknown table(s) 'modle'"),
        ("non-UTF-8 name", "caf\\xe9.toml: [data] per_class = 0"),
    ]]
    out += [
        (["--config", files["non-UTF-8 name"]], "caf\\xe9.toml"),  # no --out: an id from a file name
        (["--config", "/dev/zero", "--out", "x"], "is not a regular file"),
        (["--preset", "demo", "--out", os.fsdecode(b"x\xff")], "invalid experiment id 'x\\udcff'"),
        (["--preset", "demo", "--set", os.fsdecode(b"data.root=\xff"), "--set", "attack.eps=2", "--out", "x"],
         "[attack] eps = 2"),
        (["--preset", "demo", "--set"], "argument --set: expected one argument"),
        (["--preset", "demo", "--ray-workers", "many"], "invalid int value: 'many'"),
        (["--preset", "nope"], "unknown preset 'nope'"),
    ]
    return out


def run_cli(args: list, cache: Path) -> tuple[int, str, str]:
    """``python -m core prepare ARGS --cache CACHE`` in a new interpreter: (exit status, stdout, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "core", "prepare", *map(str, args), "--cache", str(cache)],
                       cwd=ROOT, env=env, capture_output=True, timeout=300)
    return r.returncode, r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")


def run_main(args: list, cache: Path, capsys) -> tuple[int, str, str]:
    """The same through ``core.cli.main`` in this process (what ``python -m core`` runs: the command line's
    bytes arrive as the same surrogate-escaped strings); argparse's own exit is a SystemExit."""
    from core.cli import main
    capsys.readouterr()
    try:
        rc = main(["prepare", *map(str, args), "--cache", str(cache)])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def failure(args, words: str, result: tuple[int, str, str]) -> str | None:
    rc, out, err = result
    lines = err.splitlines()
    if rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0] and not out \
            and "Traceback" not in err:
        return None
    return f"{args}: exit {rc}, stderr {err!r}, expected {words!r}"


def test_every_config_mistake_is_one_error_line_and_exit_2(tmp_path, capsys):
    all_cases = cases(tmp_path / "files")
    cache = tmp_path / "cache"
    # A new interpreter costs seconds (torch's import) on a busy machine: every case runs through the CLI's
    # main() here, and one case of each kind (a --set value, a config file, a file name that is not UTF-8
    # and no --out, an argparse error) through `python -m core` as a user runs it.
    failures = [failure(args, words, run_main(args, cache, capsys)) for args, words in all_cases]
    kinds = [c for c in all_cases if c[1] in (
        "[attack] steps = 1.5: expected a whole number from 0 to 10000", "is a binary file, not TOML text",
        "caf\\xe9.toml", "argument --set: expected one argument")]
    assert len(kinds) == 4
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda case: run_cli(case[0], cache), kinds))
    failures += [failure(["python -m core", *args], words, r)
                 for (args, words), r in zip(kinds, results, strict=True)]
    failures = [f for f in failures if f]
    assert not failures, "\n".join(failures)
    assert not cache.exists() or not any(cache.iterdir())  # nothing was started


# --- fuzzing ------------------------------------------------------------------------------------------

def _valid_values(section: str, key: str) -> list:
    """Values near or at the valid ones for a key, so that fuzzing reaches valid configs and the edges."""
    default = getattr(SECTIONS[section](), key)
    return [default, getattr(getattr(PRESETS["cifar10-224"], section), key)] + {
        "arch": ["resnet20_cifar", "resnet18", "efficientnet_lite0"], "checkpoint": ["", "/m.pt", "w.pt"],
        "num_classes": [2, 10, 1000, 2000, 2001, 1], "in_channels": [1, 3],
        "width": [1, 8, 512, 513], "mean": [[0.5], (0.5, 0.5, 0.5), [0.1, 0.2]],
        "std": [[0.5], [0.2, 0.2, 0.2], [0.0]], "feature_layer": ["layer4", ""], "head": ["fc"],
        "source": ["demo", "cifar10", "image_folder", "fashion_mnist"], "root": ["/data", "rel"],
        "split": ["train", "test"], "classes": [["cat"], ["cat", "dog"], ["cat", "cat"], [""]],
        "per_class": [1, 100_000, 100_001], "image_size": [8, 7, 224, 1024, 1025],
        "on_corrupt": ["skip", "error"], "method": ["pgd", "fgsm", "mi-fgsm"],
        "eps": [0.0, 1.0, 1.0001, 8 / 255],
        "alpha": [0.0, 0.01, 1], "steps": [0, 1, 10_000, 10_001], "precision": ["auto", "fp32", "bf16"],
        "batch_size": [0, 1, 2048, 2049], "tsne_perplexity": [1e-300, 5, 5.0], "seed": [0, 2**32 - 1, 2**32],
        "device": ["auto", "cpu", "cuda", "cuda:1", "cuda:"], "maps": [0, 20, 200_000, 200_001],
        "maps_stride": [0, 4, 1024, 1025], "maps_output": ["probability", "logit"],
        "maps_precision": ["auto", "bf16"],
    }.get(key, [])


_SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(-(10**400), 10**400)
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
            | st.sampled_from(["", "\x00", "\udcff", "1.5", "true", "nan", "cuda:0", "../x", "x" * 5000])
            | st.dates())
_ANY = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def _key_value(section: str, key: str):
    near = st.sampled_from(_valid_values(section, key))
    return st.one_of(near, near, near, near, _ANY)  # mostly near-valid values, so that later keys are reached


_TABLES = {name: st.fixed_dictionaries({}, optional={f.name: _key_value(name, f.name)
                                                     for f in dataclasses.fields(sub)})
           for name, sub in SECTIONS.items()}
_JUNK_TABLES = {name: st.none() | st.lists(t, max_size=2) | _SCALARS
                | st.dictionaries(st.text(max_size=8), _ANY, max_size=2) for name, t in _TABLES.items()}
_GOOD = st.fixed_dictionaries({}, optional=_TABLES)
_ODD = [st.fixed_dictionaries({}, optional={n: _TABLES[n] | _JUNK_TABLES[n] for n in SECTIONS}),
        _GOOD.flatmap(lambda d: st.dictionaries(st.text(max_size=8), _ANY, min_size=1, max_size=1)
                      .map(lambda x: {**x, **d})),
        _ANY]
# mostly well-formed tables whose values are fuzzed; sometimes a wrong structure or an unknown table
_CONFIGS = st.integers(0, 9).flatmap(lambda i: _ODD[i - 7] if i >= 7 else _GOOD)


def _check_valid(cfg: ExperimentConfig) -> None:
    """A config that passed: every value has its annotation's type and is finite; it round-trips."""
    for name, sub in SECTIONS.items():
        obj = getattr(cfg, name)
        for key, hint in typing.get_type_hints(sub).items():
            value = getattr(obj, key)
            optional = type(None) in typing.get_args(hint)
            main = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
            assert (optional and value is None) or isinstance(value, typing.get_origin(main) or main), key
            if isinstance(value, float):
                assert math.isfinite(value)
            if main is int:
                assert not isinstance(value, bool)
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg


@settings(max_examples=600, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_CONFIGS)
def test_fuzz_from_dict_gives_a_valid_config_or_a_config_error(d):
    try:
        cfg = ExperimentConfig.from_dict(d)
    except ConfigError as e:
        message = str(e)
        assert message and "\n" not in message and len(message) < 2000, message
        message.encode("utf-8")  # printable: odd characters are escaped
        return
    _check_valid(cfg)


@settings(max_examples=300, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(
    st.text(max_size=40),
    st.builds(lambda s, k, v: f"{s}.{k}={v}", st.sampled_from([*SECTIONS, "x", ""]),
              st.sampled_from([f.name for sub in SECTIONS.values() for f in dataclasses.fields(sub)] + ["y"]),
              st.text(max_size=20) | st.sampled_from(["1.5", "-1", "nan", "inf", "true", '"0.1"', "[1, 2]",
                                                     "[[[[", "{a = 1}", "1979-05-27", "\x00", "\udcff"]))),
    max_size=3))
def test_fuzz_set_overrides_give_a_valid_config_or_a_config_error(items):
    d = PRESETS["demo"].to_dict()
    try:
        for item in items:
            apply_override(d, item)
        cfg = preset("demo", items)
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    _check_valid(cfg)
