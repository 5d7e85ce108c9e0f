"""ONNX model files (``.onnx``): a network from another framework (or ``torch.onnx.export``) turned into a
PyTorch module, so attacks, gradients and maps work on it unchanged.

``load_network(path)`` returns an ``nn.Module`` (a ``torch.fx.GraphModule`` built by ``onnx2torch``) that
takes the file's own input (normalized as the model was trained; ``ExplainedModel`` adds [model] mean/std).

Nothing from the file runs: an ONNX file is a protobuf message (a graph of named standard operators and
tensors), and every operator becomes a fixed PyTorch module chosen by its name from onnx2torch's registry.
What the file could still do, and what stops it (docs/security.md "Model files: ONNX"):

- **External data.** A tensor may name another file (``location``: any path, absolute or ``../``) whose
  bytes ``onnx.load`` would read from the server's disk. The file is parsed without them; the only other
  file read is ``<model file name>.data`` beside it (what ``torch.onnx.export`` writes: ``model.onnx`` ->
  ``model.onnx.data``; a regular file, not a link), at the byte ranges of tensors that name exactly it.
  Any other location is refused before anything is opened (``_DataFile``).
- **Size.** The file's size is bounded by ``max_checkpoint_bytes`` before it is read; every tensor's
  declared size must equal the data it holds (so a header that declares 10¹² values is refused before
  anything is allocated), tensors and nodes are counted against ``max_checkpoint_tensors``, and after
  shape inference no intermediate tensor of one image may exceed ``max_checkpoint_bytes``; the input's
  sides are at most ``max_image_size``. A size computed from tensor data (``ConstantOfShape``, ``Expand``,
  ``Reshape``, ``Pad``... of a value that depends on the pixels) is refused, naming the node, since no
  bound before running could see it (``_infer``); small computations on constants are folded first.
- **Operators.** Only the standard domain (``""``/``ai.onnx``) and operators that onnx2torch converts;
  custom domains, local functions and subgraphs (control flow: If, Loop, Scan) are refused, naming them.
  Only then does ONNX's native code see the graph (its checker, shape inference).

Normal forms, so that ``core.models.discover_layers`` finds the analysed layer and the head and the bf16
maps' difference propagation (``core.vulnerability.DeltaForward``) sees standard modules; each is exact:

- Constant nodes become initializers; ``ReduceMean`` over (H, W) of a 4-D tensor becomes
  ``GlobalAveragePool`` (+ ``Flatten`` when ``keepdims=0``), then ``nn.AdaptiveAvgPool2d(1)``
  (``GlobalMaxPool``: ``nn.AdaptiveMaxPool2d(1)``);
  ``MatMul`` (+ ``Add``) with a constant matrix (and bias) on a 2-D input becomes ``Gemm``, and a Gemm
  with constant weights an ``nn.Linear`` (onnx2torch folds ``transB``, ``alpha`` and ``beta`` into it);
  a ``Reshape`` to (batch, features) becomes ``Flatten``; ``Reshape``'s ``allowzero`` is dropped (on
  non-empty tensors it only turns an error into a copy).
- Batch size: a fixed batch dimension of the input becomes symbolic and the leading literal of a
  constant ``Reshape`` shape that keeps the batch becomes 0 ("copy"); the module is then checked to give
  an image in a batch of 2 the logits it gets alone, else refused with the fix (dynamic batch axis).
- Opsets above onnx2torch's: operators whose later versions only added tensor types are converted as
  their earlier version (``_SAME_SEMANTICS``).
- Module names are readable and valid: ``/layer4/layer4.1/relu_1/Relu`` -> ``layer4_1_relu_1``; the
  dynamo exporter's scopes (``pkg.torch.onnx.name_scopes``) -> e.g. ``stages_2_0_relu``.
"""
from __future__ import annotations

import errno
import functools
import json
import math
import os
import re
import stat
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.hosting import settings
from core.models import ModelError, _limit_error, _limits, _shown, _size

STANDARD_DOMAINS = ("", "ai.onnx")
_SUBGRAPHS = (5, 10)  # AttributeProto.GRAPH, GRAPHS: control flow (If, Loop, Scan) carries subgraphs
_TENSOR_ATTRS = (4, 9)  # AttributeProto.TENSOR, TENSORS
_SPARSE_ATTRS = (11, 12)  # SPARSE_TENSOR, SPARSE_TENSORS
# TensorProto data types a model's tensors may have -> bytes per value (no strings, complex, float8/4-bit)
_DTYPES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}
_TYPED_FIELDS = {1: "float_data", 11: "double_data", 7: "int64_data", 12: "uint64_data", 13: "uint64_data"}
_EXPORT_FIX = ("export the model again with torch.onnx.export(model, (x,), 'model.onnx', "
               "dynamic_shapes={'x': {0: torch.export.Dim('batch')}}) (or dynamic_axes={'x': {0: 'batch'}} "
               "with dynamo=False)")
