"""Server settings: the limits that keep one input from taking a shared server down, and the folders the
app may read. One decider for every bound (config validation, the data scan, checkpoint loading, the
Prepare page and its jobs all ask here).

Where the values come from, later ones winning:

1. the defaults below;
2. the TOML file ``$NVE_SERVER_CONFIG`` (default: ``nve-server.toml`` in the repository root, if present),
   one key per field of :class:`Settings`, e.g.::

       data_roots = ["/srv/datasets", "/srv/checkpoints"]
       max_jobs = 2
       max_image_size = 512

3. an environment variable per field, ``NVE_`` + the upper-case field name (``NVE_MAX_JOBS=2``;
   ``NVE_DATA_ROOTS`` is a list separated by ``os.pathsep``).

A value of the wrong type or out of range is ignored with a warning naming it (the default is used): a typo
in a unit file must not stop the server, nor loosen a bound.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
CONFIG_ENV = "NVE_SERVER_CONFIG"


@dataclass(frozen=True)
class Settings:
    # -- work one input may cause --
    max_image_size: int = 1024          # [data] image_size, and the side of any image that is read
    max_images: int = 200_000           # images one experiment may hold (files scanned, after per_class)
    max_classes: int = 2_000            # class folders / model outputs
    max_per_class: int = 100_000        # [data] per_class
    max_image_pixels: int = 50_000_000  # one decoded image (a "decompression bomb" PNG is refused)
    max_checkpoint_bytes: int = 2 << 30  # a checkpoint's tensors, once decompressed
    max_checkpoint_tensors: int = 20_000
    max_checkpoint_pickle_bytes: int = 4 << 20  # a checkpoint's pickled structure (data.pkl)
    max_scan_files: int = 1_000_000     # directory entries one dataset scan may visit
    # -- the Prepare page's jobs --
    max_jobs: int = 1                   # prepare jobs running at once on this server (each a process)
    min_free_disk_bytes: int = 256 << 20  # kept free on the cache's disk besides a store's estimate
    # -- the app's shared analytics (core.concurrency) --
    max_map_jobs: int = max(1, (os.cpu_count() or 1) // 2)  # vulnerability maps computed at once
    analysis_cache_mb: int = 256        # the in-memory cache of one open experiment (Analysis)
    # -- folders the Prepare page may read (datasets and checkpoints); the cache's .uploads is always in
    data_roots: tuple[str, ...] = field(default_factory=tuple)


_POSITIVE_INT = {f.name for f in dataclasses.fields(Settings) if f.type == "int"}


def _config_file() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or ROOT / "nve-server.toml")


def _coerce(name: str, value, source: str):
    """The value for field ``name`` from ``source``, or None (with a warning) when it is unusable."""
    if name in _POSITIVE_INT:
        number = value
        if isinstance(value, str):
            try:
                number = int(value.strip())
            except ValueError:
                number = None
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            log.warning("%s: %s=%r is not a positive integer; using the default", source, name, value)
            return None
        return number
    if name == "data_roots":
        if isinstance(value, str):
            value = [v for v in value.split(os.pathsep) if v.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            log.warning("%s: data_roots must be a list of folder paths; ignored", source)
            return None
        return tuple(str(Path(v).expanduser().resolve()) for v in value)
    log.warning("%s: unknown setting %r ignored", source, name)
    return None


@functools.cache
def _load(stamp: tuple) -> Settings:
    values: dict = {}
    path = _config_file()
    if path.is_file():
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            log.warning("server config %s is unreadable (%s); using the defaults", path, e)
            table = {}
        for name, value in table.items():
            if (v := _coerce(name, value, str(path))) is not None:
                values[name] = v
    for f in dataclasses.fields(Settings):
        raw = os.environ.get(f"NVE_{f.name.upper()}", "")
        if raw.strip() and (v := _coerce(f.name, raw, f"NVE_{f.name.upper()}")) is not None:
            values[f.name] = v
    return Settings(**values)


def settings() -> Settings:
    """The current settings (re-read when the environment or the config file's path changes, so tests
    can set ``NVE_*`` variables)."""
    names = [CONFIG_ENV] + [f"NVE_{f.name.upper()}" for f in dataclasses.fields(Settings)]
    path = _config_file()
    mtime = path.stat().st_mtime_ns if path.is_file() else 0
    return _load(tuple(os.environ.get(n) for n in names) + (mtime,))
