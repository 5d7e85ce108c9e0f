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

Reading a user's folder on a shared server (the bounds come from :func:`core.hosting.settings`):

- **Symlinks.** Nothing outside the dataset root is read: a symlink whose target resolves outside it is
  not followed (a note says so), and a class folder that is such a symlink is refused. Inside the root,
  symlinked files and folders are allowed (a curated subset linking into a pool in the root is a common
  layout), but every folder and every file, by (st_dev, st_ino), is read once: a loop (``cat/up -> ..``)
  or a second path to a folder already scanned is not followed, and a file reached twice (a symlink or a
  hard link) is kept once, under its own path rather than the link's where it has one.
- **Bounded scans.** A scan stops with a DataError after ``max_scan_files`` directory entries, more than
  ``max_classes`` class folders, or more than ``max_images`` images to decode (after ``per_class``).
  Kernel pseudo-filesystems (/proc, /sys, /dev) are refused as a root and skipped inside one; only
  regular files are opened (FIFOs, sockets and devices are skipped: reading one can block forever), and
  one file may hold at most ``MAX_BYTES_PER_PIXEL`` bytes per allowed pixel (plus metadata).
- **Images.** A decoded image may hold at most ``max_image_pixels`` pixels (checked from the header,
  before decoding), and images come out at most ``max_image_size`` pixels a side. 16- and 32-bit
  images are mapped to 8 bits by the standard range their values lie in (see :func:`_to_8bit`), or
  refused with the reason when they fit none; never clipped to white or black.
- **Class names** (folder names) must be UTF-8 text of at most ``MAX_CLASS_NAME`` characters without
  control characters; HTML or Markdown characters are allowed (the app shows names as text). Image
  files whose names are not UTF-8 are read; messages show their bytes as ``\\xNN``.
- :func:`load_dataset` needs at least 2 class folders: the method explains attacks that move an image
  from its class to another of the model's classes (:func:`image_folder` itself reads one).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import stat
import unicodedata
import warnings
import zlib
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from math import prod
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from core.config import DataConfig
from core.hosting import settings

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
# bump when decoding changes the pixels of the same files (2: 32-bit TIFFs mapped by value range)
_FINGERPRINT_VERSION = "nve-imageset-2"
MAX_CLASS_NAME = 128  # characters in a class (folder) name
# One file may hold this many bytes per allowed pixel (16-bit RGBA, the widest common sample), plus
# metadata: a bigger file is refused before it is read into memory.
MAX_BYTES_PER_PIXEL = 8
MAX_METADATA_BYTES = 16 << 20
# Kernel pseudo-filesystems: no images, and reading their files can block or never end.
PSEUDO_FS_ROOTS = ("/proc", "/sys", "/dev")
# Characters that cannot be part of a class name: they are invisible, or they reorder or break the text
# they are shown in (bidirectional overrides can make "cat" read as another name).
_BIDI_CONTROLS = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

Positions = Sequence[int] | np.ndarray | range


class DataError(ValueError):
    """Data that cannot be loaded; the message says what is wrong and how to fix it."""


class DataWarning(UserWarning):
    """Something was left out of a dataset (unreadable files, empty class folders)."""


class _Unreadable(Exception):
    """One file that is refused or cannot be decoded; the message is the reason (skipped or reported)."""


class _File(NamedTuple):
    path: Path
    rel: str  # path relative to the dataset root: the fingerprint must not depend on where data sits
    size: int
    sha256: str
    ident: tuple[int, int] | None = None  # (st_dev, st_ino) at scan time: a swapped file is not read


def _shown(p: Any) -> str:
    """A path or name as printable text: bytes that are not UTF-8 (the surrogate escapes os.fsdecode
    makes of them) appear as ``\\xNN``, so a message or a manifest can always be encoded."""
    s = str(p)
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return os.fsencode(s).decode("utf-8", "backslashreplace")


def _max_file_bytes() -> int:
    return MAX_BYTES_PER_PIXEL * settings().max_image_pixels + MAX_METADATA_BYTES


