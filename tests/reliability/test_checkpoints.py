"""Checkpoint loading that one hostile or careless file cannot use to take the server down (issue 12).

Real files built in tmp_path (torch.save, zipfile, safetensors, hand-written zip and pickle bytes) and the
real checkpoints in /work/shared/models as the positive cases. Limits come from core.hosting's settings,
lowered per test through NVE_* variables so the files stay small.
"""
from __future__ import annotations

import collections
import io
import json
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from core.models import (
    ModelError,
    build_architecture,
    check_cnn_checkpoint,
    check_weights,
    load_state_dict,
    load_weights,
)

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "core" / "assets" / "demo-resnet18w32-fashion-mnist.safetensors"
MIB = 1 << 20


# ---------------------------------------------------------------------------------------------
# File builders
# ---------------------------------------------------------------------------------------------
def _resnet20_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_architecture("resnet20_cifar", 10).state_dict()


class _Storage:
    """Stands for a storage in a hand-made torch pickle (written as a persistent id)."""


class _Tensor:
    """Pickles as torch's own tensor record over a float32 storage of ``numel`` elements."""

    def __init__(self, storage: _Storage, numel: int):
        self.storage, self.numel = storage, numel

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (self.storage, 0, (self.numel,), (1,), False,
                                                 collections.OrderedDict())


def _torch_pickle(obj, numels: dict[int, tuple[str, int]], legacy: bool = False) -> bytes:
    """``obj`` pickled the way torch.save writes data.pkl (protocol 2, storages as persistent ids; the
    legacy format's ids end with a view field)."""
    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, _Storage):
                key, numel = numels[id(o)]
                return ("storage", torch.FloatStorage, key, "cpu", numel) + ((None,) if legacy else ())
            return None
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _write_zip(path: Path, entries: list[tuple[str, bytes, int, int, int]]) -> Path:
    """A zip written byte by byte: (name, bytes as stored, method, crc32, uncompressed size) per entry,
    so an entry can hold a deflate stream made without inflating it first."""
    out, central = io.BytesIO(), []
    for name, data, method, crc, size in entries:
        offset, raw = out.tell(), name.encode()
        out.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0, crc, len(data), size,
                              len(raw), 0) + raw + data)
        central.append(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc, len(data),
                                   size, len(raw), 0, 0, 0, 0, 0, offset) + raw)
    start = out.tell()
    out.write(b"".join(central))
    out.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), out.tell() - start,
                          start, 0))
    path.write_bytes(out.getvalue())
    return path


def _stored(name: str, data: bytes) -> tuple[str, bytes, int, int, int]:
    return name, data, zipfile.ZIP_STORED, zlib.crc32(data), len(data)


def zip_bomb(path: Path, inflated_mib: int) -> Path:
    """A torch zip checkpoint whose one float32 tensor of ``inflated_mib`` MiB of zeros is a deflated
    entry about 1/1000 of that size (deflate blocks of 1 MiB of zeros, repeated; no inflation needed)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(MIB)) + c.flush(zlib.Z_FULL_FLUSH)
    stream = block * inflated_mib + c.flush()
    crc, zeros = 0, bytes(MIB)
    for _ in range(inflated_mib):
        crc = zlib.crc32(zeros, crc)
    storage = _Storage()
    pkl = _torch_pickle({"weight": _Tensor(storage, inflated_mib * MIB // 4)},
                        {id(storage): ("0", inflated_mib * MIB // 4)})
    return _write_zip(path, [_stored("archive/data.pkl", pkl), _stored("archive/byteorder", b"little"),
                             _stored("archive/version", b"3\n"),
                             ("archive/data/0", stream, zipfile.ZIP_DEFLATED, crc, inflated_mib * MIB)])


def torch_zip_of_pickle(path: Path, pkl: bytes) -> Path:
    """A torch zip checkpoint whose data.pkl is the given bytes."""
    return _write_zip(path, [_stored("archive/data.pkl", pkl), _stored("archive/byteorder", b"little"),
                             _stored("archive/version", b"3\n")])


def deep_pickle(depth: int) -> bytes:
    """{"state_dict": {"state_dict": ... {} ...}} ``depth`` levels deep, written opcode by opcode (no
    pickler can write it: each would recurse)."""
    key = b"X" + struct.pack("<I", len(b"state_dict")) + b"state_dict"  # BINUNICODE
    return b"\x80\x02" + (b"}" + key) * depth + b"}" + b"s" * depth + b"."  # EMPTY_DICT ... SETITEM


# ---------------------------------------------------------------------------------------------
# Limits before allocation
# ---------------------------------------------------------------------------------------------
MEASURE = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
import torch
from core.models import ModelError, load_state_dict
def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))
def reset_peak():  # VmHWM back to the current RSS (Linux >= 4.0), so growth is this call's alone
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status("VmRSS")
before, t = reset_peak(), time.perf_counter()
try:
    load_state_dict(sys.argv[2])
    outcome = "loaded"
except ModelError as e:
    outcome = str(e)
took = time.perf_counter() - t
grew = status("VmHWM") - before
control = 0
if len(sys.argv) > 3:  # the same measure sees a real allocation: torch.load of the small live bomb
    before = reset_peak()
    kept = torch.load(sys.argv[3], weights_only=True)
    control = status("VmHWM") - before
print(took, grew, control)
print(outcome)
"""


