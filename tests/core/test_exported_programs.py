"""core.exported_programs: torch.export programs (.pt2) read without running code from the file.

Real exports (a custom CNN written here, the standard-trained ResNet20 of ../shared/models) on real CIFAR-10
test images; malicious archives are genuine exports edited the way an attacker would, each checked to be
refused before its payload (a marker file) could run.
"""
import io
import json
import os
import pickle
import resource
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.attacks import run as attack
from core.config import ModelConfig
from core.data import cifar10
from core.exported_programs import AtenOp, load_network
from core.models import ExplainedModel, ModelError, load_model
from core.vulnerability import DeltaForward, vulnerability_maps
from tests.helpers import resnet20

ROOT = Path(__file__).resolve().parents[2]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
DYNAMIC = {"x": {0: torch.export.Dim("batch")}}


# -- a custom architecture, written here (not in core/) ------------------------------------------
class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + self.short(x))


class Stage(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.blocks = nn.Sequential(Block(cin, cout, 2), Block(cout, cout, 1))

    def forward(self, x):
        return self.blocks(x)


class CustomCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU6())
        self.features = nn.Sequential(Stage(16, 24), Stage(24, 40))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(40, 10))

    def forward(self, x):
        return self.head(self.features(self.stem(x)))


def _custom() -> nn.Module:
    torch.manual_seed(0)
    net = CustomCNN()
    for m in net.modules():  # BatchNorm statistics other than 0/1, so folding them wrong would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def _export(net: nn.Module, path: Path, dynamic: bool = True) -> Path:
    ep = torch.export.export(net, (torch.rand(2, 3, 32, 32),), dynamic_shapes=DYNAMIC if dynamic else None)
    torch.export.save(ep, path)
    return path


@pytest.fixture(scope="session")
def images(cifar_root):
    ds = cifar10(cifar_root, per_class=4)
    return ds.get(np.arange(32)), torch.as_tensor(ds.labels[:32])


@pytest.fixture(scope="session")
def custom(tmp_path_factory):
    net = _custom()
    return net, _export(net, tmp_path_factory.mktemp("pt2") / "custom.pt2")


@pytest.fixture(scope="session")
def r20(models_dir, tmp_path_factory):
    model = resnet20(models_dir)
    return model, _export(model.net, tmp_path_factory.mktemp("pt2") / "resnet20.pt2")


def _like(model: ExplainedModel, net: nn.Module) -> ExplainedModel:
    """``net`` wrapped with ``model``'s normalization."""
    return ExplainedModel(net, model.mean.flatten().tolist(), model.std.flatten().tolist(), (3, 32, 32))


# -- the same network -----------------------------------------------------------------------------
def test_custom_cnn_logits_pgd_and_layers_equal_the_original(custom, images):
    net, path = custom
    x, y = images
    loaded = load_network(path)
    with torch.no_grad():
        ref, got = net((x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)), None
        got = loaded((x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1))
    assert got.shape == (32, 10) and (got - ref).abs().max() <= 1e-4
    original, converted = (ExplainedModel(n, MEAN, STD, (3, 32, 32)) for n in (net, loaded))
    a = attack("pgd", original, x, y, steps=3)
    b = attack("pgd", converted, x, y, steps=3)
    assert (a - x).abs().max() > 1e-3 and (a - b).abs().max() <= 1e-4
    # real modules, named after the original module paths, so the Prepare page can name the layer
    modules = dict(loaded.named_modules())
    assert isinstance(modules["stem_0"], nn.Conv2d) and isinstance(modules["stem_1"], nn.BatchNorm2d)
    assert isinstance(modules["head_3"], nn.Linear) and isinstance(modules["head_1"], nn.Flatten)
    assert isinstance(modules["features_1_blocks_1"], AtenOp)  # the residual add ending the last block
    model = load_model(ModelConfig(checkpoint=str(path), num_classes=10, mean=MEAN, std=STD), (3, 32, 32))
    assert model.feature_layer == "features_1_blocks_1_relu_1" and model.head == "head_3"
    assert model.head_type == "linear"
    assert (model.num_neurons, model.fmap_size, model.num_classes) == \
        (original.num_neurons, original.fmap_size, original.num_classes) == (40, (8, 8), 10)
    with pytest.raises(ModelError, match="classifies into 10 classes"):
        load_model(ModelConfig(checkpoint=str(path), num_classes=7), (3, 32, 32))