def _read_file(path: Path | str, ident: tuple[int, int] | None = None) -> bytes:
    """The bytes of one regular file, bounded in size. Opened non-blocking and checked after opening (so
    a FIFO or device swapped in after the scan is refused, never waited on), and, with ``ident``, only
    if it is still the file the scan saw. Raises _Unreadable (or OSError) with the reason."""
    limit = _max_file_bytes()
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Unreadable("not a regular file (a FIFO, socket or device): only regular files are read")
        if ident is not None and (st.st_dev, st.st_ino) != ident:
            raise _Unreadable("it was replaced by another file since the folder was scanned")
        if st.st_size > limit:
            raise _Unreadable(f"{st.st_size:,} bytes, more than this server reads for one image ({limit:,} "
                              "bytes, from max_image_pixels); downscale or recompress it")
        chunks, total = [], 0
        while total <= limit:  # the size may grow after fstat: read at most limit + 1 bytes
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise _Unreadable(f"more than {limit:,} bytes (the most this server reads for one image); "
                              "downscale or recompress it")
        return b"".join(chunks)
    finally:
        os.close(fd)


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
                data = _read_file(f.path, f.ident)
            except _Unreadable as e:
                raise DataError(f"{_shown(f.path)} changed since the dataset was scanned ({e}); load it "
                                "again") from None
            except OSError as e:
                raise DataError(f"cannot read {_shown(f.path)} ({e.strerror}); it was readable when the "
                                "dataset was scanned: restore the file or load the dataset again") from None
            # Results are cached under the fingerprint, which hashed these bytes at scan time.
            if hashlib.sha256(data).hexdigest() != f.sha256:
                raise DataError(f"{_shown(f.path)} changed since the dataset was scanned; load it again")
            try:
                out[i] = _decode(data, self.channels, self.image_size)
            except _Unreadable as e:  # a server limit lowered since the scan
                raise DataError(f"cannot read {_shown(f.path)}: {e}") from None
        return out

    def hash_rows(self, h: Any, rows: np.ndarray) -> None:
        h.update(json.dumps([self.channels, list(self.image_size)]).encode())
        if self.files is not None:
            for r in rows:
                f = self.files[r]
                # fsencode: a file name that is not UTF-8 hashes as its bytes (the same for UTF-8 names)
                h.update(os.fsencode(f.rel) + f"\0{f.size}\0{f.sha256}\n".encode())
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
    """(H, W) from an int (square) or a pair, within 1..max_image_size of this server."""
    if isinstance(image_size, bool) or (not isinstance(image_size, int | np.integer)
                                        and any(isinstance(v, bool) for v in image_size)):
        raise DataError(f"image_size={image_size!r} must be a whole number of pixels; set [data] "
                        "image_size, e.g. 224")
    h, w = (image_size, image_size) if isinstance(image_size, int | np.integer) else image_size
    if int(h) < 1 or int(w) < 1:
        raise DataError(f"image_size={image_size!r} must be positive; set [data] image_size, e.g. 224")
    limit = settings().max_image_size
    if int(h) > limit or int(w) > limit:
        raise DataError(f"image_size={image_size!r} is larger than this server allows ({limit} pixels a "
                        f"side, max_image_size); set [data] image_size to at most {limit}")
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


# What each conversion in the scan's note means (tally keys: PIL modes, and _to_8bit's kinds)
_MODE_NAMES = {
    "L": "grayscale", "RGB": "RGB", "RGBA": "RGBA (alpha dropped)", "LA": "grayscale+alpha (alpha dropped)",
    "P": "palette", "CMYK": "CMYK", "1": "black-and-white",
    "16-bit": "16-bit grayscale (its 0..65535 range mapped onto 0..255)",
    "32-bit int 0..255": "32-bit integer with values in 0..255 (kept as they are)",
    "32-bit int 0..65535": "32-bit integer with values above 255, read as 16-bit (0..65535 mapped onto "
                           "0..255)",
    "32-bit float 0..1": "32-bit float with values in [0, 1] (×255)",
    "32-bit float 0..255": "32-bit float with values above 1, read as [0, 255] (rounded)",
}


