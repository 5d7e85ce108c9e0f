"""ONNX model files (core.onnx_models): real exports of a CNN written here and of the shipped ResNet20 load
as modules that give the same logits, attacks and maps; crafted malicious files are refused and do nothing."""
import builtins
import os
import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import core.attacks
from core.config import ModelConfig
from core.data import image_folder
from core.models import (
    ExplainedModel,
    ModelError,
    build_architecture,
    load_model,
    load_state_dict,
    load_weights,
)
from core.onnx_models import load_network
from core.vulnerability import DeltaForward, vulnerability_maps

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


class _Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return torch.relu(x + self.body(x))


class CustomCNN(nn.Module):
    """Nested residual stages and a Sequential head with Flatten and Dropout (not an architecture of core)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.stages = nn.Sequential(nn.Sequential(_Block(8), _Block(8)),
                                    nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(), _Block(16)))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(16, 10))

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


def _export(net, path: Path, dynamo: bool, **kw) -> Path:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.rand(2, 3, 32, 32),), str(path), dynamo=dynamo,
                          input_names=["x"], **kw)
    return path


@pytest.fixture(scope="module")
def images(cifar_root):
    ds = image_folder(cifar_root, per_class=4)
    return ds.get(range(32)), torch.as_tensor(ds.labels[:32])


@pytest.fixture(scope="module")
def custom(tmp_path_factory):
    """The custom CNN (random weights, BatchNorm statistics that matter) and its dynamo export with a
    dynamic batch axis."""
    torch.manual_seed(0)
    net = CustomCNN()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    net.eval()
    path = _export(net, tmp_path_factory.mktemp("custom") / "custom.onnx", True,
                   dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    return net, path


@pytest.fixture(scope="module")
def custom_model(custom):
    """The export loaded the app's way: [model] checkpoint = "custom.onnx" and no arch."""
    return load_model(ModelConfig(checkpoint=str(custom[1]), num_classes=10, mean=MEAN, std=STD), (3, 32, 32))


def test_custom_cnn_logits_attack_and_layers_match(custom, custom_model, images):
    net, path = custom
    assert path.with_name("custom.onnx.data").exists()  # the exporter's weights file beside it, read too
    x, y = images
    with torch.no_grad():
        assert (custom_model.net(x) - net(x)).abs().max() <= 1e-4  # batch 32, exported at 2
    original = ExplainedModel(net, MEAN, STD, (3, 32, 32))
    adv_o = core.attacks.run("pgd", original, x, y, eps=8 / 255, steps=5,
                             generator=torch.Generator().manual_seed(1))
    adv_c = core.attacks.run("pgd", custom_model, x, y, eps=8 / 255, steps=5,
                             generator=torch.Generator().manual_seed(1))
    assert (adv_o - x).abs().max() > 1e-3  # the attack moved the images
    assert (adv_o - adv_c).abs().max() <= 1e-4
    model = custom_model
    assert (model.num_neurons, model.fmap_size, model.num_classes) == \
        (original.num_neurons, original.fmap_size, original.num_classes) == (16, (16, 16), 10)
    assert isinstance(model.head_module, nn.Linear) and model.head_type == "linear"
    assert model.feature_layer == "stages_1_2_relu" and model.head == "head_3_gemm"
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", n) for n, _ in model.net.named_children())
    assert any(isinstance(m, nn.AdaptiveAvgPool2d) for m in model.net.modules())