def test_decomposed_program_gives_the_same_modules(custom, images, tmp_path):
    """``run_decompositions()`` (the core-aten IR: convolution, _native_batch_norm_legit_no_training with
    its statistics outputs, mean.dim pooling, addmm with a permuted weight) reads as the same layers."""
    net, _ = custom
    ep = torch.export.export(net, (torch.rand(2, 3, 32, 32),), dynamic_shapes=DYNAMIC).run_decompositions()
    torch.export.save(ep, tmp_path / "core_aten.pt2")
    loaded = load_network(tmp_path / "core_aten.pt2")
    x = images[0]
    with torch.no_grad():
        assert (loaded(x) - net(x)).abs().max() <= 1e-4
    modules = dict(loaded.named_modules())
    assert isinstance(modules["stem_1"], nn.BatchNorm2d) and isinstance(modules["head_3"], nn.Linear)
    model = ExplainedModel(loaded, MEAN, STD, (3, 32, 32))
    assert (model.feature_layer, model.head, model.num_neurons) == \
        ("features_1_blocks_1_relu_1", "head_3", 40)


def test_resnet20_export_equals_the_shipped_model(r20, images):
    model, path = r20
    x, _ = images
    converted = _like(model, load_network(path))
    with torch.no_grad():
        assert (converted(x) - model(x)).abs().max() <= 1e-4
        # a model sent to a worker process (pickled): its operators travel by name
        assert torch.equal(pickle.loads(pickle.dumps(converted))(x[:4]), converted(x[:4]))
    assert (converted.num_neurons, converted.fmap_size) == (model.num_neurons, model.fmap_size) \
        == (64, (8, 8))


def test_vulnerability_maps_run_at_fp32_and_bf16(r20, images):
    model, path = r20
    converted = _like(model, load_network(path))
    x, y = images
    adv = attack("pgd", model, x[:1], y[:1])
    assert DeltaForward.for_model(converted) is not None  # the traced fast path really runs
    b, a = x[0], adv[0]
    ours = vulnerability_maps(converted, b, a, int(y[0]), 3, k=4, stride=4)
    ref = vulnerability_maps(model, b, a, int(y[0]), 3, k=4, stride=4)
    fast = vulnerability_maps(converted, b, a, int(y[0]), 3, k=4, stride=4, precision="bf16")
    for o, r, f in zip(ours, ref, fast, strict=True):
        scale = r.abs().max().item()
        assert scale > 0 and (o - r).abs().max() <= 1e-4 * max(scale, 1)
        assert (f - o).abs().max() <= 5e-2 * scale


def test_fixed_batch_export_runs_on_other_batch_sizes_or_says_how_to_fix(tmp_path, images):
    class ViewHead(nn.Module):  # x.view(2, -1): the exported batch size is a literal in the program
        def __init__(self):
            super().__init__()
            self.conv, self.pool, self.fc = nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(self.pool(self.conv(x)).view(x.shape[0], -1))
    torch.manual_seed(0)
    net = ViewHead().eval()
    loaded = load_network(_export(net, tmp_path / "fixed.pt2", dynamic=False))
    x = images[0][:5]
    with torch.no_grad():
        assert (loaded(x) - net(x)).abs().max() <= 1e-5

    class Mixing(ViewHead):  # a reshape that folds the batch into another size: cannot be generalized
        def forward(self, x):
            f = self.pool(self.conv(x))
            return self.fc(f.reshape(x.shape[0] * 8, 1).reshape(x.shape[0], 8))
    with pytest.raises(ModelError, match=r'exported for batches of exactly 2.*torch\.export\.Dim\("batch"\)'):
        load_network(_export(Mixing().eval(), tmp_path / "mixing.pt2", dynamic=False))


def test_cli_prepare_on_the_pt2_reports_the_models_neurons(r20, cifar_root, tmp_path):
    model, path = r20
    cfg = tmp_path / "pt2.toml"
    mean, std = model.mean.flatten().tolist(), model.std.flatten().tolist()  # no arch: the file is enough
    cfg.write_text(f'[model]\ncheckpoint = "{path}"\nnum_classes = 10\nmean = {mean}\nstd = {std}\n'
                   f'[data]\nsource = "cifar10"\nroot = "{cifar_root}"\nper_class = 2\n'
                   '[attack]\nsteps = 2\n[prepare]\ntsne_perplexity = 4.0\n')
    done = subprocess.run([sys.executable, "-m", "core", "--cache", str(tmp_path), "prepare", "--config",
                           str(cfg), "--out", "pt2", "--quiet"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "pt2" / "manifest.json").read_text())
    assert manifest["model"]["num_neurons"] == model.num_neurons == 64
    assert manifest["model"]["fmap_size"] == [8, 8]
    assert manifest["model"]["feature_layer"] == "layer3_2_relu_1"
    assert manifest["counts"]["clean_accuracy"] >= 0.8  # the shipped weights, read right


