"""Scanning a user's image folder on a shared server (issue 12): it cannot hang, loop, leave the dataset
root or exhaust the server, and odd files get clear messages. Trees are built in tmp_path from real
CIFAR-10 JPEGs and real TIFF/PNG files written with PIL/numpy (or by hand, for a decompression bomb).

Scans that a regression could make hang (a /proc root, a FIFO) run in a subprocess with a timeout."""
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import data
from core.config import DataConfig
from core.data import DataError

pytestmark = [pytest.mark.reliability, pytest.mark.filterwarnings("ignore::core.data.DataWarning")]
ROOT = Path(__file__).resolve().parents[2]


def _tree(base: Path, cifar_root: Path, spec: dict[str, int], name: str = "tree") -> Path:
    """base/name/<class>/ with the first n real CIFAR-10 JPEGs of that class."""
    root = base / name
    for cls, n in spec.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            shutil.copy(cifar_root / cls / f"{i:04d}.jpg", root / cls / f"{i:04d}.jpg")
    return root


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)


def _has_note(ds: data.ImageSet, *words: str) -> bool:
    return any(all(w in n for w in words) for n in ds.notes)


_SCAN = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
from core.config import DataConfig
from core.data import DataError, image_folder, load_dataset
for source, root in json.loads(sys.argv[1]):
    t = time.monotonic()
    try:
        cfg = DataConfig(source=source, root=root)
        ds = image_folder(root) if source == "image_folder" else load_dataset(cfg)
        out = {"n": len(ds), "notes": ds.notes}
    except DataError as e:
        out = {"error": str(e)}
    out["seconds"] = time.monotonic() - t
    print(json.dumps(out), flush=True)
"""


def _scan_in_subprocess(*scans: tuple[str, str | Path]) -> list[dict]:
    """Each (source, root) scan's outcome, from one separate process: a regression that hangs fails the
    test, not the suite."""
    jobs = json.dumps([[source, str(root)] for source, root in scans])
    try:
        r = subprocess.run([sys.executable, "-c", _SCAN, jobs], cwd=ROOT, capture_output=True, text=True,
                           timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"scanning {scans} did not end within 120 s; finished: {e.stdout!r}")
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(line) for line in r.stdout.strip().splitlines()]


# --- symlinks -------------------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_symlink_to_the_parent_is_not_followed(tmp_path, cifar_root):
    """The tester's case: `cat/up -> ..` turned 30 images into 1,230, all labelled cat."""
    root = _tree(tmp_path, cifar_root, {"cat": 10, "dog": 10, "frog": 10})
    (root / "cat" / "up").symlink_to("..")
    ds = data.image_folder(root)
    assert len(ds) == 30 and np.bincount(ds.labels).tolist() == [10, 10, 10]
    assert len({f.sha256 for f in ds._source.files}) == 30
    assert _has_note(ds, "already scanned", "cat/up")


@pytest.mark.timeout(120)
def test_symlink_loops_inside_a_class_folder_end_without_duplicates(tmp_path, cifar_root):
    root = _tree(tmp_path, cifar_root, {"cat": 4, "dog": 3})
    sub = root / "cat" / "sub"
    sub.mkdir()
    shutil.copy(cifar_root / "cat" / "0100.jpg", sub / "x.jpg")
    (sub / "loop").symlink_to("..")  # back to cat
    (sub / "self").symlink_to(".")
    (sub / "deeper").mkdir()
    (sub / "deeper" / "back").symlink_to("../..")
    (root / "dog" / "a").symlink_to("b")  # a loop of links: neither resolves
    (root / "dog" / "b").symlink_to("a")
    ds = data.image_folder(root)
    assert len(ds) == 8 and ds.labels.tolist() == [0] * 5 + [1] * 3
    rel = [f.rel for f in ds._source.files]
    assert len(set(rel)) == 8 and "cat/sub/x.jpg" in rel
    assert _has_note(ds, "already scanned") and _has_note(ds, "broken symlink")


