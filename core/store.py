"""The on-disk experiment store: ``cache/<experiment-id>/``, written by ``prepare``, read by the app.

Layout (every array is a ``.npy`` file opened memory-mapped, so a page reads only what it touches)::

    manifest.json            schema version, config, fingerprints, versions, timings, counts
    pairs.parquet            one row per successful benign/adversarial pair (columns: PAIR_COLUMNS)
    benign_images.npy        (N,C,H,W) uint8 — the dataset's pixels, exactly
    adversarial_images.npy   (N,C,H,W) float32 — kept at float precision: rounding to uint8 can undo
                             an attack
    {benign,adversarial}_{logits,probs,pooled}.npy   float32 (N,classes) / (N,n)
    {benign,adversarial}_fmaps.npy                   float16 (N,n,h,w): last-conv maps, compact
    class_stats.npz          per-class statistics of the pooled activations (band gap input)
    dataset_{indices,labels,pred}.npy, dataset_{logits,pooled}.npy   every evaluated image (clean pass)
    derived/                 what the app computed and cached (vulnerability maps, RF thresholds)

Atomicity: a store is built in ``cache/.partial-<id>/`` and renamed into place only once complete,
with ``manifest.json`` written last; a folder without a manifest of the current schema is not a store.

Integrity: opening a store (``Store``) checks it cheaply, without reading array data
(``check_store``): the manifest's schema, then every file the manifest implies by its header and size.
A store that fails is refused with the reason (``StoreError``, with ``repairable`` saying whether
re-running prepare with the recorded settings repairs it), ``list_stores`` lists it as damaged, and
``python -m core check ID`` explains it. Disk full: memory-mapped arrays are preallocated when created
(``posix_fallocate``), so a full disk is an ``OSError`` (ENOSPC), never a SIGBUS while writing through
the map; the partial folder stays resumable.
"""
from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import re
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 1
ROOT = Path(__file__).resolve().parents[1]
CACHE_ENV = "NVE_CACHE"


def cache_dir() -> Path:
    """The folder of experiment stores: ``$NVE_CACHE``, else the repository's ``cache/``. The one reader
    of that variable, read per call (tests and ``bench app`` set it in a running process); every function
    here that takes ``cache_dir=None`` means this folder."""
    return Path(os.environ.get(CACHE_ENV, ROOT / "cache"))


def _folder(folder: str | Path | None) -> Path:
    """A ``cache_dir`` argument as a folder: None is ``cache_dir()``."""
    return cache_dir() if folder is None else Path(folder)


_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # fullmatch: "$" would let a final newline in

PAIR_COLUMNS = {
    "pair": "row number in every per-pair array",
    "index": "the image's index in the source dataset",
    "label": "true label (= benign prediction: only correctly classified images are attacked)",
    "benign_prob": "probability of the true label on the benign image",
    "adv_label": "adversarial label (prediction on the adversarial image)",
    "adv_prob": "probability of the adversarial label on the adversarial image",
    "benign_prob_adv": "probability of the true label on the adversarial image",
    "adv_prob_benign": "probability of the adversarial label on the benign image",
    "l2": "L2 norm of the perturbation, in [0,1] pixel units",
    "linf": "L∞ norm of the perturbation",
    "tsne_benign_x": "t-SNE of the benign pooled activations", "tsne_benign_y": "",
    "tsne_adv_x": "t-SNE of the adversarial pooled activations", "tsne_adv_y": "",
}


class StoreError(ValueError):
    """A missing, incomplete, outdated, damaged or unsafe store; the message says what to do.
    ``repairable``: True when re-running prepare with the settings recorded in the store repairs it,
    False when it cannot, None when it does not apply (e.g. a bad id)."""

    def __init__(self, message: str, *, repairable: bool | None = None):
        super().__init__(message)
        self.repairable = repairable


def validate_id(experiment_id: str) -> str:
    """Experiment ids name folders under cache/: letters, digits, '.', '_' and '-', no path parts."""
    if not isinstance(experiment_id, str) or not _ID.fullmatch(experiment_id) or ".." in experiment_id:
        raise StoreError(f"invalid experiment id {experiment_id!r}: use 1-64 letters, digits, '.', '_' "
                         "or '-', starting with a letter or digit")
    return experiment_id


def atomic_write(path: Path, write) -> None:
    """Write ``path`` through a temporary name and a rename (``write(file)`` fills it): readers see the old
    or the new file, and a failed write (a full disk) leaves the old one and no temporary file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, default=_jsonable) + "\n").encode())


def save_npy(path: Path, array: np.ndarray) -> None:
    """Write a .npy atomically (temporary name, then rename)."""
    atomic_write(path, lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False))


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` says the disk (or the user's quota) is full; pyarrow's errors carry no errno, only
    the text."""
    return isinstance(e, OSError) and (e.errno in (errno.ENOSPC, errno.EDQUOT)
                                       or "No space left on device" in str(e))


