"""Datasets: ordered, labelled sets of same-sized images for the attacks and their explanations.

An :class:`ImageSet` holds N images of one shape (C, H, W), C = 1 (grayscale) or 3 (RGB), a label per
image indexing a list of class names, and per image a stable id: its index in the source dataset,
which the store keeps. Pixels stay uint8 inside and leave as float32 in [0, 1].

Sources (each returns an ImageSet; :func:`load_dataset` picks one from ``[data] source``):

- ``demo``: the Fashion-MNIST test set shipped in ``core/assets`` (10,000 grayscale 28×28 images).
- ``fashion_mnist``: Fashion-MNIST IDX files, by default from the Debian package
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``) or torchvision's layout.
- ``cifar10``: a folder tree of the 10 classes (``airplane/0000.jpg``, ...) or torchvision's
  ``cifar-10-batches-py``, read by an unpickler that can build nothing but plain numpy arrays.
- ``image_folder``: any ``root/<class>/<image>`` tree, like torchvision's ImageFolder; unreadable
  files are skipped and reported in ``ImageSet.skipped`` (or raise, with ``on_corrupt="error"``).

Nothing is downloaded unless asked (``download=True``). A model's input format may differ from the
source's: :meth:`ImageSet.with_format` converts channels (gray→RGB repeats the channel, RGB→gray is
ITU-R 601 luma, bit-exact with PIL's ``convert("L")``) and size (PIL bilinear) as images leave the set.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import warnings
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from math import prod
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from core.config import DataConfig

ASSETS = Path(__file__).resolve().parent / "assets"
FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")  # Debian: dataset-fashion-mnist
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck"]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
SOURCES = ("demo", "fashion_mnist", "cifar10", "image_folder")
SPLITS = ("test", "train")
IN_MEMORY_LIMIT = 512 * 2**20  # decoded image folders above this are decoded again on each access
_FINGERPRINT_VERSION = "nve-imageset-1"  # bump when decoding changes the pixels of the same files

Positions = Sequence[int] | np.ndarray | range


class DataError(ValueError):
    """Data that cannot be loaded; the message says what is wrong and how to fix it."""


class DataWarning(UserWarning):
    """Something was left out of a dataset (unreadable files, empty class folders)."""


class _File(NamedTuple):
    path: Path
    rel: str  # path relative to the dataset root: the fingerprint must not depend on where data sits
    size: int
    sha256: str


@dataclass(frozen=True, eq=False)
class _Source:
    """Where an ImageSet's pixels come from: uint8 rows in memory, or files decoded on demand."""
    channels: int
    image_size: tuple[int, int]  # (H, W) of a row as read, before any with_format conversion
    pixels: np.ndarray | None = None  # (M, C, H, W) uint8; None: decode `files` on each access
    files: tuple[_File, ...] | None = None  # the file behind each row, for file-backed sources

    def read(self, rows: np.ndarray) -> np.ndarray:
        if self.pixels is not None:
            return self.pixels[rows]
        assert self.files is not None
        out = np.empty((len(rows), self.channels, *self.image_size), np.uint8)
        for i, r in enumerate(rows):
            f = self.files[r]
            try:
                data = f.path.read_bytes()
            except OSError as e:
                raise DataError(f"cannot read {f.path} ({e}); it was readable when the dataset was "
                                "scanned: restore the file or load the dataset again") from e
            # Results are cached under the fingerprint, which hashed these bytes at scan time.
            if hashlib.sha256(data).hexdigest() != f.sha256:
                raise DataError(f"{f.path} changed since the dataset was scanned; load it again")
            out[i] = _decode(data, self.channels, self.image_size)
        return out

    def hash_rows(self, h: Any, rows: np.ndarray) -> None:
        h.update(json.dumps([self.channels, list(self.image_size)]).encode())
        if self.files is not None:
            for r in rows:
                f = self.files[r]
                h.update(f"{f.rel}\0{f.size}\0{f.sha256}\n".encode())
        else:
            assert self.pixels is not None
            for lo in range(0, len(rows), 4096):  # chunks: no full copy of a large array
                h.update(np.ascontiguousarray(self.pixels[rows[lo:lo + 4096]]).tobytes())


