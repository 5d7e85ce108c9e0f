"""``prepare``: turn a model and a dataset into an experiment store (paper §5.1, §6 set-up).

Stages, one function each (``_load``, ``_clean_stage`` ... ``_tsne_stage``, then ``pair_table`` and
``build_manifest``), each with a tqdm bar and the same progress sent to ``progress(stage, done, total)``:

0. ``load``: check the config, scan the dataset, load the model, open (or resume) the partial store.
1. ``clean``: predict every image (fp32); keep the correctly classified ones.
2. ``attack``: attack them (``[attack] method``, from ``core.attacks.ATTACKS``; PGD by default); success is
   decided by an fp32 forward pass, whatever precision the search used; with a bf16 search, images that
   fail are attacked again in fp32.
3. ``features``: logits, probabilities, pooled activations and last-conv maps of every successful
   benign/adversarial pair (fp32; the maps are stored as float16).
4. ``statistics``: per-class statistics of the pooled activations (the band-gap input).
5. ``maps``: the vulnerability maps of ``[prepare] maps`` pairs (paper §8), if any.
6. ``tsne``: the benign and the adversarial t-SNE layouts.
7. ``publish``: the pair table and the manifest, then one rename makes the store visible.

The heavy stages (clean, attack, features, maps) are cut into chunks; each chunk is a typed task
(``CleanTask``, ``AttackTask``, ``FeaturesTask``, ``MapsTask``) that a ``Context`` computes, in this
process or on a Ray worker (``core.distributed``).

Chunked stages record how far they got, so an interrupted prepare (Ctrl-C, kill -9, power loss)
resumes where it stopped when run again with the same config and id; statistics and t-SNE are redone.
A stage whose output files are missing or cut short starts over, and so do the stages after it. A
kill while publishing (after the resume key is dropped) makes the next run start afresh. Nothing is
visible in the cache until the final rename (tests/reliability/test_crash_safety.py kills it at each
stage through ``core.store.pause_point``).

Inputs that cannot give an experiment are refused with the fix: eps = 0, a model that classifies no
image correctly, an attack that succeeds on none, NaN or infinite outputs (a store of no pairs would
have nothing to explore).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core import attacks, vulnerability
from core import data as datasets
from core import device as devices
from core.config import ExperimentConfig
from core.features import extract
from core.map_settings import MapSettings
from core.model_cards import resolve as resolve_model
from core.models import ExplainedModel, ModelError, check_checkpoint, load_model, model_fingerprint
from core.neuron_measures import class_statistics
from core.projection import tsne
from core.store import (
    PAIR_COLUMNS,
    SCHEMA_VERSION,
    StoreError,
    StoreWriter,
    check_writable,
    is_disk_full,
    pause_point,
    save_npy,
    validate_id,
)
from core.store import (
    cache_dir as default_cache_dir,
)

ProgressFn = Callable[[str, int, int], None]
STAGES = ("load", "clean", "attack", "features", "statistics", "maps", "tsne", "publish")


# -- tasks: one chunk of a heavy stage, computed by a Context (here, or on a Ray worker) ---------------
@dataclass(frozen=True, eq=False)
class CleanTask:
    """Clean logits and pooled activations of the images at dataset positions ``pos``."""
    pos: np.ndarray

    def run(self, ctx: Context) -> dict:
        return ctx.clean(self.pos)


@dataclass(frozen=True, eq=False)
class AttackTask:
    """The adversarial images and their fp32 predictions of the images at ``pos``; ``seed`` seeds any
    noise the attack draws (fixed per chunk: a resumed or sharded run attacks every chunk the same)."""
    pos: np.ndarray
    seed: int

    def run(self, ctx: Context) -> dict:
        return ctx.attack(self.pos, self.seed)


@dataclass(frozen=True, eq=False)
class FeaturesTask:
    """Images and features of both sides of the pairs whose benign images are at ``pos`` and whose
    adversarial images are ``adv``."""
    pos: np.ndarray
    adv: np.ndarray

    def run(self, ctx: Context) -> dict:
        return ctx.features(self.pos, self.adv)


@dataclass(frozen=True, eq=False)
class MapsTask:
    """The vulnerability maps of one pair (benign image at ``pos``, adversarial image ``adv``) with the
    resolved map ``settings``."""
    pos: int
    adv: np.ndarray
    label: int
    adv_label: int
    settings: MapSettings

    def run(self, ctx: Context) -> np.ndarray:
        return ctx.maps(self.pos, self.adv, self.label, self.adv_label, self.settings)


Task = CleanTask | AttackTask | FeaturesTask | MapsTask
# A runner computes tasks in order: run(iterable of tasks) -> iterator of results, one per task, in the
# same order (Context.run_all here; core.distributed.RayRunner over a cluster).
Runner = Callable[[Iterable[Task]], Iterator[Any]]


class PrepareError(RuntimeError):
    """prepare cannot go on; the message says why and what to change."""


class _Bar:
    """One stage's progress: a tqdm bar and the caller's callback."""

    def __init__(self, stage: str, total: int, callback: ProgressFn | None, show: bool, start: int = 0,
                 unit: str = "img"):
        from tqdm.auto import tqdm
        self.stage, self.total, self.callback, self.done = stage, total, callback, start
        self.bar = tqdm(total=total, initial=start, desc=f"{stage:>10}", unit=unit, disable=not show)
        self._report()

    def advance(self, n: int) -> None:
        self.done += n
        self.bar.update(n)
        self._report()

    def _report(self) -> None:
        if self.callback:
            self.callback(self.stage, self.done, self.total)

    def close(self) -> None:
        self.bar.close()


def prepare(cfg: ExperimentConfig, experiment_id: str, *, cache_dir: str | Path | None = None,
            overwrite: bool = False, progress: ProgressFn | None = None, show_bars: bool = True,
            log: Callable[[str], None] = lambda s: None, runner: Runner | None = None,
            dataset: datasets.ImageSet | None = None, model: ExplainedModel | None = None) -> Path:
    """Build ``cache_dir/experiment_id`` (None: ``core.store.cache_dir()``) from ``cfg``; return its path.
    Resumes an interrupted run.

    ``runner``: where the chunks of the clean, attack, features and maps stages are computed; None =
    in this process (``Context.run_all``); ``core.distributed.RayRunner`` shards them over a Ray
    cluster. Either way this process writes the one store, in chunk order.

    ``dataset``, ``model``: an in-memory image set and model used instead of reading ``cfg.data`` and
    loading ``cfg.model`` (``core.notebook.prepare_experiment``); ``cfg.model`` must still name a file
    holding that model (the app reloads it from there), and ``cfg`` is still what the manifest records.
    They cannot be sharded over Ray (a worker builds its context from ``cfg``).

    Disk: the free space of the cache's disk is checked against an estimate of the store (at most) plus
    ``core.hosting.settings().min_free_disk_bytes`` before the first write; a disk that fills up anyway
    (another writer) ends the run with one PrepareError saying how much to free, and the partial folder
    resumes once space is freed (memory-mapped arrays are preallocated: never a SIGBUS)."""
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    disk: dict = {}  # what _prepare knows for a disk-full message: the writer, the store's estimate
    try:
        return _prepare(cfg, experiment_id, cache_dir=cache_dir, overwrite=overwrite, progress=progress,
                        show_bars=show_bars, log=log, runner=runner, disk=disk, dataset=dataset, model=model)
    except OSError as e:
        if not is_disk_full(e):
            raise
        if (w := disk.get("writer")) is not None:
            w.release()  # the lock: a retry in this process (the app's job, a test) must not wait for GC
        raise PrepareError(_disk_full_message(Path(cache_dir), disk)) from None


def _free_bytes(cache: Path) -> int:
    return shutil.disk_usage(cache).free


def _allocated_bytes(folder: Path) -> int:
    """Disk space the files under ``folder`` occupy (their allocated blocks: preallocated arrays count
    in full)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def _mb(n: int) -> str:
    return f"{max(n, 0) / 2**20:,.0f}" if n >= 2**20 else f"{max(n, 0) / 2**20:.1f}"


