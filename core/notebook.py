"""The notebook API: an experiment store from an in-memory model and images, in one call.

``prepare_experiment(model, images, labels, class_names=..., out=..., mean=..., std=..., **attack)``
runs ``core.pipeline.prepare`` (the same stages, progress bars and store as ``python -m core prepare``)
on

- ``model``: any ``torch.nn.Module`` CNN that maps normalized ``(N, C, H, W)`` images to logits; its
  last conv layer and linear head are found as for any model (``core.models.discover_layers``). It is
  copied (never changed: no eval switch, no hooks, no frozen gradients on the caller's module).
- ``images``: a ``(N, C, H, W)`` tensor (or array) of pixels in [0, 1] with ``labels`` (N class ids),
  or a ``torch.utils.data.Dataset`` of ``(image, label)`` pairs (images ``(C, H, W)`` in [0, 1]).
  ``C`` is 1 or 3. Pixels are kept as 8-bit values, as every dataset's are in a store
  (``benign_images.npy`` is uint8): give 8-bit images (PNG, CIFAR ...) to attack exactly those.
- ``mean``, ``std``: the normalization the model expects, applied inside the wrapper
  (``core.models.ExplainedModel``), so attacks work in [0, 1] pixels. Default: none.
- ``**attack``: the ``[attack]`` keys (``method``, ``eps``, ``steps`` ... of ``core.attacks.ATTACKS``),
  ``prepare_options``: the ``[prepare]`` keys (``device``, ``batch_size``, ``maps`` ...), both validated
  as a config file's (``core.config.ExperimentConfig``).

Where things go (``cache_dir``, default ``core.store.cache_dir()``):

- the store, ``<cache>/<id>/``, written atomically and resumable like any ``prepare``;
- the model, as a ``torch.export`` program (dynamic batch size) in ``<cache>/.models/<sha256>.pt2``,
  named by its content, so a store that references it stays valid whatever is prepared later. The store's
  ``[model] checkpoint`` names that file with no ``arch``: the app reloads the network from it through
  ``core.models.NETWORK_FILES`` (never unpickling), with the recorded ``mean``/``std``. Before the run the
  file is reloaded that way (``core.models.load_model``) and must give the same number of neurons, the same
  map size and the model's logits (within ``EXPORT_TOLERANCE``) on the first images; ``prepare`` then runs
  that reloaded model, so the store and the app's live maps come from one network.
- the images are not kept apart from the store: the store holds every pair's benign (uint8) and
  adversarial (float32) images, which is all the app shows. The manifest's ``[data]`` therefore names no
  folder (``source = "image_folder"`` without a ``root``): re-running its config cannot rebuild the
  store, calling ``prepare_experiment`` again can.

Calling it again with the same model, images and settings finds the store already there and returns it;
other settings under an existing id need ``overwrite=True`` or another ``out``.
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.config import ExperimentConfig
from core.data import MAX_CLASS_NAME, DataError, ImageSet, _class_name_problem
from core.hosting import settings
from core.models import ExplainedModel, ModelError, model_fingerprint
from core.store import Store, StoreError, atomic_write_bytes, open_store, validate_id
from core.store import cache_dir as default_cache_dir

MODELS_FOLDER = ".models"  # under the cache: hidden, so never listed as an experiment
EXPORT_TOLERANCE = 1e-4  # the exported program's logits must equal the model's within this (abs. and rel.)
_CHUNK = 1024  # images converted to uint8 at a time: no float copy of a whole large set


@dataclass(frozen=True)
class PreparedExperiment:
    """What ``prepare_experiment`` made: the experiment's id, its store folder, the cache holding it and
    the model file the app reloads."""
    id: str
    path: Path
    cache_dir: Path
    model_file: Path

    def store(self) -> Store:
        """The store, opened (and checked) afresh."""
        return open_store(self.id, self.cache_dir)

    def analysis(self, device: str | torch.device = "cpu"):
        """A ``core.analysis.Analysis`` of the store: per-pair vulnerability maps, RFs, rankings (it
        reloads the model from ``model_file`` on first use)."""
        from core.analysis import Analysis
        return Analysis(self.store(), device=device)

    @property
    def serve_command(self) -> str:
        """The shell command that opens the app on this experiment."""
        from core.cli import serve_command
        return serve_command(self.id, self.cache_dir)

    def __str__(self) -> str:
        return f"experiment {self.id!r} in {self.path}: open it with `{self.serve_command}`"


def prepare_experiment(model: nn.Module, images: Any, labels: Any = None, *,
                       class_names: Sequence[str] | None = None, out: str | None = None,
                       mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,),
                       cache_dir: str | Path | None = None, progress: bool | Callable[[str, int, int], None]
                       = True, overwrite: bool = False, prepare_options: Mapping[str, Any] | None = None,
                       **attack: Any) -> PreparedExperiment:
    """Prepare an experiment from ``model`` and ``images`` (see the module docstring); returns a
    ``PreparedExperiment`` and prints how to open the app on it.

    ``class_names``: one name per model output, in output order (default "0", "1", ...); shown to
    everyone who opens the experiment, so checked like class folder names. ``out``: the experiment id
    (default ``notebook-`` and 10 hex digits of the model's and images' content). ``progress``: True for
    the CLI's progress bars and notes on stderr, False for silence, or a callback ``(stage, done, total)``.
    Errors a user can fix are ``ConfigError``, ``DataError``, ``ModelError``, ``StoreError`` or
    ``core.pipeline.PrepareError``, whose messages say what to change."""
    from core.pipeline import prepare
    if not isinstance(model, nn.Module):
        raise ModelError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    # absolute: the store records the model file's path, which the app resolves from its own folder
    cache = Path(default_cache_dir() if cache_dir is None else cache_dir).expanduser().resolve()
    if out is not None:
        validate_id(out)
    # the [attack] and [prepare] keys checked before any work; the whole config once the model is known
    cfg = ExperimentConfig.from_dict({"attack": dict(attack), "prepare": dict(prepare_options or {})})
    pixels, label_ids = _pixels(images, labels)
    shape = tuple(int(s) for s in pixels.shape[1:])
    net = _copy(model)
    explained = ExplainedModel(net, mean, std, shape)
    names = _class_names(class_names, explained.num_classes)
    if len(label_ids) and int(label_ids.max()) >= len(names):
        raise DataError(f"labels must lie in 0..{len(names) - 1} (the model's {len(names)} outputs), "
                        f"got {int(label_ids.max())}")
    cfg = ExperimentConfig.from_dict({
        "model": {"num_classes": explained.num_classes, "in_channels": shape[0],
                  "mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        # no folder: the images were given in memory (a config re-run says [data] root is missing)
        "data": {"source": "image_folder"},
        "attack": cfg.to_dict()["attack"], "prepare": cfg.to_dict()["prepare"]})
    ds = ImageSet.from_array("notebook", names, pixels, label_ids)
    cfg.model.checkpoint = str(_export(explained, pixels, cache))
    reloaded = _reload(cfg, explained, pixels)
    fingerprints = {"dataset": ds.fingerprint(), "model": model_fingerprint(cfg.model)}
    ident = validate_id(out or "notebook-" + hashlib.sha256(
        json.dumps(fingerprints, sort_keys=True).encode()).hexdigest()[:10])
    log = (lambda s: print(s, file=sys.stderr)) if progress is not False else (lambda s: None)
    done = cache / ident
    if not overwrite and (done / "manifest.json").is_file():
        _check_same(done, ident, cfg, fingerprints)
        log(f"experiment {ident!r} was already prepared with this model, these images and settings")
    else:
        if done.exists() and not overwrite:
            raise StoreError(f"{done} exists but is no experiment; pass overwrite=True to replace it, or "
                             "out= another id")
        prepare(cfg, ident, cache_dir=cache, overwrite=overwrite,
                progress=progress if callable(progress) else None, show_bars=progress is True, log=log,
                dataset=ds, model=reloaded)
    result = PreparedExperiment(ident, done, cache, Path(cfg.model.checkpoint))
    if progress is not False:
        print(f"prepared {result}")
    return result


def _check_same(path: Path, ident: str, cfg: ExperimentConfig, fingerprints: dict) -> None:
    """Refuse an existing experiment ``ident`` prepared from another model, other images or settings."""
    try:
        manifest = Store(path).manifest
    except StoreError as e:
        raise StoreError(f"{e}; or pass overwrite=True to prepare it again") from None
    same = (json.loads(json.dumps([cfg.to_dict(), fingerprints], default=str))
            == [manifest.get("config"), manifest.get("fingerprints")])
    if not same:
        raise StoreError(f"experiment {ident!r} already exists in {path.parent} with another model, other "
                         "images or settings; pass overwrite=True to replace it, or out= another id")


def _copy(model: nn.Module) -> nn.Module:
    """A CPU copy of ``model`` in eval mode: the wrapper freezes its parameters and the export must not
    depend on the caller's device; the caller's module stays as it was."""
    try:
        net = copy.deepcopy(model)
    except Exception as e:  # a module holding an uncopyable object (a lock, an open file)
        raise ModelError(f"the model cannot be copied ({type(e).__name__}: {e}); give a module that "
                         "copy.deepcopy can copy (its layers and tensors only)") from None
    return net.cpu().eval()


def _pixels(images: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (N, C, H, W), int64 (N,)) from a tensor/array and labels, or from a Dataset of
    (image, label) pairs; the counts and sizes bounded by the server's limits (``core.hosting``)."""
    limits = settings()
    if isinstance(images, torch.utils.data.Dataset):
        if labels is not None:
            raise DataError("labels come from the Dataset's (image, label) pairs: leave labels out")
        try:
            n = len(images)  # type: ignore[arg-type]
        except TypeError:
            raise DataError("the Dataset has no length (an IterableDataset?): give a map-style Dataset or "
                            "a tensor of images with labels") from None
        _count(n, limits.max_images)
        pixels, label_ids, first = None, np.empty(n, np.int64), None
        for i in range(n):
            item = images[i]
            if not isinstance(item, tuple | list) or len(item) != 2:
                raise DataError(f"the Dataset's item {i} is not an (image, label) pair")
            image = _as_tensor(item[0], f"the Dataset's image {i}")
            if first is None:
                first = tuple(image.shape)
                _shape((1, *first), limits.max_image_size)
                pixels = np.empty((n, *first), np.uint8)
            elif tuple(image.shape) != first:
                raise DataError(f"the Dataset's images differ in shape: image 0 is {first}, image {i} is "
                                f"{tuple(image.shape)}; resize them to one size (a transform)")
            pixels[i] = _to_uint8(image[None], f"the Dataset's image {i}")[0]
            label_ids[i] = _label(item[1], i)
        if pixels is None:
            raise DataError("the Dataset is empty")
        return pixels, label_ids
    x = _as_tensor(images, "images")
    _shape(tuple(x.shape), limits.max_image_size)
    _count(len(x), limits.max_images)
    if labels is None:
        raise DataError("give labels (one class id per image), or a Dataset of (image, label) pairs")
    y = torch.as_tensor(np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels))
    if y.shape != (len(x),) or y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise DataError(f"labels must be {len(x)} whole numbers (one class id per image), got "
                        f"{y.dtype} {tuple(y.shape)}")
    if len(y) and int(y.min()) < 0:
        raise DataError(f"labels must be class ids >= 0, got {int(y.min())}")
    pixels = np.empty(tuple(x.shape), np.uint8)
    for lo in range(0, len(x), _CHUNK):
        pixels[lo:lo + _CHUNK] = _to_uint8(x[lo:lo + _CHUNK], "images")
    return pixels, y.numpy().astype(np.int64)


