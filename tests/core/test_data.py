"""core.data on real data: the shipped demo set, the Debian Fashion-MNIST files, the CIFAR-10 test set
in ../shared, and small trees built in tmp_path from those real images."""
import dataclasses
import gzip
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core import data
from core.config import DataConfig
from core.data import DataError, DataWarning, ImageSet

FASHION_ASSETS = data.ASSETS / "fashion-mnist"


@pytest.fixture(scope="module")
def demo_ds() -> ImageSet:
    return data.demo()


@pytest.fixture(scope="module")
def cifar(cifar_root) -> ImageSet:
    return data.cifar10(cifar_root)


def _jpgs(cifar_root: Path, cls: str, n: int) -> list[Path]:
    return [cifar_root / cls / f"{i:04d}.jpg" for i in range(n)]


def _tree(tmp_path: Path, cifar_root: Path, spec: dict[str, int]) -> Path:
    """tmp_path/tree/<class>/ with the first n real CIFAR jpgs of that class."""
    root = tmp_path / "tree"
    for cls, n in spec.items():
        (root / cls).mkdir(parents=True)
        for p in _jpgs(cifar_root, cls, n):
            shutil.copy(p, root / cls / p.name)
    return root


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)


# --- demo and Fashion-MNIST -----------------------------------------------------------------------

def test_demo(demo_ds):
    assert len(demo_ds) == 10_000 and demo_ds.channels == 1 and demo_ds.image_size == (28, 28)
    assert demo_ds.name == "demo/fashion_mnist-test"
    assert demo_ds.classes[0] == "T-shirt/top" and demo_ds.classes[9] == "Ankle boot"
    assert demo_ds.labels.dtype == np.int64 and demo_ds.indices.dtype == np.int64
    assert np.bincount(demo_ds.labels, minlength=10).tolist() == [1000] * 10
    assert np.array_equal(demo_ds.indices, np.arange(10_000))
    x = demo_ds.get([0, 5, 9999])
    assert x.dtype == torch.float32 and x.shape == (3, 1, 28, 28)
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.9  # real images use the full range
    assert torch.equal(x * 255, torch.from_numpy(demo_ds.get_uint8([0, 5, 9999])).float())


def test_batches_cover_all_positions_in_order(demo_ds):
    pos, ys, xs = [], [], []
    for p, x, y in demo_ds.batches(3000):
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and len(p) == len(x) == len(y)
        pos.append(p), xs.append(x), ys.append(y)
    assert [len(p) for p in pos] == [3000, 3000, 3000, 1000]
    assert np.array_equal(np.concatenate(pos), np.arange(10_000))
    assert torch.equal(torch.cat(ys), torch.from_numpy(demo_ds.labels))
    assert torch.equal(torch.cat(xs), demo_ds.get(range(10_000)))
    sub = [p.tolist() for p, _, _ in demo_ds.batches(2, positions=[7, 3, 5])]
    assert sub == [[7, 3], [5]]


def test_positions_are_checked(demo_ds):
    with pytest.raises(IndexError):
        demo_ds.get([10_000])
    with pytest.raises(IndexError):
        demo_ds.get([-1])
    with pytest.raises(TypeError):
        demo_ds.get([0.5])
    assert demo_ds.get([]).shape == (0, 1, 28, 28)


def test_fashion_mnist_debian(fmnist_root, demo_ds):
    test = data.fashion_mnist(split="test")
    assert test.name == "fashion_mnist/test" and test.classes == demo_ds.classes
    assert np.array_equal(test.get_uint8(range(len(test))), demo_ds.get_uint8(range(len(demo_ds))))
    assert np.array_equal(test.labels, demo_ds.labels)
    train = data.fashion_mnist(fmnist_root, split="train")
    assert len(train) == 60_000 and train.image_size == (28, 28)
    assert np.bincount(train.labels).tolist() == [6000] * 10


def test_fashion_mnist_torchvision_layout(tmp_path, demo_ds):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    shutil.copy(FASHION_ASSETS / "t10k-labels-idx1-ubyte.gz", raw)  # gzipped
    (raw / "t10k-images-idx3-ubyte").write_bytes(  # and not
        gzip.decompress((FASHION_ASSETS / "t10k-images-idx3-ubyte.gz").read_bytes()))
    ds = data.fashion_mnist(tmp_path, split="test")
    assert np.array_equal(ds.get_uint8(range(10_000)), demo_ds.get_uint8(range(10_000)))
    assert np.array_equal(ds.labels, demo_ds.labels)