def test_maps_run_at_fp32_and_bf16_on_the_converted_model(custom, custom_model, images):
    net, _ = custom
    x, y = images
    original, model = ExplainedModel(net, MEAN, STD, (3, 32, 32)), custom_model
    assert DeltaForward.for_model(model) is not None  # the bf16 fast path really runs on it
    adv = core.attacks.run("pgd", original, x[:1], y[:1], eps=8 / 255, steps=5,
                           generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        b, a = int(original(x[:1]).argmax()), int(original(adv).argmax())
    want = vulnerability_maps(original, x[0], adv[0], b, a, stride=2, output="logit")
    fp32 = vulnerability_maps(model, x[0], adv[0], b, a, stride=2, output="logit")
    bf16 = vulnerability_maps(model, x[0], adv[0], b, a, stride=2, output="logit", precision="bf16")
    for w, f, h in zip(want, fp32, bf16, strict=True):
        scale = w.abs().max().item()
        assert scale > 0
        assert (f - w).abs().max() <= 1e-4 * max(scale, 1)
        assert (h - f).abs().max() <= 5e-2 * scale  # as for the built-in models (test_vulnerability)


def test_resnet20_exported_at_a_fixed_batch_runs_on_any(models_dir, images, tmp_path):
    """The shipped ResNet20 (option-A shortcuts: slicing and channel padding) through the legacy
    exporter at batch 2: the converted model gives its logits on a batch of 32."""
    net = build_architecture("resnet20_cifar", 10)
    load_weights(net, load_state_dict(models_dir / "resnet20-12fca82f.th"))
    path = _export(net, tmp_path / "resnet20.onnx", False)
    model = load_model(ModelConfig(checkpoint=str(path), num_classes=10), (3, 32, 32))
    x, _ = images
    with torch.no_grad():
        assert (model.net(x) - net.eval()(x)).abs().max() <= 1e-4
    assert (model.num_neurons, model.fmap_size) == (64, (8, 8))
    # the shortcuts' slicing and padding are plain torch again: the bf16 maps' fast path runs
    assert DeltaForward.for_model(model) is not None
    moved = (x[0] + 8 / 255 * torch.randn(x[0].shape, generator=torch.Generator().manual_seed(0)).sign())
    b = int(model(x[:1]).argmax())
    fp32, bf16 = (vulnerability_maps(model, x[0], moved.clamp(0, 1), b, (b + 1) % 10, stride=4,
                                     output="logit", precision=p) for p in ("fp32", "bf16"))
    for f, h in zip(fp32, bf16, strict=True):
        assert (h - f).abs().max() <= 5e-2 * f.abs().max() and f.abs().max() > 0


def test_a_graph_fixed_to_its_batch_size_is_refused_with_the_fix(tmp_path):
    """A constant of the export's batch size (2) that no rewrite can generalise."""
    model = _model([helper.make_node("Conv", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "c"], ["y"])],
                   [_weights(), numpy_helper.from_array(np.zeros((2, 4, 6, 6), np.float32), "c")], batch=2)
    onnx.save_model(model, tmp_path / "fixed.onnx")
    with pytest.raises(ModelError, match="fixed at export to batches of 2.*dynamic_shapes"):
        load_network(tmp_path / "fixed.onnx")


class _MatMulHead(nn.Module):
    """A TF-style head: mean over (H, W) without keepdim, then x @ W + b with a (1, classes) bias
    (ReduceMean, MatMul and Add in ONNX)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.w = nn.Parameter(torch.randn(6, 5))
        self.b = nn.Parameter(torch.randn(1, 5))

    def forward(self, x):
        return torch.relu(self.conv(x)).mean((2, 3)) @ self.w + self.b


def test_matmul_add_and_reduce_mean_become_linear_and_pooling(tmp_path):
    torch.manual_seed(0)
    net = _MatMulHead().eval()
    path = _export(net, tmp_path / "matmul.onnx", True)  # dynamo, fixed batch 2
    x = torch.rand(3, 3, 32, 32)
    converted = load_network(path)
    with torch.no_grad():
        assert (converted(x) - net(x)).abs().max() <= 1e-5
    model = ExplainedModel(converted, (0.5,), (0.5,), (3, 32, 32))
    assert model.head_module.weight.shape == (5, 6) and model.fmap_size == (32, 32)
    kinds = [type(m) for m in converted.children()]
    assert nn.AdaptiveAvgPool2d in kinds and nn.Linear in kinds


# ---------------------------------------------------------------------------------------------
# Crafted malicious and broken files
# ---------------------------------------------------------------------------------------------
def _model(nodes, initializers=(), opset=17, domains=(), rank=4, batch=1):
    """A small valid graph: x (batch,3,8,8) -> nodes -> y (of ``rank`` dimensions)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"d{i}" for i in range(rank)])
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   *(helper.make_opsetid(d, 1) for d in domains)])


def _weights(name="w", shape=(4, 3, 3, 3)):
    return numpy_helper.from_array(np.ones(shape, np.float32), name)


def _conv_model():
    return _model([helper.make_node("Conv", ["x", "w"], ["y"])], [_weights()])