def _as_tensor(image: Any, what: str) -> torch.Tensor:
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image)
    if not isinstance(image, torch.Tensor):
        raise DataError(f"{what} is a {type(image).__name__}, not a tensor; convert images to tensors in "
                        "[0, 1] (e.g. torchvision.transforms.ToTensor())")
    return image.detach().cpu()


def _count(n: int, most: int) -> None:
    if n == 0:
        raise DataError("no images given")
    if n > most:
        raise DataError(f"{n:,} images are more than one experiment may hold ({most:,}, max_images); give "
                        "a subset (e.g. torch.utils.data.Subset, or images[:n])")


def _shape(shape: tuple[int, ...], max_side: int) -> None:
    if len(shape) != 4 or shape[1] not in (1, 3):
        raise DataError(f"images must be (N, C, H, W) with C = 1 (grayscale) or 3 (RGB), got shape "
                        f"{shape}")
    if max(shape[2:]) > max_side:
        raise DataError(f"images are {shape[3]}×{shape[2]} (W×H), larger than this server allows "
                        f"({max_side} pixels a side, max_image_size); resize them")


def _to_uint8(x: torch.Tensor, what: str) -> np.ndarray:
    """Pixels in [0, 1] (or already uint8) as uint8, rounded to the nearest 8-bit level."""
    if x.dtype == torch.uint8:
        return x.numpy()
    if not x.dtype.is_floating_point:
        raise DataError(f"{what}: expected float pixels in [0, 1] (or uint8), got {x.dtype}")
    x = x.float()
    if not bool(torch.isfinite(x).all()) or float(x.min()) < 0 or float(x.max()) > 1:
        raise DataError(f"{what}: pixels must be finite and in [0, 1] (got {float(x.min()):.4g} to "
                        f"{float(x.max()):.4g}); give unnormalized images and the normalization as mean= "
                        "and std=")
    return (x * 255).round_().to(torch.uint8).numpy()