def test_symlinks_out_of_the_root_are_not_followed(tmp_path, cifar_root, monkeypatch):
    outside = _tree(tmp_path, cifar_root, {"cat": 5}, name="outside")
    root = _tree(tmp_path, cifar_root, {"cat": 2, "dog": 2})
    (root / "dog" / "more").symlink_to(outside / "cat")  # a folder outside
    (root / "dog" / "one.jpg").symlink_to(outside / "cat" / "0003.jpg")  # a file outside
    (root / "cat" / "escape").symlink_to("../../outside")  # relative, still outside
    ds = data.image_folder(root)
    assert len(ds) == 4 and all(not f.rel.startswith(("dog/more", "cat/escape")) for f in ds._source.files)
    assert _has_note(ds, "did not follow 3 symlink(s) that lead outside")

    # a class folder that is a symlink to outside the root is refused, not silently dropped
    (root / "horse").symlink_to(outside / "cat")
    with pytest.raises(DataError, match="'horse'.*outside \\[data\\] root"):
        data.image_folder(root)
    (root / "horse").unlink()

    # inside the root, symlinked files count once, under their real path: the link sorts first (cat
    # before dog) but the image keeps its label, dog
    (root / "cat" / "link.jpg").symlink_to("../dog/0001.jpg")
    pool = root / ".pool"
    pool.mkdir()
    shutil.copy(cifar_root / "cat" / "0007.jpg", pool / "p.jpg")
    (root / "cat" / "pooled.jpg").symlink_to("../.pool/p.jpg")  # a curated link into the root: read
    ds = data.image_folder(root)
    assert len(ds) == 5 and ds.labels.tolist() == [0, 0, 0, 1, 1]
    assert [f.rel for f in ds._source.files] == ["cat/0000.jpg", "cat/0001.jpg", "cat/pooled.jpg",
                                                 "dog/0000.jpg", "dog/0001.jpg"]
    assert np.array_equal(ds.get_uint8([2])[0], _rgb(cifar_root / "cat" / "0007.jpg"))
    assert _has_note(ds, "a second time", "cat/link.jpg", "dog/0001.jpg")

    # a file-backed set reads only the file the scan saw: a link swapped to outside is refused
    monkeypatch.setattr(data, "IN_MEMORY_LIMIT", 1)
    lazy = data.image_folder(root)
    shutil.copy(outside / "cat" / "0001.jpg", outside / "same.jpg")  # same bytes as cat/0001.jpg
    (root / "cat" / "0001.jpg").unlink()
    (root / "cat" / "0001.jpg").symlink_to(outside / "same.jpg")
    with pytest.raises(DataError, match="changed since the dataset was scanned"):
        lazy.get_uint8([1])


# --- bounded scans --------------------------------------------------------------------------------

def test_proc_root_ends_quickly_with_a_clear_error():
    outs = _scan_in_subprocess(("image_folder", "/proc/self"), ("cifar10", "/proc/self"),
                               ("image_folder", "/sys"), ("image_folder", "/dev"))
    for out in outs:
        assert "pseudo-filesystem" in out.get("error", ""), out
        assert "[data] root" in out["error"] and out["seconds"] < 5


def test_fifo_in_a_class_folder_is_skipped_without_blocking(tmp_path, cifar_root):
    root = _tree(tmp_path, cifar_root, {"cat": 3, "dog": 2})
    os.mkfifo(root / "cat" / "0001b.jpg")  # no writer: opening it for reading would block forever
    os.mkfifo(root / "dog" / "pipe")
    [out] = _scan_in_subprocess(("image_folder", root))
    assert out.get("n") == 5, out
    assert any("not regular files" in n and "0001b.jpg" in n for n in out["notes"]), out["notes"]


def test_scan_limits(tmp_path, cifar_root, monkeypatch):
    root = _tree(tmp_path, cifar_root, {"cat": 10, "dog": 10, "frog": 10})
    monkeypatch.setenv("NVE_MAX_SCAN_FILES", "20")
    with pytest.raises(DataError, match="more than 20 files and folders.*max_scan_files"):
        data.image_folder(root)
    monkeypatch.delenv("NVE_MAX_SCAN_FILES")

    monkeypatch.setenv("NVE_MAX_CLASSES", "2")
    with pytest.raises(DataError, match="more than 2 class folders.*max_classes"):
        data.image_folder(root)
    monkeypatch.delenv("NVE_MAX_CLASSES")

    monkeypatch.setenv("NVE_MAX_IMAGES", "12")
    with pytest.raises(DataError, match="30 images.*max_images.*per_class = 4"):
        data.image_folder(root)
    # the bound counts what is decoded: per_class (or classes) brings it under
    ds = data.load_dataset(DataConfig(source="image_folder", root=str(root), per_class=4))
    assert len(ds) == 12 and ds.indices.tolist() == [0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23]
    assert len(data.image_folder(root, classes=["dog"])) == 10


