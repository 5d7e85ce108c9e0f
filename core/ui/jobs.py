"""Preparing experiments from the app: background ``prepare`` jobs, and the prepare form's pure helpers.

Jobs. ``start`` runs ``core.pipeline.prepare`` in a daemon thread of the Streamlit server and returns at
once, so the page that started it, the user's other pages and other users' sessions keep working; the
page polls the job's progress. The registry is process-wide (a module-level dict under a lock), keyed
by (cache folder, experiment id): every session sees every job, and one id cannot be started twice in
this server; ``prepare`` itself holds a file lock per id, so a second server or the CLI cannot write the
same store at the same time either (its error says so). A crash or a server stop leaves only
``cache/.partial-<id>/``, never a half store; starting the same id with the same settings again resumes.

Form helpers (no Streamlit): the class names of a data source, a checked image folder, checkpoint uploads
saved under a content-addressed name, a config built from a preset plus the form's values, and a model
check that loads the checkpoint with the project's safe loader before any long run starts.
"""
from __future__ import annotations

import copy
import hashlib
import os
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from core import models
from core.config import ConfigError, ExperimentConfig
from core.data import CIFAR10_CLASSES, FASHION_MNIST_CLASSES, DataError
from core.models import ARCHITECTURES, CHECKPOINT_SUFFIXES, ModelError
from core.pipeline import STAGES, PrepareError
from core.presets import PRESETS
from core.store import StoreError, validate_id

USER_ERRORS = (ConfigError, DataError, ModelError, StoreError, PrepareError)
UPLOADS = ".uploads"  # under the cache folder; hidden names are never listed as experiments
MAX_UPLOAD_BYTES = 512 * 2**20  # the page passes Streamlit's server.maxUploadSize instead
STAGE_TEXT = {"load": "loading the dataset and the model", "clean": "predicting every image",
              "attack": "attacking the correctly classified images", "features":
              "recording the neurons' activations", "statistics": "per-class statistics",
              "maps": "precomputing vulnerability maps", "tsne": "laying out the t-SNE maps",
              "publish": "writing the experiment"}


# -- jobs ----------------------------------------------------------------------------------------------
@dataclass
class Job:
    """One prepare run. ``stage``/``done``/``total`` are the latest progress report (``done``/``total``
    items of ``stage``); ``finished`` is set last, after ``path`` or ``error``."""
    experiment: str
    cache_dir: str
    stage: str = "load"
    done: int = 0
    total: int = 0
    error: str | None = None
    path: str | None = None
    finished: bool = False
    started: float = field(default_factory=time.time)
    ended: float | None = None
    log: list[str] = field(default_factory=list)
    thread: threading.Thread | None = field(default=None, repr=False, compare=False)

    @property
    def running(self) -> bool:
        return not self.finished

    @property
    def ok(self) -> bool:
        return self.finished and self.error is None

    @property
    def fraction(self) -> float:
        """Progress of the current stage in [0, 1]."""
        return min(1.0, self.done / self.total) if self.total else 0.0

    def describe(self) -> str:
        step = STAGES.index(self.stage) + 1 if self.stage in STAGES else 0
        what = STAGE_TEXT.get(self.stage, self.stage)
        count = f": {self.done:,} of {self.total:,}" if self.total else ""
        return f"Step {step} of {len(STAGES)}, {what}{count}"

    def elapsed(self) -> float:
        return (self.ended or time.time()) - self.started


_JOBS: dict[tuple[str, str], Job] = {}
_LOCK = threading.Lock()


def _key(experiment_id: str, cache_dir) -> tuple[str, str]:
    return str(Path(cache_dir).resolve()), experiment_id


def get(experiment_id: str, cache_dir) -> Job | None:
    with _LOCK:
        return _JOBS.get(_key(experiment_id, cache_dir))


def running(cache_dir) -> list[Job]:
    """The jobs still running for this cache folder (any session's)."""
    folder = str(Path(cache_dir).resolve())
    with _LOCK:
        return [j for (c, _), j in _JOBS.items() if c == folder and j.running]


def start(cfg: ExperimentConfig, experiment_id: str, cache_dir, *,
          prepare_fn: Callable | None = None) -> Job:
    """Start preparing ``experiment_id`` in the background; a StoreError if the id is invalid, the
    experiment exists already, or this server is preparing it now."""
    validate_id(experiment_id)
    if (Path(cache_dir) / experiment_id).exists():
        raise StoreError(f"experiment {experiment_id!r} already exists; choose another id")
    if prepare_fn is None:
        from core.pipeline import prepare as prepare_fn
    with _LOCK:
        old = _JOBS.get(_key(experiment_id, cache_dir))
        if old is not None and old.running:
            raise StoreError(f"experiment {experiment_id!r} is already being prepared (started "
                             f"{old.elapsed():.0f} s ago); wait for it to finish")
        job = Job(experiment_id, str(cache_dir))
        job.thread = threading.Thread(target=_run, args=(job, cfg, prepare_fn), daemon=True,
                                      name=f"prepare-{experiment_id}")
        _JOBS[_key(experiment_id, cache_dir)] = job
        job.thread.start()
    return job