def preallocate(fd: int, size: int) -> None:
    """Reserve ``size`` bytes of disk for the open file ``fd``: writes through a memory map of a sparse
    file that meet a full disk kill the process with SIGBUS; after this they cannot, and a full disk is
    an OSError (ENOSPC) here instead. Already allocated ranges stay as they are (resume). Filesystems
    without the call are left sparse (best effort)."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise


def _jsonable(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, (np.ndarray, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@dataclass
class StoreInfo:
    """One folder of the cache: ``manifest`` when the store opens (passed its check), else None and
    ``error`` says why (plain text: show it escaped); ``repairable`` as in ``StoreError``."""
    id: str
    path: Path
    manifest: dict | None
    error: str | None = None
    repairable: bool | None = None


# -- integrity check ----------------------------------------------------------------------------------
PAIR_SIDES = ("benign", "adversarial")
CLASS_STATS = ("count", "mean", "std", "levels", "quantiles")  # levels first: quantiles' shape needs it
REPAIR = ("prepare it again with the same settings to repair it (`python -m core check {id}` says what is "
          "wrong and how)")
REBUILD = "delete the folder and prepare the experiment again (its settings are not readable)"


def _whole(v, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _settings_readable(m) -> bool:
    """Whether the manifest still records the settings the store was made with (then re-running prepare
    with them rebuilds it)."""
    cfg = m.get("config") if isinstance(m, dict) else None
    return isinstance(cfg, dict) and all(isinstance(cfg.get(s), dict) for s in
                                         ("model", "data", "attack", "prepare"))


def manifest_problems(m) -> list[str]:
    """What is wrong with a manifest's schema (keys, types, consistent counts); [] when nothing. Only
    the manifest is read: this is what every other check and every page relies on."""
    if not isinstance(m, dict):
        return ["manifest.json does not hold a JSON object"]
    out = []

    def need(key, ok, what):
        if key not in m:
            out.append(f"manifest.json has no {key!r}")
        elif not ok(m[key]):
            out.append(f"manifest.json: {key!r} is not {what}")
        return key in m and ok(m[key])

    for key in ("id", "created", "dataset"):
        need(key, lambda v: isinstance(v, str), "a string")
    classes_ok = need("classes", lambda v: isinstance(v, list) and v and all(isinstance(c, str) for c in v),
                      "a non-empty list of class names")
    need("input_shape", lambda v: isinstance(v, list) and len(v) == 3
                    and all(_whole(s, 1) for s in v), "a list of 3 positive integers (C, H, W)")
    model_ok = need("model", lambda v: isinstance(v, dict) and _whole(v.get("num_neurons"), 1)
                    and _whole(v.get("num_classes"), 1) and isinstance(v.get("fmap_size"), list)
                    and len(v["fmap_size"]) == 2 and all(_whole(s, 1) for s in v["fmap_size"]),
                    "an object with integer num_neurons, num_classes and fmap_size [h, w]")
    if classes_ok and model_ok and m["model"]["num_classes"] != len(m["classes"]):
        out.append(f"manifest.json: the model has {m['model']['num_classes']} classes but "
                   f"{len(m['classes'])} class names are listed")
    if not _settings_readable(m):
        out.append("manifest.json: 'config' is not an object with the model, data, attack and prepare tables")
    else:  # the app builds the model from these settings: they must pass the config's own schema
        from core.config import ConfigError, ExperimentConfig
        try:
            ExperimentConfig.from_dict(m["config"], limits=False)  # limits bound new work only
        except ConfigError as e:
            out.append(f"manifest.json: the recorded settings are not valid ({e})")
    if need("counts", lambda v: isinstance(v, dict), "an object"):
        c, before = m["counts"], len(out)
        for key in ("n_images", "n_correct", "n_attacked", "n_success", "n_skipped"):
            if not _whole(c.get(key)):
                out.append(f"manifest.json: counts.{key} is "
                           + ("missing" if key not in c else f"not a whole number ({type(c[key]).__name__})"))
        for key in ("clean_accuracy", "attack_success_rate"):
            if not (_number(c.get(key)) and 0 <= c[key] <= 1):
                out.append(f"manifest.json: counts.{key} is " + ("missing" if key not in c else
                                                                  "not a number in [0, 1]"))
        if len(out) == before and not 1 <= c["n_success"] <= c["n_attacked"] <= c["n_images"]:
            out.append("manifest.json: the counts disagree (it needs 1 <= n_success <= n_attacked <= "
                       "n_images)")
    maps = m.get("vulnerability_maps")
    if maps is not None and not (isinstance(maps, dict) and isinstance(maps.get("pairs"), list)
                                 and all(_whole(p) for p in maps["pairs"]) and _whole(maps.get("k"), 1)
                                 and _whole(maps.get("stride"), 1) and isinstance(maps.get("output"), str)
                                 and isinstance(maps.get("precision"), str)):
        out.append("manifest.json: 'vulnerability_maps' is not null nor an object with pairs, k, stride, "
                   "output and precision")
    for key, kind, name in (("fingerprints", dict, "an object"), ("versions", dict, "an object"),
                            ("timings_s", dict, "an object"), ("skipped", list, "a list")):
        if key in m and not isinstance(m[key], kind):
            out.append(f"manifest.json: {key!r} is not {name}")
    if isinstance(m.get("fingerprints"), dict) and not isinstance(m["fingerprints"].get("model", {}), dict):
        out.append("manifest.json: fingerprints.model is not an object")
    return out


def expected_arrays(m: dict) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Every ``.npy`` a store of this (valid) manifest holds: name -> (shape, dtype)."""
    n, n_images = m["counts"]["n_success"], m["counts"]["n_images"]
    k, nn, (h, w) = m["model"]["num_classes"], m["model"]["num_neurons"], m["model"]["fmap_size"]
    shape = tuple(m["input_shape"])
    f32, out = np.dtype(np.float32), {}
    out["benign_images"] = ((n, *shape), np.dtype(np.uint8))
    out["adversarial_images"] = ((n, *shape), f32)
    for side in PAIR_SIDES:
        out |= {f"{side}_logits": ((n, k), f32), f"{side}_probs": ((n, k), f32),
                f"{side}_pooled": ((n, nn), f32), f"{side}_fmaps": ((n, nn, h, w), np.dtype(np.float16))}
    out |= {"dataset_logits": ((n_images, k), f32), "dataset_pooled": ((n_images, nn), f32)}
    out |= {f"dataset_{x}": ((n_images,), np.dtype(np.int64)) for x in ("indices", "labels", "pred")}
    return out