@pytest.fixture
def opened(monkeypatch):
    """Every path this process opens with open() or os.open() while the test runs (a record, not a
    change)."""
    seen = []

    def spy(real):
        def record(file, *args, **kwargs):
            if isinstance(file, str | bytes | os.PathLike):
                seen.append(os.path.abspath(os.fsdecode(file)))
            return real(file, *args, **kwargs)
        return record
    monkeypatch.setattr(builtins, "open", spy(builtins.open))
    monkeypatch.setattr(os, "open", spy(os.open))
    return seen


def test_the_conv_model_itself_loads(tmp_path):
    onnx.save_model(_conv_model(), tmp_path / "ok.onnx")
    assert load_network(tmp_path / "ok.onnx")(torch.rand(2, 3, 8, 8)).shape == (2, 4, 6, 6)


def test_global_max_pooling_becomes_adaptive_max_pool(tmp_path):
    w = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"]), helper.make_node("GlobalMaxPool", ["h"], ["y"])]
    model = _model(nodes, [numpy_helper.from_array(w.numpy(), "w")])
    onnx.save_model(model, tmp_path / "max.onnx")
    net = load_network(tmp_path / "max.onnx")
    assert any(isinstance(m, nn.AdaptiveMaxPool2d) for m in net.modules())
    x = torch.rand(3, 3, 8, 8)
    want = torch.amax(torch.nn.functional.conv2d(x, w), (2, 3), keepdim=True)
    assert torch.allclose(net(x), want, atol=1e-6)


def test_a_card_in_the_files_metadata_gives_normalization_and_a_card_beside_it_wins(tmp_path):
    from core.model_cards import read_card
    model = _conv_model()
    helper.set_model_props(model, {"mean": "[0.5, 0.4, 0.3]", "std": "[0.2, 0.2, 0.2]", "num_classes": "4",
                                   "producer_note": "ignored"})
    onnx.save_model(model, tmp_path / "m.onnx")
    card = read_card(tmp_path / "m.onnx")
    assert (card.mean, card.std, card.num_classes) == ((0.5, 0.4, 0.3), (0.2, 0.2, 0.2), 4)
    (tmp_path / "m.json").write_text('{"mean": [0.1], "std": [0.9]}')
    assert (read_card(tmp_path / "m.onnx").mean, read_card(tmp_path / "m.onnx").num_classes) == ((0.1,), None)
    (tmp_path / "m.json").unlink()
    helper.set_model_props(model, {"mean": "[0.5, oops"})
    onnx.save_model(model, tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="'mean' is not JSON"):
        read_card(tmp_path / "m.onnx")
    helper.set_model_props(model, {"mean": "[" * 30_000 + "]" * 30_000})  # under the size bound, too deep
    onnx.save_model(model, tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="'mean' is not JSON"):
        read_card(tmp_path / "m.onnx")


@pytest.mark.parametrize("where", ["absolute", "parent", "sibling", "link"])
def test_external_data_outside_the_model_is_never_read(tmp_path, opened, where):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.full(108, 7, np.float32).tobytes())
    folder = tmp_path / "models"
    folder.mkdir()
    location = {"absolute": str(secret), "parent": "../secret.bin", "sibling": "other.onnx.data",
                "link": "evil.onnx.data"}[where]
    if where == "sibling":
        (folder / "other.onnx.data").write_bytes(secret.read_bytes())
    if where == "link":  # the one allowed name, but a link to a file elsewhere
        (folder / "evil.onnx.data").symlink_to(secret)
    model = _conv_model()
    w = model.graph.initializer[0]
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(108 * 4))):
        w.external_data.add(key=k, value=v)
    path = folder / "evil.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match="stored in another file|cannot be read \\(it is a link\\)") as e:
        load_network(path)
    assert "external_data=False" in str(e.value)
    assert str(path) in opened  # the spy sees the loader's reads
    assert not any(p.endswith(("secret.bin", "other.onnx.data")) for p in opened), opened


def test_external_data_beside_the_model_under_its_name_loads(tmp_path):
    onnx.save_model(_conv_model(), tmp_path / "m.onnx", save_as_external_data=True, location="m.onnx.data",
                    size_threshold=0)
    assert (tmp_path / "m.onnx.data").exists()
    out = load_network(tmp_path / "m.onnx")(torch.ones(1, 3, 8, 8))
    assert torch.allclose(out, torch.full((1, 4, 6, 6), 27.0))


