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
    dataset_{indices,labels,pred}.npy, dataset_pooled.npy   every evaluated image (clean pass)

Atomicity: a store is built in ``cache/.partial-<id>/`` and renamed into place only once complete,
with ``manifest.json`` written last; a folder without a manifest of the current schema is not a store.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 1
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path(os.environ.get("NVE_CACHE", ROOT / "cache"))
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

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
    """A missing, incomplete, outdated or unsafe store; the message says what to do."""


def validate_id(experiment_id: str) -> str:
    """Experiment ids name folders under cache/: letters, digits, '.', '_' and '-', no path parts."""
    if not isinstance(experiment_id, str) or not _ID.match(experiment_id) or ".." in experiment_id:
        raise StoreError(f"invalid experiment id {experiment_id!r}: use 1-64 letters, digits, '.', '_' "
                         "or '-', starting with a letter or digit")
    return experiment_id


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, default=_jsonable) + "\n").encode())


def save_npy(path: Path, array: np.ndarray) -> None:
    """Write a .npy atomically (temporary name, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
    id: str
    path: Path
    manifest: dict | None
    error: str | None = None


class Store:
    """A complete experiment store opened read-only; arrays are memory-mapped on first use."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.id = self.path.name
        manifest_path = self.path / "manifest.json"
        if not manifest_path.is_file():
            raise StoreError(f"{self.path} is not a complete experiment store (no manifest.json); "
                             f"run `python -m core prepare` to build it")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise StoreError(f"{manifest_path} is unreadable ({e}); delete the folder and prepare "
                             "again") from None
        version = self.manifest.get("schema_version") if isinstance(self.manifest, dict) else None
        if version != SCHEMA_VERSION:
            if isinstance(version, int) and version > SCHEMA_VERSION:
                raise StoreError(
                    f"experiment {self.id!r} was written by a newer version of this app (store schema "
                    f"{version}; this version reads schema {SCHEMA_VERSION}): update the app to open it")
            raise StoreError(
                f"experiment {self.id!r} was written by an older version of this app (store schema "
                f"{version if version is not None else 'unknown'}; this version reads schema "
                f"{SCHEMA_VERSION}) and cannot be opened: prepare it again with the same settings "
                f"(python -m core prepare ... --out {self.id} --force)")
        self._arrays: dict[str, np.ndarray] = {}

    @property
    def classes(self) -> list[str]:
        return self.manifest["classes"]

    @property
    def counts(self) -> dict:
        return self.manifest["counts"]

    def __len__(self) -> int:
        return int(self.manifest["counts"]["n_success"])

    @cached_property
    def pairs(self):
        import pandas as pd
        return pd.read_parquet(self.path / "pairs.parquet")

    def array(self, name: str) -> np.ndarray:
        """A per-pair or per-image array, memory-mapped (read-only)."""
        if name not in self._arrays:
            path = self.path / f"{name}.npy"
            if not re.fullmatch(r"[a-z_]+", name) or not path.is_file():
                raise StoreError(f"experiment {self.id!r} has no array {name!r}")
            self._arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
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
        with np.load(self.path / "class_stats.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def pair_images(self, pair: int) -> tuple[np.ndarray, np.ndarray]:
        """(benign, adversarial) of one pair as float32 (C,H,W) arrays in [0,1]."""
        return (self.array("benign_images")[pair].astype(np.float32) / 255.0,
                np.asarray(self.array("adversarial_images")[pair], dtype=np.float32))


def list_stores(cache_dir: str | Path = DEFAULT_CACHE) -> list[StoreInfo]:
    """Every folder under cache/ that looks like an experiment, with its manifest or why it can't open."""
    cache_dir = Path(cache_dir)
    out = []
    for p in sorted(cache_dir.iterdir()) if cache_dir.is_dir() else []:
        if not p.is_dir() or p.name.startswith(".") or not _ID.match(p.name):
            continue
        try:
            out.append(StoreInfo(p.name, p, Store(p).manifest))
        except StoreError as e:
            out.append(StoreInfo(p.name, p, None, str(e)))
    return out


def open_store(experiment_id: str, cache_dir: str | Path = DEFAULT_CACHE) -> Store:
    path = Path(cache_dir) / validate_id(experiment_id)
    if not path.is_dir():
        raise StoreError(f"no experiment {experiment_id!r} in {cache_dir}; `python -m core list` shows "
                         "what there is")
    return Store(path)


class StoreWriter:
    """Builds a store in ``cache/.partial-<id>/`` and publishes it with one rename.

    The partial folder survives a crash; a new writer for the same id and the same config resumes
    from it (``resumed`` is True), a different config starts it afresh.
    """

    def __init__(self, experiment_id: str, config_key: str, cache_dir: str | Path = DEFAULT_CACHE):
        self.id = validate_id(experiment_id)
        self.cache_dir = Path(cache_dir)
        self.final = self.cache_dir / self.id
        self.path = self.cache_dir / f".partial-{self.id}"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
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
        self.state = json.loads((self.path / "state.json").read_text()) \
            if (self.path / "state.json").is_file() else {}
        self.created: set[str] = set()  # arrays open_memmap had to create (not resumed)
        self.restarted = False  # set by prepare once a stage starts over: later stages must follow

    def work(self, name: str) -> Path:
        return self.path / "work" / name

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
        path = self.out(name)
        if path.is_file():
            try:
                arr = np.load(path, mmap_mode="r+", allow_pickle=False)
            except (OSError, ValueError, EOFError):
                arr = None
            if arr is not None and arr.shape == tuple(shape) and arr.dtype == np.dtype(dtype):
                return arr
        self.created.add(os.path.abspath(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(shape))

    def publish(self, manifest: dict, overwrite: bool = False) -> Path:
        """Write the manifest last, then rename the folder into place (atomic on one filesystem).

        The resume key goes first: once the work files start disappearing, a crash must make the next
        run start afresh rather than resume from a half-cleaned folder."""
        (self.path / "config_key").unlink(missing_ok=True)
        _fsync_dir(self.path)
        shutil.rmtree(self.path / "work", ignore_errors=True)
        (self.path / "state.json").unlink(missing_ok=True)
        atomic_write_json(self.out("manifest.json"), manifest)
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


def summary_row(manifest: dict) -> dict:
    """The figures the experiment list shows, from a manifest."""
    c, cfg = manifest["counts"], manifest["config"]
    return {"experiment": manifest["id"], "model": cfg["model"]["arch"], "dataset": manifest["dataset"],
            "classes": len(manifest["classes"]), "images": c["n_images"],
            "clean accuracy": round(c["clean_accuracy"], 4), "attacked": c["n_attacked"],
            "successful pairs": c["n_success"], "attack success": round(c["attack_success_rate"], 4),
            "ε": round(cfg["attack"]["eps"], 4), "steps": cfg["attack"]["steps"],
            "created": manifest["created"]}