# Operator versions whose change over the previous one only added tensor types (bfloat16, float8, int4,
# strings): onnx2torch converts them as that previous version. op -> versions.
_SAME_SEMANTICS = {
    **{op: (22,) for op in ("Acos", "Asin", "Atan", "Conv", "ConvTranspose", "Cos", "Dropout", "Elu",
                            "EyeLike", "GlobalAveragePool", "HardSigmoid", "HardSwish",
                            "InstanceNormalization", "MaxPool", "Round", "Selu", "Sin", "Softplus",
                            "Softsign", "Tan")},
    **{op: (19, 21, 23, 24, 25) for op in ("Constant", "Identity", "Reshape", "Shape")},
    **{op: (21, 23, 24, 25) for op in ("Flatten", "Transpose", "Unsqueeze")},
    "Squeeze": (23, 24, 25), "ConstantOfShape": (20, 21, 23, 24, 25), "Cast": (19, 21),
    "Equal": (19,), "IsInf": (20,), "IsNaN": (20,),
    "Pad": (18, 19, 21, 23, 24, 25), "AveragePool": (19, 22),  # guarded below: no axes, wrap or dilation
}


# Operators whose output size is given by tensor data -> the inputs that give it (none: always data)
_DATA_SIZED = {
    "ConstantOfShape": (0,), "Expand": (1,), "Tile": (1,), "Range": (0, 1, 2), "Reshape": (1,),
    "Resize": (1, 2, 3), "Upsample": (1,), "Pad": (1, 3), "OneHot": (1,), "Slice": (1, 2, 3, 4),
    "TopK": (1,), "Split": (1,), "CenterCropPad": (1, 2), "Col2Im": (1, 2, 3), "Squeeze": (1,),
    "Unsqueeze": (1,), "Compress": (1,), "NonZero": (), "Unique": (), "NonMaxSuppression": (),
}


_REGISTERED = threading.Lock()


@functools.cache
def _register_converters() -> None:
    """Register in onnx2torch's registry (its extension point), once: the converters of
    ``_SAME_SEMANTICS``, and GlobalMaxPool of a 4-D tensor as ``nn.AdaptiveMaxPool2d(1)``."""
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription, add_converter
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node
    with _REGISTERED:
        for op, versions in _SAME_SEMANTICS.items():
            for version in versions:
                if OperationDescription("", op, version) in _CONVERTER_REGISTRY:
                    continue
                older = max(d.version for d in _CONVERTER_REGISTRY
                            if d.domain == "" and d.operation_type == op and d.version < version)
                add_converter(op, version)(_guarded(_CONVERTER_REGISTRY[OperationDescription("", op, older)]))

        def global_max_pool(node, graph):
            value = graph.value_info.get(node.input_values[0])
            if value is None or len(value.type.tensor_type.shape.dim) != 4:
                raise NotImplementedError("GlobalMaxPool of a tensor that is not 4-D")
            return OperationConverterResult(nn.AdaptiveMaxPool2d(1), onnx_mapping_from_node(node))

        for version in (1, 22):
            if OperationDescription("", "GlobalMaxPool", version) not in _CONVERTER_REGISTRY:
                add_converter("GlobalMaxPool", version)(global_max_pool)


def _guarded(convert):
    """A converter that refuses what later versions of Pad and AveragePool added (an axes input, wrap
    mode, dilations), so the older converter is only used where the meaning is the same."""
    def guarded(node, graph):
        attrs = node.attributes
        if node.operation_type == "Pad" and (len(node.input_values) > 3 and node.input_values[3]
                                             or attrs.get("mode", "constant") == "wrap"):
            raise NotImplementedError("Pad with an axes input or wrap mode")
        if node.operation_type == "AveragePool" and any(d != 1 for d in attrs.get("dilations", ())):
            raise NotImplementedError("AveragePool with dilations")
        return convert(node, graph)
    return guarded


def load_network(path: Path) -> nn.Module:
    """The network of an ONNX file as a PyTorch module taking (N, C, H, W) inputs of any batch size;
    a ModelError says why a file cannot be used (and how to fix it)."""
    import onnx2torch

    shown = _shown(path)
    model = _read(Path(path), shown)
    _check_contents(model, Path(path), shown)
    _check_operators(model, shown)
    import onnx
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - ValidationError and friends: the message is all a user needs
        raise ModelError(f"{shown} is not a valid ONNX model ({_first_line(e)}); export it again") from None
    batch = _standard_form(model, shown)
    try:
        net = onnx2torch.convert(model)
    except Exception as e:  # noqa: BLE001 - a converter that meets an attribute it does not support
        raise ModelError(f"{shown} could not be turned into a PyTorch module ({_first_line(e)}); export "
                         "it with torch.onnx.export(..., opset_version=17) or use a .pt2 file") from None
    _pooling_modules(net)
    _static_forms(net)
    _check_batch(net, model, batch, shown)
    return net.eval()