@dataclass(eq=False)
class ImageSet:
    """An ordered, indexable set of labelled images; pixels are uint8 and become float in [0,1] on the
    way out. Positions 0..N-1 address images in this set; ``indices`` are their ids in the source."""
    name: str  # e.g. "fashion_mnist/test", "image_folder:/path"
    classes: list[str]  # class names; label k means classes[k]
    labels: np.ndarray  # (N,) int64
    indices: np.ndarray  # (N,) int64: each image's index in the SOURCE dataset (stable id)
    channels: int  # 1 (grayscale) or 3 (RGB), as images come out
    image_size: tuple[int, int]  # (H, W) as images come out, same for every image
    skipped: list[tuple[str, str]]  # (path or id, reason) of unreadable images left out
    _source: _Source = field(repr=False)
    _rows: np.ndarray = field(repr=False)  # (N,) int64: position -> row of _source
    # what the scan left out or changed (skipped, ignored, converted, resized files; empty class folders),
    # as sentences for a log; each was also issued as a DataWarning
    notes: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, np.int64)
        self.indices = np.asarray(self.indices, np.int64)
        self._rows = np.asarray(self._rows, np.int64)
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        if not len(self.labels) == len(self.indices) == len(self._rows):
            raise ValueError("labels, indices and rows must have one entry per image")

    @classmethod
    def from_array(cls, name: str, classes: Sequence[str], images: np.ndarray, labels: Iterable[int],
                   indices: Iterable[int] | None = None) -> ImageSet:
        """An in-memory set from uint8 images (N, C, H, W), C in {1, 3}, and labels into ``classes``."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise DataError(f"{name}: images must be a uint8 array (N, C, H, W) with C = 1 or 3, "
                            f"got {images.dtype} {images.shape}")
        labels = np.asarray(list(labels) if not isinstance(labels, np.ndarray) else labels, np.int64)
        if labels.shape != (len(images),):
            raise DataError(f"{name}: {len(images)} images but labels of shape {labels.shape}")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DataError(f"{name}: labels must lie in 0..{len(classes) - 1} (one per class name), "
                            f"got {labels.min()}..{labels.max()}")
        n = len(images)
        idx = np.arange(n) if indices is None else np.asarray(list(indices), np.int64)
        size = (images.shape[2], images.shape[3])
        return cls(name, list(classes), labels, idx, images.shape[1], size, [],
                   _Source(images.shape[1], size, pixels=images), np.arange(n))

    def __len__(self) -> int:
        return len(self.labels)

    def _positions(self, positions: Positions) -> np.ndarray:
        p = np.asarray(positions)
        if p.size == 0:
            return np.empty(0, np.int64)
        if p.ndim != 1 or p.dtype.kind not in "iu":
            raise TypeError(f"positions must be a 1-D sequence of integers, got {p.dtype} {p.shape}")
        p = p.astype(np.int64, copy=False)
        if p.min() < 0 or p.max() >= len(self):
            raise IndexError(f"positions must lie in 0..{len(self) - 1}, got {p.min()}..{p.max()}")
        return p

    def get_uint8(self, positions: Positions) -> np.ndarray:
        """Images at ``positions`` as uint8 (k, C, H, W), in this set's channels and size."""
        p = self._positions(positions)
        return _convert(self._source.read(self._rows[p]), self.channels, self.image_size)

    def get(self, positions: Positions) -> torch.Tensor:
        """Images at ``positions`` as float32 (k, C, H, W) in [0, 1]."""
        return torch.from_numpy(self.get_uint8(positions)).float().div_(255)

    def batches(self, batch_size: int, positions: Positions | None = None
                ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
        """(positions, float32 images in [0,1], int64 labels) in order; positions default to all."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        pos = np.arange(len(self)) if positions is None else self._positions(positions)
        for lo in range(0, len(pos), batch_size):
            p = pos[lo:lo + batch_size]
            yield p, self.get(p), torch.from_numpy(self.labels[p])

    def subset(self, positions: Positions) -> ImageSet:
        """The images at ``positions``, in that order (same classes, skipped list and loader)."""
        p = self._positions(positions)
        return replace(self, labels=self.labels[p], indices=self.indices[p], _rows=self._rows[p])

    def with_format(self, channels: int | None = None, image_size: int | tuple[int, int] | None = None
                    ) -> ImageSet:
        """The same images, converted on the way out to ``channels`` (1 or 3) and/or resized to
        ``image_size`` (an int means square). Nothing is converted until images are read."""
        c = self.channels if channels is None else channels
        if c not in (1, 3):
            raise DataError(f"channels={c}: only 1 (grayscale) or 3 (RGB) images are supported; "
                            "set [model] in_channels to 1 or 3")
        size = self.image_size if image_size is None else _size(image_size)
        return replace(self, channels=c, image_size=size)

    def fingerprint(self) -> str:
        """sha256 of what this set yields: name, classes, ids, labels, output format and content
        (the source's pixel bytes, or each file's relative path, size and sha256 from the scan)."""
        h = hashlib.sha256()
        meta = {"version": _FINGERPRINT_VERSION, "name": self.name, "classes": list(self.classes),
                "channels": self.channels, "image_size": list(self.image_size), "n": len(self)}
        h.update(json.dumps(meta, sort_keys=True).encode())
        h.update(self.indices.astype("<i8").tobytes())
        h.update(self.labels.astype("<i8").tobytes())
        self._source.hash_rows(h, self._rows)
        return h.hexdigest()


# --- pixel conversions (shared by decoding, in-memory sources and with_format) -------------------

def _size(image_size: int | Sequence[int]) -> tuple[int, int]:
    h, w = (image_size, image_size) if isinstance(image_size, int | np.integer) else image_size
    if int(h) < 1 or int(w) < 1:
        raise DataError(f"image_size={image_size!r} must be positive; set [data] image_size, e.g. 224")
    return int(h), int(w)


def _to_array(im: Image.Image) -> np.ndarray:
    a = np.asarray(im)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    im = Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0))
    return _to_array(im.resize((size[1], size[0]), Image.Resampling.BILINEAR))


def _convert(a: np.ndarray, channels: int, size: tuple[int, int]) -> np.ndarray:
    """uint8 (k, C, H, W) → (k, channels, *size); the same result as converting with PIL when the
    file is decoded, so in-memory and file-backed sets agree."""
    if a.shape[1] == 3 and channels == 1:
        # ITU-R 601-2 luma in PIL's fixed-point form: bit-exact with Image.convert("L")
        r, g, b = (a[:, i].astype(np.uint32) for i in range(3))
        a = ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)[:, None]
    if a.shape[2:] != size:
        a = np.stack([_resize(img, size) for img in a]) if len(a) else \
            np.empty((0, a.shape[1], *size), np.uint8)
    if a.shape[1] == 1 and channels == 3:
        a = np.repeat(a, 3, axis=1)  # after resizing: a third of the work
    return a


def _decode(data: bytes, channels: int, size: tuple[int, int] | None, tally: Counter | None = None
            ) -> np.ndarray:
    """Decode an image file fully (a truncated file fails here, not later) to uint8 (C, H, W).
    ``tally`` (optional) counts the conversions made: the source mode of each converted image (e.g.
    ``"RGBA"``), and ``"resized"``."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        mode = "L" if channels == 1 else "RGB"
        if tally is not None and im.mode != mode:
            tally[im.mode] += 1
        if im.mode.startswith("I;16"):  # 16-bit grayscale: PIL's convert would clip it to white
            im = Image.fromarray((np.asarray(im, dtype=np.uint16) >> 8).astype(np.uint8))
        # convert handles grayscale, palette, RGBA (alpha dropped), CMYK, ...
        im = im.convert(mode)
        if size is not None and im.size != (size[1], size[0]):
            if tally is not None:
                tally["resized"] += 1
            im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        return _to_array(im)


# --- classes and selection ------------------------------------------------------------------------

def _class_ids(all_classes: Sequence[str], wanted: Iterable[str | int]) -> list[int]:
    """Class names or indices → indices into ``all_classes``."""
    ids = []
    for c in wanted:
        if isinstance(c, int | np.integer) and not isinstance(c, bool):
            if not 0 <= c < len(all_classes):
                raise DataError(f"class index {c} is out of range: the dataset has "
                                f"{len(all_classes)} classes (0..{len(all_classes) - 1})")
            ids.append(int(c))
        elif c in all_classes:
            ids.append(list(all_classes).index(c))
        else:
            raise DataError(f"unknown class {c!r} in [data] classes; valid names: "
                            f"{', '.join(all_classes)}")
    if not ids:
        raise DataError("[data] classes is empty; leave it out to use every class")
    return ids


def select(ds: ImageSet, classes: Iterable[str | int] | None = None,
           per_class: int | None = None) -> ImageSet:
    """The images of ``classes`` (names or indices; None = all), at most ``per_class`` of each: the
    first ones in index order. ``classes`` of the result stays the full list, so labels keep
    matching the model's outputs."""
    pos = np.arange(len(ds))
    if classes is not None:
        pos = pos[np.isin(ds.labels, _class_ids(ds.classes, classes))]
    if per_class is not None:
        if per_class < 1:
            raise DataError(f"[data] per_class={per_class} must be at least 1 (or left out for all)")
        order = pos[np.lexsort((ds.indices[pos], ds.labels[pos]))]  # by label, then index
        lab = ds.labels[order]
        rank = np.arange(len(order)) - np.searchsorted(lab, lab)  # rank within its class
        pos = np.sort(order[rank < per_class])
    return ds if len(pos) == len(ds) else ds.subset(pos)


# --- Fashion-MNIST (IDX files) --------------------------------------------------------------------

def _read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (gzipped or not) as a read-only uint8 array."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file name says
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read IDX file {path} ({e}): it is corrupt or truncated; replace it "
                        "(e.g. apt-get install --reinstall dataset-fashion-mnist)") from e
    # magic: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (magic {raw[:4].hex()}, "
                        "expected 000008 followed by the number of dimensions); replace it")
    header = 4 + 4 * raw[3]
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header; replace it")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", raw[3], 4))
    if len(raw) != header + prod(dims):
        raise DataError(f"{path} is truncated or corrupt: its header promises {dims} "
                        f"({header + prod(dims)} bytes) but it has {len(raw)} bytes; replace it")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _fashion_from_idx(images: Path, labels: Path, name: str) -> ImageSet:
    x, y = _read_idx(images), _read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise DataError(f"{images} holds images {x.shape} and {labels} labels {y.shape}: expected "
                        "(N, H, W) and (N,); the two files do not belong together")
    if len(y) and y.max() >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{labels} has label {y.max()}; Fashion-MNIST labels are 0..9")
    return ImageSet.from_array(name, FASHION_MNIST_CLASSES, x[:, None], y)