def test_the_zip_bomb_is_live(tmp_path):
    """The construction is a checkpoint torch reads: a small one loads as a tensor of zeros of the
    inflated size. (The 1 GiB one took the tester 27 s and 3.7 GB.)"""
    small = zip_bomb(tmp_path / "small.pt", 16)
    assert small.stat().st_size < 32 << 10
    w = torch.load(small, weights_only=True)["weight"]
    assert w.numel() * 4 == 16 * MIB and not bool(w.any())


def test_zip_bomb_is_refused_fast_and_without_allocating(tmp_path):
    bomb = zip_bomb(tmp_path / "bomb.pt", 1024)  # 1 GiB of float32 zeros
    assert bomb.stat().st_size < 1.2 * MIB
    control = zip_bomb(tmp_path / "control.pt", 256)
    run = subprocess.run([sys.executable, "-c", MEASURE, str(ROOT), str(bomb), str(control)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    numbers, message = run.stdout.split("\n", 1)
    took, grew, control_grew = (float(x) for x in numbers.split())
    assert "decompression bomb" in message and "1.0 GiB" in message, message
    assert took < 1.0, f"refusal took {took:.2f} s"
    assert control_grew > 200 * MIB, "the RSS measure must see a 256 MiB load"
    assert grew < 32 * MIB, f"peak RSS grew {grew / MIB:.0f} MiB while refusing the bomb"


def test_rezipped_checkpoint_with_compressed_weights_still_loads(tmp_path):
    """torch.save stores entries uncompressed; a checkpoint deflated by another tool inflates ~1.1× and
    loads."""
    state = _resnet20_state()
    torch.save(state, tmp_path / "plain.pt")
    src = zipfile.ZipFile(tmp_path / "plain.pt")
    with zipfile.ZipFile(tmp_path / "deflated.pt", "w", zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            z.writestr(info.filename, src.read(info.filename))
    loaded = check_cnn_checkpoint(tmp_path / "deflated.pt")
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_decompressed_size_limit_in_every_format(tmp_path, monkeypatch):
    state = _resnet20_state()  # ~1.1 MB of tensors
    torch.save(state, tmp_path / "w.pt")
    torch.save(state, tmp_path / "w.th", _use_new_zipfile_serialization=False)
    save_file(state, str(tmp_path / "w.safetensors"))
    for name in ("w.pt", "w.th", "w.safetensors"):
        assert load_state_dict(tmp_path / name).keys() == state.keys()
    monkeypatch.setenv("NVE_MAX_CHECKPOINT_BYTES", str(512 << 10))
    for name in ("w.pt", "w.th", "w.safetensors"):
        with pytest.raises(ModelError, match=r"limit of 512\.0 KiB \(max_checkpoint_bytes\)") as e:
            load_state_dict(tmp_path / name)
        assert "NVE_MAX_CHECKPOINT_BYTES" in str(e.value) and "nve-server.toml" in str(e.value)


def test_too_many_tensors_in_every_format(tmp_path, monkeypatch):
    state = _resnet20_state()  # 116 tensors, 65 of them with their own data
    torch.save(state, tmp_path / "w.pt")
    torch.save(state, tmp_path / "w.th", _use_new_zipfile_serialization=False)
    save_file(state, str(tmp_path / "w.safetensors"))
    monkeypatch.setenv("NVE_MAX_CHECKPOINT_TENSORS", "40")
    for name in ("w.pt", "w.th", "w.safetensors"):
        with pytest.raises(ModelError, match=r"limit of 40 \(max_checkpoint_tensors\)") as e:
            load_state_dict(tmp_path / name)
        assert "NVE_MAX_CHECKPOINT_TENSORS" in str(e.value)
    monkeypatch.setenv("NVE_MAX_CHECKPOINT_TENSORS", "200")
    for name in ("w.pt", "w.th", "w.safetensors"):
        assert len(load_state_dict(tmp_path / name)) == len(state)


def test_legacy_file_declaring_more_than_it_holds(tmp_path):
    """A legacy (non-zip) file whose pickle declares a 1 GiB storage but holds 64 bytes: bounded by the
    file's size (torch reserves the declared size, untouched, and fails on the short data)."""
    from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION
    storage, numel = _Storage(), 1 << 28
    head = b"".join(pickle.dumps(o, protocol=2) for o in (MAGIC_NUMBER, PROTOCOL_VERSION, {
        "protocol_version": PROTOCOL_VERSION, "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 4}}))
    body = _torch_pickle({"conv.weight": _Tensor(storage, numel)}, {id(storage): ("0", numel)}, legacy=True)
    (tmp_path / "big.th").write_bytes(head + body + pickle.dumps(["0"], protocol=2)
                                      + struct.pack("<q", 16) + bytes(64))
    t = time.perf_counter()
    with pytest.raises(ModelError, match="sizes do not match the data in the file"):
        load_state_dict(tmp_path / "big.th")
    assert time.perf_counter() - t < 1


def test_a_pickle_much_larger_than_weights_is_refused(tmp_path):
    state = _resnet20_state()
    junk = {"state_dict": state, "history": list(range(2_000_000))}  # ~10 MB of pickled ints
    torch.save(junk, tmp_path / "big.pt")
    torch.save(junk, tmp_path / "big.th", _use_new_zipfile_serialization=False)
    for name in ("big.pt", "big.th"):
        t = time.perf_counter()
        with pytest.raises(ModelError, match="pickled part.*much more than weights"):
            load_state_dict(tmp_path / name)
        assert time.perf_counter() - t < 5


def test_safetensors_headers_are_bounded(tmp_path, monkeypatch):
    bad = tmp_path / "huge-header.safetensors"
    bad.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(ModelError, match="header declares 1024.0 GiB.*limit"):
        load_state_dict(bad)
    bad.write_bytes(struct.pack("<Q", 64 * MIB) + b"{" * 100)
    with pytest.raises(ModelError, match="header declares 64.0 MiB"):
        load_state_dict(bad)
    bad.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(ModelError, match="truncated"):
        load_state_dict(bad)
    deep = b"[" * 100_000 + b"]" * 100_000
    bad.write_bytes(struct.pack("<Q", len(deep)) + deep)
    with pytest.raises(ModelError, match="not a valid safetensors file"):
        load_state_dict(bad)
    # a header that declares more than the file holds, or more than the limit, is refused before loading
    header = json.dumps({"w": {"dtype": "F32", "shape": [1 << 28], "data_offsets": [0, 1 << 30]}}).encode()
    bad.write_bytes(struct.pack("<Q", len(header)) + header + bytes(64))
    with pytest.raises(ModelError, match="does not fit its byte range"):
        load_state_dict(bad)
    monkeypatch.setenv("NVE_MAX_CHECKPOINT_BYTES", str(1 << 20))
    header = json.dumps({"w": {"dtype": "F32", "shape": [1 << 19], "data_offsets": [0, 2 << 20]}}).encode()
    bad.write_bytes(struct.pack("<Q", len(header)) + header + bytes(2 << 20))
    with pytest.raises(ModelError, match="tensors take 2.0 MiB"):
        load_state_dict(bad)


def test_deep_nesting_is_a_clear_error_not_a_recursion_error(tmp_path):
    path = torch_zip_of_pickle(tmp_path / "deep.pt", deep_pickle(200_000))
    assert path.stat().st_size < 4 * MIB
    with pytest.raises(ModelError, match="holds no tensors.*at most 16 levels deep"):
        load_state_dict(path)
    # a state dict shared under every nested key at every level: visited once, not 7**depth times
    state = _resnet20_state()
    keys = ("state_dict", "model_state_dict", "model", "net", "network", "weights", "params")
    level: dict = {"epoch": 1, "note": "", "lr": 0.1}  # no tensors: the search must go on
    for _ in range(40):
        level = {**{k: level for k in keys}, "epoch": 1}
    torch.save(level, tmp_path / "dag.pt")
    t = time.perf_counter()
    with pytest.raises(ModelError, match="holds no tensors"):
        load_state_dict(tmp_path / "dag.pt")
    assert time.perf_counter() - t < 5
    torch.save({"checkpoint": 1, "model": {"net": {"state_dict": state}}}, tmp_path / "nested.pt")
    assert load_state_dict(tmp_path / "nested.pt").keys() == state.keys()


# ---------------------------------------------------------------------------------------------
# Pickles that carry code
# ---------------------------------------------------------------------------------------------
class _System:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Eval:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return eval, (f"open({self.marker!r}, 'w').close()",)


class _Popen:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return subprocess.Popen, (["touch", self.marker],)


class _Touch:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


class Custom:
    """A plain class of the training script (no payload, but not a tensor)."""

    def __init__(self, marker):
        self.marker = str(marker)


PAYLOADS = {"os.system": _System, "builtins.eval": _Eval, "subprocess.Popen": _Popen, "custom class": Custom,
            "__reduce__ payload": _Touch}


def _crafted(folder: Path, kind: str, marker: Path) -> list[Path]:
    """The payload beside real weights, as a zip (torch.save), legacy torch file and raw pickle."""
    weights = {k: v for k, v in list(_resnet20_state().items())[:4]}
    obj = {"state_dict": weights, "extra": PAYLOADS[kind](marker)}
    torch.save(obj, folder / "evil.pt")
    torch.save(obj, folder / "evil.th", _use_new_zipfile_serialization=False)
    with open(folder / "evil.pth.tar", "wb") as f:
        pickle.dump({"state_dict": PAYLOADS[kind](marker)}, f, protocol=2)
    return [folder / "evil.pt", folder / "evil.th", folder / "evil.pth.tar"]


@pytest.mark.parametrize("kind", [k for k in PAYLOADS if k != "custom class"])
def test_the_payloads_are_live(tmp_path, kind):
    """Under a plain unpickler each payload does run: the refusals below are real."""
    marker = tmp_path / "ran"
    raw = _crafted(tmp_path, kind, marker)[2]
    with open(raw, "rb") as f:
        obj = pickle.load(f)  # noqa: S301 - on purpose, in a tmp folder
    if isinstance(obj["state_dict"], subprocess.Popen):
        obj["state_dict"].wait(timeout=30)
    assert marker.exists()


@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_code_carrying_pickles_are_refused_without_unsafe_advice(tmp_path, kind):
    marker = tmp_path / "ran"
    for path in _crafted(tmp_path, kind, marker):
        with pytest.raises(ModelError, match="refused to load") as e:
            check_cnn_checkpoint(path)
        text = str(e.value)
        assert "only plain weights are loaded" in text and ".safetensors" in text
        assert "weights_only" not in text and "Please" not in text and "trust" not in text, text
        assert "\x1b" not in text
    time.sleep(0.2)  # a Popen payload would have started its child by now
    assert not marker.exists(), "unpickling must never run the payload"


@pytest.mark.parametrize("torch_says", [
    # torch <= 2.5
    "Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` will likely "
    "succeed, but it can result in arbitrary code execution. Do it only if you get the file from a trusted "
    "source. WeightsUnpickler error: Unsupported global: GLOBAL posix.system was not an allowed global by "
    "default. Please use `torch.serialization.add_safe_globals([system])` to allowlist this global if you "
    "trust this class/function.",
    # torch 2.6 - 2.14 (blocked module)
    "Weights only load failed. In PyTorch 2.6, we changed the default value of the `weights_only` argument "
    "in `torch.load` from `False` to `True`. Re-running `torch.load` with `weights_only` set to `False` will "
    "likely succeed, but it can result in arbitrary code execution. Do it only if you got the file from a "
    "trusted source.\n\n\nTrying to load unsupported GLOBAL posix.system whose module posix is blocked.\n\n"
    "Check the documentation of torch.load to learn more about types accepted by default with weights_only "
    "https://pytorch.org/docs/stable/generated/torch.load.html.",
    # a future wording that names no global
    "Loading failed. To load anyway pass weights_only=False (unsafe).\nUnsupported operand 149\n"
    "\x1b[1mOnly do this if you trust the source\x1b[0m",
])
def test_refusal_never_repeats_torchs_advice_whatever_it_prints(tmp_path, monkeypatch, torch_says):
    """The message is built from our own text and the facts of torch's; torch's wording changes between
    versions (the old filter expected a string torch 2.14 no longer prints)."""
    torch.save(_resnet20_state(), tmp_path / "w.pt")

    def refuse(*_a, **_k):
        raise pickle.UnpicklingError(torch_says)
    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(ModelError, match="refused to load") as e:
        load_state_dict(tmp_path / "w.pt")
    text = str(e.value)
    assert "weights_only" not in text and "Please" not in text and "trust" not in text, text
    assert "\x1b" not in text and "http" not in text
    assert "posix.system" in text or "Unsupported operand 149" in text


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_archives_are_refused(tmp_path):
    torch.jit.save(torch.jit.script(torch.nn.Conv2d(3, 4, 3)), tmp_path / "scripted.pt")
    with pytest.raises(ModelError, match="TorchScript archive.*holds code") as e:
        load_state_dict(tmp_path / "scripted.pt")
    assert "weights_only" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# Weights that are not floats
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int64, torch.bool, torch.complex64])
@pytest.mark.parametrize("key", ["conv1.weight", "linear.weight", "bn1.running_var", "linear.bias"])
def test_non_float_weights_are_refused_not_coerced(tmp_path, dtype, key):
    state = _resnet20_state()
    state[key] = state[key].to(dtype) if dtype != torch.bool else state[key] > 0
    torch.save(state, tmp_path / "w.pt")
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(ModelError, match=rf"not floating-point numbers: {key} \({name}\)"):
        check_cnn_checkpoint(tmp_path / "w.pt")
    with pytest.raises(ModelError, match="not floating-point"):
        load_weights(build_architecture("resnet20_cifar", 10), state)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_weights_convert_as_documented(tmp_path, dtype):
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in _resnet20_state().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    net = build_architecture("resnet20_cifar", 10)
    load_weights(net, check_cnn_checkpoint(tmp_path / "w.safetensors"))
    assert torch.equal(net.conv1.weight, state["conv1.weight"].float())


def test_float64_beyond_float32_range_is_refused():
    state = {k: v.double() if v.is_floating_point() else v for k, v in _resnet20_state().items()}
    state["linear.weight"][0, 0] = 1e300
    with pytest.raises(ModelError, match="beyond float32's range in linear.weight"):
        check_weights(state)


def test_a_float_step_counter_is_not_coerced():
    state = _resnet20_state()
    state["bn1.num_batches_tracked"] = torch.tensor(3.5)
    with pytest.raises(ModelError, match="dtype mismatches: bn1.num_batches_tracked: checkpoint float32"):
        load_weights(build_architecture("resnet20_cifar", 10), state)


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
def test_quantized_and_sparse_tensors_are_refused(tmp_path):
    state = _resnet20_state()
    qint8 = torch.quantize_per_tensor(state["conv1.weight"], 0.01, 0, torch.qint8)
    q = dict(state, **{"conv1.weight": qint8})
    torch.save(q, tmp_path / "q.pt")
    with pytest.raises(ModelError, match="quantized"):
        check_cnn_checkpoint(tmp_path / "q.pt")
    with pytest.raises(ModelError, match="quantized"):
        check_weights(q)
    s = dict(state, **{"linear.weight": state["linear.weight"].to_sparse()})
    torch.save(s, tmp_path / "s.pt")
    with pytest.raises(ModelError, match="sparse"):
        check_cnn_checkpoint(tmp_path / "s.pt")


# ---------------------------------------------------------------------------------------------
# Files that are not checkpoints
# ---------------------------------------------------------------------------------------------
def test_a_folder_named_like_a_checkpoint(tmp_path):
    (tmp_path / "x.pt").mkdir()
    with pytest.raises(ModelError, match="x.pt is a folder, not a file"):
        load_state_dict(tmp_path / "x.pt")


def test_links_to_text_and_other_non_checkpoints(tmp_path):
    (tmp_path / "notes.txt").write_text("hyper-parameters: lr=0.1\n" * 20)
    (tmp_path / "notes.pt").symlink_to(tmp_path / "notes.txt")
    (tmp_path / "image.pth").write_bytes((ROOT / "core" / "assets" / "favicon.png").read_bytes())
    (tmp_path / "gone.pt").symlink_to(tmp_path / "nowhere.pt")
    for name in ("notes.pt", "image.pth"):
        with pytest.raises(ModelError, match="not a PyTorch checkpoint") as e:
            load_state_dict(tmp_path / name)
        assert "list index" not in str(e.value)
    with pytest.raises(ModelError, match="link to a file that does not exist"):
        load_state_dict(tmp_path / "gone.pt")


def test_empty_and_truncated_files(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    for name in ("empty.pt", "empty.safetensors"):
        with pytest.raises(ModelError, match="is empty"):
            load_state_dict(tmp_path / name)
    sources = {"cut.pt": Path("/work/shared/models/resnet18-cifar10.pt"),
               "cut.th": Path("/work/shared/models/resnet20-12fca82f.th"), "cut.safetensors": DEMO}
    for name, source in sources.items():
        data = source.read_bytes()
        for cut in (len(data) // 2, len(data) - 100, 7):
            (tmp_path / name).write_bytes(data[:cut])
            with pytest.raises(ModelError, match="truncated|damaged|shorter") as e:
                load_state_dict(tmp_path / name)
            assert "Traceback" not in str(e.value) and "index out of range" not in str(e.value)


def test_non_utf8_file_names(tmp_path):
    folder = os.fsencode(tmp_path)
    name = folder + b"/w\xff\xfe.pt"
    state = _resnet20_state()
    torch.save(state, os.fsdecode(name))
    assert load_state_dict(name).keys() == state.keys()
    assert check_cnn_checkpoint(os.fsdecode(name)).keys() == state.keys()
    with pytest.raises(ModelError, match=r"w\\xff\\xfe-missing.pt does not exist") as e:
        load_state_dict(folder + b"/w\xff\xfe-missing.pt")
    str(e.value).encode("utf-8")  # printable: no lone surrogates


# ---------------------------------------------------------------------------------------------
# The real checkpoints, and uploads that hold no CNN
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path,arch,classes", [
    ("/work/shared/models/resnet20-12fca82f.th", "resnet20_cifar", 10),
    ("/work/shared/models/resnet56-4bfd9763.th", "resnet56_cifar", 10),
    ("/work/shared/models/resnet18-cifar10.pt", "resnet18_cifar", 10),
    (str(DEMO), None, None),
])
def test_the_real_checkpoints_load_within_the_default_limits(path, arch, classes):
    state = check_cnn_checkpoint(path)
    assert any(v.dim() == 4 for v in state.values())
    if arch:
        load_weights(build_architecture(arch, classes), state)


def test_tensors_without_cnn_weights_are_refused(tmp_path):
    torch.save({"w": torch.randn(10, 10), "b": torch.randn(10)}, tmp_path / "mlp.pt")
    with pytest.raises(ModelError, match="no convolution kernels"):
        check_cnn_checkpoint(tmp_path / "mlp.pt", source="mlp.pt")
    save_file({"conv.weight": torch.randn(4, 3, 3, 3)}, str(tmp_path / "convs.safetensors"))
    with pytest.raises(ModelError, match="no classification head"):
        check_cnn_checkpoint(tmp_path / "convs.safetensors")
    # a 1×1 convolution into class maps is a head ("conv1x1", core.models.discover_layers)
    save_file({"conv.weight": torch.randn(4, 3, 3, 3), "head.weight": torch.randn(10, 4, 1, 1)},
              str(tmp_path / "nin.safetensors"))
    assert set(check_cnn_checkpoint(tmp_path / "nin.safetensors")) == {"conv.weight", "head.weight"}
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "none.pt")
    with pytest.raises(ModelError, match="holds no tensors"):
        check_cnn_checkpoint(tmp_path / "none.pt")