def test_fashion_mnist_missing_or_corrupt_files(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        data.fashion_mnist(tmp_path, split="test")
    with pytest.raises(DataError, match="'test' or 'train'"):
        data.fashion_mnist(tmp_path, split="val")
    raw = gzip.decompress((FASHION_ASSETS / "t10k-images-idx3-ubyte.gz").read_bytes())
    shutil.copy(FASHION_ASSETS / "t10k-labels-idx1-ubyte.gz", tmp_path)
    images = tmp_path / "t10k-images-idx3-ubyte"
    for bad, why in ((raw[:-100], "truncated"), (b"\x00\x00\x0d\x03" + raw[4:], "magic"),
                     (b"\x00\x00\x08", "magic")):
        images.write_bytes(bad)
        with pytest.raises(DataError, match=why) as e:
            data.fashion_mnist(tmp_path)
        assert str(images) in str(e.value)
    images.unlink()
    gz = tmp_path / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes((FASHION_ASSETS / "t10k-images-idx3-ubyte.gz").read_bytes()[:50_000])
    with pytest.raises(DataError, match="corrupt or truncated") as e:
        data.fashion_mnist(tmp_path)
    assert str(gz) in str(e.value)


def test_download_failure_is_a_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets
    import torchvision.datasets.utils

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match="offline.*apt-get install dataset-fashion-mnist"):
        data.fashion_mnist(tmp_path, download=True)
    with pytest.raises(DataError, match="could not download CIFAR-10"):
        data.cifar10(tmp_path, download=True)


# --- CIFAR-10 -------------------------------------------------------------------------------------

def test_cifar10_folder(cifar, cifar_root):
    assert len(cifar) == 10_000 and cifar.channels == 3 and cifar.image_size == (32, 32)
    assert cifar.classes == data.CIFAR10_CLASSES == ["airplane", "automobile", "bird", "cat", "deer",
                                                     "dog", "frog", "horse", "ship", "truck"]
    assert np.bincount(cifar.labels).tolist() == [1000] * 10
    assert cifar.skipped == [] and cifar.name == "cifar10/test"
    k = cifar.classes.index("cat")
    pos = np.flatnonzero(cifar.labels == k)[7]
    assert np.array_equal(cifar.get_uint8([pos])[0], _rgb(cifar_root / "cat" / "0007.jpg"))


def test_select_per_class_and_classes(cifar):
    five = data.select(cifar, per_class=5)
    assert len(five) == 50 and np.all(np.diff(five.indices) > 0)
    assert np.bincount(five.labels).tolist() == [5] * 10
    # the first five of each class in index order (ImageFolder order: class-major)
    assert np.array_equal(five.indices, (np.arange(10)[:, None] * 1000 + np.arange(5)).ravel())
    assert np.array_equal(five.get_uint8(range(50)), cifar.get_uint8(five.indices))
    two = data.select(cifar, classes=["ship", "cat"])
    assert len(two) == 2000 and set(two.labels.tolist()) == {3, 8}
    assert two.classes == cifar.classes  # labels keep matching a 10-way model
    assert np.array_equal(data.select(cifar, classes=[3, "ship"], per_class=2).indices,
                          [3000, 3001, 8000, 8001])
    with pytest.raises(DataError, match="unknown class 'kitten'.*airplane, automobile"):
        data.select(cifar, classes=["kitten"])
    with pytest.raises(DataError, match="out of range"):
        data.select(cifar, classes=[10])
    with pytest.raises(DataError, match="per_class"):
        data.select(cifar, per_class=0)


def _fake_batches(root: Path, x: np.ndarray, y: list[int]) -> Path:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": y,
             b"data": x.reshape(len(x), -1), b"filenames": [b"%d.png" % i for i in range(len(x))]}
    (d / "test_batch").write_bytes(pickle.dumps(batch, protocol=4))
    meta = {b"label_names": [c.encode() for c in data.CIFAR10_CLASSES], b"num_cases_per_batch": len(x)}
    (d / "batches.meta").write_bytes(pickle.dumps(meta, protocol=4))
    return d


def test_cifar10_python_batches(tmp_path, cifar):
    x = cifar.get_uint8([0, 1000, 2000, 9999])
    y = cifar.labels[[0, 1000, 2000, 9999]].tolist()
    d = _fake_batches(tmp_path, x, y)
    for root in (tmp_path, d):
        ds = data.cifar10(root)
        assert len(ds) == 4 and ds.classes == data.CIFAR10_CLASSES and ds.image_size == (32, 32)
        assert np.array_equal(ds.get_uint8(range(4)), x) and ds.labels.tolist() == y
        assert np.array_equal(ds.indices, np.arange(4))
    with pytest.raises(DataError, match="data_batch_1 is missing"):
        data.cifar10(tmp_path, split="train")