def _find_idx(root: Path, prefix: str) -> tuple[Path, Path] | None:
    for d in (root, root / "FashionMNIST" / "raw", root / "raw"):  # Debian / torchvision layouts
        found = []
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            candidates = [d / f"{prefix}-{kind}{ext}" for ext in ("", ".gz")]
            found += [p for p in candidates if p.is_file()][:1]
        if len(found) == 2:
            return found[0], found[1]
    return None


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"[data] split={split!r}: use 'test' or 'train'")


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nve" / "datasets"


def demo() -> ImageSet:
    """The Fashion-MNIST test set shipped with the package: 10,000 grayscale 28×28 images."""
    d = ASSETS / "fashion-mnist"
    images, labels = d / "t10k-images-idx3-ubyte.gz", d / "t10k-labels-idx1-ubyte.gz"
    if not (images.is_file() and labels.is_file()):
        raise DataError(f"the demo data is missing from {d}; reinstall the package")
    return _fashion_from_idx(images, labels, "demo/fashion_mnist-test")


def fashion_mnist(root: str | Path | None = None, split: str = "test", download: bool = False) -> ImageSet:
    """Fashion-MNIST from IDX files in ``root`` (default: the Debian package's folder) or in
    torchvision's ``root/FashionMNIST/raw``. ``download=True`` fetches them with torchvision when
    absent, into ``root`` or, without one, into ~/.cache/nve/datasets/fashion-mnist."""
    _check_split(split)
    prefix = "t10k" if split == "test" else "train"
    base = Path(root).expanduser() if root else FASHION_MNIST_ROOT
    found = _find_idx(base, prefix)
    if found is None and download:
        target = base if root else _cache_dir() / "fashion-mnist"
        try:
            from torchvision.datasets import FashionMNIST
            FashionMNIST(str(target), train=split == "train", download=True)
        except Exception as e:  # network errors come in many types; all mean the same here
            raise DataError(f"could not download Fashion-MNIST into {target} ({type(e).__name__}: "
                            f"{e}); if this machine is offline, install the files with "
                            "`apt-get install dataset-fashion-mnist` or copy them into [data] root") from e
        found = _find_idx(target, prefix)
    if found is None:
        raise DataError(f"no Fashion-MNIST {split} files ({prefix}-images-idx3-ubyte[.gz] and "
                        f"{prefix}-labels-idx1-ubyte[.gz]) in {base} or {base}/FashionMNIST/raw; "
                        "install them with `apt-get install dataset-fashion-mnist`, set [data] root "
                        "to a folder holding them, or set [data] download = true")
    return _fashion_from_idx(*found, name=f"fashion_mnist/{split}")