def file_card(path: Path) -> dict | None:
    """The model card an ONNX file carries in its ``metadata_props`` (``core.model_cards.FILE_CARDS``):
    the entries named like a card's keys (``num_classes``, ``mean``, ``std``, ``input_size``,
    ``in_channels``, ``class_names``, ``normalization``), each value JSON text (e.g. ``mean`` =
    ``"[0.485, 0.456, 0.406]"``), or None when there are none. ``core.model_cards`` checks the values."""
    from core.model_cards import CARD_KEYS, MAX_CARD_BYTES
    shown = _shown(path)
    found = {}
    for prop in _read(Path(path), shown).metadata_props:
        if prop.key in (*CARD_KEYS, "normalization"):
            if len(prop.value) > MAX_CARD_BYTES:
                raise ModelError(f"{shown}: its metadata entry {prop.key!r} is longer than a card may be")
            try:
                found[prop.key] = json.loads(prop.value)
            except (ValueError, RecursionError):  # RecursionError: 30,000 nested brackets fit the bound
                raise ModelError(f"{shown}: its metadata entry {prop.key!r} is not JSON (e.g. "
                                 "\"[0.5, 0.5, 0.5]\")") from None
    return found or None


# ---------------------------------------------------------------------------------------------
# Reading and checking: pure Python on the parsed message, before any native ONNX code sees it
# ---------------------------------------------------------------------------------------------
def _read(path: Path, shown: str):
    import onnx
    from google.protobuf.message import DecodeError
    max_bytes, _, _ = _limits()
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise _limit_error(shown, f"the file is {_size(size)}", "max_checkpoint_bytes", max_bytes)
            data = f.read()
    except OSError as e:
        raise ModelError(f"{shown} cannot be opened ({e.strerror or type(e).__name__})") from None
    if not data:
        raise ModelError(f"{shown} is empty (0 bytes): it was not saved completely; save or copy it again")
    try:
        model = onnx.ModelProto.FromString(data)  # a protobuf parse: no external data, no code
    except (DecodeError, RuntimeError, ValueError):
        raise ModelError(f"{shown} is not an ONNX model (it could not be parsed as one: truncated, damaged "
                         "or another format); use the file written by torch.onnx.export") from None
    if not model.HasField("graph") or not model.graph.node or not model.ir_version:
        raise ModelError(f"{shown} is not an ONNX model (it holds no graph); use the file written by "
                         "torch.onnx.export")
    return model


def _named(text: str) -> str:
    """A name from the file, shortened and quoted for a message."""
    return repr(text[:60])


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def _tensors(model):
    """Every TensorProto the graph holds: initializers and node attributes (Constant's value, ...)."""
    yield from model.graph.initializer
    for node in model.graph.node:
        for a in node.attribute:
            if a.type == _TENSOR_ATTRS[0]:
                yield a.t
            elif a.type == _TENSOR_ATTRS[1]:
                yield from a.tensors


def _check_contents(model, path: Path, shown: str) -> None:
    """Structure, external data and tensor sizes, from the message alone."""
    max_bytes, max_tensors, _ = _limits()
    graph = model.graph
    domains = {o.domain for o in model.opset_import} | {n.domain for n in graph.node}
    custom = sorted(d for d in domains if d not in STANDARD_DOMAINS)
    if custom or model.functions:
        names = [f"{_named(n.op_type)} (domain {_named(n.domain)})" for n in graph.node
                 if n.domain not in STANDARD_DOMAINS]
        raise ModelError(f"{shown} is refused: it uses operators outside the standard ONNX set "
                         f"({', '.join(sorted(set(names))[:12]) or ', '.join(map(_named, custom[:12]))}"
                         f"{'; local functions' if model.functions else ''}), which cannot be converted "
                         "safely; export the model with standard operators only (torch.onnx.export does)")
    flow = sorted({n.op_type for n in graph.node if any(a.type in _SUBGRAPHS for a in n.attribute)})
    if flow:
        raise ModelError(f"{shown} is refused: it holds control flow ({', '.join(map(_named, flow))}, "
                         "operators with subgraphs), which is not supported; export the model without "
                         "data-dependent branches or loops")
    if len(graph.node) > max_tensors:
        raise _limit_error(shown, f"its graph has {len(graph.node)} nodes", "max_checkpoint_tensors",
                           max_tensors, str)
    if len(graph.sparse_initializer) or any(a.type in _SPARSE_ATTRS for n in graph.node for a in n.attribute):
        raise ModelError(f"{shown} holds sparse tensors, which are not supported; export it with dense "
                         "weights")
    count = total = 0
    data = _DataFile(path, shown)
    try:
        for t in _tensors(model):
            count += 1
            if t.data_type not in _DTYPES:
                raise ModelError(f"{shown}: tensor {_named(t.name)} has data type {t.data_type}, which is "
                                 "not supported (numbers only: float, integer, bool); export the model in "
                                 "float32")
            if any(d < 0 for d in t.dims):
                raise ModelError(f"{shown} is damaged: tensor {_named(t.name)} has a negative dimension")
            values = math.prod(t.dims)
            nbytes = values * _DTYPES[t.data_type]
            total += nbytes
            if nbytes > max_bytes or total > max_bytes:
                raise _limit_error(shown, f"its tensors declare {_size(max(nbytes, total))}",
                                   "max_checkpoint_bytes", max_bytes)
            if t.data_location == 1 or len(t.external_data) or t.HasField("segment"):  # 1: EXTERNAL
                data.read_into(t, nbytes)
            # values are raw bytes, or one per element of a typed field (small types one per int32)
            held = (len(t.raw_data) if t.raw_data else
                    len(getattr(t, _TYPED_FIELDS.get(t.data_type, "int32_data"))) * _DTYPES[t.data_type])
            if held != nbytes:
                raise ModelError(f"{shown} is damaged: tensor {_named(t.name)} declares {values} values "
                                 f"({_size(nbytes)}) but holds {_size(held)}; export the model again")
    finally:
        data.close()
    if count > max_tensors:
        raise _limit_error(shown, f"it holds {count} tensors", "max_checkpoint_tensors", max_tensors, str)
    inputs = _inputs(graph)
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ModelError(f"{shown} has {len(inputs)} inputs and {len(graph.output)} outputs: the model must "
                         "take one batch of images and return one batch of logits; export it so")
    tensor = inputs[0].type.tensor_type
    dims = tensor.shape.dim
    if tensor.elem_type != 1 or len(dims) != 4:
        raise ModelError(f"{shown}: its input must be a float32 (N, C, H, W) image batch (it is "
                         f"{len(dims)}-D of data type {tensor.elem_type}); export the model in float32 with "
                         "an image input")
    side = settings().max_image_size
    if any(d.HasField("dim_value") and d.dim_value > side for d in dims[2:]) or \
            (dims[1].HasField("dim_value") and not 1 <= dims[1].dim_value <= 4):
        raise ModelError(f"{shown}: its input ({_dims(dims)}) must have 1 to 4 channels and sides of at most "
                         f"{side} pixels (max_image_size)")