def _run(job: Job, cfg: ExperimentConfig, prepare_fn: Callable) -> None:
    def progress(stage: str, done: int, total: int) -> None:
        job.stage, job.done, job.total = stage, int(done), int(total)

    try:
        path = prepare_fn(cfg, job.experiment, cache_dir=job.cache_dir, progress=progress, show_bars=False,
                          log=job.log.append)
        job.path = str(path)
    except USER_ERRORS as e:
        job.error = str(e)
    except Exception as e:  # anything else is a bug or the machine (memory, disk): still tell the user
        job.error = f"unexpected {type(e).__name__}: {e}"
        job.log.append(traceback.format_exc())
    finally:
        job.ended = time.time()
        job.finished = True


# -- form helpers ---------------------------------------------------------------------------------------
def check_folder(root: str | Path | None) -> list[str]:
    """The class names (sorted sub-folder names, as ``core.data.image_folder``) of an image folder,
    or a DataError that says what is wrong with the path."""
    if not root or not str(root).strip():
        raise DataError("enter the dataset folder: a folder holding one sub-folder of images per class")
    path = Path(str(root).strip()).expanduser()
    if not path.exists():
        raise DataError(f"the dataset folder {path} does not exist (the path is read on the server)")
    if not path.is_dir():
        raise DataError(f"{path} is a file, not a folder; enter the folder that holds the class folders")
    if not os.access(path, os.R_OK | os.X_OK):
        raise DataError(f"the dataset folder {path} cannot be read (permissions)")
    classes = sorted(d.name for d in os.scandir(path) if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{path} has no class folders: put the images in one sub-folder per class, "
                        "e.g. cats/001.jpg, dogs/001.jpg")
    return classes


def dataset_classes(source: str, root: str | None) -> list[str]:
    """Every class name of a data source (the model's output order)."""
    if source in ("demo", "fashion_mnist"):
        return list(FASHION_MNIST_CLASSES)
    if source == "cifar10":
        if not root or not Path(str(root)).expanduser().is_dir():
            raise DataError(f"the CIFAR-10 folder {root or '(empty)'} does not exist")
        return list(CIFAR10_CLASSES)
    if source == "image_folder":
        return check_folder(root)
    raise DataError(f"unknown data source {source!r}")


def checkpoint_suffix(filename: str) -> str:
    """The checkpoint type of an uploaded file's name (the name itself is never used as a path)."""
    lower = filename.lower()
    for suffix in sorted(CHECKPOINT_SUFFIXES, key=len, reverse=True):  # .pth.tar before .tar
        if lower.endswith(suffix):
            return suffix
    raise ModelError(f"{filename}: unsupported checkpoint type; use one of {', '.join(CHECKPOINT_SUFFIXES)}")


def save_upload(data: bytes, filename: str, cache_dir, max_bytes: int = MAX_UPLOAD_BYTES) -> Path:
    """Keep an uploaded checkpoint as ``<cache>/.uploads/<sha256><suffix>`` (content-addressed, written
    atomically) after checking its type (by the name's suffix: the name itself is never a path), its size
    (1 byte to ``max_bytes``) and that it loads as plain weights (``core.models.load_state_dict``); a
    file that does not is removed and its ModelError raised."""
    suffix = checkpoint_suffix(filename)
    if not data:
        raise ModelError(f"{filename}: the uploaded file is empty; upload the checkpoint again")
    if len(data) > max_bytes:
        raise ModelError(f"{filename}: {len(data) / 2**20:.0f} MB is more than the "
                         f"{max_bytes / 2**20:.0f} MB an upload may have; put the checkpoint on the server "
                         "and give its path instead")
    folder = Path(cache_dir) / UPLOADS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(data).hexdigest()}{suffix}"
    if not path.is_file():
        tmp = folder / f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}"
        tmp.write_bytes(data)
        os.replace(tmp, path)
    try:
        models.load_state_dict(path)
    except ModelError:
        path.unlink(missing_ok=True)
        raise
    return path


def default_normalization(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The registry's (mean, std) for an architecture."""
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


def check_model(cfg: ExperimentConfig) -> None:
    """Build the architecture and load the checkpoint into it (strict, safe): a ModelError now rather
    than after minutes of work."""
    if not cfg.model.checkpoint:
        raise ModelError("choose the model's checkpoint (a weights file): without one the model would "
                         "have random weights and explain nothing")
    m = cfg.model
    net = models.build_architecture(m.arch, m.num_classes, m.in_channels, m.width)
    models.load_weights(net, models.load_state_dict(m.checkpoint), source=f"checkpoint {m.checkpoint}")


def suggest_id(name: str, cache_dir) -> str:
    """``name``, or ``name-2``, ``name-3``... whichever is free in the cache folder."""
    base = "".join(c if c.isalnum() or c in "._-" else "-" for c in name).strip(".-_")[:56] or "experiment"
    candidate, k = base, 2
    while (Path(cache_dir) / candidate).exists() or (Path(cache_dir) / f".partial-{candidate}").exists():
        candidate, k = f"{base}-{k}", k + 1
    return candidate