# -- malicious and broken files -------------------------------------------------------------------
def _edit(src: Path, dst: Path, json_edits: dict | None = None, add: dict | None = None) -> Path:
    """A copy of the archive ``src`` with JSON entries edited (relative name -> function of the parsed
    JSON) and entries added or replaced (relative name -> bytes)."""
    with zipfile.ZipFile(src) as z:
        prefix = z.namelist()[0].split("/")[0] + "/"
        entries = {i.filename: z.read(i) for i in z.infolist()}
    for rel, fn in (json_edits or {}).items():
        obj = json.loads(entries[prefix + rel])
        fn(obj)
        entries[prefix + rel] = json.dumps(obj).encode()
    for rel, data in (add or {}).items():
        entries[prefix + rel] = data
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return dst


class _Payload:
    """Unpickling it runs ``touch marker``."""
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _nodes(obj) -> list:
    return obj["graph_module"]["graph"]["nodes"]


def test_pickled_weight_is_refused_and_never_unpickled(custom, tmp_path):
    marker = tmp_path / "pwned"
    payload = io.BytesIO()
    torch.save(_Payload(marker), payload)

    def pickled(cfg):
        cfg["config"]["stem.0.weight"]["use_pickle"] = True
    bad = _edit(custom[1], tmp_path / "pickle.pt2", {"data/weights/model_weights_config.json": pickled},
                {"data/weights/" + "weight_0": payload.getvalue()})
    with pytest.raises(ModelError, match="stored as a Python object.*could run code"):
        load_network(bad)
    assert not marker.exists()
    # the file is a live attack: torch's own loader runs it (the reason this reader exists)
    try:
        torch.export.load(bad)
    except Exception:  # noqa: BLE001 - after the payload ran, torch fails on the non-tensor
        pass
    assert marker.exists()


@pytest.mark.parametrize("prefix", ["opaque_obj_0", "custom_obj_0"])
def test_object_constant_is_refused(custom, tmp_path, prefix):
    marker = tmp_path / "pwned"

    def constant(cfg):
        cfg["config"]["evil"] = {"path_name": prefix, "is_param": False, "use_pickle": False,
                                 "tensor_meta": None}
    bad = _edit(custom[1], tmp_path / "obj.pt2", {"data/constants/model_constants_config.json": constant},
                {"data/constants/" + prefix: pickle.dumps(_Payload(marker))})
    with pytest.raises(ModelError, match="stored as a Python object"):
        load_network(bad)
    assert not marker.exists()


@pytest.mark.parametrize("target", ["torch.save", "builtins.exec", "torch.hub.load",
                                    "torch.ops.aten.from_file.default", "torch.ops.aten.relu.out",
                                    "torch.ops.aten.empty.memory_format"])
def test_call_targets_outside_the_allowed_aten_ops_are_refused(custom, tmp_path, target):
    def retarget(obj):
        _nodes(obj)[1]["target"] = target
    bad = _edit(custom[1], tmp_path / "target.pt2", {"models/model.json": retarget})
    with pytest.raises(ModelError, match=f"calls '{target}', which this reader does not run"):
        load_network(bad)


def test_from_file_with_its_arguments_is_refused_before_reading(custom, tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 64)

    def read_file(obj):
        node = _nodes(obj)[0]
        node["target"] = "torch.ops.aten.from_file.default"
        node["inputs"] = [{"name": "filename", "arg": {"as_string": str(secret)}, "kind": 1},
                          {"name": "shared", "arg": {"as_bool": False}, "kind": 1}]
    with pytest.raises(ModelError, match="aten.from_file"):
        load_network(_edit(custom[1], tmp_path / "from_file.pt2", {"models/model.json": read_file}))


def test_symbolic_expression_strings_are_never_evaluated(custom, tmp_path):
    marker = tmp_path / "pwned"
    expr = f"__import__('os').system('touch {marker}')"

    def inject(obj):
        graph = obj["graph_module"]["graph"]
        graph["tensor_values"]["x"]["sizes"][0] = {"as_expr": {"expr_str": expr, "hint": {"as_int": 2}}}
        obj["range_constraints"] = {expr: {"min_val": 0, "max_val": None}}
    with pytest.raises(ModelError, match="does not evaluate"):
        load_network(_edit(custom[1], tmp_path / "sympy.pt2", {"models/model.json": inject}))
    assert not marker.exists()