def _label(value: Any, i: int) -> int:
    v = value
    if isinstance(v, torch.Tensor):
        v = v.item() if v.numel() == 1 else v  # a one-number tensor, as many datasets give
    elif isinstance(v, np.ndarray | np.generic):
        v = v.item() if v.size == 1 else v
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0:
        raise DataError(f"the Dataset's label {i} is {value!r}: expected a class id (a whole number >= 0)")
    return int(v)


def _class_names(names: Sequence[str] | None, num_classes: int) -> list[str]:
    """The class names, one per model output; validated as class folder names are (they are shown to
    everyone who opens the experiment)."""
    if names is None:
        return [str(k) for k in range(num_classes)]
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise DataError("class_names must be a list of strings, one per model output")
    names = list(names)
    if len(names) != num_classes:
        raise DataError(f"{len(names)} class names for a model with {num_classes} outputs: give one name per "
                        "output, in output order")
    for name in names:
        problem = ("is not a string" if not isinstance(name, str) else "is empty" if not name.strip()
                   else _class_name_problem(name))
        if problem is not None:
            raise DataError(f"class name {name!r} {problem}; class names must be UTF-8 text of at most "
                            f"{MAX_CLASS_NAME} characters without control characters")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"class names must be distinct; repeated: {', '.join(map(repr, dupes[:5]))}")
    return names