def store_size_estimate(n_images: int, shape: tuple[int, ...], num_classes: int, num_neurons: int,
                        fmap_size: tuple[int, int], maps: int = 0) -> int:
    """Bytes a store (with its work files) takes at most: as if every image were a successful pair."""
    n, px, k, nn = n_images, int(np.prod(shape)), num_classes, num_neurons
    fm = nn * int(np.prod(fmap_size))
    per_image = k * 4 + nn * 4 + 3 * 8          # clean pass: logits, pooled; indices, labels, predictions
    per_image += px * 4 + 8                     # work: adversarial images, their predictions
    per_image += px * (1 + 4) + 2 * (2 * k * 4 + nn * 4 + fm * 2)  # per pair: images, features, maps
    per_image += len(PAIR_COLUMNS) * 8          # the pair table
    stats = 2 * k * nn * 4 * 16                 # class statistics (mean, std, 11 quantiles ...)
    return n * per_image + stats + maps * 2 * px * 4 + (4 << 20)  # + manifest, headers, derived/


def _check_disk(w: StoreWriter, estimate: int) -> None:
    """Refuse to start when the cache's disk lacks room for the store (what a resumed partial folder
    already holds counts as written) plus the free space the server keeps."""
    from core.hosting import settings
    keep = settings().min_free_disk_bytes
    more = max(estimate - (_allocated_bytes(w.path) if w.resumed else 0), 0)
    free = _free_bytes(w.cache_dir)
    if free < more + keep:
        w.release()
        raise PrepareError(
            f"not enough free disk for experiment {w.id!r}: it needs up to {_mb(more)} MB more, and "
            f"{_mb(keep)} MB must stay free, but the disk of {w.cache_dir} has {_mb(free)} MB free: free "
            f"{_mb(more + keep - free)} MB there, or choose another cache folder")