def _to_8bit(im: Image.Image) -> tuple[Image.Image, str] | None:
    """A 16- or 32-bit grayscale image (PIL modes I;16*, I, F) as 8-bit ("L") and the kind of mapping, or
    None for other modes. Values are mapped by the standard range they are stored in, the one a viewer
    and a training pipeline assume, never by the image's own min/max (that would change the contrast of
    each image differently):

    - I;16: the 16-bit range, 0..65535 → 0..255 (the top 8 bits), as viewers show 16-bit PNGs and TIFFs;
    - I (32-bit integers): values in 0..255 are kept; values up to 65535 are read as 16-bit (0..65535 →
      0..255); negative values or values above 65535 have no standard range: refused;
    - F (32-bit float): values in [0, 1] (the usual float convention) are ×255; values in [0, 255]
      are rounded; NaN, infinities, negative values or values above 255: refused.

    The scan's note counts the images of each kind, so a folder that mixes them (an I image whose values
    happen to stay under 256 beside ones read as 16-bit) is visible. Raises _Unreadable with the reason."""
    mode = im.mode
    if not (mode.startswith("I;16") or mode in ("I", "F")):
        return None
    a = np.asarray(im)
    if mode == "F":
        a = a.astype(np.float64)
        if not np.isfinite(a).all():
            raise _Unreadable("a 32-bit float image with NaN or infinite values; export it as an 8-bit image")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0 or hi > 255:
            raise _Unreadable(f"a 32-bit float image with values from {lo:g} to {hi:g}, outside [0, 1] and "
                              "[0, 255], so it has no standard 8-bit mapping; rescale it to [0, 1] or "
                              "export it as an 8-bit image")
        kind, scale = ("32-bit float 0..1", 255.0) if hi <= 1 else ("32-bit float 0..255", 1.0)
        return Image.fromarray(np.rint(a * scale).clip(0, 255).astype(np.uint8)), kind
    a = a.astype(np.int64)
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    if lo < 0 or hi > 65535:
        raise _Unreadable(f"a {'16' if mode != 'I' else '32'}-bit integer image with values from {lo} to "
                          f"{hi}, outside 0..65535, so it has no standard 8-bit mapping; export it as an "
                          "8- or 16-bit image")
    if mode != "I":
        kind = "16-bit"
    else:
        kind = "32-bit int 0..255" if hi <= 255 else "32-bit int 0..65535"
    shift = 0 if kind == "32-bit int 0..255" else 8  # 16-bit: the top 8 bits (65535 → 255)
    return Image.fromarray((a >> shift).astype(np.uint8)), kind


def _decode(data: bytes, channels: int, size: tuple[int, int] | None, tally: Counter | None = None
            ) -> np.ndarray:
    """Decode an image file fully (a truncated file fails here, not later) to uint8 (C, H, W), after
    checking its pixel count against max_image_pixels from the header. ``tally`` (optional) counts the
    conversions made: the source mode of each converted image (e.g. ``"RGBA"``, or a kind of
    :func:`_to_8bit`), and ``"resized"``. Raises _Unreadable for a refused image, PIL's errors for a
    corrupt one."""
    limit = settings().max_image_pixels
    try:
        opened = Image.open(io.BytesIO(data))  # lazy: reads the header only
    except Image.DecompressionBombError as e:  # PIL's own, larger limit (2 × Image.MAX_IMAGE_PIXELS)
        raise _Unreadable(f"more pixels than this server decodes ({limit:,}, max_image_pixels; PIL: {e}); "
                          "downscale it") from None
    with opened as im:
        w, h = im.size
        if w * h > limit:  # before decoding: a small PNG can inflate to gigabytes
            raise _Unreadable(f"{w}×{h} = {w * h:,} pixels, more than this server decodes for one image "
                              f"({limit:,}, max_image_pixels); downscale it")
        im.load()
        mode = "L" if channels == 1 else "RGB"
        converted = _to_8bit(im)  # 16/32-bit: PIL's convert would clip them to white or black
        if tally is not None and im.mode != mode:
            tally[converted[1] if converted else im.mode] += 1
        if converted:
            im = converted[0]
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
    """Whether ``folder`` holds exactly the 10 CIFAR-10 class folders (hidden ones aside); a bounded look."""
    if not folder.is_dir():
        return False
    names = set()
    try:
        with os.scandir(folder) as it:
            for n, e in enumerate(it):
                if n > settings().max_scan_files:
                    return False  # image_folder says why, if asked to read it
                if not e.name.startswith(".") and e.is_dir():
                    if e.name not in CIFAR10_CLASSES:
                        return False
                    names.add(e.name)
    except OSError:
        return False
    return names == set(CIFAR10_CLASSES)