# --- CIFAR-10 -------------------------------------------------------------------------------------

def _safe_dtype(*args: Any) -> np.dtype:
    dt = np.dtype(*args)
    if dt.hasobject:  # an object array would unpickle arbitrary elements
        raise pickle.UnpicklingError("object arrays are not allowed")
    return dt


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _ArrayUnpickler(pickle.Unpickler):
    """Builds only dicts, lists, bytes, numbers and plain numpy arrays: every other global (the
    way a pickle runs code) is refused."""
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
                ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
                ("numpy", "ndarray"): np.ndarray,
                ("numpy", "dtype"): _safe_dtype}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load global {module}.{name}") from None


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as e:  # malformed pickles raise many types; none may escape as a crash
        raise DataError(f"{path} is not a CIFAR-10 python batch ({type(e).__name__}: {e}); replace it "
                        "with the file from cifar-10-python.tar.gz") from e
    get = (lambda k: batch.get(k.encode(), batch.get(k))) if isinstance(batch, dict) else None
    data = get("data") if get else None
    labels = get("labels") if get else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or \
            data.shape[1] != 3 * 32 * 32 or not isinstance(labels, list) or len(labels) != len(data):
        raise DataError(f"{path} is not a CIFAR-10 batch (expected a dict with b'data', a uint8 "
                        "array N×3072, and b'labels', N ints); replace it")
    y = np.asarray(labels, np.int64)
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{path} has labels outside 0..9; replace it")
    return data.reshape(-1, 3, 32, 32), y  # rows are 1024 R, 1024 G, 1024 B values, row-major