class _DataFile:
    """The one external-data file a model may have: ``<model file name>.data`` beside it (what
    torch.onnx.export writes), a regular file, not a link. Any other location (another name, a folder,
    ``..``, an absolute path) is refused before it is opened, so a model can read no other file."""

    def __init__(self, path: Path, shown: str):
        self.path, self.shown, self.f = path.with_name(path.name + ".data"), shown, None

    def read_into(self, t, nbytes: int) -> None:
        """Replace ``t``'s external reference by its bytes (offset and length checked against the file)."""
        entries = {e.key: e.value for e in t.external_data}
        if t.HasField("segment") or entries.get("location") != self.path.name or set(entries) - {
                "location", "offset", "length", "checksum"}:
            raise ModelError(
                f"{self.shown} is refused: tensor {_named(t.name)} is stored in another file "
                f"({_named(entries.get('location', ''))}); a model may keep its weights only in "
                f"{_named(self.path.name)} beside it. Save the model as one file (torch.onnx.export(..., "
                "external_data=False), or onnx.save_model(model, path, save_as_external_data=False))")
        if self.f is None:
            try:  # O_NOFOLLOW: a link in its place is refused by the open itself (no check-then-open race)
                self.f = os.fdopen(os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW), "rb")
                if not stat.S_ISREG(os.fstat(self.f.fileno()).st_mode):
                    raise OSError(0, "it is not a regular file")
            except OSError as e:
                why = "it is a link" if e.errno == errno.ELOOP else e.strerror or type(e).__name__
                raise ModelError(f"{self.shown}: its weights file {_named(self.path.name)} cannot be read "
                                 f"({why}); keep it beside the model, or save "
                                 "the model as one file (torch.onnx.export(..., external_data=False))"
                                 ) from None
        try:
            offset, length = int(entries.get("offset", 0)), int(entries.get("length", nbytes))
        except ValueError:
            offset = length = -1
        size = os.fstat(self.f.fileno()).st_size
        if offset < 0 or length != nbytes or offset + length > size:
            raise ModelError(f"{self.shown} is damaged: tensor {_named(t.name)} does not fit its byte range "
                             f"in {_named(self.path.name)}; export the model again")
        self.f.seek(offset)
        t.raw_data = self.f.read(length)
        del t.external_data[:]
        t.data_location = 0

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


def _check_operators(model, shown: str) -> None:
    """Every node has a converter in onnx2torch for its version (its opset decides which)."""
    from onnx import defs
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription
    _register_converters()
    opset = max((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), default=0)
    missing = set()
    for node in model.graph.node:
        try:
            version = defs.get_schema(node.op_type, max_inclusive_version=opset, domain="").since_version
        except Exception:  # noqa: BLE001 - no such standard operator
            version = None
        if node.op_type == "ReduceMean" and version == 18:
            continue  # becomes GlobalAveragePool where it averages (H, W); otherwise conversion says so
        if version is None or OperationDescription("", node.op_type, version) not in _CONVERTER_REGISTRY:
            missing.add(node.op_type if version is None else f"{node.op_type}-{version}")
    if missing:
        raise ModelError(f"{shown} uses operators that cannot be converted to PyTorch: "
                         f"{', '.join(map(_named, sorted(missing)[:20]))}; export the model with "
                         "torch.onnx.export(..., opset_version=17) or use a .pt2 file (torch.export.save)")


def _inputs(graph) -> list:
    """The graph's real inputs (older files also list their initializers as inputs)."""
    initializers = {t.name for t in graph.initializer}
    return [i for i in graph.input if i.name not in initializers]


def _dims(dims) -> str:
    return "×".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)