def npy_header(f) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """(shape, dtype, fortran_order, data offset) of the .npy open in ``f``, reading its header only."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unknown .npy version {version}")
    return tuple(shape), np.dtype(dtype), bool(fortran), f.tell()


def npy_problem(name: str, f, size: int, shape, dtype) -> str | None:
    """Why the .npy open in ``f`` (``size`` bytes in all) is not a C-order (shape, dtype) array, or None;
    ``shape`` None accepts any. Reads the header only; a file cut short (a crash or a full disk) is
    caught by its size."""
    try:
        got_shape, got_dtype, fortran, offset = npy_header(f)
    except (OSError, ValueError, EOFError, SyntaxError) as e:
        return f"{name} is not a readable array ({type(e).__name__}: its header is damaged)"
    if got_dtype != np.dtype(dtype):
        return f"{name} holds {got_dtype} values, expected {np.dtype(dtype)}"
    if shape is not None and got_shape != tuple(shape):
        return f"{name} has shape {got_shape}, expected {tuple(shape)} (from the manifest's counts and model)"
    if fortran or got_dtype.hasobject:
        return f"{name} is not a plain C-order array"
    want = offset + int(np.prod(got_shape, dtype=np.int64)) * got_dtype.itemsize
    if size < want:
        return f"{name} is cut short ({size:,} of {want:,} bytes)"
    if size > want:
        return f"{name} has {size - want:,} unexpected bytes after its data"
    return None


def _npy_file_problem(path: Path, shape, dtype) -> str | None:
    try:
        with open(path, "rb") as f:
            return npy_problem(path.name, f, os.fstat(f.fileno()).st_size, shape, dtype)
    except FileNotFoundError:
        return f"{path.name} is missing"
    except OSError as e:
        return f"{path.name} cannot be read ({e.strerror or type(e).__name__})"


def _class_stats_problems(path: Path, m: dict) -> list[str]:
    k, nn = m["model"]["num_classes"], m["model"]["num_neurons"]
    try:
        with zipfile.ZipFile(path) as z:
            members = {i.filename: i for i in z.infolist()}
            out, levels = [], None
            for side in PAIR_SIDES:
                for key in CLASS_STATS:
                    name = f"{side}_{key}"
                    info = members.get(f"{name}.npy")
                    if info is None:
                        out.append(f"class_stats.npz has no {name!r}")
                        continue
                    want = {"count": (k,), "mean": (k, nn), "std": (k, nn), "levels": (levels,),
                            "quantiles": (k, levels, nn)}[key]
                    dtype = np.int64 if key == "count" else np.float32
                    with z.open(info) as f:
                        bad = npy_problem(f"class_stats.npz[{name}]", f, info.file_size,
                                          None if None in want else want, dtype)
                    if bad:
                        out.append(bad)
                    elif key == "levels":
                        with z.open(info) as f:
                            shape = npy_header(f)[0]
                        levels = shape[0] if len(shape) == 1 else None
            return out
    except FileNotFoundError:
        return ["class_stats.npz is missing"]
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as e:
        return [f"class_stats.npz is not readable ({type(e).__name__})"]


def _pairs_problems(path: Path, n: int) -> list[str]:
    if not path.is_file():
        return ["pairs.parquet is missing"]
    try:
        import pyarrow.parquet as pq
        meta = pq.read_metadata(path)
        names, rows = list(meta.schema.names), meta.num_rows
    except Exception as e:  # pyarrow raises its own types (ArrowInvalid, OSError ...) for a damaged file
        return [f"pairs.parquet is not readable ({type(e).__name__})"]
    out = []
    if missing := [c for c in PAIR_COLUMNS if c not in names]:
        out.append(f"pairs.parquet lacks the columns {', '.join(missing)}")
    if rows != n:
        out.append(f"pairs.parquet has {rows} rows, but the manifest counts {n} pairs")
    return out


@dataclass
class StoreCheck:
    """What ``check_store`` found: ``problems`` (empty: the store is sound), whether re-running prepare
    with the settings recorded in the manifest repairs it, and ``notes`` (harmless: e.g. a cached file the
    app will recompute)."""
    id: str
    manifest: dict | None
    problems: list[str] = field(default_factory=list)
    repairable: bool = False
    notes: list[str] = field(default_factory=list)
    files: int = 0  # files checked
    ms: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


def _read_manifest(path: Path, ident: str) -> dict:
    """The manifest of the store at ``path`` with a readable schema version, else StoreError."""
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise StoreError(f"experiment {ident!r} is not a complete experiment store (no manifest.json); "
                         f"run `python -m core prepare` to build it", repairable=False)
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except (OSError, ValueError, RecursionError) as e:
        what = e.strerror if isinstance(e, OSError) and e.strerror else "not valid JSON"
        raise StoreError(f"experiment {ident!r} has an unreadable manifest.json ({what}); {REBUILD}",
                         repairable=False) from None
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != SCHEMA_VERSION:
        if _whole(version) and version > SCHEMA_VERSION:
            raise StoreError(
                f"experiment {ident!r} was written by a newer version of this app (store schema "
                f"{version}; this version reads schema {SCHEMA_VERSION}): update the app to open it",
                repairable=False)
        shown = version if _whole(version) else "unknown"
        raise StoreError(
            f"experiment {ident!r} was written by an older version of this app (store schema "
            f"{shown}; this version reads schema {SCHEMA_VERSION}) and cannot be opened: prepare it "
            f"again with the same settings (python -m core prepare ... --out {ident} --force)",
            repairable=_settings_readable(manifest))
    return manifest


def check_store(path: str | Path) -> StoreCheck:
    """Check a store cheaply, without reading array data: the manifest's schema, then every file the
    manifest implies, by its header and size (every ``.npy``'s dtype, shape and length, the pair table's
    columns and rows from its parquet metadata, the class statistics' keys and shapes). A few ms."""
    t0 = time.perf_counter()
    path = Path(path)
    r = StoreCheck(path.name, None)
    try:
        m = _read_manifest(path, r.id)
    except StoreError as e:
        r.problems, r.repairable = [str(e)], bool(e.repairable)
        return r
    r.manifest, r.repairable = m, _settings_readable(m)
    r.problems = manifest_problems(m)
    if not r.problems:  # the files' expected shapes come from the manifest
        for name, (shape, dtype) in expected_arrays(m).items():
            if bad := _npy_file_problem(path / f"{name}.npy", shape, dtype):
                r.problems.append(bad)
        r.problems += _pairs_problems(path / "pairs.parquet", m["counts"]["n_success"])
        r.problems += _class_stats_problems(path / "class_stats.npz", m)
        r.files = len(expected_arrays(m)) + 2
    r.ms = (time.perf_counter() - t0) * 1000
    return r


def check_experiment(path: str | Path) -> StoreCheck:
    """``check_store``, then what ``python -m core check`` adds (it reads more; still no array data
    beyond the pair table): the pair table's values, the precomputed maps and ``derived/`` files (notes:
    the app recomputes them), and whether re-running prepare can repair a damaged store (its settings
    are readable, and its checkpoint and data folder are still there)."""
    t0 = time.perf_counter()
    path = Path(path)
    r = check_store(path)
    m = r.manifest
    if r.ok:
        r.problems += _pair_table_problems(path, m)
        shape = tuple(m["input_shape"][1:])
        for folder, kind in (("vulnerability_maps", "precomputed"), ("derived", "cached")):
            for f in sorted((path / folder).glob("*.npy")) if (path / folder).is_dir() else []:
                want = (m["model"]["num_neurons"],) if f.name.startswith("rf-quantile-") else (2, *shape)
                dtype = np.float32 if f.name.startswith("vmap-") or f.name.startswith("rf-") else None
                bad = _npy_file_problem(f, want, dtype) if dtype is not None else None
                if not bad and dtype is not None and not np.isfinite(np.load(f, allow_pickle=False)).all():
                    bad = f"{f.name} holds NaN or infinite values"  # small files: read in full
                if bad:
                    r.notes.append(f"{folder}/{bad} ({kind}: the app computes it again when needed)")
                r.files += 1
    if r.problems and r.repairable and m is not None:
        r.repairable, why = _repair_possible(m)
        if why:
            r.notes.append(why)
    r.ms = (time.perf_counter() - t0) * 1000
    return r


def _pair_table_problems(path: Path, m: dict) -> list[str]:
    try:
        import pandas as pd
        t = pd.read_parquet(path / "pairs.parquet", columns=["pair", "label", "adv_label"])
    except Exception as e:  # pyarrow's own error types
        return [f"pairs.parquet cannot be read ({type(e).__name__})"]
    k, out = m["model"]["num_classes"], []
    if not np.array_equal(t["pair"].to_numpy(), np.arange(len(t))):
        out.append("pairs.parquet: the pair column is not 0, 1, 2, ...")
    for col in ("label", "adv_label"):
        v = t[col].to_numpy()
        if v.dtype.kind not in "iu" or (len(v) and (v.min() < 0 or v.max() >= k)):
            out.append(f"pairs.parquet: {col} holds values that are not class numbers 0..{k - 1}")
    return out


def _repair_possible(m: dict) -> tuple[bool, str | None]:
    """(whether re-running prepare with the manifest's settings can rebuild the store, why not)."""
    cfg = m["config"]
    if m.get("dataset") == "notebook":  # core.prepare_experiment: no folder holds its images
        return False, "its images were given in memory (core.prepare_experiment): call it again"
    ckpt = cfg["model"].get("checkpoint")
    if isinstance(ckpt, str) and ckpt and not Path(ckpt).expanduser().is_file():
        return False, f"its checkpoint {ckpt} is not there any more"
    root = cfg["data"].get("root")
    if cfg["data"].get("source") == "image_folder" and isinstance(root, str) and not Path(root).is_dir():
        return False, f"its data folder {root} is not there any more"
    return True, None


def _model_file_name(model: dict) -> str:
    """What names a model without an arch: its file (.pt2, .onnx), else the default architecture."""
    ckpt = model.get("checkpoint")
    # the default architecture (core.models.DEFAULT_ARCH, not imported: this module stays torch-free)
    return Path(ckpt).name if isinstance(ckpt, str) and ckpt else "resnet18_cifar"


def config_toml(manifest: dict) -> str:
    """The settings a store was prepared with (its manifest's ``config``) as a TOML config file for
    ``python -m core prepare --config``: JSON scalars, strings and lists are TOML values too."""
    lines = []
    for section, table in manifest["config"].items():
        if isinstance(table, dict):
            lines.append(f"[{section}]")
            # ensure_ascii=False: JSON's surrogate-pair escapes of emoji are no TOML; raw text is
            lines += [f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in table.items()
                      if v is not None and isinstance(k, str) and re.fullmatch(r"[A-Za-z0-9_]+", k)]
    return "\n".join(lines) + "\n"


def damage_message(r: StoreCheck, limit: int = 3) -> str:
    """One message for a failed check: the first problems, then what to do."""
    if len(r.problems) == 1 and not r.manifest:
        return r.problems[0]  # the manifest's own error already says what to do
    more = f" (and {len(r.problems) - limit} more)" if len(r.problems) > limit else ""
    fix = REPAIR.format(id=r.id) if r.repairable else REBUILD
    return f"experiment {r.id!r} is damaged: {'; '.join(r.problems[:limit])}{more}; {fix}"


_PASSED: dict[str, tuple] = {}  # resolved store path -> _signature of its files when they passed


def _signature(path: Path) -> tuple | None:
    """(name, size, mtime, inode) of every file of the store (about 0.1 ms, where the check takes a few):
    any change to a file (rewritten, cut short, replaced, removed) changes it. None when unreadable."""
    try:
        with os.scandir(path) as entries:
            return tuple(sorted((e.name, st.st_size, st.st_mtime_ns, st.st_ino)
                                for e in entries if e.is_file() for st in (e.stat(),)))
    except OSError:
        return None


class Store:
    """A complete experiment store opened read-only; arrays are memory-mapped on first use."""

    def __init__(self, path: str | Path):
        """Open the store at ``path`` after ``check_store`` (a few ms: headers and sizes only); a store
        that fails is refused with a StoreError that names the damage (never a server path)."""
        self.path = Path(path)
        self.id = self.path.name
        signature = _signature(self.path)
        key = str(self.path.resolve())
        if signature is not None and _PASSED.get(key) == signature:
            # the same files (names, sizes, times, inodes) passed before: only the manifest is re-read
            self.manifest = _read_manifest(self.path, self.id)
        else:
            report = check_store(self.path)
            if not report.ok:
                raise StoreError(damage_message(report), repairable=report.repairable)
            self.manifest = report.manifest
            if signature is not None:
                if len(_PASSED) > 1024:
                    _PASSED.clear()
                _PASSED[key] = signature
        self._arrays: dict[str, np.ndarray] = {}

    @property
    def classes(self) -> list[str]:
        return self.manifest["classes"]

    @property
    def counts(self) -> dict:
        return self.manifest["counts"]

    def __len__(self) -> int:
        return int(self.manifest["counts"]["n_success"])

    def _damaged(self, what: str, e: BaseException) -> StoreError:
        """A file that passed the check when the store was opened but fails now (changed since)."""
        return StoreError(f"experiment {self.id!r} is damaged: {what} cannot be read "
                          f"({type(e).__name__}); " + REPAIR.format(id=self.id), repairable=True)

    @cached_property
    def pairs(self):
        """The pair table (``PAIR_COLUMNS``), plus the float64 columns ``core.probability.PAIR_SCORES``
        computed from the stored logits when the table is loaded (so old stores get them too): the float32
        probabilities of a confident model are 1.0 for many pairs, and sorting by their differences
        would tie them all (``core.probability``)."""
        import pandas as pd
        try:
            table = pd.read_parquet(self.path / "pairs.parquet")
        except Exception as e:  # pyarrow's own error types for a damaged file
            raise self._damaged("pairs.parquet", e) from None
        from core.probability import PAIR_SCORES, pair_scores
        exact = pair_scores(self.array("benign_logits"), self.array("adversarial_logits"),
                            table["label"].to_numpy(np.int64), table["adv_label"].to_numpy(np.int64))
        return table.assign(**{name: exact[name] for name in PAIR_SCORES})

    def array(self, name: str) -> np.ndarray:
        """A per-pair or per-image array, memory-mapped (read-only)."""
        if name not in self._arrays:
            path = self.path / f"{name}.npy"
            if not re.fullmatch(r"[a-z_]+", name) or not path.is_file():
                raise StoreError(f"experiment {self.id!r} has no array {name!r}")
            try:
                self._arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise self._damaged(f"{name}.npy", e) from None
        return self._arrays[name]

    def row_blocks(self, name: str, block_bytes: int = 64 << 20):
        """Consecutive row blocks of array ``name``, read with plain file reads rather than through the
        memory map: a scan of a multi-GB array (e.g. every pair's maps) keeps one block resident, where
        touching the map would leave the whole file counted in the process's RSS."""
        arr = self.array(name)
        row = arr[:1].nbytes if len(arr) else 1
        rows = max(1, block_bytes // max(row, 1))
        with open(self.path / f"{name}.npy", "rb") as f:
            for lo in range(0, len(arr), rows):
                m = min(rows, len(arr) - lo)
                f.seek(arr.offset + lo * row)
                yield np.fromfile(f, dtype=arr.dtype, count=m * row // arr.dtype.itemsize).reshape(
                    m, *arr.shape[1:])

    @cached_property
    def class_stats(self) -> dict[str, np.ndarray]:
        try:
            with np.load(self.path / "class_stats.npz", allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise self._damaged("class_stats.npz", e) from None

    def pair_images(self, pair: int) -> tuple[np.ndarray, np.ndarray]:
        """(benign, adversarial) of one pair as float32 (C,H,W) arrays in [0,1]."""
        return (self.array("benign_images")[pair].astype(np.float32) / 255.0,
                np.asarray(self.array("adversarial_images")[pair], dtype=np.float32))


def list_stores(cache_dir: str | Path | None = None) -> list[StoreInfo]:
    """Every folder under cache/ that looks like an experiment, with its manifest (it passed the check)
    or why it can't open. Never raises for one store: one damaged store must not hide the others."""
    cache_dir = _folder(cache_dir)
    try:
        entries = sorted(cache_dir.iterdir()) if cache_dir.is_dir() else []
    except OSError:
        return []
    out = []
    for p in entries:
        try:
            if not _ID.match(p.name) or p.name.startswith(".") or not p.is_dir():
                continue
            out.append(StoreInfo(p.name, p, Store(p).manifest))
        except StoreError as e:
            out.append(StoreInfo(p.name, p, None, str(e), e.repairable))
        except Exception as e:  # noqa: BLE001 -- anything else still only concerns this store
            why = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
            out.append(StoreInfo(p.name, p, None, f"experiment {p.name!r} cannot be opened ({why}); "
                                 f"`python -m core check {p.name}` says more"))
    return out


def open_store(experiment_id: str, cache_dir: str | Path | None = None) -> Store:
    path = _folder(cache_dir) / validate_id(experiment_id)
    if not path.is_dir():
        raise StoreError(f"no experiment {experiment_id!r} in the cache; `python -m core list` shows "
                         "what there is")
    return Store(path)


class StoreWriter:
    """Builds a store in ``cache/.partial-<id>/`` and publishes it with one rename.

    The partial folder survives a crash; a new writer for the same id and the same config resumes
    from it (``resumed`` is True), a different config starts it afresh.
    """

    def __init__(self, experiment_id: str, config_key: str, cache_dir: str | Path | None = None):
        self.id = validate_id(experiment_id)
        self.cache_dir = _folder(cache_dir)
        self.final = self.cache_dir / self.id
        self.path = self.cache_dir / f".partial-{self.id}"
        check_writable(self.cache_dir)
        # One prepare per experiment at a time: a second one would write into the same partial folder.
        self._lock = open(self.cache_dir / f".partial-{self.id}.lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise StoreError(f"another prepare of {self.id!r} is running; wait for it to finish") from None
        key_file = self.path / "config_key"
        self.resumed = key_file.is_file() and key_file.read_text() == config_key
        if not self.resumed:
            shutil.rmtree(self.path, ignore_errors=True)
            (self.path / "work").mkdir(parents=True)
            atomic_write_bytes(key_file, config_key.encode())
        self.state = self._read_state()
        self.created: set[str] = set()  # arrays open_memmap had to create (not resumed)
        self.restarted = False  # set by prepare once a stage starts over: later stages must follow

    def _read_state(self) -> dict:
        """The recorded progress; an empty or garbled state.json (a crash or a full disk in an older
        version; a hand edit) counts as no progress: every stage starts afresh, never a crash. Only whole
        numbers are kept (the chunked stages' ``<stage>_done``)."""
        try:
            state = json.loads((self.path / "state.json").read_bytes())
        except (OSError, ValueError, RecursionError):
            return {}
        if not isinstance(state, dict):
            return {}
        return {k: v for k, v in state.items() if isinstance(k, str) and _whole(v)}

    def out(self, name: str) -> Path:
        return self.path / name

    def mark(self, key: str, value) -> None:
        """Record progress (a finished stage, or how far a chunked stage got), durably."""
        self.state[key] = value
        atomic_write_json(self.path / "state.json", self.state)

    def open_memmap(self, name: str, shape, dtype) -> np.ndarray:
        """A .npy to fill chunk by chunk; reopened (not recreated) when resuming. A file that is missing,
        unreadable (e.g. cut short by a crash) or of another shape or dtype is created afresh, and its
        path is added to ``created``, so the stage filling it knows to start over."""
        path, shape, dtype = self.out(name), tuple(int(s) for s in shape), np.dtype(dtype)
        if path.is_file():
            try:
                with open(path, "rb") as f:
                    fine = npy_problem(name, f, os.fstat(f.fileno()).st_size, shape, dtype) is None
            except OSError:
                fine = False
            if fine:  # also the rest of a file a full disk left sparse gets its blocks now
                with open(path, "r+b") as f:
                    preallocate(f.fileno(), os.fstat(f.fileno()).st_size)
                return np.load(path, mmap_mode="r+", allow_pickle=False)
        self.created.add(os.path.abspath(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
        with open(path, "wb") as f:  # the header, then the data's blocks reserved: ENOSPC here, not SIGBUS
            try:
                np.lib.format.write_array_header_1_0(f, header)  # as np.save and open_memmap write it
            except ValueError:  # a header over 64 KiB (a huge shape) needs format 2.0
                f.seek(0)
                f.truncate()
                np.lib.format.write_array_header_2_0(f, header)
            preallocate(f.fileno(), f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        return np.load(path, mmap_mode="r+", allow_pickle=False)

    def publish(self, manifest: dict, overwrite: bool = False) -> Path:
        """Write the manifest last, then rename the folder into place (atomic on one filesystem).

        The resume key goes first: once the work files start disappearing, a crash must make the next
        run start afresh rather than resume from a half-cleaned folder. The manifest is written (under a
        temporary name) before that, so a full disk fails while the folder can still be resumed."""
        pending = self.path / ".manifest.pending"
        atomic_write_json(pending, manifest)
        (self.path / "config_key").unlink(missing_ok=True)
        _fsync_dir(self.path)
        shutil.rmtree(self.path / "work", ignore_errors=True)
        (self.path / "state.json").unlink(missing_ok=True)
        os.replace(pending, self.out("manifest.json"))
        _fsync_dir(self.path)
        pause_point("publish-rename")
        if self.final.exists():
            if not overwrite:
                raise StoreError(f"experiment {self.id!r} already exists; use --force to replace it")
            trash = self.cache_dir / f".trash-{self.id}-{time.time_ns()}"
            os.rename(self.final, trash)
            os.rename(self.path, self.final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(self.path, self.final)
        _fsync_dir(self.cache_dir)
        self.release()
        return self.final

    def release(self) -> None:
        """Drop the lock (the lock file itself is harmless and reused)."""
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()


def check_writable(cache_dir: Path) -> None:
    """Make sure stores can be written under ``cache_dir`` (created if missing), by writing a file there:
    permissions alone do not say it (root ignores them; a read-only mount). A clear StoreError, before
    prepare scans any data."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        probe = cache_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        why = e.strerror or type(e).__name__
        if is_disk_full(e):
            raise StoreError(f"the disk of the cache folder {cache_dir} is full: free some space and run "
                             "the same command again") from None
        raise StoreError(f"the cache folder {cache_dir} is not writable ({why}): make it writable for this "
                         "user, or choose another one with --cache (or NVE_CACHE for the app)") from None


def pause_point(name: str) -> None:
    """Crash-safety test hook, inert unless ``NVE_TEST_PAUSE_AT`` names this point: then write the file
    ``NVE_TEST_PAUSE_FILE`` and wait there (at most 10 minutes) for the test to kill the process with
    SIGKILL, so tests/reliability/test_crash_safety.py can pick the moment of a kill -9 exactly."""
    if os.environ.get("NVE_TEST_PAUSE_AT") == name and os.environ.get("NVE_TEST_PAUSE_FILE"):
        Path(os.environ["NVE_TEST_PAUSE_FILE"]).write_text(name)
        time.sleep(600)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def attack_steps(attack: dict) -> int:
    """The gradient steps the attack took: its ``steps``, one for an attack without them (FGSM; an
    FGSM manifest written before issue 14 still carries PGD's unused ``steps``)."""
    return 1 if attack.get("method") == "fgsm" else int(attack.get("steps", 1))


def summary_row(manifest: dict) -> dict:
    """The figures the experiment list shows, from a manifest that passed ``manifest_problems``."""
    c, cfg = manifest["counts"], manifest["config"]
    return {"experiment": manifest["id"], "model": cfg["model"]["arch"] or _model_file_name(cfg["model"]),
            "dataset": manifest["dataset"],
            "classes": len(image_classes(manifest)), "images": c["n_images"],
            "clean accuracy": round(c["clean_accuracy"], 4), "attacked": c["n_attacked"],
            "successful pairs": c["n_success"], "attack success": round(c["attack_success_rate"], 4),
            "attack": cfg["attack"]["method"].upper(), "ε": round(cfg["attack"].get("eps", math.nan), 4),
            "steps": attack_steps(cfg["attack"]), "created": manifest["created"]}


def image_classes(manifest: dict) -> list[int]:
    """The ids (indices into ``manifest["classes"]``, the model's outputs) of the classes whose images the
    experiment holds: its ``[data] classes`` (names or ids, as ``core.data.select`` reads them), in
    class-id order; every class when it has none. Pair labels stay ids into the model's classes, so a
    store prepared on a class subset shows its subset's rows while its adversarial labels may be any
    class. A name the list does not hold (a hand-edited manifest) is left out; if none is left, every
    class is returned."""
    names = list(manifest["classes"])
    wanted = ((manifest.get("config") or {}).get("data") or {}).get("classes")
    if not wanted:
        return list(range(len(names)))
    ids = set()
    for c in wanted:
        if isinstance(c, int) and not isinstance(c, bool):
            if 0 <= c < len(names):
                ids.add(c)
        elif c in names:
            ids.add(names.index(c))
    return sorted(ids) or list(range(len(names)))


def delete_experiment(experiment_id: str, cache_dir: str | Path | None = None) -> None:
    """Delete the experiment ``cache_dir/<id>/`` and everything in it (its derived/ caches too).

    Safe by construction:
    - the id is checked (``validate_id``: no path parts), and ``<id>`` must be a real folder directly in
      ``cache_dir``: a symbolic link is refused (deleting through it would reach outside the cache);
    - the prepare lock of that id (``.partial-<id>.lock``, held by ``StoreWriter``, from the app or the
      CLI) must be free: a prepare that may publish this id now is not raced;
    - the folder is first renamed to a hidden ``.trash-<id>-<ns>`` name (one atomic rename, which never
      follows links), so no listing ever shows a half-deleted store, then removed with ``shutil.rmtree``,
      which does not follow symbolic links inside it.
    A StoreError says why nothing was deleted, or that the experiment is gone but some files of it stayed
    (under the hidden name, listed nowhere)."""
    import stat
    import sys
    validate_id(experiment_id)
    cache = _folder(cache_dir)
    path = cache / experiment_id
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise StoreError(f"there is no experiment {experiment_id!r} to delete") from None
    if stat.S_ISLNK(info.st_mode):
        raise StoreError(f"{experiment_id!r} is a symbolic link, not an experiment folder of this cache; "
                         "the app does not delete through links (remove the link by hand)")
    if not stat.S_ISDIR(info.st_mode):
        raise StoreError(f"{experiment_id!r} is not an experiment folder")
    trash, left = cache / f".trash-{experiment_id}-{time.time_ns()}", []

    def note(_fn, p, e):
        left.append(f"{os.path.relpath(p, trash)} ({getattr(e, 'strerror', None) or type(e).__name__})")
    try:  # O_NOFOLLOW: a planted link named like the lock file is neither opened nor created through
        fd = os.open(cache / f".partial-{experiment_id}.lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW,
                     0o644)
    except OSError as e:
        raise StoreError(f"experiment {experiment_id!r} cannot be deleted: the cache folder refuses it "
                         f"({e.strerror or type(e).__name__})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"experiment {experiment_id!r} is being prepared now; wait for it to finish "
                             "(or cancel it) before deleting it") from None
        try:
            os.rename(path, trash)
        except OSError as e:
            raise StoreError(f"experiment {experiment_id!r} cannot be deleted ({e.strerror or e}); "
                             "nothing was removed") from None
        _fsync_dir(cache)
        if sys.version_info >= (3, 12):
            shutil.rmtree(trash, onexc=note)
        else:
            shutil.rmtree(trash, onerror=lambda fn, p, info: note(fn, p, info[1]))
    finally:
        os.close(fd)  # also drops the lock
    if left:
        raise StoreError(f"experiment {experiment_id!r} was deleted, but {len(left)} of its files could not "
                         f"be removed and stay in {trash.name} (hidden; e.g. {left[0]})")