def _cifar_batches_dir(root: Path) -> Path | None:
    for d in (root / "cifar-10-batches-py", root):
        if (d / "test_batch").is_file() or (d / "data_batch_1").is_file():
            return d
    return None


def _is_cifar_tree(folder: Path) -> bool:
    return folder.is_dir() and {d.name for d in folder.iterdir()
                                if d.is_dir() and not d.name.startswith(".")} == set(CIFAR10_CLASSES)


def cifar10(root: str | Path, split: str = "test", download: bool = False, *,
            image_size: int | None = None, on_corrupt: str = "skip") -> ImageSet:
    """CIFAR-10 from ``root``: a folder of the 10 class folders (``root/<split>`` if present, else
    ``root`` itself; read by :func:`image_folder`), or torchvision's ``cifar-10-batches-py`` (in
    ``root`` or being ``root``). ``download=True`` fetches the python batches into ``root``."""
    _check_split(split)
    if root is None:
        raise DataError("cifar10 needs [data] root: a folder of the 10 class folders, or one holding "
                        "cifar-10-batches-py (add download = true to fetch it there)")
    root = Path(root).expanduser()
    for folder in (root / split, root):
        if _is_cifar_tree(folder):
            ds = image_folder(folder, channels=3, image_size=image_size, on_corrupt=on_corrupt)
            return replace(ds, name=f"cifar10/{split}")
    batches = _cifar_batches_dir(root)
    if batches is None and download:
        try:
            from torchvision.datasets import CIFAR10
            from torchvision.datasets.utils import download_and_extract_archive
            # Fetch and check the archive only: constructing CIFAR10 would unpickle it unrestricted.
            download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename,
                                         md5=CIFAR10.tgz_md5)
        except Exception as e:  # network errors come in many types; all mean the same here
            raise DataError(f"could not download CIFAR-10 into {root} ({type(e).__name__}: {e}); if "
                            "this machine is offline, copy cifar-10-batches-py (from "
                            "cifar-10-python.tar.gz) into it, or point [data] root at a folder of "
                            "the 10 class folders") from e
        batches = _cifar_batches_dir(root)
    if batches is None:
        raise DataError(f"{root} holds no CIFAR-10: expected the 10 class folders "
                        f"({', '.join(CIFAR10_CLASSES)}) in {root} or {root / split}, or torchvision's "
                        f"cifar-10-batches-py; set [data] root to one of these, or set [data] "
                        "download = true to fetch the batches into it")
    names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    for n in names:
        if not (batches / n).is_file():
            raise DataError(f"{batches / n} is missing: {batches} is incomplete; extract "
                            "cifar-10-python.tar.gz again")
    parts = [_load_cifar_batch(batches / n) for n in names]
    x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    ds = ImageSet.from_array(f"cifar10/{split}", CIFAR10_CLASSES, x, y)
    return ds.with_format(image_size=image_size) if image_size else ds