def cifar10(root: str | Path, split: str = "test", download: bool = False, *,
            image_size: int | None = None, on_corrupt: str = "skip",
            classes: Iterable[str | int] | None = None, per_class: int | None = None) -> ImageSet:
    """CIFAR-10 from ``root``: a folder of the 10 class folders (``root/<split>`` if present, else
    ``root`` itself; read by :func:`image_folder`), or torchvision's ``cifar-10-batches-py`` (in
    ``root`` or being ``root``). ``download=True`` fetches the python batches into ``root``.
    ``classes`` and ``per_class`` limit what a class folder tree decodes (as :func:`image_folder`); the
    python batches are read whole (50,000 images at most) and left for :func:`select`."""
    _check_split(split)
    if root is None:
        raise DataError("cifar10 needs [data] root: a folder of the 10 class folders, or one holding "
                        "cifar-10-batches-py (add download = true to fetch it there)")
    root = Path(root).expanduser()
    if root.exists():
        _check_root(root)
    for folder in (root / split, root):
        if _is_cifar_tree(folder):
            ds = image_folder(folder, channels=3, image_size=image_size, on_corrupt=on_corrupt,
                              classes=classes, per_class=per_class)
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

def _note(notes: list[str], message: str, stacklevel: int = 3) -> None:
    notes.append(message)
    warnings.warn(message, DataWarning, stacklevel=stacklevel)


def _special_devices() -> set[int]:
    """st_dev of the kernel pseudo-filesystems (a bind mount of one elsewhere has the same device); a
    path that is no mount of its own (st_dev of /) is left out, or it would refuse every folder."""
    devs = set()
    try:
        root_dev = os.stat("/").st_dev
    except OSError:  # pragma: no cover - / always exists
        root_dev = None
    for p in PSEUDO_FS_ROOTS:
        try:
            d = os.stat(p).st_dev
        except OSError:
            continue
        if d != root_dev:
            devs.add(d)
    return devs


def _inside(path: str, real_root: str) -> bool:
    return path == real_root or path.startswith(real_root.rstrip(os.sep) + os.sep)


def _check_root(root: Path) -> str:
    """The real path of a dataset root, refused (DataError) when it lies on a kernel pseudo-filesystem."""
    try:
        real = os.path.realpath(root, strict=True)
        dev = os.stat(real).st_dev
    except (OSError, RuntimeError) as e:
        raise DataError(f"cannot resolve [data] root {_shown(root)} ({getattr(e, 'strerror', None) or e}); "
                        "set it to a folder of class folders") from None
    # /proc and /sys hold nothing else; under /dev only /dev's own device (/dev/shm is a plain tmpfs)
    if _inside(real, "/proc") or _inside(real, "/sys") or real == "/dev" or dev in _special_devices():
        raise DataError(f"[data] root {_shown(root)} is on a kernel pseudo-filesystem (/proc, /sys or /dev), "
                        "which holds no images and whose files can block when read; set [data] root to a "
                        "folder laid out as <root>/<class name>/<image files>")
    return real