# ---------------------------------------------------------------------------------------------
# Normal forms (in the ONNX graph, exact)
# ---------------------------------------------------------------------------------------------
def _standard_form(model, shown: str) -> int | None:
    """Rewrite ``model`` in place (see the module notes); returns the input's former fixed batch size."""
    from onnx import numpy_helper
    graph = model.graph
    for o in model.opset_import:
        if o.domain == "ai.onnx":
            o.domain = ""
    for n in graph.node:
        n.domain = ""
    _constants_to_initializers(graph)
    _fold_constants(model)
    dim0 = _inputs(graph)[0].type.tensor_type.shape.dim[0]
    batch = dim0.dim_value if dim0.HasField("dim_value") else None
    dim0.dim_param = "batch"
    for out in graph.output:  # the exporter's fixed batch here too; its shapes inside are found again
        dims = out.type.tensor_type.shape.dim
        if dims and batch is not None and dims[0].dim_value == batch:
            dims[0].dim_param = "batch"
    del graph.value_info[:]
    info = _shapes(_infer(model, shown))
    consts = {t.name: t for t in graph.initializer}
    new_nodes, removed = [], set()
    users: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    for n in graph.node:
        if id(n) in removed:
            continue
        if n.op_type == "ReduceMean" and (axes := _axes(n, consts)) is not None:
            rank = len(info.get(n.input[0], ()))
            if rank == 4 and sorted(a % 4 for a in axes) == [2, 3]:
                keep = next((a.i for a in n.attribute if a.name == "keepdims"), 1)
                if keep:
                    new_nodes.append(_like(n, "GlobalAveragePool", [n.input[0]], list(n.output)))
                else:
                    mid = n.output[0] + "_pooled"
                    new_nodes += [_like(n, "GlobalAveragePool", [n.input[0]], [mid]),
                                  _like(n, "Flatten", [mid], list(n.output), axis=1)]
                continue
        if n.op_type == "Reshape":
            for a in list(n.attribute):
                if a.name == "allowzero":
                    n.attribute.remove(a)
            shape = consts.get(n.input[1]) if len(n.input) > 1 else None
            dims = info.get(n.input[0])
            if shape is not None and dims and dims[0] == "batch":
                values = [int(v) for v in numpy_helper.to_array(shape).reshape(-1)]
                if values and values[0] == batch:
                    values[0] = 0  # "copy the input's dimension": keeps the batch, whatever its size
                rest = dims[1:]
                if (len(values) == 2 and all(isinstance(d, int) for d in rest) and
                        (values[0] == 0 and values[1] in (-1, math.prod(rest))
                         or values[0] == -1 and values[1] == math.prod(rest))):
                    new_nodes.append(_like(n, "Flatten", [n.input[0]], list(n.output), axis=1))
                    continue
                if values[:1] == [0]:  # a shape of its own: the constant may be shared
                    name = f"{n.input[1]}_{n.name}"
                    graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), name))
                    n.input[1] = name
        if n.op_type == "MatMul" and n.input[1] in consts and len(consts[n.input[1]].dims) == 2 \
                and len(info.get(n.input[0], ())) == 2:
            inputs, output = [n.input[0], n.input[1]], n.output[0]
            add = users.get(output, [])
            if (len(add) == 1 and add[0].op_type == "Add" and output not in {o.name for o in graph.output}):
                other = [i for i in add[0].input if i != output]
                bias = consts.get(other[0]) if len(other) == 1 else None
                width = consts[n.input[1]].dims[1]
                if bias is not None and list(bias.dims) in ([width], [1, width]):
                    if len(bias.dims) == 2:  # Gemm's bias as nn.Linear takes it: one row
                        flat = numpy_helper.from_array(numpy_helper.to_array(bias).reshape(-1),
                                                       f"{bias.name}_row")
                        graph.initializer.append(flat)
                        bias = flat
                    inputs.append(bias.name)
                    output = add[0].output[0]
                    removed.add(id(add[0]))
            new_nodes.append(_like(n, "Gemm", inputs, [output]))
            continue
        new_nodes.append(n)
    del graph.node[:]
    graph.node.extend(new_nodes)
    _rename(graph)
    del graph.value_info[:]
    model.CopyFrom(_infer(model, shown))
    return batch


def _like(node, op: str, inputs: list, outputs: list, **attrs):
    """A node of type ``op`` in ``node``'s place: its scope (name, exporter metadata), the op's own name."""
    from onnx import helper
    parts = node.name.rsplit("/", 1)
    parts[-1] = parts[-1].replace(node.op_type, op) if node.op_type in parts[-1] else f"{parts[-1]}_{op}"
    new = helper.make_node(op, inputs, outputs, name="/".join(parts), **attrs)
    new.metadata_props.extend(node.metadata_props)
    return new


def _constants_to_initializers(graph) -> None:
    """Constant nodes holding a tensor or numbers, and Identity nodes of a constant (the legacy exporter
    shares equal biases so), become initializers: what onnx2torch's converters look for."""
    from onnx import helper
    kept, consts = [], {t.name: t for t in graph.initializer}
    for n in graph.node:
        attr = n.attribute[0] if n.op_type == "Constant" and len(n.attribute) == 1 else None
        if n.op_type == "Identity" and n.input[0] in consts:
            t = type(consts[n.input[0]])()
            t.CopyFrom(consts[n.input[0]])
        elif attr is not None and attr.name == "value":
            t = type(attr.t)()
            t.CopyFrom(attr.t)
        elif attr is not None and attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
            value = helper.get_attribute_value(attr)
            many = attr.name.endswith("s")
            t = helper.make_tensor("", 1 if "float" in attr.name else 7, [len(value)] if many else [],
                                   value if many else [value])
        else:
            kept.append(n)
            continue
        t.name = n.output[0]
        graph.initializer.append(t)
        consts[t.name] = t
    del graph.node[:]
    graph.node.extend(kept)