class _Evil:
    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return os.system, (self.cmd,)


def test_cifar10_refuses_malicious_pickles(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    pwned = tmp_path / "pwned"
    for payload in (_Evil(f"touch {pwned}"),
                    {b"data": np.zeros((1, 3072), np.uint8), b"labels": [_Evil(f"touch {pwned}")]},
                    {b"data": np.array([1, 2], dtype=object), b"labels": [0, 1]}):
        (d / "test_batch").write_bytes(pickle.dumps(payload, protocol=4))
        with pytest.raises(DataError, match="refused|not allowed") as e:
            data.cifar10(tmp_path)
        assert "test_batch" in str(e.value)
        assert not pwned.exists()
    (d / "test_batch").write_bytes(b"\x80\x04 definitely not a pickle")
    with pytest.raises(DataError, match="not a CIFAR-10 python batch"):
        data.cifar10(tmp_path)


def test_cifar10_without_data_explains_layouts(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py.*download = true"):
        data.cifar10(tmp_path)


# --- image folders --------------------------------------------------------------------------------

def test_flat_folder_is_not_an_image_folder(lossless20):
    with pytest.raises(DataError, match="no class folders"):
        data.image_folder(lossless20)


def test_corrupt_and_truncated_files(tmp_path, cifar_root):
    root = _tree(tmp_path, cifar_root, {"cat": 3, "dog": 2})
    junk, trunc = root / "cat" / "x.jpg", root / "cat" / "trunc.jpg"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    trunc.write_bytes((cifar_root / "cat" / "0100.jpg").read_bytes()[:-30])
    with pytest.warns(DataWarning, match="skipped 2 unreadable"):
        ds = data.image_folder(root)
    assert len(ds) == 5 and [p for p, _ in ds.skipped] == [str(trunc), str(junk)]
    assert "truncated" in ds.skipped[0][1]
    # ids are positions in the full sorted file list, skipped files included
    assert ds.indices.tolist() == [0, 1, 2, 5, 6] and ds.labels.tolist() == [0, 0, 0, 1, 1]
    assert np.array_equal(ds.get_uint8([3])[0], _rgb(root / "dog" / "0000.jpg"))
    with pytest.raises(DataError, match="on_corrupt") as e:
        data.image_folder(root, on_corrupt="error")
    assert str(trunc) in str(e.value)
    trunc.unlink()
    with pytest.raises(DataError) as e:
        data.image_folder(root, on_corrupt="error")
    assert str(junk) in str(e.value)


def test_mixed_modes_come_out_with_the_asked_channels(tmp_path, cifar_root):
    src = Image.open(cifar_root / "frog" / "0000.jpg").convert("RGB")
    root = tmp_path / "modes"
    (root / "a").mkdir(parents=True)
    src.convert("L").save(root / "a" / "gray.png")
    src.convert("RGBA").save(root / "a" / "rgba.png")
    src.convert("P", palette=Image.Palette.ADAPTIVE).save(root / "a" / "palette.png")
    src.save(root / "a" / "rgb.bmp")
    gray16 = (np.asarray(src.convert("L")).astype(np.uint16) * 257)  # 16-bit grayscale PNG
    Image.fromarray(gray16).save(root / "a" / "zgray16.png")
    rgb = _rgb(root / "a" / "rgb.bmp")
    luma = np.asarray(src.convert("L"))

    ds3 = data.image_folder(root)
    x = ds3.get_uint8(range(len(ds3)))
    assert x.shape == (5, 3, 32, 32) and ds3.channels == 3
    gray, palette, rgb_out, rgba, g16 = x  # sorted names: gray, palette, rgb, rgba, zgray16
    assert np.array_equal(rgb_out, rgb) and np.array_equal(rgba, rgb)
    assert np.array_equal(gray, np.repeat(luma[None], 3, 0)) and np.array_equal(g16, gray)
    assert np.array_equal(palette, _rgb(root / "a" / "palette.png"))
    assert np.abs(palette.astype(int) - rgb).mean() < 10  # palette quantisation only

    ds1 = data.image_folder(root, channels=1)
    x1 = ds1.get_uint8(range(5))
    assert x1.shape == (5, 1, 32, 32) and np.array_equal(x1[2, 0], luma)
    # converting afterwards is bit-exact with decoding straight to grayscale (PIL's luma)
    assert np.array_equal(ds3.with_format(channels=1).get_uint8(range(5)), x1)


def test_sizes_must_agree_unless_resized(tmp_path, cifar_root):
    root = _tree(tmp_path, cifar_root, {"bird": 2, "ship": 1})
    big = root / "ship" / "big.png"
    Image.open(cifar_root / "ship" / "0005.jpg").resize((40, 24)).save(big)
    with pytest.raises(DataError, match="image_size") as e:
        data.image_folder(root)
    assert str(big) in str(e.value) and "40×24" in str(e.value) and "0000.jpg" in str(e.value)
    ds = data.image_folder(root, image_size=32)
    assert ds.image_size == (32, 32) and len(ds) == 4
    assert np.array_equal(ds.get_uint8([0])[0], _rgb(root / "bird" / "0000.jpg"))  # already 32×32
    assert data.image_folder(root, image_size=16).get(range(4)).shape == (4, 3, 16, 16)


def test_empty_folders_and_bad_roots(tmp_path, cifar_root):
    root = _tree(tmp_path, cifar_root, {"cat": 1, "horse": 1})
    (root / "deer").mkdir()
    with pytest.warns(DataWarning, match="deer"):
        ds = data.image_folder(root)
    assert ds.classes == ["cat", "deer", "horse"] and ds.labels.tolist() == [0, 2]

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no class folders"):
        data.image_folder(empty)
    (empty / "cat").mkdir()
    with pytest.raises(DataError, match="no readable images"), pytest.warns(DataWarning):
        data.image_folder(empty)
    with pytest.raises(DataError, match="does not exist"):
        data.image_folder(tmp_path / "nope")
    with pytest.raises(DataError, match="not a folder"):
        data.image_folder(root / "cat" / "0000.jpg")


def test_non_image_files_are_ignored(tmp_path, cifar_root):
    root = _tree(tmp_path, cifar_root, {"cat": 2, "dog": 1})
    (root / "labels.csv").write_text("path,label\n")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / "nested").mkdir()
    shutil.copy(cifar_root / "cat" / "0009.jpg", root / "cat" / "nested" / "UPPER.JPG")
    ds = data.image_folder(root)
    assert ds.skipped == [] and len(ds) == 4 and ds.classes == ["cat", "dog"]
    assert np.array_equal(ds.get_uint8([2])[0], _rgb(cifar_root / "cat" / "0009.jpg"))


def test_class_restriction_at_scan_time(tmp_path, cifar_root):
    root = _tree(tmp_path, cifar_root, {"cat": 2, "dog": 3})
    (root / "cat" / "x.jpg").write_bytes(b"garbage")  # never read when only dog is scanned
    only = data.image_folder(root, classes=["dog"])
    assert only.skipped == [] and only.classes == ["cat", "dog"]
    assert only.labels.tolist() == [1, 1, 1] and only.indices.tolist() == [3, 4, 5]


def test_per_class_stops_decoding_like_select(tmp_path, cifar_root):
    root = _tree(tmp_path, cifar_root, {"cat": 4, "dog": 3})
    (root / "cat" / "0000b.jpg").write_bytes(b"garbage")  # 2nd in cat: skipped, the next one taken
    (root / "dog" / "zz.jpg").write_bytes(b"garbage")  # after dog's first 2: never read
    with pytest.warns(DataWarning, match="skipped 1 unreadable"):
        early = data.image_folder(root, per_class=2)
    with pytest.warns(DataWarning, match="skipped 2 unreadable"):
        full = data.select(data.image_folder(root), per_class=2)
    assert early.indices.tolist() == full.indices.tolist() == [0, 2, 5, 6]
    assert early.labels.tolist() == full.labels.tolist() and early.fingerprint() == full.fingerprint()
    assert early.skipped == [(str(root / "cat" / "0000b.jpg"), early.skipped[0][1])]
    cfg = DataConfig(source="image_folder", root=str(root), per_class=2)
    with pytest.warns(DataWarning, match="skipped 1 unreadable"):
        assert data.load_dataset(cfg).fingerprint() == full.fingerprint()


def test_large_folders_decode_on_demand(tmp_path, cifar_root, monkeypatch):
    root = _tree(tmp_path, cifar_root, {"cat": 3, "dog": 2})
    in_memory = data.image_folder(root)
    monkeypatch.setattr(data, "IN_MEMORY_LIMIT", 1)
    lazy = data.image_folder(root)
    assert in_memory._source.pixels is not None and lazy._source.pixels is None
    assert np.array_equal(lazy.get_uint8(range(5)), in_memory.get_uint8(range(5)))
    assert lazy.fingerprint() == in_memory.fingerprint()
    assert lazy.with_format(channels=1, image_size=8).get(range(5)).shape == (5, 1, 8, 8)
    shutil.copy(cifar_root / "cat" / "0500.jpg", root / "dog" / "0001.jpg")
    with pytest.raises(DataError, match="changed since"):
        lazy.get_uint8([4])


# --- load_dataset ---------------------------------------------------------------------------------

def test_load_dataset_demo_with_channel_conversion(demo_ds):
    ds = data.load_dataset(DataConfig(source="demo", per_class=3), channels=3)
    assert len(ds) == 30 and ds.channels == 3 and np.bincount(ds.labels).tolist() == [3] * 10
    x = ds.get_uint8(range(30))
    assert x.shape == (30, 3, 28, 28)
    assert np.array_equal(x, np.repeat(demo_ds.get_uint8(ds.indices), 3, axis=1))
    big = data.load_dataset(DataConfig(source="demo", per_class=1, image_size=32), channels=1)
    assert big.get(range(10)).shape == (10, 1, 32, 32)
    with pytest.raises(DataError, match="fashion_mnist"):
        data.load_dataset(DataConfig(source="demo", split="train"))


def test_load_dataset_other_sources(tmp_path, cifar_root, fmnist_root):
    fm = data.load_dataset(DataConfig(source="fashion_mnist", root=str(fmnist_root), per_class=2),
                           channels=1)
    assert len(fm) == 20 and fm.name == "fashion_mnist/test"
    cats = data.load_dataset(DataConfig(source="cifar10", root=str(cifar_root), classes=["cat"],
                                        per_class=4), channels=1)
    assert cats.labels.tolist() == [3] * 4 and cats.indices.tolist() == [3000, 3001, 3002, 3003]
    rgb = np.stack([_rgb(p) for p in _jpgs(cifar_root, "cat", 4)]).astype(np.uint32)
    luma = (rgb[:, 0] * 19595 + rgb[:, 1] * 38470 + rgb[:, 2] * 7471 + 0x8000) >> 16
    assert np.array_equal(cats.get_uint8(range(4))[:, 0], luma)
    root = _tree(tmp_path, cifar_root, {"cat": 2, "dog": 2})
    f = data.load_dataset(DataConfig(source="image_folder", root=str(root), classes=["dog"]))
    assert f.labels.tolist() == [1, 1] and f.classes == ["cat", "dog"]
    with pytest.raises(DataError, match="demo, fashion_mnist, cifar10, image_folder"):
        data.load_dataset(DataConfig(source="imagenet"))
    with pytest.raises(DataError, match="needs \\[data\\] root"):
        data.load_dataset(DataConfig(source="cifar10"))


# --- fingerprints ---------------------------------------------------------------------------------

def test_fingerprint_tracks_content(demo_ds, tmp_path, cifar_root):
    assert demo_ds.fingerprint() == data.demo().fingerprint()
    assert len(demo_ds.fingerprint()) == 64
    labels = demo_ds.labels.copy()
    labels[0] = (labels[0] + 1) % 10
    assert dataclasses.replace(demo_ds, labels=labels).fingerprint() != demo_ds.fingerprint()
    assert demo_ds.subset(range(100)).fingerprint() != demo_ds.fingerprint()
    assert demo_ds.with_format(channels=3).fingerprint() != demo_ds.fingerprint()
    x = demo_ds.get_uint8(range(50))
    a = ImageSet.from_array("t", demo_ds.classes, x, demo_ds.labels[:50])
    x2 = x.copy()
    x2[7, 0, 3, 3] ^= 1
    b = ImageSet.from_array("t", demo_ds.classes, x2, demo_ds.labels[:50])
    assert a.fingerprint() != b.fingerprint()

    root = _tree(tmp_path, cifar_root, {"cat": 2, "dog": 2})
    before = data.image_folder(root).fingerprint()
    assert data.image_folder(root).fingerprint() == before
    img = np.asarray(Image.open(root / "dog" / "0001.jpg")).copy()
    img[0, 0, 0] ^= 1
    (root / "dog" / "0001.jpg").unlink()
    Image.fromarray(img).save(root / "dog" / "0001.png")
    assert data.image_folder(root).fingerprint() != before