def _disk_full_message(cache: Path, disk: dict) -> str:
    from core.hosting import settings
    keep = settings().min_free_disk_bytes
    w, estimate = disk.get("writer"), disk.get("estimate")
    try:
        free = _free_bytes(cache)
        more = max(estimate - _allocated_bytes(w.path), 0) if w is not None and estimate else 0
    except OSError:
        free, more = 0, 0
    need = max(more + keep - free, 1 << 20)
    resume = ("run the same command again to resume where it stopped" if w is not None
              else "run the same command again")
    return f"the disk of {cache} is full: free {_mb(need)} MB and {resume}"


def _prepare(cfg: ExperimentConfig, experiment_id: str, *, cache_dir: str | Path, overwrite: bool,
             progress: ProgressFn | None, show_bars: bool, log: Callable[[str], None], runner: Runner | None,
             disk: dict, dataset: datasets.ImageSet | None = None,
             model: ExplainedModel | None = None) -> Path:
    """``prepare``'s work, stage by stage; ``disk`` receives the writer and the store's size estimate once
    known."""
    t0 = time.time()
    job = _load(cfg, experiment_id, cache_dir=cache_dir, overwrite=overwrite, progress=progress,
                show_bars=show_bars, log=log, runner=runner, disk=disk, dataset=dataset, model=model)
    job.timings["load"] = time.time() - t0
    clean = job.timed("clean", _clean_stage, job)
    attacked = job.timed("attack", _attack_stage, job, clean)
    out = job.timed("features", _features_stage, job, attacked)
    labels, adv_labels = job.timed("statistics", _statistics_stage, job, clean, attacked, out)
    maps_info = job.timed("maps", _maps_stage, job, attacked, labels, adv_labels)
    coords = job.timed("tsne", _tsne_stage, job, out)
    t = time.time()
    table = pair_table(job, attacked, out, labels, adv_labels, coords)
    table.to_parquet(job.w.out("pairs.parquet"), index=False)
    manifest = build_manifest(job, clean, attacked, maps_info)
    job.timings["publish"] = time.time() - t
    job.timings["total"] = time.time() - t0
    pause_point("publish")
    path = job.w.publish(manifest, overwrite=overwrite)
    counts = manifest["counts"]
    log(f"wrote {path}: {attacked.n} successful pairs of {clean.n_correct} attacked ({counts['n_images']} "
        f"images, clean accuracy {counts['clean_accuracy']:.4f}, attack success "
        f"{counts['attack_success_rate']:.4f}) in {job.timings['total']:.0f}s")
    return path


@dataclass
class _Job:
    """What every stage of one ``prepare`` shares: the config, the compute context, the store being
    written, the runner of chunks, the chunk size, progress reporting and the stages' timings."""
    cfg: ExperimentConfig
    experiment_id: str
    ctx: Context
    w: StoreWriter
    run: Runner
    fingerprints: dict
    progress: ProgressFn | None
    show_bars: bool
    timings: dict[str, float]

    @property
    def chunk(self) -> int:
        return self.ctx.batch * 4  # resume granularity of the chunked stages (and the unit of a shard)

    def timed(self, stage: str, fn: Callable[..., Any], *args) -> Any:
        """``fn(*args)``, its wall time recorded as ``timings[stage]``."""
        t = time.time()
        result = fn(*args)
        self.timings[stage] = time.time() - t
        return result

    def chunked(self, stage: str, total: int, chunk: int, task: Callable[[np.ndarray], Task],
                write: Callable[[np.ndarray, Any], None], arrays: list[np.ndarray],
                unit: str = "img") -> None:
        """``_chunked`` with this job's writer, runner and progress."""
        _chunked(self.w, stage, total, chunk, self.run, task, write, arrays, self.progress, self.show_bars,
                 unit=unit)