# --- image folders --------------------------------------------------------------------------------

def _note(notes: list[str], message: str) -> None:
    notes.append(message)
    warnings.warn(message, DataWarning, stacklevel=3)


def _list_images(class_dir: Path, ignored: list[Path] | None = None) -> list[Path]:
    """Image files under one class folder, in torchvision ImageFolder's order; other files (by their
    extension; hidden ones aside) are appended to ``ignored``."""
    files = [Path(d) / n for d, _, names in sorted(os.walk(class_dir, followlinks=True))
             for n in sorted(names)]
    if ignored is not None:
        ignored += [f for f in files if not f.name.lower().endswith(IMAGE_EXTENSIONS)
                    and not f.name.startswith(".")]
    return [f for f in files if f.name.lower().endswith(IMAGE_EXTENSIONS)]


def image_folder(root: str | Path, *, channels: int = 3, image_size: int | None = None,
                 on_corrupt: str = "skip", classes: Iterable[str | int] | None = None) -> ImageSet:
    """Images in ``root/<class>/**/<file>`` like torchvision's ImageFolder: classes are the sorted
    folder names (hidden ones excluded), files are kept by extension. Every file is decoded once here
    (so unreadable ones are found now: skipped and reported, or a DataError with
    ``on_corrupt="error"``) and converted to ``channels``; sizes must agree unless ``image_size``
    resizes them all. ``classes`` restricts the scan; labels still index the full class list and
    ``indices`` are positions in the full file list, so ids do not depend on the restriction."""
    if on_corrupt not in ("skip", "error"):
        raise DataError(f"[data] on_corrupt={on_corrupt!r}: use 'skip' or 'error'")
    if channels not in (1, 3):
        raise DataError(f"channels={channels}: use 1 (grayscale) or 3 (RGB)")
    size = _size(image_size) if image_size else None
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"image folder {root} does not exist; set [data] root to a folder laid out as "
                        "<root>/<class name>/<image files>")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; set [data] root to a folder laid out as "
                        "<root>/<class name>/<image files>")
    all_classes = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
    if not all_classes:
        raise DataError(f"{root} has no class folders: expected <root>/<class name>/<image files> "
                        "(like torchvision's ImageFolder); move the images into one folder per class")
    wanted = set(_class_ids(all_classes, classes)) if classes is not None else set(range(len(all_classes)))
    notes: list[str] = []
    ignored: list[Path] = []
    # all of them: ids must not depend on `wanted`
    listing = [_list_images(root / c, ignored if k in wanted else None) for k, c in enumerate(all_classes)]
    if ignored:
        _note(notes, f"ignored {len(ignored)} file(s) that are not images by their extension (e.g. "
              f"{ignored[0]}); images must end in {', '.join(IMAGE_EXTENSIONS)}")
    empty = [c for c, files in zip(all_classes, listing, strict=True) if not files]
    if empty:
        _note(notes, f"{len(empty)} class folder(s) in {root} hold no images ({', '.join(empty[:5])}"
              f"{', ...' if len(empty) > 5 else ''}); they stay in the class list so labels "
              "keep matching the model")

    arrays: list[np.ndarray] | None = []
    files: list[_File] = []
    labels: list[int] = []
    indices: list[int] = []
    skipped: list[tuple[str, str]] = []
    first: tuple[Path, tuple[int, int]] | None = None
    tally: Counter = Counter()
    nbytes = 0
    index = -1
    for k, class_files in enumerate(listing):
        for path in class_files:
            index += 1
            if k not in wanted:
                continue
            try:
                data = path.read_bytes()
                img = _decode(data, channels, size, tally)
            except Exception as e:  # a decoder fails on bad input in many ways; all mean "unreadable"
                reason = ("not an image: its content is in no image format PIL can read"
                          if isinstance(e, UnidentifiedImageError) else f"{type(e).__name__}: {e}")
                if on_corrupt == "error":
                    raise DataError(f"cannot read image {path} ({reason}); fix or remove it, or set "
                                    "[data] on_corrupt = \"skip\" to leave unreadable images out") from e
                skipped.append((str(path), reason))
                continue
            hw = (img.shape[1], img.shape[2])
            if first is None:
                first = (path, hw)
            elif hw != first[1]:
                raise DataError(f"images in {root} differ in size: {first[0]} is {first[1][1]}×"
                                f"{first[1][0]} but {path} is {hw[1]}×{hw[0]} (W×H); set [data] "
                                f"image_size (e.g. image_size = {max(first[1])}) to resize all to one "
                                "square size")
            files.append(_File(path, path.relative_to(root).as_posix(), len(data),
                               hashlib.sha256(data).hexdigest()))
            labels.append(k)
            indices.append(index)
            nbytes += img.nbytes
            if arrays is not None:
                arrays.append(img)
                if nbytes >= IN_MEMORY_LIMIT:
                    arrays = None  # too big to keep: decode again on access
    if tally:
        names = {"L": "grayscale", "RGB": "RGB", "RGBA": "RGBA (alpha dropped)", "LA": "grayscale+alpha "
                 "(alpha dropped)", "P": "palette", "CMYK": "CMYK", "1": "black-and-white"}
        conversions = [f"{n} {names.get(k, k)}" for k, n in sorted(tally.items()) if k != "resized"]
        if conversions:
            _note(notes, f"converted {sum(tally.values()) - tally['resized']} image(s) to "
                  f"{'grayscale' if channels == 1 else 'RGB'} ([model] in_channels = {channels}): "
                  f"{', '.join(conversions)}")
        if tally["resized"]:
            _note(notes, f"resized {tally['resized']} image(s) to {size[1]}×{size[0]} ([data] "
                  "image_size)")
    if skipped:
        _note(notes, f"skipped {len(skipped)} unreadable image(s) in {root}, e.g. {skipped[0][0]} "
              f"({skipped[0][1]}); they are left out (ImageSet.skipped; an experiment's manifest lists them)")
    if first is None:
        raise DataError(f"no readable images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders of "
                        f"{root}" + (f" ({len(skipped)} unreadable)" if skipped else "")
                        + "; check [data] root and classes")
    out_size = first[1]
    pixels = np.stack(arrays) if arrays is not None else None
    return ImageSet(f"image_folder:{root.resolve()}", all_classes, np.array(labels), np.array(indices),
                    channels, out_size, skipped,
                    _Source(channels, out_size, pixels=pixels, files=tuple(files)),
                    np.arange(len(labels)), notes)