# Small computations on constants that exporters leave in the graph (the legacy exporter's F.pad pads:
# ConstantOfShape, Concat, Reshape, Slice, Transpose, Cast), folded so sizes they give are constants.
_FOLDED = {"Cast", "Concat", "ConstantOfShape", "Flatten", "Identity", "Neg", "Reshape", "Slice",
           "Squeeze", "Transpose", "Unsqueeze", "Add", "Sub", "Mul", "Div"}
_FOLD_VALUES = 1024


def _fold_constants(model) -> None:
    """Nodes of ``_FOLDED`` whose inputs are all small initializers (at most ``_FOLD_VALUES`` values,
    and so their output: checked before it is computed) become initializers, computed by ONNX's
    reference implementation of that one operator."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator
    graph = model.graph
    opset = max((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), default=17)
    kept, consts = [], {t.name: t for t in graph.initializer}
    for n in graph.node:
        inputs = [consts.get(i) for i in n.input]
        if (n.op_type not in _FOLDED or not inputs or None in inputs or len(n.output) != 1
                or any(math.prod(t.dims) > _FOLD_VALUES for t in inputs)):
            kept.append(n)
            continue
        values = [numpy_helper.to_array(t) for t in inputs]
        if n.op_type == "ConstantOfShape":
            size = math.prod(int(v) for v in values[0].reshape(-1))
        elif n.op_type in ("Add", "Sub", "Mul", "Div"):
            try:
                size = math.prod(np.broadcast_shapes(*(v.shape for v in values)))
            except ValueError:
                size = _FOLD_VALUES + 1  # not broadcastable: left to the checker and inference
        else:  # the same values, fewer, or (Concat) their sum
            size = sum(v.size for v in values)
        if not 0 <= size <= _FOLD_VALUES:
            kept.append(n)
            continue
        one = helper.make_graph([n], "fold", [], [helper.make_tensor_value_info(n.output[0], 0, None)],
                                initializer=inputs)
        try:
            out = ReferenceEvaluator(helper.make_model(one, opset_imports=[helper.make_opsetid("", opset)]))
            result = np.asarray(out.run(None, {})[0])
        except Exception:  # noqa: BLE001 - left in the graph: the checks and conversion say what is wrong
            kept.append(n)
            continue
        if result.size > _FOLD_VALUES or result.dtype.kind not in "biuf":
            kept.append(n)
            continue
        t = numpy_helper.from_array(result, n.output[0])
        graph.initializer.append(t)
        consts[t.name] = t
    del graph.node[:]
    graph.node.extend(kept)


def _axes(node, consts) -> list[int] | None:
    """A ReduceMean's axes when constant (an attribute before opset 18, an input since)."""
    from onnx import numpy_helper
    for a in node.attribute:
        if a.name == "axes":
            return list(a.ints)
    if len(node.input) > 1 and node.input[1] in consts:
        return [int(v) for v in numpy_helper.to_array(consts[node.input[1]]).reshape(-1)]
    return None


def _infer(model, shown: str):
    """ONNX shape inference (native code, on a graph already checked), and the size of every tensor it
    finds for one image bounded by ``max_checkpoint_bytes``.

    Sizes decided by data are refused, since no bound before running could see them (e.g.
    ``ConstantOfShape(Cast(ReduceMax(x) * 1e8))``). Where the input's sides are fixed (the usual
    export), the graph is inferred once more for one image (batch 1): every value's shape must then be
    numbers, and those exact sizes are bounded. Where the sides are symbolic, an operator whose output
    size is given by tensor data (``_DATA_SIZED``) needs constant size inputs (initializers, after
    folding) or an output shape inference finds (numbers, or the input's own dimensions)."""
    from onnx import shape_inference
    max_bytes, _, _ = _limits()
    for out in model.graph.output:  # found by inference, never taken from the file: a declared shape
        out.type.tensor_type.ClearField("shape")  # would stand in for the dimensions it cannot find

    def infer(m):
        try:
            return shape_inference.infer_shapes(m, strict_mode=True, data_prop=True)
        except Exception as e:  # noqa: BLE001 - InferenceError: inconsistent shapes or types
            raise ModelError(f"{shown} is not a consistent ONNX model ({_first_line(e)}); export it again"
                             ) from None

    dims = _inputs(model.graph)[0].type.tensor_type.shape.dim
    symbols = {d.dim_param for d in dims if not d.HasField("dim_value")}
    if all(d.HasField("dim_value") for d in dims[1:]):
        one = _without_weights(model)
        name = _inputs(model.graph)[0].name
        one_dims = next(i for i in one.graph.input if i.name == name).type.tensor_type.shape.dim
        one_dims[0].Clear()
        one_dims[0].dim_value = 1
        checked = infer(one)
        _check_static_sizes(checked, shown, set(), None)
    else:
        checked = None
    model = infer(model)
    if checked is None:
        _check_static_sizes(model, shown, symbols, _DATA_SIZED)
    for name, shape in _shapes(model if checked is None else checked).items():
        values = math.prod(d if isinstance(d, int) else 1 for d in shape)
        if values * 4 > max_bytes:
            raise _limit_error(shown, f"its value {_named(name)} would take {_size(values * 4)} for one "
                               "image", "max_checkpoint_bytes", max_bytes)
    return model