def _export(explained: ExplainedModel, pixels: np.ndarray, cache: Path) -> Path:
    """Export the wrapped network (normalized input, dynamic batch size) with ``torch.export`` and save it
    as ``<cache>/.models/<sha256>.pt2`` (kept if there)."""
    net = explained.net
    # a batch of 2 (1 would be specialized as a constant), normalized as the wrapper does
    x = (torch.from_numpy(pixels[np.arange(2) % len(pixels)]).float() / 255 - explained.mean) / explained.std
    try:
        program = torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as e:  # the exporter fails in many ways; each means the same to the user
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise ModelError(f"the model cannot be exported with torch.export ({first[:300]}); the app reloads "
                         "it from a .pt2 file, so its forward must be exportable: no Python control flow "
                         "on tensor values, no fixed batch size") from None
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    data = buffer.getvalue()
    path = cache / MODELS_FOLDER / f"{hashlib.sha256(data).hexdigest()}.pt2"
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data)
        except OSError as e:
            raise StoreError(f"cannot write the model file {path} ({e.strerror or e}); choose a writable "
                             "cache_dir") from None
    return path


def _reload(cfg: ExperimentConfig, explained: ExplainedModel, pixels: np.ndarray) -> ExplainedModel:
    """The model as the app will have it: ``cfg.model`` (the exported file) loaded by ``load_model``. It must
    find as many neurons, maps of the same size, and compute the in-memory model's logits on the first
    images; it is the model ``prepare`` then runs, so the store and the app's live maps agree."""
    from core.models import load_model
    shape = explained.input_shape
    try:
        reloaded = load_model(cfg.model, shape)
    except ModelError as e:
        raise ModelError(f"the model was exported to {cfg.model.checkpoint}, but the app cannot use that "
                         f"file: {e}") from None
    x = torch.from_numpy(pixels[:8]).float() / 255
    with torch.no_grad():
        got, want = reloaded(x), explained(x)
    if (reloaded.num_neurons, reloaded.fmap_size) != (explained.num_neurons, explained.fmap_size):
        raise ModelError(f"in the exported file the analysed layer has {reloaded.num_neurons} neurons of "
                         f"{reloaded.fmap_size} maps, in the model {explained.num_neurons} of "
                         f"{explained.fmap_size}: the app would explain another layer; report this model's "
                         "structure as a bug")
    if not torch.allclose(got, want, atol=EXPORT_TOLERANCE, rtol=EXPORT_TOLERANCE):
        raise ModelError(f"the exported model's logits differ from the model's by up to "
                         f"{float((got - want).abs().max()):.3g}; make the forward deterministic (eval mode, "
                         "no randomness)")
    return reloaded