def test_zip_bomb_and_huge_declared_sizes_are_refused(custom, tmp_path):
    bomb = tmp_path / "bomb.pt2"
    with zipfile.ZipFile(custom[1]) as z, zipfile.ZipFile(bomb, "w") as out:
        for i in z.infolist():
            out.writestr(i, z.read(i), compress_type=zipfile.ZIP_DEFLATED if "weight_0" in i.filename
                         else zipfile.ZIP_STORED)
        out.writestr("custom/data/weights/weight_99", b"\0" * (40 << 20), compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(ModelError, match="decompression bomb"):
        load_network(bomb)

    def huge(cfg):
        cfg["config"]["stem.0.weight"]["tensor_meta"]["sizes"][0] = {"as_int": 1 << 40}
    with pytest.raises(ModelError, match="does not fit its record"):
        load_network(_edit(custom[1], tmp_path / "huge.pt2",
                           {"data/weights/model_weights_config.json": huge}))

    def huge_activation(obj):
        obj["graph_module"]["graph"]["tensor_values"]["conv2d"]["sizes"][1] = {"as_int": 1 << 40}
    with pytest.raises(ModelError, match="max_checkpoint_bytes"):
        load_network(_edit(custom[1], tmp_path / "act.pt2", {"models/model.json": huge_activation}))


def test_limits_come_from_the_server_settings(custom, monkeypatch):
    monkeypatch.setenv("NVE_MAX_CHECKPOINT_BYTES", "1000")
    with pytest.raises(ModelError, match="NVE_MAX_CHECKPOINT_BYTES"):
        load_network(custom[1])


def test_weights_written_into_by_the_program_are_refused(custom, tmp_path):
    def in_place(obj):  # relu_ on a weight: each forward would change the model
        node = next(n for n in _nodes(obj) if n["target"] == "torch.ops.aten.relu.default")
        node["target"] = "torch.ops.aten.relu_.default"
        node["inputs"][0]["arg"] = {"as_tensor": {"name": "p_stem_0_weight"}}
    with pytest.raises(ModelError, match="writes into the model's weights"):
        load_network(_edit(custom[1], tmp_path / "inplace.pt2", {"models/model.json": in_place}))


def test_programs_exported_in_training_mode_are_refused(tmp_path):
    net = _custom().train()  # dropout draws random numbers, batch norm updates its statistics
    with pytest.raises(ModelError, match=r"writes into the model's weights.*eval mode"):
        load_network(_export(net, tmp_path / "train.pt2"))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    with pytest.raises(ModelError, match=r"dropout .* runs in training mode.*model\.eval\(\)"):
        load_network(_export(net, tmp_path / "dropout.pt2"))


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[: len(b) // 2], "truncated"),
    (lambda b: b[:-30], "truncated"),
    (lambda b: b"", "empty"),
    (lambda b: b"hello, this is text\n" * 10, "it is text"),
    (lambda b: bytes(range(256)) * 4, "not a zip archive"),
    (lambda b: b[:200] + b"\xff" * 500 + b[700:], "damaged|truncated|not valid JSON"),
])
def test_broken_files_get_clear_messages(custom, tmp_path, damage, message):
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(damage(custom[1].read_bytes()))
    with pytest.raises(ModelError, match=message):
        load_network(bad)


def test_an_ordinary_checkpoint_or_torchscript_named_pt2_is_refused(custom, tmp_path):
    plain = tmp_path / "weights.pt2"
    torch.save(custom[0].state_dict(), plain)
    with pytest.raises(ModelError, match=r"weights checkpoint \(torch.save\).*set \[model\] arch"):
        load_network(plain)
    script = tmp_path / "script.pt2"
    torch.jit.save(torch.jit.trace(custom[0], torch.rand(1, 3, 32, 32)), script)
    with pytest.raises(ModelError, match="TorchScript archive"):
        load_network(script)


# -- sizes a file records but does not compute ----------------------------------------------------
class _Extra(nn.Module):
    """A small CNN whose logits add ``extra(self, x)``: a value of its extra parameters (folded while
    loading) or of the image."""

    def __init__(self, extra, **params):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)
        for name, value in params.items():
            setattr(self, name, nn.Parameter(value))
        self.extra = extra

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1).flatten(1)) + self.extra(self, x)