def _without_weights(model):
    """A copy of ``model`` for shape inference alone: tensors of more than ``_FOLD_VALUES`` values become
    typed graph inputs (their values decide no shape that inference could find), so the weights are not
    copied."""
    from onnx import helper
    one = type(model)()
    one.ir_version = model.ir_version
    one.opset_import.extend(model.opset_import)
    g, graph = one.graph, model.graph
    g.name = graph.name
    g.node.extend(graph.node)
    g.input.extend(graph.input)
    g.output.extend(graph.output)
    listed = {i.name for i in graph.input}
    for t in graph.initializer:
        if math.prod(t.dims) <= _FOLD_VALUES:
            g.initializer.append(t)
        elif t.name not in listed:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return one


def _check_static_sizes(model, shown: str, known: set, ops: dict | None) -> None:
    """Every output of the nodes of types ``ops`` (all nodes: None) has a shape inference found: numbers
    or ``known`` symbols, unless the node's size inputs (``ops[type]``) are all constants."""
    consts = {t.name for t in model.graph.initializer}
    shapes = _shapes(model)
    for n in model.graph.node:
        sized = () if ops is None else ops.get(n.op_type)
        if sized is None or sized and all(i in consts for k, i in enumerate(n.input) if k in sized and i):
            continue  # not sized by data, or by constants only: the shape is found, and bounded
        for out in n.output:
            dims = shapes.get(out) if out else ()
            if dims is None or any(not isinstance(d, int) and d not in known for d in dims):
                shape = "unknown" if dims is None else "×".join("?" if d is None else str(d) for d in dims)
                raise ModelError(
                    f"{shown} is refused: its node {_named(n.name or n.op_type)} ({_named(n.op_type)}) "
                    f"computes a tensor size from data (its output {_named(out)} has shape {shape}), which "
                    "cannot be bounded before it runs; export the model with static sizes (constant shapes: "
                    "torch.onnx.export with fixed image sides, no size computed from tensor values)")


def _shapes(model) -> dict[str, tuple]:
    """Each typed value's shape: ints where known, the symbol (e.g. "batch") or None elsewhere."""
    g = model.graph
    return {v.name: tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                          for d in v.type.tensor_type.shape.dim)
            for v in (*g.value_info, *g.input, *g.output) if v.type.tensor_type.HasField("shape")}


def _rename(graph) -> None:
    """Readable, unique module names (letters, digits, "_") for every node, from the exporter's scopes:
    legacy ``/layer4/layer4.1/relu_1/Relu`` -> ``layer4_1_relu_1``; dynamo's ``name_scopes`` metadata
    ['', 'stages', 'stages.2', 'stages.2.0', 'relu_6'] -> ``stages_2_0_relu``."""
    import json
    taken, names = {"initializers"}, []
    for n in graph.node:
        meta = {p.key: p.value for p in n.metadata_props}
        try:
            scopes = json.loads(meta["pkg.torch.onnx.name_scopes"].replace("'", '"'))[:-1] + [n.op_type]
        except (KeyError, ValueError, TypeError, AttributeError):
            scopes = n.name.split("/")
        path = ""
        for s in (str(s) for s in scopes if s):
            path = s if not path or s.startswith(path + ".") else f"{path}.{s}"
        base = re.sub(r"[^0-9a-z]+", "_", path.lower()).strip("_")[:80] or n.op_type.lower() or "node"
        if base[0].isdigit():
            base = "n_" + base
        name, k = base, 2
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        names.append(name)
    for n, name in zip(graph.node, names, strict=True):
        n.name = name


# ---------------------------------------------------------------------------------------------
# The converted module
# ---------------------------------------------------------------------------------------------
def _pooling_modules(net: nn.Module) -> None:
    """onnx2torch's GlobalAveragePool of a 4-D tensor -> nn.AdaptiveAvgPool2d(1) (the same mean, and a
    module discover_layers knows as pooling)."""
    from onnx2torch.node_converters.global_average_pool import OnnxGlobalAveragePoolWithKnownInputShape
    for name, module in list(net.named_children()):
        if isinstance(module, OnnxGlobalAveragePoolWithKnownInputShape) and module._x_dims == [2, 3]:
            setattr(net, name, nn.AdaptiveAvgPool2d(1))