# --- configuration --------------------------------------------------------------------------------

def load_dataset(cfg: DataConfig, channels: int = 3) -> ImageSet:
    """The dataset ``[data]`` describes, with its class selection applied, as ``channels``-channel
    images (converted on the way out when the source has the other number of channels) of
    ``image_size`` when set."""
    if cfg.source not in SOURCES:
        raise DataError(f"[data] source={cfg.source!r} is unknown; use one of {', '.join(SOURCES)}")
    if channels not in (1, 3):
        raise DataError(f"channels={channels}: only 1 (grayscale) or 3 (RGB) images are supported; "
                        "set [model] in_channels to 1 or 3")
    if cfg.source in ("cifar10", "image_folder") and not cfg.root:
        raise DataError(f"[data] source = {cfg.source!r} needs [data] root: the folder holding the "
                        "images")
    if cfg.source == "demo":
        if cfg.split != "test":
            raise DataError("the demo data is the Fashion-MNIST test split only; use source = "
                            "\"fashion_mnist\" for the training split")
        ds = demo()
    elif cfg.source == "fashion_mnist":
        ds = fashion_mnist(cfg.root, cfg.split, cfg.download)
    elif cfg.source == "cifar10":
        ds = cifar10(cfg.root, cfg.split, cfg.download, image_size=cfg.image_size,
                     on_corrupt=cfg.on_corrupt)
    else:
        # Decode straight to the model's channels and size: big photos are never kept full size.
        ds = image_folder(cfg.root, channels=channels, image_size=cfg.image_size,
                          on_corrupt=cfg.on_corrupt, classes=cfg.classes)
    ds = select(ds, cfg.classes, cfg.per_class)
    return ds.with_format(channels=channels, image_size=cfg.image_size)


def lossless_pngs(root: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The lossless CIFAR-10 sample in ../shared (``cifar10_<index>_<label>.png``) as (N,3,H,W) floats in
    [0,1] and labels, in index order (used by the benchmarks and tests)."""
    files = sorted(Path(root).glob("cifar10_*.png"))
    if not files:
        raise DataError(f"no lossless CIFAR-10 images (cifar10_<index>_<label>.png) in {root}")
    x = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1)
                     for f in files]).float() / 255
    return x, torch.tensor([int(f.stem.split("_")[-1]) for f in files])