def _load(cfg: ExperimentConfig, experiment_id: str, *, cache_dir: str | Path, overwrite: bool,
          progress: ProgressFn | None, show_bars: bool, log: Callable[[str], None], runner: Runner | None,
          disk: dict, dataset: datasets.ImageSet | None = None, model: ExplainedModel | None = None) -> _Job:
    """Stage ``load``: check what can be checked cheaply, scan the dataset (or take ``dataset``), load the
    model (or take ``model``), open (or resume) the partial store and check the disk."""
    cfg.validate()
    if runner is not None and (dataset is not None or model is not None):
        raise PrepareError("an in-memory dataset or model cannot be sharded over Ray (each worker reads "
                           "[data] and [model] itself); run without a runner")
    final = Path(cache_dir) / validate_id(experiment_id)
    if final.exists() and not overwrite:
        raise StoreError(f"experiment {experiment_id!r} already exists in {cache_dir}; "
                         "use --force to rebuild it or --out to choose another id")
    if cfg.attack.eps == 0:
        raise PrepareError("[attack] eps = 0 leaves every image unchanged, so no attack can succeed and "
                           "there would be nothing to explain; set eps > 0 (e.g. 8/255 = 0.0314 for "
                           "CIFAR-10, 0.1 for Fashion-MNIST)")
    _check_checkpoint(cfg)  # before the dataset scan, which can take minutes
    # [model] keys left out, decided once (the card, the file, the defaults): the scan converts to the
    # model's channels, and the cache key hashes the decided config (unchanged for earlier configs)
    cfg.model = resolve_model(cfg.model)
    check_writable(Path(cache_dir))  # a read-only cache: said now, not after the scan
    ctx = Context.build(cfg, log=log, dataset=dataset, model=model)
    ds, model = ctx.ds, ctx.model
    fingerprints = {"dataset": ds.fingerprint(), "model": model_fingerprint(cfg.model)}
    key = hashlib.sha256(json.dumps([SCHEMA_VERSION, cfg.to_dict(), fingerprints], sort_keys=True,
                                    default=str).encode()).hexdigest()
    w = StoreWriter(experiment_id, key, cache_dir)
    disk["writer"] = w
    disk["estimate"] = store_size_estimate(len(ds), ctx.shape, model.num_classes, model.num_neurons,
                                           tuple(model.fmap_size), cfg.prepare.maps)
    _check_disk(w, disk["estimate"])
    if w.resumed:
        done = ", ".join(f"{k.removesuffix('_done')} {v}" for k, v in w.state.items() if k.endswith("_done"))
        log(f"resuming the interrupted prepare of {experiment_id!r} from {w.path} "
            f"(items already done: {done or 'none'})")
    return _Job(cfg, experiment_id, ctx, w, runner if runner is not None else ctx.run_all, fingerprints,
                progress, show_bars, {})


@dataclass
class _Clean:
    """Stage ``clean``'s output: every image's logits and pooled activations (memory-mapped), labels,
    predictions, and the positions of the correctly classified images."""
    logits: np.ndarray
    pooled: np.ndarray
    labels: np.ndarray
    pred: np.ndarray
    correct: np.ndarray

    @property
    def n_correct(self) -> int:
        return len(self.correct)


def _clean_stage(job: _Job) -> _Clean:
    """Stage ``clean``: predict every image (fp32); keep the correctly classified ones."""
    ds, model = job.ctx.ds, job.ctx.model
    n_all = len(ds)
    logits_all = job.w.open_memmap("dataset_logits.npy", (n_all, model.num_classes), np.float32)
    pooled_all = job.w.open_memmap("dataset_pooled.npy", (n_all, model.num_neurons), np.float32)

    def write(pos: np.ndarray, r: dict) -> None:
        logits_all[pos], pooled_all[pos] = r["logits"], r["pooled"]

    job.chunked("clean", n_all, job.chunk, CleanTask, write, [logits_all, pooled_all])
    labels_all = np.asarray(ds.labels, dtype=np.int64)
    pred_all = np.asarray(logits_all).argmax(1)
    correct = np.flatnonzero(pred_all == labels_all)
    if len(correct) == 0:
        raise PrepareError(f"the model classifies none of the {n_all} images correctly, so there is "
                           "nothing to attack: check that the checkpoint fits this dataset, that "
                           "[model] mean/std are its normalization, and that the class folders sort "
                           "into the model's class order")
    return _Clean(logits_all, pooled_all, labels_all, pred_all, correct)


@dataclass
class _Attacked:
    """Stage ``attack``'s output: the adversarial images and predictions of the correct images
    (memory-mapped), which of them succeeded, and the dataset positions of the successful pairs."""
    images: np.ndarray
    pred: np.ndarray
    success: np.ndarray
    pairs_pos: np.ndarray

    @property
    def n(self) -> int:
        return len(self.pairs_pos)