def _static_forms(net) -> None:
    """Exact rewrites of the converted ``torch.fx`` graph, so torch.fx can trace it again (the bf16 maps'
    difference propagation does) and its forward does less:

    - a node whose inputs are all constants is computed once, here, and becomes a constant (the legacy
      exporter computes ``F.pad``'s pads from constants in the graph);
    - Slice with constant starts/ends/axes/steps (non-negative axes, positive steps) -> ``x[slices]``
      (onnx2torch indexes with a list, which torch deprecates);
    - Pad in constant mode with constant pads and value 0 -> ``F.pad(x, pads)``.
    """
    import operator

    import torch.nn.functional as F
    from onnx2torch.node_converters.pad import OnnxPadDynamic, _onnx_padding_to_torch
    from onnx2torch.node_converters.slice import OnnxSlice
    graph, modules = net.graph, dict(net.named_modules())
    if not hasattr(net, "initializers"):  # GraphModule keeps only what its graph uses
        net.add_module("initializers", nn.Module())
    initializers = net.get_submodule("initializers")
    values: dict = {}  # constant node -> its value
    folded = 0
    for node in list(graph.nodes):
        if node.op == "get_attr":
            values[node] = net.get_buffer(node.target)
            continue
        if node.op not in ("call_module", "call_function") or not node.all_input_nodes:
            continue
        module = modules.get(node.target) if node.op == "call_module" else None
        rest = [values.get(a) if isinstance(a, torch.fx.Node) else a for a in node.args[1:]]
        index = _slice_index(rest) if isinstance(module, OnnxSlice) else None
        if all(a in values for a in node.all_input_nodes):
            args = torch.fx.node.map_arg(node.args, values.get)
            kwargs = torch.fx.node.map_arg(node.kwargs, values.get)
            with torch.no_grad(), warnings.catch_warnings():
                # onnx2torch's reversed slices (a legacy export's pads) index with a list, which torch
                # deprecates; what it computes here is checked with the logits (tests, _check_batch)
                warnings.simplefilter("ignore", UserWarning)
                out = args[0][index] if index is not None else (module or node.target)(*args, **kwargs)
            if not isinstance(out, torch.Tensor):
                continue
            name = f"folded_{folded}"
            folded += 1
            initializers.register_buffer(name, out)
            with graph.inserting_before(node):
                const = graph.get_attr(f"initializers.{name}")
            node.replace_all_uses_with(const)
            graph.erase_node(node)
            values[const] = out
            continue
        if index is not None:
            with graph.inserting_before(node):
                sliced = graph.call_function(operator.getitem, (node.args[0], index))
            node.replace_all_uses_with(sliced)
        elif (isinstance(module, OnnxPadDynamic) and module.mode == "constant" and not node.kwargs
              and rest and isinstance(rest[0], torch.Tensor) and all(v is None or isinstance(v, torch.Tensor)
                                                             and not v.any() for v in rest[1:])):
            pads = _onnx_padding_to_torch([int(v) for v in rest[0].tolist()])
            with graph.inserting_before(node):
                padded = graph.call_function(F.pad, (node.args[0], pads))
            node.replace_all_uses_with(padded)
        else:
            continue
        graph.erase_node(node)
    graph.eliminate_dead_code()
    used = {n.target for n in graph.nodes if n.op == "get_attr"}
    for name, _ in list(initializers.named_buffers()):
        if f"initializers.{name}" not in used:
            delattr(initializers, name)  # folded away: free its memory
    net.delete_all_unused_submodules()
    net.recompile()


def _slice_index(rest: list) -> tuple | None:
    """The index ``x[...]`` of an ONNX Slice whose starts, ends (, axes, steps) are the constants
    ``rest``; None where that is not plain slicing (negative axes or steps: left to onnx2torch)."""
    if not rest or not all(isinstance(v, torch.Tensor) for v in rest):
        return None
    starts, ends, *more = ([int(x) for x in v.reshape(-1).tolist()] for v in rest)
    axes = more[0] if more else list(range(len(starts)))
    steps = more[1] if len(more) > 1 else [1] * len(starts)
    if not axes or min(axes) < 0 or min(steps) < 1 or len(set(axes)) != len(axes):
        return None
    index = [slice(None)] * (max(axes) + 1)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        index[axis] = slice(start, end, step)
    return tuple(index)


def _check_batch(net: nn.Module, model, batch: int | None, shown: str) -> None:
    """Where the input's size is fixed: the first image of a batch of 2 gets the logits it gets alone
    (two forwards: a constant left at the export's batch size fails one of them or mixes the images)."""
    dims = _shapes(model)[_inputs(model.graph)[0].name]
    if not all(isinstance(d, int) for d in dims[1:]):
        return  # sides left dynamic by the exporter: the first real forward shows what works
    x = torch.rand((2, *dims[1:]), generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            together, alone = net.eval()(x), net(x[:1])
        ok = (isinstance(together, torch.Tensor) and isinstance(alone, torch.Tensor)
              and together.shape[0] == 2 and together.shape[1:] == alone.shape[1:] and alone.shape[0] == 1
              and torch.allclose(together[:1], alone, rtol=1e-4, atol=1e-4 * float(alone.abs().max())))
    except Exception:  # noqa: BLE001 - a shape fixed at export time fails on another batch size
        ok = False
    if not ok:
        fixed = f"fixed at export to batches of {batch}" if batch else "not independent of the batch size"
        raise ModelError(f"{shown} does not run on other batch sizes (its graph is {fixed}); {_EXPORT_FIX}")