def _class_name_problem(name: str) -> str | None:
    """Why a folder name cannot be a class name, or None."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.fsdecode's surrogate escapes: bytes that are not UTF-8
        return f"is not valid UTF-8 (its bytes: {os.fsencode(name)!r})"
    if len(name) > MAX_CLASS_NAME:
        return f"is {len(name)} characters long"
    bad = sorted({c for c in name if unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in _BIDI_CONTROLS})
    if bad:
        return f"contains control character(s) {', '.join(f'U+{ord(c):04X}' for c in bad)}"
    return None


class _Entry(NamedTuple):
    path: str  # as seen under the root: the order, the ids and the fingerprint follow it
    ident: tuple[int, int]  # (st_dev, st_ino)
    via_link: bool  # reached through a symlink (a linked file, or inside a linked folder)


class _Scan:
    """One bounded walk of a dataset root: a budget of directory entries, the folders and files seen (by
    (st_dev, st_ino), so loops end and nothing is read twice), and what was left out, for the notes.

    Class folders are walked first without following any symlink; symlinks found on the way are then
    followed, in the order found, when their target is inside the root and not seen yet. So a real path
    always wins over a link to the same folder or file."""

    def __init__(self, root: Path, real_root: str):
        self.root, self.real_root = root, real_root
        self.max_entries = settings().max_scan_files
        self.entries = 0
        self.special = _special_devices()
        self.dirs: set[tuple[int, int]] = set()
        self.files: list[list[_Entry]] = []  # per class, filled by _scan_images
        self.links: deque[tuple[str, int]] = deque()
        self.left_out: dict[str, list[str]] = {k: [] for k in ("outside", "seen", "broken", "special",
                                                                "pseudo", "unlistable")}

    def listdir(self, path: str | Path) -> list[os.DirEntry]:
        out = []
        with os.scandir(path) as it:
            for e in it:
                self.entries += 1
                if self.entries > self.max_entries:
                    raise DataError(
                        f"{_shown(self.root)} holds more than {self.max_entries:,} files and folders, the "
                        "most one dataset scan visits on this server (max_scan_files); set [data] root to "
                        "a smaller folder of class folders (an admin can raise NVE_MAX_SCAN_FILES)")
                out.append(e)
        return out

    def _add(self, path: str, st: os.stat_result, k: int, via_link: bool, stack: list[str]) -> None:
        if stat.S_ISDIR(st.st_mode):
            ident = (st.st_dev, st.st_ino)
            if st.st_dev in self.special:
                self.left_out["pseudo"].append(path)
            elif ident in self.dirs:  # a bind mount of a folder already scanned
                self.left_out["seen"].append(path)
            else:
                self.dirs.add(ident)
                stack.append(path)
        elif stat.S_ISREG(st.st_mode):
            self.files[k].append(_Entry(path, (st.st_dev, st.st_ino), via_link))
        else:
            self.left_out["special"].append(path)

    def walk(self, stack: list[str], k: int, via_link: bool) -> None:
        """Every folder in ``stack`` (already registered) and below, for class ``k``; symlinks are queued."""
        while stack:
            d = stack.pop()
            try:
                entries = self.listdir(d)
            except OSError as e:
                self.left_out["unlistable"].append(f"{d} ({e.strerror})")
                continue
            for e in entries:
                try:
                    if e.is_symlink():
                        self.links.append((e.path, k))
                        continue
                    st = e.stat(follow_symlinks=False)
                except OSError as err:
                    self.left_out["unlistable"].append(f"{e.path} ({err.strerror})")
                    continue
                self._add(e.path, st, k, via_link, stack)

    def follow_links(self) -> None:
        while self.links:
            path, k = self.links.popleft()
            try:
                target = os.path.realpath(path, strict=True)  # OSError for a dangling link or a loop
                st = os.stat(target)
            except (OSError, RuntimeError):
                self.left_out["broken"].append(path)
                continue
            if not _inside(target, self.real_root):
                self.left_out["outside"].append(path)
                continue
            stack: list[str] = []
            self._add(path, st, k, True, stack)
            self.walk(stack, k, True)

    def notes(self, notes: list[str]) -> None:
        what = {
            "outside": "did not follow {n} symlink(s) that lead outside {root} (e.g. {e}): only files inside "
                       "[data] root are read; copy the files into it",
            "seen": "did not follow {n} folder symlink(s) or mounts that lead to a folder already scanned (a "
                    "loop such as cat/up -> .., or a second path to one folder; e.g. {e}): each folder is "
                    "read once",
            "broken": "skipped {n} broken symlink(s) (a missing target, or a loop of links; e.g. {e})",
            "special": "skipped {n} item(s) that are not regular files (FIFOs, sockets or devices; e.g. "
                       "{e}): only regular files are read",
            "pseudo": "skipped {n} folder(s) on a kernel pseudo-filesystem (/proc, /sys, /dev; e.g. {e})",
            "unlistable": "could not read {n} folder(s) or file(s) in {root} (e.g. {e}); their images are "
                          "left out: check their permissions",
        }
        for key, paths in self.left_out.items():
            if paths:
                _note(notes, what[key].format(n=len(paths), root=_shown(self.root), e=_shown(paths[0])),
                      stacklevel=5)  # the caller of image_folder


def _class_folders(root: Path, real_root: str, scan: _Scan) -> list[tuple[str, str]]:
    """(name, path) of the class folders of ``root``, sorted by name: its sub-folders (hidden ones
    excluded), a symlink among them only when it leads inside the root to a folder that is no other
    class folder. Names are validated; the count is bounded by max_classes."""
    limit = settings().max_classes
    found: dict[str, tuple[str, tuple[int, int]]] = {}
    for e in scan.listdir(root):
        if e.name.startswith("."):
            continue
        try:
            if e.is_symlink():
                try:
                    target = os.path.realpath(e.path, strict=True)
                    st = os.stat(target)
                except (OSError, RuntimeError):
                    continue  # a broken link is no folder (as before: files in the root are ignored)
                if not stat.S_ISDIR(st.st_mode):
                    continue
                if not _inside(target, real_root):
                    raise DataError(f"class folder {e.name!r} in {_shown(root)} is a symlink to a folder "
                                    "outside [data] root; this server reads only inside the root: move or "
                                    "copy the folder into it")
            elif e.is_dir(follow_symlinks=False):
                st = e.stat(follow_symlinks=False)
            else:
                continue
        except OSError as err:
            raise DataError(f"cannot read class folder {e.name!r} in {_shown(root)} ({err.strerror}); check "
                            "its permissions") from None
        if st.st_dev in scan.special:
            raise DataError(f"class folder {e.name!r} in {_shown(root)} is on a kernel pseudo-filesystem "
                            "(/proc, /sys or /dev); remove it from [data] root")
        found[e.name] = (e.path, (st.st_dev, st.st_ino))
        if len(found) > limit:
            raise DataError(f"{_shown(root)} has more than {limit:,} class folders, the most this server "
                            "allows (max_classes); set [data] root to a folder of one sub-folder per class "
                            "of the model")
    names = sorted(found)
    for name in names:
        if (problem := _class_name_problem(name)) is not None:
            raise DataError(f"class folder {name!r} in {_shown(root)}: its name {problem}; class names are "
                            f"shown to everyone who opens the experiment, so they must be UTF-8 text of at "
                            f"most {MAX_CLASS_NAME} characters without control characters: rename the folder")
    owners: dict[tuple[int, int], str] = {}
    root_ident = (os.stat(real_root).st_dev, os.stat(real_root).st_ino)
    for name in names:
        ident = found[name][1]
        if ident == root_ident:
            raise DataError(f"class folder {name!r} in {_shown(root)} is a symlink to the root itself; "
                            "remove it")
        if ident in owners:
            raise DataError(f"class folders {owners[ident]!r} and {name!r} in {_shown(root)} are the same "
                            "folder (a symlink or a mount); each class needs a folder of its own: remove one")
        owners[ident] = name
    return [(n, found[n][0]) for n in names]


def _scan_images(root: Path, real_root: str, classes: list[tuple[str, str]], scan: _Scan,
                 notes: list[str], wanted: set[int]) -> list[list[_Entry]]:
    """The image files of each class folder, in torchvision ImageFolder's order (sorted folder paths,
    then sorted names), each file once; non-image files of the ``wanted`` classes are noted as ignored."""
    scan.files = [[] for _ in classes]
    st = os.stat(real_root)
    scan.dirs.add((st.st_dev, st.st_ino))
    for _, path in classes:
        st = os.stat(path)
        scan.dirs.add((st.st_dev, st.st_ino))
    for k, (_, path) in enumerate(classes):
        scan.walk([path], k, via_link=False)
    scan.follow_links()
    scan.notes(notes)
    ignored: list[str] = []
    images: list[list[_Entry]] = []
    for k, files in enumerate(scan.files):
        files.sort(key=lambda f: os.path.split(f.path))  # os.walk's dirpath order, then names
        names = [(f, os.path.basename(f.path)) for f in files]
        if k in wanted:
            ignored += [f.path for f, n in names if not n.lower().endswith(IMAGE_EXTENSIONS)
                        and not n.startswith(".")]
        images.append([f for f, n in names if n.lower().endswith(IMAGE_EXTENSIONS)])
    if ignored:
        _note(notes, f"ignored {len(ignored)} file(s) that are not images by their extension (e.g. "
              f"{_shown(ignored[0])}); images must end in {', '.join(IMAGE_EXTENSIONS)}", stacklevel=4)
    # each file once: a real path before a link to it, then the first in scan order
    owner: dict[tuple[int, int], tuple[int, int]] = {}
    for _, k, i in sorted((f.via_link, k, i) for k, files in enumerate(images) for i, f in enumerate(files)):
        owner.setdefault(images[k][i].ident, (k, i))
    dupes = [(f, images[owner[f.ident][0]][owner[f.ident][1]]) for k, files in enumerate(images)
             for i, f in enumerate(files) if owner[f.ident] != (k, i)]
    if dupes:
        _note(notes, f"left out {len(dupes)} file(s) reached a second time through a symlink or a hard link "
              f"(e.g. {_shown(dupes[0][0].path)}, the same file as {_shown(dupes[0][1].path)}): each file is "
              "read once, under its own path", stacklevel=4)
    return [[f for i, f in enumerate(files) if owner[f.ident] == (k, i)] for k, files in enumerate(images)]


def image_folder(root: str | Path, *, channels: int = 3, image_size: int | None = None,
                 on_corrupt: str = "skip", classes: Iterable[str | int] | None = None,
                 per_class: int | None = None) -> ImageSet:
    """Images in ``root/<class>/**/<file>`` like torchvision's ImageFolder: classes are the sorted
    folder names (hidden ones excluded), files are kept by extension. Every file is decoded once here
    (so unreadable ones are found now: skipped and reported, or a DataError with
    ``on_corrupt="error"``) and converted to ``channels``; sizes must agree unless ``image_size``
    resizes them all. ``classes`` restricts the scan; labels still index the full class list and
    ``indices`` are positions in the full file list, so ids do not depend on the restriction.
    ``per_class`` stops decoding a class after that many readable images (what :func:`select` keeps).

    The scan is bounded and never leaves the root (see the module docstring: symlinks, limits, which
    files are opened)."""
    if on_corrupt not in ("skip", "error"):
        raise DataError(f"[data] on_corrupt={on_corrupt!r}: use 'skip' or 'error'")
    if channels not in (1, 3):
        raise DataError(f"channels={channels}: use 1 (grayscale) or 3 (RGB)")
    if per_class is not None and per_class < 1:
        raise DataError(f"[data] per_class={per_class} must be at least 1 (or left out for all)")
    size = _size(image_size) if image_size else None
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"image folder {_shown(root)} does not exist; set [data] root to a folder laid out "
                        "as <root>/<class name>/<image files>")
    if not root.is_dir():
        raise DataError(f"{_shown(root)} is not a folder; set [data] root to a folder laid out as "
                        "<root>/<class name>/<image files>")
    real_root = _check_root(root)
    scan = _Scan(root, real_root)  # one budget for the whole scan
    try:
        class_dirs = _class_folders(root, real_root, scan)
    except PermissionError as e:
        raise DataError(f"cannot list {_shown(root)} ({e.strerror}); check its permissions") from None
    all_classes = [name for name, _ in class_dirs]
    if not all_classes:
        raise DataError(f"{_shown(root)} has no class folders: expected <root>/<class name>/<image files> "
                        "(like torchvision's ImageFolder); move the images into one folder per class")
    wanted = set(_class_ids(all_classes, classes)) if classes is not None else set(range(len(all_classes)))
    notes: list[str] = []
    # all classes: ids must not depend on `wanted`
    listing = _scan_images(root, real_root, class_dirs, scan, notes, wanted)
    empty = [c for c, files in zip(all_classes, listing, strict=True) if not files]
    if empty:
        _note(notes, f"{len(empty)} class folder(s) in {_shown(root)} hold no images ({', '.join(empty[:5])}"
              f"{', ...' if len(empty) > 5 else ''}); they stay in the class list so labels "
              "keep matching the model")
    n_decode = sum(min(len(listing[k]), per_class or len(listing[k])) for k in wanted)
    max_images = settings().max_images
    if n_decode > max_images:
        raise DataError(f"{_shown(root)} holds {n_decode:,} images in the chosen classes, more than this "
                        f"server allows in one experiment ({max_images:,}, max_images); set [data] "
                        f"per_class (e.g. per_class = {max(1, max_images // len(wanted))}) or [data] classes "
                        "to use fewer")

    arrays: list[np.ndarray] | None = []
    files: list[_File] = []
    labels: list[int] = []
    indices: list[int] = []
    skipped: list[tuple[str, str]] = []
    first: tuple[Path, tuple[int, int]] | None = None
    tally: Counter = Counter()
    nbytes = 0
    index = -1
    max_side = settings().max_image_size
    for k, class_files in enumerate(listing):
        taken = 0
        for entry in class_files:
            index += 1
            if k not in wanted or (per_class is not None and taken >= per_class):
                continue
            path = Path(entry.path)
            try:
                data = _read_file(path, entry.ident)
                img = _decode(data, channels, size, tally)
            except Exception as e:  # a decoder fails on bad input in many ways; all mean "unreadable"
                if isinstance(e, UnidentifiedImageError):
                    reason = "not an image: its content is in no image format PIL can read"
                elif isinstance(e, _Unreadable):
                    reason = str(e)
                elif isinstance(e, OSError) and e.strerror:
                    reason = f"{type(e).__name__}: {e.strerror}"
                else:
                    reason = f"{type(e).__name__}: {e}"
                if on_corrupt == "error":
                    raise DataError(f"cannot read image {_shown(path)} ({reason}); fix or remove it, or set "
                                    "[data] on_corrupt = \"skip\" to leave unreadable images out") from None
                skipped.append((_shown(path), reason))
                continue
            hw = (img.shape[1], img.shape[2])
            if first is None:
                first = (path, hw)
                if size is None and max(hw) > max_side:
                    raise DataError(f"images in {_shown(root)} are {hw[1]}×{hw[0]} (W×H, e.g. "
                                    f"{_shown(path)}), larger than this server allows ({max_side} pixels "
                                    f"a side, max_image_size); set [data] image_size (at most {max_side}) "
                                    "to resize them")
            elif hw != first[1]:
                raise DataError(f"images in {_shown(root)} differ in size: {_shown(first[0])} is "
                                f"{first[1][1]}×{first[1][0]} but {_shown(path)} is {hw[1]}×{hw[0]} "
                                "(W×H); set [data] "
                                f"image_size (e.g. image_size = {min(max(first[1]), max_side)}) to resize "
                                "all to one square size")
            files.append(_File(path, path.relative_to(root).as_posix(), len(data),
                               hashlib.sha256(data).hexdigest(), entry.ident))
            labels.append(k)
            indices.append(index)
            taken += 1
            nbytes += img.nbytes
            if arrays is not None:
                arrays.append(img)
                if nbytes >= IN_MEMORY_LIMIT:
                    arrays = None  # too big to keep: decode again on access
    if tally:
        conversions = [f"{n} {_MODE_NAMES.get(k, k)}" for k, n in sorted(tally.items()) if k != "resized"]
        if conversions:
            _note(notes, f"converted {sum(tally.values()) - tally['resized']} image(s) to "
                  f"{'grayscale' if channels == 1 else 'RGB'} ([model] in_channels = {channels}): "
                  f"{', '.join(conversions)}")
        for family in ("32-bit int", "32-bit float"):
            if sum(1 for k in tally if k.startswith(family)) > 1:
                _note(notes, f"the {family} images were read in two ranges (see the note above): if they "
                      "were stored in one range, some now look too bright or too dark; export them as "
                      "8-bit images")
        if tally["resized"]:
            _note(notes, f"resized {tally['resized']} image(s) to {size[1]}×{size[0]} ([data] "
                  "image_size)")
    if skipped:
        _note(notes, f"skipped {len(skipped)} unreadable image(s) in {_shown(root)}, e.g. {skipped[0][0]} "
              f"({skipped[0][1]}); they are left out (ImageSet.skipped; an experiment's manifest lists them)")
    if first is None:
        raise DataError(f"no readable images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders of "
                        f"{_shown(root)}" + (f" ({len(skipped)} unreadable)" if skipped else "")
                        + "; check [data] root and classes")
    out_size = first[1]
    pixels = np.stack(arrays) if arrays is not None else None
    return ImageSet(f"image_folder:{_shown(real_root)}", all_classes, np.array(labels), np.array(indices),
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
                     on_corrupt=cfg.on_corrupt, classes=cfg.classes, per_class=cfg.per_class)
    else:
        # Decode straight to the model's channels and size: big photos are never kept full size; and
        # only the per_class images select() keeps.
        ds = image_folder(cfg.root, channels=channels, image_size=cfg.image_size,
                          on_corrupt=cfg.on_corrupt, classes=cfg.classes, per_class=cfg.per_class)
    if len(ds.classes) < 2:  # only a folder can have one; the model's count is checked later
        raise DataError(f"{_shown(cfg.root)} has one class folder ({ds.classes[0]!r}), but the method needs "
                        "at least 2 classes: the classes of the model, whose attacks move an image from its "
                        "class to another. Add one folder per class the model outputs, <root>/<class "
                        "name>/<image files>, named so that they sort in the order of the model's outputs")
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