def _attack_stage(job: _Job, clean: _Clean) -> _Attacked:
    """Stage ``attack``: attack the correct images; success is decided by an fp32 forward pass."""
    cfg, correct, nc = job.cfg, clean.correct, clean.n_correct
    adv_all = job.w.open_memmap("work/adv_images.npy", (nc, *job.ctx.shape), np.float32)
    adv_pred = job.w.open_memmap("work/adv_pred.npy", (nc,), np.int64)

    def write(sel: np.ndarray, r: dict) -> None:
        adv_all[sel], adv_pred[sel] = r["adv"], r["pred"]

    job.chunked("attack", nc, job.chunk, lambda sel: AttackTask(correct[sel], cfg.prepare.seed + int(sel[0])),
                write, [adv_all, adv_pred])
    success = np.flatnonzero(np.asarray(adv_pred) != clean.labels[correct])
    if len(success) == 0:
        a = cfg.attack
        # A store of no pairs would have nothing to explore: say so now (the attack's results stay in
        # the partial folder, so the same command fails fast; a stronger attack starts afresh).
        raise PrepareError(
            f"the attack ({a.method}, eps = {a.eps:.4g}, {a.steps} steps) succeeded on none of the {nc} "
            "correctly classified images, so there are no benign/adversarial pairs to explain; use a "
            "stronger attack: raise [attack] eps or steps (the paper: pgd, eps = 8/255, 7 steps)")
    return _Attacked(adv_all, adv_pred, success, correct[success])


def _features_stage(job: _Job, attacked: _Attacked) -> dict[str, np.ndarray]:
    """Stage ``features``: images, logits, probabilities, pooled activations and last-conv maps of both
    images of every successful pair (memory-mapped store arrays, by file name without ``.npy``)."""
    model, shape, n = job.ctx.model, job.ctx.shape, attacked.n
    h, wd = model.fmap_size
    arrays = {"benign_images": ((n, *shape), np.uint8),
              "adversarial_images": ((n, *shape), np.float32)}
    for side in ("benign", "adversarial"):
        arrays |= {f"{side}_logits": ((n, model.num_classes), np.float32),
                   f"{side}_probs": ((n, model.num_classes), np.float32),
                   f"{side}_pooled": ((n, model.num_neurons), np.float32),
                   f"{side}_fmaps": ((n, model.num_neurons, h, wd), np.float16)}
    out = {k: job.w.open_memmap(f"{k}.npy", s, d) for k, (s, d) in arrays.items()}

    def write(sel: np.ndarray, r: dict) -> None:
        for k, v in r.items():
            out[k][sel] = v

    job.chunked("features", n, job.chunk,
                lambda sel: FeaturesTask(attacked.pairs_pos[sel],
                                         np.asarray(attacked.images[attacked.success[sel]])),
                write, list(out.values()))
    return out