def _export_extra(path: Path, extra, side: int = 16, **params) -> Path:
    ep = torch.export.export(_Extra(extra, **params).eval(), (torch.rand(2, 3, side, side),),
                             dynamic_shapes=DYNAMIC)
    torch.export.save(ep, path)
    return path


def _record_ones(obj, size: int) -> None:
    """The values recorded as (…, size, size) are recorded with 1s there (the file lies about them)."""
    for meta in obj["graph_module"]["graph"]["tensor_values"].values():
        if meta["sizes"].count({"as_int": size}) == 2:
            meta["sizes"] = [{"as_int": 1} if s == {"as_int": size} else s for s in meta["sizes"]]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_weights_only_operator_larger_than_its_record_is_refused_before_it_runs(tmp_path):
    n = 1_000_000  # a (n, 1) @ (1, n) matmul: 4 TB if it ran (8 MB of weights)
    src = _export_extra(tmp_path / "fold.pt2", lambda m, x: (m.a @ m.b).sum(),
                        a=torch.rand(n, 1), b=torch.rand(1, n))
    bad = _edit(src, tmp_path / "lie.pt2", {"models/model.json": lambda obj: _record_ones(obj, n)})
    before = _peak_mb()
    with pytest.raises(ModelError, match=r"does not compute what it records \(matmul: \(1000000, 1000000\)"):
        load_network(bad)
    assert _peak_mb() - before < 500


def test_weights_only_operators_together_are_bounded(tmp_path, monkeypatch):
    k = 512  # each a @ b takes 1 MiB, three of them 3 MiB
    src = _export_extra(tmp_path / "three.pt2", lambda m, x: (m.a @ m.b).sum() + (m.a @ (m.b * 2)).sum()
                        + ((m.a * 3) @ m.b).sum(), a=torch.rand(k, 1), b=torch.rand(1, k))
    load_network(src)
    monkeypatch.setenv("NVE_MAX_CHECKPOINT_BYTES", str(5 << 19))
    with pytest.raises(ModelError, match="operators on weights compute .*NVE_MAX_CHECKPOINT_BYTES"):
        load_network(src)


def test_pads_of_weights_are_bounded_by_max_image_size(tmp_path):
    src = _export_extra(tmp_path / "pad.pt2", lambda m, x: F.pad(m.w, (1, 1)).sum(), w=torch.rand(2, 2))
    assert load_network(src) is not None

    def wide(obj):
        node = next(n for n in _nodes(obj) if n["target"] in ("torch.ops.aten.constant_pad_nd.default",
                                                                "torch.ops.aten.pad.default"))
        node["inputs"][1]["arg"] = {"as_ints": [10 ** 9, 10 ** 9]}
    with pytest.raises(ModelError, match=r"pads by more than 1024 pixels \(max_image_size\)"):
        load_network(_edit(src, tmp_path / "wide.pt2", {"models/model.json": wide}))


def test_activation_larger_than_its_record_is_refused_before_it_runs(tmp_path):
    side = 512  # (3·512², 1) @ (1, 3·512²) per image: 2.4 TB if it ran
    k = 3 * side * side

    def outer(m, x):
        v = x.reshape(x.shape[0], -1, 1)
        return (v @ v.transpose(1, 2)).mean((1, 2)).unsqueeze(1)
    src = _export_extra(tmp_path / "act.pt2", outer, side=side)
    bad = _edit(src, tmp_path / "lie.pt2", {"models/model.json": lambda obj: _record_ones(obj, k)})
    before = _peak_mb()
    with pytest.raises(ModelError, match=r"does not compute what it records \(.*\(1, 786432, 786432\)"):
        load_network(bad)
    assert _peak_mb() - before < 500


@pytest.mark.parametrize("sizes, shown", [([3, 100_000, 100_000], "3 x 100000 x 100000"),
                                          ([5000, 16, 16], "5000 x 16 x 16"), ([3, 0, 16], "3 x 0 x 16")])
def test_input_sides_and_channels_are_bounded_as_for_onnx(custom, tmp_path, sizes, shown):
    def big(obj):
        x = obj["graph_module"]["graph"]["tensor_values"]["x"]
        x["sizes"][1:] = [{"as_int": v} for v in sizes]
    with pytest.raises(ModelError, match=f"its input \\({shown}\\) must have 1 to 4 channels and sides "
                                         r"of at most 1024 pixels \(max_image_size\)"):
        load_network(_edit(custom[1], tmp_path / "big.pt2", {"models/model.json": big}))