def test_a_huge_file_is_refused_before_it_is_read(tmp_path, cifar_root, monkeypatch):
    root = _tree(tmp_path, cifar_root, {"cat": 2, "dog": 2})
    monkeypatch.setenv("NVE_MAX_IMAGE_PIXELS", "2000")  # the byte bound: 8 per pixel + 16 MiB metadata
    with open(root / "dog" / "huge.png", "wb") as f:
        f.truncate(64 << 20)  # sparse: 64 MiB that take no disk
    ds = data.image_folder(root)
    assert len(ds) == 4 and ds.skipped[0][0].endswith("huge.png")
    assert "67,108,864 bytes, more than this server reads" in ds.skipped[0][1]


# --- images ---------------------------------------------------------------------------------------

def _png_1bit(path: Path, width: int, height: int) -> None:
    """A black 1-bit PNG written chunk by chunk: tiny on disk, width × height pixels once decoded."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    z = zlib.compressobj(6)
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))


def test_decompression_bomb_png_is_refused_from_its_header(tmp_path, cifar_root, monkeypatch):
    root = _tree(tmp_path, cifar_root, {"cat": 2, "dog": 2})
    _png_1bit(root / "cat" / "bomb.png", 20_000, 20_000)  # 400 M pixels (PIL's own limit refuses it too)
    _png_1bit(root / "dog" / "big.png", 9_000, 9_000)  # 81 M: under PIL's limit, over the server's 50 M
    assert (root / "cat" / "bomb.png").stat().st_size < 1 << 20
    ds = data.image_folder(root)
    assert len(ds) == 4
    reasons = dict(ds.skipped)
    assert "max_image_pixels" in reasons[str(root / "cat" / "bomb.png")]
    assert "9000×9000 = 81,000,000 pixels" in reasons[str(root / "dog" / "big.png")]
    assert "max_image_pixels" in reasons[str(root / "dog" / "big.png")]
    with pytest.raises(DataError, match="bomb.png.*max_image_pixels.*on_corrupt"):
        data.image_folder(root, on_corrupt="error")
    # the server's setting decides, not PIL's: a 32×32 JPEG is over a limit of 1,000 pixels
    monkeypatch.setenv("NVE_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(DataError, match="32×32 = 1,024 pixels"):
        data.image_folder(root, on_corrupt="error")


def test_image_size_is_bounded(tmp_path, cifar_root, monkeypatch):
    root = _tree(tmp_path, cifar_root, {"cat": 2, "dog": 2})
    with pytest.raises(DataError, match="100000.*max_image_size.*at most 1024"):
        data.image_folder(root, image_size=100_000)
    with pytest.raises(DataError, match="max_image_size"):
        data.load_dataset(DataConfig(source="image_folder", root=str(root), image_size=100_000))
    ds = data.image_folder(root)
    with pytest.raises(DataError, match="max_image_size"):
        ds.with_format(image_size=(32, 5000))
    with pytest.raises(DataError, match="whole number"):
        ds.with_format(image_size=True)
    # images read at their own size are bounded too: set image_size to shrink them
    monkeypatch.setenv("NVE_MAX_IMAGE_SIZE", "16")
    with pytest.raises(DataError, match="32×32.*16 pixels a side.*image_size"):
        data.image_folder(root)
    assert data.image_folder(root, image_size=16).image_size == (16, 16)


def test_16_and_32_bit_images_map_by_their_value_range(tmp_path):
    root = tmp_path / "deep"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()

    def save(name: str, values, dtype) -> None:
        a = np.resize(np.asarray(values, dtype), 16).reshape(4, 4)
        Image.fromarray(a).save(root / name)
    save("a/i16.tif", [0, 256, 65535, 1000], np.uint16)  # I;16: 16-bit range
    save("a/i32_16bit.tif", [0, 300, 65535, 25700], np.int32)  # I above 255: read as 16-bit
    save("a/i32_small.tif", [0, 17, 255, 128], np.int32)  # I within 0..255: kept
    save("b/f01.tif", [0.0, 0.2, 1.0, 0.1], np.float32)  # F in [0, 1]: ×255
    save("b/f255.tif", [0.0, 10.4, 200.6, 255.0], np.float32)  # F in [0, 255]: rounded
    save("b/z_neg.tif", [0, -5, 9, 3], np.int32)
    save("b/z_big.tif", [0, 70000, 9, 3], np.int32)
    save("b/z_nan.tif", [0, np.nan, 0.5, 1], np.float32)
    save("b/z_300.tif", [0, 300.0, 5, 1], np.float32)
    assert [Image.open(root / p).mode for p in ("a/i16.tif", "a/i32_small.tif", "b/f01.tif")] == \
        ["I;16", "I", "F"]

    ds = data.image_folder(root, channels=1)
    expected = [[0, 1, 255, 3], [0, 1, 255, 100], [0, 17, 255, 128], [0, 51, 255, 26], [0, 10, 201, 255]]
    x = ds.get_uint8(range(len(ds)))
    assert x.shape == (5, 1, 4, 4)
    assert [row[0, 0, :4].tolist() for row in x] == expected
    assert ds.labels.tolist() == [0, 0, 0, 1, 1]
    assert np.array_equal(data.image_folder(root).get_uint8(range(5)), np.repeat(x, 3, axis=1))
    reasons = {Path(p).name: r for p, r in ds.skipped}
    assert set(reasons) == {"z_neg.tif", "z_big.tif", "z_nan.tif", "z_300.tif"}
    assert "values from -5 to 9" in reasons["z_neg.tif"] and "0..65535" in reasons["z_big.tif"]
    assert "NaN" in reasons["z_nan.tif"] and "from 0 to 300" in reasons["z_300.tif"]
    assert _has_note(ds, "converted 5 image(s)", "16-bit grayscale", "values in [0, 1] (×255)",
                     "read as [0, 255]", "values in 0..255 (kept")
    assert _has_note(ds, "32-bit int images were read in two ranges")


# --- names ----------------------------------------------------------------------------------------

def test_non_utf8_file_names_are_read(tmp_path, cifar_root):
    root = _tree(tmp_path, cifar_root, {"cat": 1, "dog": 1})
    cat = os.fsencode(root / "cat")
    shutil.copy(cifar_root / "cat" / "0005.jpg", os.path.join(cat, b"caf\xe9.jpg"))
    with open(os.path.join(cat, b"bad\xff.jpg"), "wb") as f:
        f.write(b"not an image")
    ds = data.image_folder(root, on_corrupt="skip")
    assert len(ds) == 3 and ds.labels.tolist() == [0, 0, 1]
    assert np.array_equal(ds.get_uint8([1])[0], _rgb(cifar_root / "cat" / "0005.jpg"))
    assert ds.skipped[0][0].endswith("bad\\xff.jpg")  # shown as its bytes, and encodable
    json.dumps([ds.name, ds.skipped, ds.notes], ensure_ascii=False).encode("utf-8")
    assert len(ds.fingerprint()) == 64
    with pytest.raises(DataError) as e:
        data.image_folder(root, on_corrupt="error")
    assert "bad\\xff.jpg" in str(e.value)
    str(e.value).encode("utf-8")


@pytest.mark.parametrize("name, problem", [
    ("ca\x07t", "U+0007"), ("two\nlines", "U+000A"), ("\u202etac", "U+202E"), ("x" * 129, "129 characters"),
])
def test_bad_class_names_are_refused_at_scan_time(tmp_path, cifar_root, name, problem):
    root = _tree(tmp_path, cifar_root, {"cat": 1, "dog": 1})
    shutil.copytree(root / "dog", root / name)
    with pytest.raises(DataError) as e:
        data.image_folder(root)
    msg = str(e.value)
    assert repr(name) in msg and problem in msg and "rename the folder" in msg


def test_non_utf8_class_name_is_refused_and_markup_is_allowed(tmp_path, cifar_root):
    root = _tree(tmp_path, cifar_root, {"cat": 1, "dog": 1})
    bad = os.path.join(os.fsencode(root), b"ca\xfft")
    os.mkdir(bad)
    with pytest.raises(DataError, match="not valid UTF-8.*rename the folder") as e:
        data.image_folder(root)
    assert "b'ca\\xfft'" in str(e.value)
    str(e.value).encode("utf-8")
    os.rmdir(bad)
    # HTML and Markdown characters are valid names: the app shows names as text
    markup = ["<img src=x onerror=alert(1)>", "[x](javascript:alert(1))", "a&b *c* `d`"]
    for m in markup:
        shutil.copytree(root / "dog", root / m)
    assert data.image_folder(root).classes == sorted(["cat", "dog", *markup])


def test_a_single_class_asks_for_the_models_classes(tmp_path, cifar_root):
    root = _tree(tmp_path, cifar_root, {"cat": 3})
    with pytest.raises(DataError, match="one class folder \\('cat'\\).*at least 2 classes") as e:
        data.load_dataset(DataConfig(source="image_folder", root=str(root)))
    assert "num_classes" not in str(e.value)