def _statistics_stage(job: _Job, clean: _Clean, attacked: _Attacked,
                      out: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stage ``statistics``: per-class statistics of the pooled activations (the band-gap input) and the
    dataset's indices, labels and predictions. Returns the pairs' true and adversarial labels."""
    ds, num_classes = job.ctx.ds, job.ctx.model.num_classes
    labels = clean.labels[attacked.pairs_pos]
    adv_labels = np.asarray(out["adversarial_logits"]).argmax(1) if attacked.n else np.zeros(0, np.int64)
    if not np.array_equal(adv_labels, np.asarray(attacked.pred)[attacked.success]):
        raise PrepareError("the adversarial predictions changed between the attack and the feature "
                           "pass: the model is not deterministic; rerun with [prepare] device = cpu")
    stats = {f"benign_{k}": v for k, v in class_statistics(
        np.asarray(clean.pooled)[clean.correct], clean.labels[clean.correct], num_classes).items()}
    stats |= {f"adversarial_{k}": v for k, v in class_statistics(
        np.asarray(out["adversarial_pooled"]), adv_labels, num_classes).items()}
    np.savez(job.w.out("class_stats.npz"), **stats)
    pause_point("statistics")
    for name, arr in (("dataset_indices", ds.indices), ("dataset_labels", clean.labels),
                      ("dataset_pred", clean.pred)):
        save_npy(job.w.out(f"{name}.npy"), np.asarray(arr, dtype=np.int64))
    return labels, adv_labels


def _maps_stage(job: _Job, attacked: _Attacked, labels: np.ndarray, adv_labels: np.ndarray) -> dict | None:
    """Stage ``maps``: the vulnerability maps of the first ``[prepare] maps`` pairs in ``maps_order``
    (paper §8); their settings for the manifest, or None when there are none."""
    p, shape = job.cfg.prepare, job.ctx.shape
    map_pairs = maps_order(labels, adv_labels)[:p.maps]
    if not len(map_pairs):
        return None
    s = MapSettings.resolve(shape[1:], job.ctx.device, stride=p.maps_stride or None, output=p.maps_output,
                            precision=p.maps_precision)
    maps_dir = job.w.out("vulnerability_maps")
    maps_dir.mkdir(exist_ok=True)

    def task(sel: np.ndarray) -> MapsTask:
        i = int(map_pairs[sel[0]])
        return MapsTask(int(attacked.pairs_pos[i]), np.asarray(attacked.images[attacked.success[i]]),
                        int(labels[i]), int(adv_labels[i]), s)

    def write(sel: np.ndarray, r: np.ndarray) -> None:
        i = int(map_pairs[sel[0]])
        save_npy(maps_dir / s.file_name(i), r)

    job.chunked("maps", len(map_pairs), 1, task, write, [], unit="pair")
    return {"pairs": [int(i) for i in map_pairs], "k": s.k, "stride": s.stride, "output": s.output,
            "precision": s.precision}


def _tsne_stage(job: _Job, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stage ``tsne``: the benign and the adversarial t-SNE layouts of the pairs' pooled activations."""
    bar = _Bar("tsne", 2, job.progress, job.show_bars, unit="layout")
    coords = {}
    for side in ("benign", "adversarial"):
        coords[side] = tsne(np.asarray(out[f"{side}_pooled"]), perplexity=job.cfg.prepare.tsne_perplexity,
                            seed=job.cfg.prepare.seed)
        bar.advance(1)
        pause_point(f"tsne:{side}")
    bar.close()
    return coords


def pair_table(job: _Job, attacked: _Attacked, out: dict[str, np.ndarray], labels: np.ndarray,
               adv_labels: np.ndarray, coords: dict[str, np.ndarray]):
    """The store's pair table (``PAIR_COLUMNS``): one row per successful pair."""
    import pandas as pd
    n, chunk = attacked.n, job.chunk
    bp, ap = np.asarray(out["benign_probs"]), np.asarray(out["adversarial_probs"])
    l2, linf = np.empty(n, np.float32), np.empty(n, np.float32)
    for lo in range(0, n, chunk):  # chunks: at 224 px the images of 20,000 pairs are 12 GB
        hi = min(lo + chunk, n)
        delta = (np.asarray(out["adversarial_images"][lo:hi]).reshape(hi - lo, -1)
                 - np.asarray(out["benign_images"][lo:hi]).reshape(hi - lo, -1).astype(np.float32) / 255)
        l2[lo:hi], linf[lo:hi] = np.linalg.norm(delta, axis=1), np.abs(delta).max(1, initial=0)
    rows = np.arange(n)
    table = pd.DataFrame({
        "pair": rows, "index": np.asarray(job.ctx.ds.indices)[attacked.pairs_pos], "label": labels,
        "benign_prob": bp[rows, labels], "adv_label": adv_labels, "adv_prob": ap[rows, adv_labels],
        "benign_prob_adv": ap[rows, labels], "adv_prob_benign": bp[rows, adv_labels],
        "l2": l2, "linf": linf,
        "tsne_benign_x": coords["benign"][:, 0], "tsne_benign_y": coords["benign"][:, 1],
        "tsne_adv_x": coords["adversarial"][:, 0], "tsne_adv_y": coords["adversarial"][:, 1]})
    assert list(table.columns) == list(PAIR_COLUMNS)
    return table


def build_manifest(job: _Job, clean: _Clean, attacked: _Attacked, maps_info: dict | None) -> dict:
    """The store's manifest: the config, fingerprints, dataset and model facts, the attack's run
    settings, the counts, versions and ``timings_s`` (the job's timings dict itself, which the stages
    after this one still fill in before publishing)."""
    ctx, cfg = job.ctx, job.cfg
    ds, model = ctx.ds, ctx.model
    n_images, nc, n = len(ds), clean.n_correct, attacked.n
    return {
        "schema_version": SCHEMA_VERSION, "id": job.experiment_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": cfg.to_dict(), "fingerprints": job.fingerprints, "dataset": ds.name,
        "classes": list(ds.classes), "input_shape": list(ctx.shape),
        "model": {"feature_layer": model.feature_layer, "head": model.head, "head_type": model.head_type,
                  "num_neurons": model.num_neurons, "fmap_size": list(model.fmap_size),
                  "num_classes": model.num_classes},
        "attack": {"precision": ctx.precision, "device": str(ctx.device), "batch_size": ctx.batch,
                   "workers": getattr(job.run, "workers", 1)},
        "vulnerability_maps": maps_info,
        "counts": {"n_images": n_images, "n_correct": int(nc), "n_attacked": int(nc),
                   "n_success": int(n), "n_skipped": len(ds.skipped),
                   "clean_accuracy": nc / n_images, "attack_success_rate": n / nc if nc else 0.0},
        "skipped": [list(s) for s in ds.skipped[:100]],
        "versions": _versions(), "timings_s": job.timings,
        "pair_columns": PAIR_COLUMNS,
    }


def _chunked(w: StoreWriter, stage: str, total: int, chunk: int, run: Runner,
             task: Callable[[np.ndarray], Task], write: Callable[[np.ndarray, Any], None],
             arrays: list[np.ndarray], progress: ProgressFn | None, show: bool, unit: str = "img") -> None:
    """Compute ``task(sel)`` for consecutive chunks ``sel`` of ``range(total)`` through ``run``, resuming
    after the last recorded chunk, and ``write`` each result as it arrives (in chunk order).

    Each chunk's results are flushed to disk before its progress is recorded, so a crash at any
    point at worst redoes the chunks in flight.
    """
    start = w.state.get(f"{stage}_done", 0)
    if w.restarted or any(os.path.abspath(a.filename) in w.created for a in arrays
                          if isinstance(a, np.memmap) and a.filename):
        # an output was lost or had to be created afresh, or an earlier stage (whose results this one
        # reads) started over: recorded progress no longer holds
        start, w.restarted = 0, True
    bar = _Bar(stage, total, progress, show, start, unit=unit)
    sels = [np.arange(lo, min(lo + chunk, total)) for lo in range(start, total, chunk)]
    for sel, result in zip(sels, run(task(sel) for sel in sels), strict=True):
        write(sel, result)
        pause_point(f"{stage}:{int(sel[0])}")
        for arr in arrays:
            if isinstance(arr, np.memmap):
                arr.flush()
        w.mark(f"{stage}_done", int(sel[-1] + 1))
        bar.advance(len(sel))
    bar.close()


def _check_checkpoint(cfg: ExperimentConfig) -> None:
    from core.presets import PROBE_CHECKPOINT
    ckpt = cfg.model.checkpoint
    if ckpt:
        check_checkpoint(ckpt, " (the cifar10-224 preset's model: make it once with `python -m core train "
                         "--preset cifar10-224`, about 3 minutes)"
                         if Path(ckpt).expanduser() == PROBE_CHECKPOINT else "")


def maps_order(labels: np.ndarray, adv_labels: np.ndarray) -> np.ndarray:
    """Pair ids in the order their maps are precomputed: pairs of the most populated (true, adversarial)
    prediction-matrix cells first (the cells §6.2.2 opens first), then by pair id."""
    labels, adv_labels = np.asarray(labels, np.int64), np.asarray(adv_labels, np.int64)
    if not len(labels):
        return np.zeros(0, np.int64)
    cell = labels * (int(max(labels.max(), adv_labels.max())) + 1) + adv_labels
    _, inverse, counts = np.unique(cell, return_inverse=True, return_counts=True)
    return np.lexsort((np.arange(len(labels)), cell, -counts[inverse])).astype(np.int64)


@dataclass
class Context:
    """What computing a chunk needs: the dataset, the model on its device, the attack precision and the
    batch size. ``prepare`` builds one; so does every Ray worker, from the same config (its data and
    checkpoint paths must exist on the worker's machine)."""
    cfg: ExperimentConfig
    ds: datasets.ImageSet
    model: Any  # ExplainedModel
    device: torch.device
    precision: str  # of the attack's search (success is always decided in fp32)
    batch: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.ds.channels, *self.ds.image_size)

    @classmethod
    def build(cls, cfg: ExperimentConfig, log: Callable[[str], None] = lambda s: None, *,
              dataset: datasets.ImageSet | None = None, model: ExplainedModel | None = None) -> Context:
        """From ``cfg``; ``dataset`` and ``model``, when given, are used instead of reading ``cfg.data``
        and loading ``cfg.model`` (in-memory objects: ``core.notebook``)."""
        ds = datasets.load_dataset(cfg.data, channels=cfg.model.in_channels) if dataset is None else dataset
        for note in ds.notes:  # what the scan left out, converted or resized
            log(f"note: {note}")
        for path, reason in ds.skipped[:20]:
            log(f"skipped unreadable image {path}: {reason}")
        if len(ds.skipped) > 20:
            log(f"... and {len(ds.skipped) - 20} more unreadable images (the manifest lists the first 100)")
        if len(ds) == 0:
            raise PrepareError("the dataset has no images after class selection and skipping "
                               "unreadable files; check [data] root, classes and per_class")
        shape = (ds.channels, *ds.image_size)
        try:
            dev = devices.resolve_device(cfg.prepare.device)
        except devices.DeviceError as e:
            raise PrepareError(str(e)) from None
        if model is not None and tuple(model.input_shape) != shape:
            raise ModelError(f"the model was set up for {tuple(model.input_shape)} images but the dataset's "
                             f"are {shape}")
        model = (load_model(cfg.model, shape) if model is None else model).to(dev)
        if model.num_classes != len(ds.classes):
            raise ModelError(f"the dataset has {len(ds.classes)} classes but the model outputs "
                             f"{model.num_classes} (empty class folders count too): use the dataset of "
                             f"the model's {model.num_classes} classes, or a model trained on these "
                             f"{len(ds.classes)} ([model] num_classes = {len(ds.classes)} with its "
                             "checkpoint)")
        precision = devices.resolve_precision(cfg.attack.precision, dev)
        if precision == "bf16":
            model = model.to(memory_format=torch.channels_last)  # fastest layout for bf16 convolutions
        batch = devices.batch_size(model, shape, dev, backward=True, precision=precision,
                                   requested=cfg.prepare.batch_size)
        return cls(cfg, ds, model, dev, precision, batch)

    def run_all(self, tasks: Iterable[Task]) -> Iterator[Any]:
        """The in-process runner: each task computed here, lazily, in order."""
        return (self.run(t) for t in tasks)

    def run(self, task: Task) -> Any:
        """One task's result (a Ray worker calls this too)."""
        return task.run(self)

    def clean(self, pos: np.ndarray) -> dict:
        f = extract(self.model, self.ds.get(pos), batch_size=self.batch, fmaps=False)
        if not torch.isfinite(f.logits).all():
            raise ModelError("the model produced NaN or infinite logits on dataset positions "
                             f"{pos[0]}..{pos[-1]}; check the checkpoint and the normalization")
        return {"logits": f.logits.numpy(), "pooled": f.pooled.numpy()}

    def attack(self, pos: np.ndarray, seed: int) -> dict:
        model, bs, a = self.model, self.batch, self.cfg.attack
        x = self.ds.get(pos).to(self.device)
        y = torch.as_tensor(self.ds.labels[pos], device=self.device)
        if self.precision == "bf16":
            x = x.contiguous(memory_format=torch.channels_last)
        adv = _attack(model, x, y, a, self.precision, bs, seed)
        pred = _predict(model, adv, bs)
        if self.precision != "fp32" and (failed := (pred == y).nonzero().flatten()).numel():
            adv[failed] = _attack(model, x[failed], y[failed], a, "fp32", bs, seed)
            pred[failed] = _predict(model, adv[failed], bs)
        return {"adv": adv.cpu().numpy(), "pred": pred.cpu().numpy()}

    def features(self, pos: np.ndarray, adv: np.ndarray) -> dict:
        benign_u8 = self.ds.get_uint8(pos)
        r = {"benign_images": benign_u8, "adversarial_images": adv}
        for side, x in (("benign", torch.from_numpy(benign_u8).float() / 255),
                        ("adversarial", torch.from_numpy(adv))):
            f = extract(self.model, x, batch_size=self.batch)
            if not (torch.isfinite(f.logits).all() and torch.isfinite(f.fmaps).all()):
                raise ModelError(f"the model produced NaN or infinite values on {side} images (dataset "
                                 f"positions {pos[0]}..{pos[-1]}); check the checkpoint and the "
                                 "normalization")
            r |= {f"{side}_logits": f.logits.numpy(), f"{side}_probs": f.probs.numpy(),
                  f"{side}_pooled": f.pooled.numpy(), f"{side}_fmaps": f.fmaps.numpy().astype(np.float16)}
        return r

    def maps(self, pos: int, adv: np.ndarray, label: int, adv_label: int, settings: MapSettings
             ) -> np.ndarray:
        benign = torch.from_numpy(self.ds.get_uint8([pos])[0]).float() / 255
        maps = vulnerability.vulnerability_maps(self.model, benign, torch.from_numpy(adv), label, adv_label,
                                                **settings.kwargs())
        return torch.stack(maps).numpy().astype(np.float32)


def _attack(model, x, y, a, precision, bs, seed) -> torch.Tensor:
    """The configured attack (``core.attacks.ATTACKS``) of one chunk; its noise, if it draws any, from
    ``seed`` (a fixed seed per chunk: a resumed or sharded run attacks every chunk the same)."""
    return attacks.run(a.method, model, x, y, precision=precision, batch_size=bs,
                       generator=torch.Generator().manual_seed(seed), **a.params())


def _predict(model, x: torch.Tensor, bs: int) -> torch.Tensor:
    """fp32 predictions: the verdict on an attack never depends on reduced precision. Computed like
    the feature pass (same function, contiguous layout, same batch size), so the two agree."""
    return extract(model, x.contiguous(), batch_size=bs, fmaps=False).logits.argmax(1).to(x.device)


def _versions() -> dict[str, str]:
    import sklearn
    import torchvision
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "platform": sys.platform}