def test_custom_domain_operators_are_refused_by_name(tmp_path):
    marker = tmp_path / "marker"
    model = _model([helper.make_node("Conv", ["x", "w"], ["h"]),
                    helper.make_node("RunShell", ["h"], ["y"], domain="com.evil", cmd=f"touch {marker}")],
                   [_weights()], domains=["com.evil"])
    onnx.save_model(model, tmp_path / "custom.onnx")
    with pytest.raises(ModelError, match="outside the standard ONNX set.*'RunShell' \\(domain 'com.evil'\\)"):
        load_network(tmp_path / "custom.onnx")
    assert not marker.exists()


def test_control_flow_and_unsupported_operators_are_refused(tmp_path):
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "b", [],
                               [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    cond = numpy_helper.from_array(np.array(True), "c")
    onnx.save_model(_model([helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)],
                           [cond]), tmp_path / "if.onnx")
    with pytest.raises(ModelError, match="control flow \\('If'"):
        load_network(tmp_path / "if.onnx")
    det = [helper.make_node("Conv", ["x", "w"], ["h"]), helper.make_node("Det", ["h"], ["y"])]
    onnx.save_model(_model(det, [_weights()]), tmp_path / "det.onnx")
    with pytest.raises(ModelError, match="cannot be converted to PyTorch: 'Det-11'"):
        load_network(tmp_path / "det.onnx")


def test_huge_declared_tensors_are_refused_before_allocation(tmp_path):
    def crafted(dims, raw):  # helper.make_tensor would refuse the mismatch: write the fields directly
        return TensorProto(name="w", data_type=TensorProto.FLOAT, dims=dims, raw_data=raw)

    huge = crafted([1 << 17, 1 << 17], b"\0\0\0\0")  # declares 64 GiB
    onnx.save_model(_model([helper.make_node("Conv", ["x", "w"], ["y"])], [huge]), tmp_path / "huge.onnx")
    with pytest.raises(ModelError, match="declare 64.0 GiB.*max_checkpoint_bytes"):
        load_network(tmp_path / "huge.onnx")
    short = crafted([4, 3, 3, 3], b"\0" * 8)
    onnx.save_model(_model([helper.make_node("Conv", ["x", "w"], ["y"])], [short]), tmp_path / "short.onnx")
    with pytest.raises(ModelError, match="declares 108 values .* but holds 8 bytes"):
        load_network(tmp_path / "short.onnx")
    shape = numpy_helper.from_array(np.array([1 << 15, 1 << 15, 8], np.int64), "s")  # 32 GiB at run time
    onnx.save_model(_model([helper.make_node("ConstantOfShape", ["s"], ["y"])], [shape], rank=3),
                    tmp_path / "grow.onnx")
    with pytest.raises(ModelError, match="would take 32.0 GiB for one image"):
        load_network(tmp_path / "grow.onnx")


def _data_sized(k: float, sides=(8, 8), as_output=False):
    """A classifier whose logits add the sum of ``ConstantOfShape(Cast(ReduceMax(x) * k))``: a tensor
    of about k values whose size shape inference cannot find (it comes from the pixels). With
    ``as_output`` that tensor is the output itself, its shape declared as (batch,)."""
    from onnx import numpy_helper as nh
    weights = [nh.from_array(np.ones((4, 3, 3, 3), np.float32), "w"),
               nh.from_array(np.ones((2, 4), np.float32), "fw"), nh.from_array(np.zeros(2, np.float32), "fb"),
               nh.from_array(np.array(k, np.float32), "k"), nh.from_array(np.array([1], np.int64), "one")]
    big = "out" if as_output else "big"
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("GlobalAveragePool", ["c"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat", axis=1),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["l"], name="fc", transB=1),
             helper.make_node("ReduceMax", ["x"], ["m"], name="rmax", keepdims=0),
             helper.make_node("Mul", ["m", "k"], ["mk"], name="mul"),
             helper.make_node("Cast", ["mk"], ["n"], name="cast", to=TensorProto.INT64),
             helper.make_node("Reshape", ["n", "one"], ["n1"], name="rs"),
             helper.make_node("ConstantOfShape", ["n1"], [big], name="cos",
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0]))]
    if not as_output:
        nodes += [helper.make_node("ReduceSum", ["big"], ["s"], name="rsum", keepdims=0),
                  helper.make_node("Add", ["l", "s"], ["out"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         ["batch", 3, *sides])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT,
                                                             ["batch"] if as_output else ["batch", 2])],
                              weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("case", ["fixed sides", "dynamic sides", "declared output"])
def test_sizes_computed_from_data_are_refused_before_running(tmp_path, case):
    """A size that comes from the pixels (here 10^11 floats, 400 GB, if it ran) is refused before
    conversion, naming the node: the size bound after shape inference cannot see it. Also with
    symbolic image sides, and when the file declares a harmless shape for that tensor."""
    model = _data_sized(1e11, sides=("h", "w") if case == "dynamic sides" else (8, 8),
                        as_output=case == "declared output")
    onnx.save_model(model, tmp_path / "bomb.onnx")
    with pytest.raises(ModelError, match="node 'cos' .'ConstantOfShape'. computes a tensor size from "
                                         "data.*export the model with static sizes"):
        load_network(tmp_path / "bomb.onnx")


def test_constant_sizes_are_folded_and_bounded(tmp_path):
    """A Pad whose pads are computed from constants only, through a Transpose that shape inference does
    not follow (as the legacy exporter writes F.pad), loads with its size known; the same computation
    asking for 192 GiB is refused by the size bound."""
    from onnx import numpy_helper as nh

    def padded(amount):
        columns = nh.from_array(np.array([[0, 0], [0, 0], [amount, amount], [amount, amount]], np.int64), "p")
        flat = nh.from_array(np.array([-1], np.int64), "flat")
        nodes = [helper.make_node("Transpose", ["p"], ["rows"], perm=[1, 0]),
                 helper.make_node("Reshape", ["rows", "flat"], ["pads"]),
                 helper.make_node("Pad", ["x", "pads"], ["y"])]
        return _model(nodes, [columns, flat])

    onnx.save_model(padded(1), tmp_path / "small.onnx")
    net = load_network(tmp_path / "small.onnx")
    assert net(torch.zeros(2, 3, 8, 8)).shape == (2, 3, 10, 10)
    onnx.save_model(padded(1 << 16), tmp_path / "huge.onnx")
    with pytest.raises(ModelError, match="would take 192.0 GiB for one image"):
        load_network(tmp_path / "huge.onnx")


def test_files_that_are_not_onnx_are_refused(tmp_path, custom):
    (tmp_path / "text.onnx").write_text("not a model at all\n" * 10)
    data = custom[1].read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.onnx").write_bytes(b"")
    for name in ("text.onnx", "cut.onnx", "empty.onnx"):
        with pytest.raises(ModelError, match="not an ONNX model|is empty|is damaged"):
            load_network(tmp_path / name)


class _LoudOnLoad(nn.Module):
    """TorchScript whose own code runs when the archive is loaded (its __setstate__)."""

    def __init__(self):
        super().__init__()
        self.k = 1

    def forward(self, x):
        return x * self.k

    @torch.jit.export
    def __getstate__(self):
        return (self.k, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[int, bool]):
        print("archive code ran")
        self.k = state[0]
        self.training = state[1]


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_runs_its_own_code_on_load(tmp_path, capfd):
    """Why TorchScript is refused: torch.jit.load runs code from the archive."""
    torch.jit.save(torch.jit.script(_LoudOnLoad()), tmp_path / "scripted.pt")
    torch.jit.load(tmp_path / "scripted.pt")
    assert "archive code ran" in capfd.readouterr().out


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_and_whole_model_pickles_are_refused_with_the_conversion(tmp_path, capfd):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.jit.save(torch.jit.script(_LoudOnLoad()), tmp_path / "scripted.pt")
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3)), tmp_path / "whole.pt")
    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    for name in ("scripted.pt", "whole.pt", "evil.pt"):
        with pytest.raises(ModelError) as e:
            load_state_dict(tmp_path / name)
        text = str(e.value)
        assert "torch.export.save" in text and "torch.onnx.export" in text and "no arch" in text, text
        assert "weights_only" not in text
        assert ("TorchScript archive" in text) == (name == "scripted.pt")
    assert not marker.exists() and "archive code ran" not in capfd.readouterr().out
