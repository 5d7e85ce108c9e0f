"""``torch.export`` programs (``.pt2``, written by ``torch.export.save``) read into an ``nn.Module`` without
running code from the file.

``torch.export.load`` is never called on a user's file: it can unpickle (weights and constants saved with
``use_pickle``, opaque and custom objects, sample inputs), resolve any ``torch.*``/``math.*``/``_operator.*``
attribute named in the file as a call target (``torch.hub.load``, ``torch.save``), and parse symbolic-shape
strings with sympy (whose ``sympify`` can evaluate). This reader instead:

1. reads the file into memory once (so the checks and the parse see the same bytes) and checks the zip
   against the server's limits (``core.hosting.settings()``) before anything is inflated: entry count,
   total uncompressed size, the size of each JSON part, encrypted or odd compression, inflation ratio;
2. parses the program's JSON (``models/<name>.json``, schema ``torch/_export/serde/schema.py``) and the
   weights/constants payload configs with :mod:`json` and its own validation; tensors come only from raw
   records (``use_pickle``, custom/opaque objects and legacy ``.pt`` weight files are refused), each
   dtype/shape/stride/offset checked against its record's size. ``data/sample_inputs`` (a pickle) is never
   read;
3. builds a ``torch.fx.GraphModule`` itself. A node's target must be ``torch.ops.aten.<op>.<overload>``
   with ``<op>`` in :data:`ALLOWED_OPS` (an allow-list of pure tensor operations a CNN uses; no file,
   device, random or allocation-by-size operator such as ``aten.from_file``, ``aten.empty`` or
   ``aten.full``); anything else (``torch.save``, ``builtins.exec``, a stand-alone ``_operator.getitem``:
   the reader makes the getitem nodes of multi-output operators itself) is refused by name. ``out=``
   overloads are refused, in-place operators may only write to activations, never to the weights, and
   dropout must be in eval mode. Symbolic sizes are supported for the batch dimension only (``sym_size``
   nodes and ``as_sym_int`` arguments naming graph values); expression strings are only matched against
   the plain-symbol form, never parsed or evaluated. Operators on weights alone (a transposed weight) are
   computed once while loading: first on the meta device, their results' shapes and dtypes compared with
   the records (and their total with ``max_checkpoint_bytes``) before they are computed; pad amounts
   (of images or weights) are at most ``max_image_size``, as are the input's sides (1 to 4 channels);
4. expresses the graph with real modules, named after the original module path in each node's
   ``nn_module_stack`` (``layer4.1.relu`` -> ``layer4_1_relu``), so hooks see every tensor:
   ``conv2d``/``convolution`` -> ``nn.Conv2d``; ``linear``, ``addmm(b, x, t(W))`` (or ``permute(W, [1,
   0])``) and ``x @ W`` with a weight ``W`` -> ``nn.Linear``;
   eval batch norm -> ``nn.BatchNorm1d/2d``, ``relu`` -> ``nn.ReLU``, ``hardtanh(0, 6)`` -> ``nn.ReLU6``,
   adaptive/avg/max pooling and a spatial ``mean(keepdim)`` -> the ``nn`` pooling modules, ``flatten`` ->
   ``nn.Flatten``, ``dropout`` -> ``nn.Dropout``; every other operator becomes an :class:`AtenOp` leaf
   module (a residual ``add`` too), so ``core.models.discover_layers`` finds the analysed layer and head;
5. runs the module once on a batch size other than the exported one, on fake tensors first (nothing is
   allocated) and then for real, and checks every activation's shape
   against the one the file records (which must fit ``max_checkpoint_bytes``): the graph computes what
   the file says, and a program exported with a fixed batch size runs on other batch sizes (batch-size
   literals in ``view``/``reshape`` become the input's batch size) or is refused with the fix
   (``dynamic_shapes={"x": {0: torch.export.Dim("batch")}}``).

The network takes the file's own input (normalized as in training); ``core.models.ExplainedModel`` adds the
normalization of ``[model] mean/std``. See docs/security.md "Model files: torch.export programs (.pt2)".
"""
from __future__ import annotations

import io
import json
import keyword
import math
import operator
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode

from core.hosting import settings
from core.models import (
    _INFLATION_FREE,
    _MAX_INFLATION,
    _ZIP_EXTRA_ENTRIES,
    ModelError,
    _limit_error,
    _limits,
    _shown,
    _size,
)

# aten operators a program may call (any overload but ``out``): pure tensor functions of CNNs. Not here,
# so refused: file and device I/O (from_file, save, to/_to_copy to devices), random numbers, allocation by
# literal sizes (empty, zeros, full, arange, new_*, expand, repeat), indexing writes, and everything else.
ALLOWED_OPS = frozenset("""
    conv2d convolution linear addmm mm matmul bmm t
    batch_norm _native_batch_norm_legit_no_training layer_norm native_layer_norm group_norm
    native_group_norm
    relu relu_ relu6 hardtanh hardtanh_ gelu silu silu_ sigmoid sigmoid_ tanh tanh_ hardswish hardswish_
    hardsigmoid hardsigmoid_ leaky_relu leaky_relu_ elu elu_ softplus mish mish_ prelu _prelu_kernel
    exp log sqrt rsqrt neg abs clamp clamp_ clamp_min clamp_max pow reciprocal erf
    add add_ sub sub_ rsub mul mul_ div div_ maximum minimum
    mean sum amax logsumexp softmax _softmax log_softmax _log_softmax
    adaptive_avg_pool2d _adaptive_avg_pool2d adaptive_max_pool2d avg_pool2d max_pool2d
    max_pool2d_with_indices
    view reshape _unsafe_view flatten permute transpose contiguous clone alias detach unsqueeze squeeze
    slice select narrow cat stack chunk split split_with_sizes unbind pad constant_pad_nd
    dropout feature_dropout sym_size
""".split())
_PADS = {"pad", "constant_pad_nd"}     # their literal ints allocate: bounded by max_image_size
_MAX_NODES = 50_000                    # operators in one program (ResNet20: 77)
_JSON_PER_PICKLE = 8                   # a JSON part may take 8 × max_checkpoint_pickle_bytes (32 MiB)
_TARGET = re.compile(r"torch\.ops\.aten\.([A-Za-z_]\w*)\.([A-Za-z_]\w*)")
# A plain sympy symbol as torch writes it ("Symbol('s77', positive=True, integer=True)", older: "s77");
# anything else (an expression) is refused, never parsed.
_SYMBOL = re.compile(r"(?:Symbol\('([A-Za-z_]\w{0,30})'(?:, *[a-z_]+=(?:True|False))*\)|([A-Za-z_]\w{0,30}))")
_DTYPES = {1: torch.uint8, 2: torch.int8, 3: torch.int16, 4: torch.int32, 5: torch.int64, 6: torch.float16,
           7: torch.float32, 8: torch.float64, 12: torch.bool, 13: torch.bfloat16}
_FIX_BATCH = ('export it with a dynamic batch dimension: torch.export.export(model, (x,), '
              'dynamic_shapes={"x": {0: torch.export.Dim("batch")}}), then torch.export.save')


class AtenOp(nn.Module):
    """One aten operator of the program as a leaf module, so hooks see the tensor it produces.

    ``args``/``kwargs`` are templates: :class:`_In` (the i-th forward input, an activation or a size),
    :class:`_Const` (a weight or constant of the file, held as a buffer), lists, or literals.
    """

    def __init__(self, op: torch._ops.OpOverload, args: list, kwargs: dict, constants: dict):
        super().__init__()
        self.op, self.args, self.kwargs = op, args, kwargs
        for name, tensor in constants.items():
            self.register_buffer(name, tensor)

    def _fill(self, a, inputs):
        if isinstance(a, _In):
            return inputs[a.index]
        if isinstance(a, _Const):
            return getattr(self, a.name)
        if isinstance(a, list):
            return [self._fill(b, inputs) for b in a]
        return a

    def forward(self, *inputs):
        return self.op(*[self._fill(a, inputs) for a in self.args],
                       **{k: self._fill(v, inputs) for k, v in self.kwargs.items()})

    def extra_repr(self) -> str:
        return str(self.op)

    # An OpOverload cannot be pickled (a model sent to a worker process): it travels as its name, resolved
    # again through the allow-list.
    def __getstate__(self):
        return {**self.__dict__, "op": str(self.op)}

    def __setstate__(self, state):
        _, packet, overload = state["op"].split(".")
        op = _operator_of(packet, overload)
        if op is None:
            raise ModelError(f"operator {state['op'][:80]!r} is not among the allowed aten operators")
        super().__setstate__({**state, "op": op})


def _operator_of(packet: str, overload: str) -> torch._ops.OpOverload | None:
    """``torch.ops.aten.<packet>.<overload>`` if allowed (see ALLOWED_OPS), else None."""
    if packet not in ALLOWED_OPS or overload == "out" or overload.endswith("_out"):
        return None
    try:
        return getattr(getattr(torch.ops.aten, packet), overload)
    except (AttributeError, RuntimeError):
        return None


@dataclass(frozen=True)
class _In:
    index: int


@dataclass(frozen=True)
class _Const:
    name: str


@dataclass(frozen=True)
class _Ref:
    """A value of the program named in the file (a tensor or a symbolic size)."""
    name: str


def load_network(path: Path) -> nn.Module:
    """The network of a ``torch.export.save`` archive as an ``fx.GraphModule`` of real modules (see the
    module notes); a :class:`ModelError` for anything this reader does not run or the limits refuse."""
    shown = _shown(path)
    max_bytes, _max_tensors, _ = _limits()
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes + (64 << 20):  # the records plus the JSON parts and the zip's own bytes
                raise _limit_error(shown, f"the file is {_size(size)}", "max_checkpoint_bytes", max_bytes)
            data = f.read(size + 1)
    except OSError as e:
        raise ModelError(f"model file {shown} cannot be read ({e.strerror or type(e).__name__})") from None
    return _Program(data, shown).network()


def _not_pt2(shown: str, why: str) -> ModelError:
    return ModelError(f"model file {shown} could not be read: it is not a torch.export program ({why}); "
                      "use the file written by torch.export.save(torch.export.export(model, (x,)), ...)")


class _Program:
    def __init__(self, data: bytes, shown: str):
        self.shown = shown
        self.zip, self.infos = _open_zip(data, shown)
        self.prefix, self.model = self._layout()
        self.program = self._json(f"models/{self.model}.json")
        self.tensors: dict[str, torch.Tensor] = {}  # graph input name -> weight, buffer or constant
        self.kind: dict[str, str] = {}               # graph input name -> "param" | "buffer" | "constant"
        self.modules: dict[str, nn.Module] = {}
        self.names: set[str] = set()
        self.folded = 0                              # bytes computed from weights alone while loading

    # -- the archive ------------------------------------------------------------------------------
    def _layout(self) -> tuple[str, str]:
        names = [i.filename for i in self.infos]
        if not names or "/" not in names[0]:
            raise _not_pt2(self.shown, "its zip entries are not under one archive folder")
        prefix = names[0].split("/", 1)[0] + "/"
        if any(not n.startswith(prefix) for n in names):
            raise _not_pt2(self.shown, "its zip entries are not under one archive folder")
        rel = {n[len(prefix):] for n in names}
        if "archive_format" not in rel or self._read(prefix + "archive_format", 64).strip() != b"pt2":
            if "constants.pkl" in rel or any(n.startswith("code/") for n in rel):
                raise ModelError(f"refused to load {self.shown}: it is a TorchScript archive "
                                 "(torch.jit.save), which holds code; export the model with "
                                 "torch.export.export and save it with torch.export.save")
            if "data.pkl" in rel:
                raise ModelError(f"model file {self.shown} is a weights checkpoint (torch.save), which does "
                                 "not carry its architecture: name it .pt and set [model] arch, or export "
                                 "the model with torch.export.export and save that with torch.export.save")
            raise _not_pt2(self.shown, "its archive_format entry does not say pt2" if "archive_format" in rel
                           else "it lacks the archive_format entry torch.export.save writes; the file may be "
                           "truncated")
        if "byteorder" in rel and self._read(prefix + "byteorder", 64).strip() != b"little":
            raise _not_pt2(self.shown, "its tensors are stored big-endian")
        models = sorted(n[len("models/"):-len(".json")] for n in rel
                        if n.startswith("models/") and n.endswith(".json") and n.count("/") == 1)
        if len(models) != 1:
            raise ModelError(f"model file {self.shown} holds {len(models)} programs "
                             f"({', '.join(models[:5])}); save exactly one with torch.export.save")
        model = models[0]
        for legacy in (f"data/weights/{model}.pt", f"data/constants/{model}.pt"):
            if legacy in rel:
                raise ModelError(f"refused to load {self.shown}: its weights are a pickle ({legacy}, torch's "
                                 "legacy .pt2 layout), which could run code; save it again with a current "
                                 "torch.export.save")
        return prefix, model

    def _read(self, name: str, limit: int) -> bytes:
        info = self.zip.getinfo(name)
        if info.file_size > limit:
            raise _limit_error(self.shown, f"its entry {name[len(getattr(self, 'prefix', '')):]!r} takes "
                               f"{_size(info.file_size)}", "max_checkpoint_pickle_bytes", limit)
        try:
            return self.zip.read(info)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
            raise _not_pt2(self.shown, f"entry {name!r} is damaged: {type(e).__name__}") from None

    def _json(self, rel: str):
        name = self.prefix + rel
        try:
            self.zip.getinfo(name)
        except KeyError:
            raise _not_pt2(self.shown, f"it has no {rel}") from None
        limit = _JSON_PER_PICKLE * _limits()[2]
        try:
            return json.loads(self._read(name, limit).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise _not_pt2(self.shown, f"{rel} is not valid JSON") from None

    # -- weights and constants --------------------------------------------------------------------
    def _payloads(self, kind: str) -> dict:
        rel = f"data/{kind}/{self.model}_{kind}_config.json"
        if self.prefix + rel not in self.zip.NameToInfo:
            return {}
        cfg = self._json(rel)
        config = cfg.get("config") if isinstance(cfg, dict) else None
        if not isinstance(config, dict):
            raise _not_pt2(self.shown, f"{rel} has no config table")
        if len(config) > _limits()[1]:
            raise _limit_error(self.shown, f"it holds {len(config)} {kind}", "max_checkpoint_tensors",
                               _limits()[1], str)
        return config

    def _load_tensors(self) -> dict[str, torch.Tensor]:
        """fqn -> tensor of the weights and tensor constants, from raw records only."""
        out: dict[str, torch.Tensor] = {}
        storages: dict[str, torch.Tensor] = {}
        for kind in ("weights", "constants"):
            for fqn, meta in self._payloads(kind).items():
                what = f"{kind[:-1]} {str(fqn)[:80]!r}"
                if not isinstance(meta, dict) or not isinstance(meta.get("path_name"), str):
                    raise _not_pt2(self.shown, f"the entry of {what} has no path_name")
                path_name = meta["path_name"]
                if meta.get("use_pickle") is not False or not path_name.startswith(
                        "weight_" if kind == "weights" else "tensor_"):
                    raise ModelError(
                        f"refused to load {self.shown}: {what} is stored as a Python object "
                        f"({path_name[:40]!r}: a pickle, custom or opaque object), which could run code, and "
                        "only plain tensors are loaded for safety; export a model whose weights are plain "
                        "torch.Tensor values (no tensor subclasses or script objects)")
                record = f"{self.prefix}data/{kind}/{path_name}"
                if record not in self.zip.NameToInfo or "/" in path_name:
                    raise _not_pt2(self.shown, f"the record of {what} is missing")
                dtype, sizes, strides, offset = _tensor_meta(meta.get("tensor_meta"), what, self.shown)
                if path_name not in storages:
                    raw = bytearray(self._read(record, _limits()[0]))
                    if len(raw) % dtype.itemsize:
                        raise _not_pt2(self.shown, f"the record of {what} is not a whole number of "
                                                   f"{dtype} values")
                    storages[path_name] = (torch.frombuffer(raw, dtype=dtype) if raw
                                           else torch.empty(0, dtype=dtype))
                storage = storages[path_name]
                if storage.dtype != dtype:
                    raise _not_pt2(self.shown, f"{what} shares a record with a tensor of another dtype")
                numel = math.prod(sizes)
                end = offset + sum((s - 1) * st for s, st in zip(sizes, strides, strict=True)) if numel else 0
                if numel and end >= storage.numel():
                    raise _not_pt2(self.shown, f"{what} {tuple(sizes)} does not fit its record of "
                                               f"{_size(storage.numel() * dtype.itemsize)}: the file is "
                                               "damaged")
                out[fqn] = (torch.as_strided(storage, sizes, strides, offset) if numel
                            else torch.zeros(sizes, dtype=dtype))
        return out

    # -- the graph --------------------------------------------------------------------------------
    def network(self) -> fx.GraphModule:
        program = self.program
        try:
            gm = program["graph_module"]
            graph, signature = gm["graph"], gm["signature"]
            nodes, inputs, outputs = graph["nodes"], graph["inputs"], graph["outputs"]
            specs, out_specs = signature["input_specs"], signature["output_specs"]
            values = graph["tensor_values"]
            sym_values = graph.get("sym_int_values") or {}
        except (KeyError, TypeError):
            raise _not_pt2(self.shown, "its program has no graph and signature") from None
        if not all(isinstance(x, list) for x in (nodes, inputs, outputs, specs, out_specs)) \
                or not isinstance(values, dict) or not isinstance(sym_values, dict):
            raise _not_pt2(self.shown, "its graph is malformed")
        if len(nodes) > _MAX_NODES:
            raise ModelError(f"model file {self.shown} is refused: its program has {len(nodes)} operators, "
                             f"more than the {_MAX_NODES} this reader runs")
        if graph.get("custom_obj_values") or any(_only(s, self.shown)[0] in ("custom_obj", "token")
                                                 for s in specs):
            raise ModelError(f"refused to load {self.shown}: its program uses script objects or effect "
                             "tokens, which could run code; export a plain CNN")
        tensors = self._load_tensors()
        user = None
        for spec in specs:
            kind, body = _only(spec, self.shown)
            arg = body.get("arg") if isinstance(body, dict) else None
            name = arg.get("name") if isinstance(arg, dict) and isinstance(arg.get("name"), str) \
                else _arg_name(arg)  # parameters etc. name a TensorArgument, inputs an Argument
            if kind == "user_input":
                if user is not None or name is None:
                    raise ModelError(f"model file {self.shown}: the program takes several inputs; the app "
                                     "gives it one batch of images (export model(x) with one tensor x)")
                user = name
            elif kind in ("parameter", "buffer", "tensor_constant"):
                fqn = body.get({"parameter": "parameter_name", "buffer": "buffer_name",
                                "tensor_constant": "tensor_constant_name"}[kind])
                if name is None or fqn not in tensors:
                    raise _not_pt2(self.shown, f"its {kind} {str(fqn)[:80]!r} has no tensor in the file")
                self.tensors[name], self.kind[name] = tensors[fqn], kind
            else:
                raise ModelError(f"model file {self.shown}: the program takes a {kind} input; export "
                                 "model(x) with one tensor x")
        if user is None:
            raise ModelError(f"model file {self.shown}: the program takes no input tensor")
        if len(out_specs) != 1 or _only(out_specs[0], self.shown)[0] != "user_output" or len(outputs) != 1:
            raise ModelError(f"model file {self.shown}: the program must return one tensor of logits and "
                             "change no buffers (export the model in eval mode: model.eval())")
        result = _arg_name(outputs[0])
        self.values, self.sym_values, self.user = values, sym_values, user
        self.batch_symbol, self.batch = self._batch(user)
        return self._build(user, nodes, result)

    def _batch(self, user: str) -> tuple[str | None, int]:
        """(the batch size's symbol or None when fixed, the batch size the program was exported with)."""
        meta = self.values.get(user)
        sizes = meta.get("sizes") if isinstance(meta, dict) else None
        if not isinstance(sizes, list) or len(sizes) != 4 or _DTYPES.get(meta.get("dtype")) != torch.float32:
            raise ModelError(f"model file {self.shown}: the program's input is not a float32 (N, C, H, W) "
                             "image batch; export it with such an example input")
        dims = [_sym(s, self.shown) for s in sizes]
        if any(isinstance(d, str) for d in dims[1:]):
            raise ModelError(f"model file {self.shown}: the program's image size is dynamic; only the batch "
                             "may be: export with dynamic_shapes={\"x\": {0: torch.export.Dim(\"batch\")}}")
        side = settings().max_image_size
        if not 1 <= dims[1] <= 4 or not all(1 <= d <= side for d in dims[2:]):
            raise ModelError(f"model file {self.shown}: its input ({' x '.join(map(str, dims[1:]))}) must "
                             f"have 1 to 4 channels and sides of at most {side} pixels (max_image_size)")
        if isinstance(dims[0], str):
            hint = _hint(sizes[0])
            return dims[0], hint if hint and hint > 0 else 2
        return None, dims[0]

    def _name(self, node: dict, op: str, single: bool) -> str:
        """A flat, unique module name after the node's nn_module_stack (``layer4.1.relu`` ->
        ``layer4_1_relu``); the operator's name is added unless the node is its module's only one."""
        stack = (node.get("metadata") or {}).get("nn_module_stack")
        path = ""
        if isinstance(stack, str):
            parts = [p.split(",") for p in stack.split(";")]
            if parts and len(parts[-1]) >= 2 and not parts[-1][0].startswith("_empty"):
                path = parts[-1][1]
        base = re.sub(r"[^0-9A-Za-z_]+", "_", path).strip("_")[:80]
        if not single or not base:
            base = f"{base}_{op}".strip("_")
        if base[0].isdigit() or keyword.iskeyword(base) or hasattr(fx.GraphModule, base):
            base = "m_" + base  # "0", "class", "forward": not a usable attribute name
        name, k = base, 1
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        return name

    def _build(self, user: str, nodes: list, result: str | None) -> fx.GraphModule:
        g = fx.Graph()
        env: dict[str, fx.Node] = {user: g.placeholder("x")}
        depends = {user, "__batch__"}  # values that depend on the input (activations, batch sizes)
        parsed = [self._parse(n) for n in nodes]
        producers = {o: p for p in parsed for o in p.outputs if o}
        per_path: dict[str, int] = {}  # operators on the images per module path (weights-only ones fold)
        live = set(depends)
        for p in parsed:
            if any(r in live for r in _refs(p.args) + _refs(list(p.kwargs.values()))):
                live.update(o for o in p.outputs if o)
                per_path[p.path] = per_path.get(p.path, 0) + 1
        self.used = {r for p in parsed for r in _refs(p.args) + _refs(list(p.kwargs.values()))} | {result}
        self._linear_via_addmm(parsed, producers)
        for p in parsed:
            dyn = [r for r in dict.fromkeys(_refs(p.args) + _refs(list(p.kwargs.values()))) if r in depends]
            for r in _refs(p.args) + _refs(list(p.kwargs.values())):
                if r not in depends and r not in self.tensors:
                    raise _not_pt2(self.shown, f"operator {p.name!r} uses {r[:60]!r} before it is computed")
            if p.mutates and any(isinstance(a, _Ref) and a.name in self.tensors for a in p.mutated):
                raise ModelError(f"refused to load {self.shown}: operator {p.op} writes into the model's "
                                 "weights; export the model in eval mode without in-place updates of its "
                                 "parameters or buffers")
            if not dyn and p.packet != "sym_size":
                self._fold(p)
                continue
            if p.packet == "sym_size":
                fx_node = g.call_function(torch.ops.aten.sym_size.int, tuple(env[r] for r in dyn)
                                          + tuple(a for a in p.args[1:]))
            else:
                if self.batch_symbol is None:
                    self._batch_literals(p, env, g, user)
                    dyn = [r for r in dict.fromkeys(_refs(p.args)) if r in depends]
                module = self._module(p, dyn, producers)
                name = self._name(p.raw, p.packet.strip("_"), per_path[p.path] == 1)
                self.modules[name] = module
                fx_node = g.call_module(name, tuple(env[r] for r in dyn))
            if not dyn:
                raise ModelError(f"model file {self.shown}: operator {p.name!r} reads the size of a "
                                 "weight; this reader runs only operators on the images")
            named = [o for o in p.outputs if o]
            if len(p.outputs) == 1:
                env[named[0]] = fx_node
                fx_node.meta["nve_sizes"] = self._expected(named[0])
            else:
                for i, o in enumerate(p.outputs):
                    if o:
                        env[o] = g.call_function(operator.getitem, (fx_node, i))
                        env[o].meta["nve_sizes"] = self._expected(o)
            depends.update(named)
        if result not in env:
            raise ModelError(f"model file {self.shown}: the program's output is not computed from its input")
        g.output(env[result])
        _drop_dead(g)
        root = nn.Module()
        for name, m in self.modules.items():
            if any(n.op == "call_module" and n.target == name for n in g.nodes):
                root.add_module(name, m)
        net = fx.GraphModule(root, g, "ExportedProgram")
        return _verify(net.eval(), self)

    # -- nodes -----------------------------------------------------------------------------------
    def _parse(self, node) -> _Node:
        if not isinstance(node, dict) or not isinstance(node.get("target"), str):
            raise _not_pt2(self.shown, "a node of its graph has no target")
        target = node["target"]
        if target == "_operator.getitem":
            raise ModelError(f"model file {self.shown}: a stand-alone getitem node is not supported; save "
                             "the program again with torch.export.save")
        m = _TARGET.fullmatch(target)
        op = _operator_of(m.group(1), m.group(2)) if m else None
        if op is None:
            raise ModelError(
                f"refused to load {self.shown}: its program calls {target[:100]!r}, which this reader does "
                "not run (only pure aten tensor operators of CNNs are allowed, see "
                f"core.exported_programs.ALLOWED_OPS, in this torch {torch.__version__}); export a model "
                "built from standard layers")
        schema = op._schema
        given = {}
        for item in node.get("inputs") or []:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise _not_pt2(self.shown, f"an input of {target[:80]} is malformed")
            given[item["name"]] = self._value(item.get("arg"), target)
        args, kwargs, positional = [], {}, True
        for a in schema.arguments:
            if a.name not in given:
                positional = False
                continue
            if positional and not a.kwarg_only:
                args.append(given.pop(a.name))
            else:
                kwargs[a.name] = given.pop(a.name)
        if given:
            raise _not_pt2(self.shown, f"{target[:80]} is given arguments it does not take: "
                                       f"{', '.join(list(given)[:5])}")
        mutated = [v for a, v in zip(schema.arguments, args, strict=False)
                   if a.alias_info is not None and a.alias_info.is_write]
        outs = node.get("outputs") or []
        names = []
        for o in outs:
            kind, body = _only(o, self.shown)
            if kind == "as_tensor":
                names.append(body.get("name"))
            elif kind == "as_sym_int":
                names.append(_sym_name(body, self.shown))
            elif kind == "as_tensors":
                names.extend(b.get("name") for b in body)
            elif kind == "as_none":
                names.append(None)
            else:
                raise ModelError(f"model file {self.shown}: operator {target[:80]} returns {kind}, which "
                                 "this reader does not support")
        meta = node.get("metadata") or {}
        stack = meta.get("nn_module_stack") if isinstance(meta, dict) else None
        path = stack.rsplit(";", 1)[-1] if isinstance(stack, str) else ""
        return _Node(node, op, m.group(1), target, str(node.get("name") or target), args, kwargs, names,
                     schema.is_mutable, mutated, path)

    def _value(self, arg, target: str):
        kind, body = _only(arg, self.shown)
        if kind in ("as_none",):
            return None
        if kind == "as_tensor":
            return _Ref(_arg_name({"as_tensor": body}))
        if kind == "as_tensors":
            return [_Ref(_arg_name({"as_tensor": b})) for b in body]
        if kind == "as_optional_tensors":
            return [None if _only(b, self.shown)[0] == "as_none" else _Ref(_arg_name(b)) for b in body]
        if kind == "as_float" and body in ("Infinity", "-Infinity", "NaN"):  # how torch writes them
            return float(body.replace("inity", ""))
        if kind in ("as_int", "as_float", "as_bool", "as_string"):
            ok = {"as_int": int, "as_float": (int, float), "as_bool": bool, "as_string": str}[kind]
            if not isinstance(body, ok) or (kind == "as_string" and len(body) > 64):
                raise _not_pt2(self.shown, f"an argument of {target[:80]} is malformed")
            return body
        if kind in ("as_ints", "as_floats", "as_bools"):
            ok = {"as_ints": int, "as_floats": (int, float), "as_bools": bool}[kind]
            if not isinstance(body, list) or len(body) > 64 or not all(isinstance(v, ok) for v in body):
                raise _not_pt2(self.shown, f"an argument of {target[:80]} is malformed")
            return list(body)
        if kind == "as_sym_int":
            return self._sym_arg(body)
        if kind == "as_sym_ints":
            if not isinstance(body, list) or len(body) > 64:
                raise _not_pt2(self.shown, f"an argument of {target[:80]} is malformed")
            return [self._sym_arg(b) for b in body]
        if kind == "as_scalar_type" and body in _DTYPES:
            return _DTYPES[body]
        if kind == "as_memory_format" and body in (1, 2, 4):
            return {1: torch.contiguous_format, 2: torch.channels_last, 4: torch.preserve_format}[body]
        raise ModelError(f"refused to load {self.shown}: an argument of {target[:80]} is a {kind[3:]}, which "
                         "this reader does not take; export a model built from standard layers")

    def _sym_arg(self, body):
        kind, value = _only(body, self.shown)
        if kind == "as_int" and isinstance(value, int):
            return value
        if kind == "as_name" and isinstance(value, str):
            return _Ref(value)
        raise _not_pt2(self.shown, "a symbolic size argument is malformed")

    def _linear_via_addmm(self, parsed: list, producers: dict) -> None:
        """Marks the ``addmm(b, x, t(W))`` heads (each becomes one nn.Linear holding W)."""
        for p in parsed:
            if p.packet == "addmm" and len(p.args) == 3 and not p.kwargs and isinstance(p.args[2], _Ref):
                t = producers.get(p.args[2].name)
                transposed = t is not None and (t.packet == "t" or (t.packet == "permute" and len(t.args) == 2
                                                                    and list(t.args[1]) == [1, 0]))
                if transposed and isinstance(t.args[0], _Ref) \
                        and t.args[0].name in self.tensors and isinstance(p.args[0], _Ref) \
                        and p.args[0].name in self.tensors:
                    p.linear_weight = t.args[0].name

    def _batch_literals(self, p: _Node, env: dict, g: fx.Graph, user: str) -> None:
        """In a fixed-batch program, a view/reshape to the exported batch size means the input's: the
        literal becomes a size read from the input (so other batch sizes run)."""
        if p.packet in ("view", "reshape", "_unsafe_view") and len(p.args) >= 2 \
                and isinstance(p.args[1], list) and p.args[1] and p.args[1][0] == self.batch:
            src = self._expected(p.args[0].name) if isinstance(p.args[0], _Ref) else None
            if src and src[0] == "batch":
                if "__batch__" not in env:
                    with g.inserting_after(env[user]):
                        env["__batch__"] = g.call_function(torch.ops.aten.sym_size.int, (env[user], 0))
                p.args[1] = [_Ref("__batch__"), *p.args[1][1:]]

    def _expected(self, name: str) -> list | None:
        """The recorded sizes of a value: ints, and "batch" where the size is the batch."""
        meta = self.values.get(name)
        if not isinstance(meta, dict) or not isinstance(meta.get("sizes"), list):
            return None
        sizes = []
        for s in meta["sizes"]:
            d = _sym(s, self.shown)
            if isinstance(d, str):
                if d != self.batch_symbol:
                    raise ModelError(f"model file {self.shown}: value {name[:60]!r} has the symbolic size "
                                     f"{d!r}; only the batch may be dynamic ({_FIX_BATCH})")
                d = "batch"
            elif self.batch_symbol is None and not sizes and d == self.batch:
                d = "batch"
            sizes.append(d)
        numel = math.prod(self.batch if d == "batch" else d for d in sizes)
        dtype = _DTYPES.get(meta.get("dtype"), torch.float64)
        if numel * dtype.itemsize > _limits()[0]:
            raise _limit_error(self.shown, f"its value {name[:60]!r} takes {_size(numel * dtype.itemsize)}",
                               "max_checkpoint_bytes", _limits()[0])
        return sizes

    def _module(self, p: _Node, dyn: list, producers: dict) -> nn.Module:
        """The nn module for one operator (see the module notes), else an AtenOp."""
        a, kw, packet = p.args, p.kwargs, p.packet
        const = self._const

        def arg(i, default=None):
            return a[i] if len(a) > i else default

        if packet in ("dropout", "feature_dropout") and (arg(2) is not False or kw):
            raise ModelError(f"model file {self.shown}: its dropout {p.name!r} runs in training mode; export "
                             "the model in eval mode (model.eval())")
        single_input = len(dyn) == 1 and isinstance(arg(0), _Ref) and arg(0).name == dyn[0]
        self._check_pads(p)
        if single_input and not kw:
            if packet in ("conv2d", "convolution") and const(arg(1), 4) is not None \
                    and (arg(2) is None or const(arg(2), 1) is not None) \
                    and not (packet == "convolution" and (arg(6) or any(arg(7) or []))):
                w = const(arg(1), 4)
                groups = arg(8 if packet == "convolution" else 6, 1)
                pair = (lambda v, d: tuple(v) * (2 if len(v) == 1 else 1) if isinstance(v, list) and v
                        else v if isinstance(v, str) else (d, d))
                conv = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), pair(arg(3), 1),
                                 pair(arg(4), 0), pair(arg(5), 1), groups, bias=arg(2) is not None,
                                 device="meta")
                conv.weight = nn.Parameter(w, requires_grad=False)
                if arg(2) is not None:
                    conv.bias = nn.Parameter(const(arg(2), 1), requires_grad=False)
                return conv
            if packet == "linear" and const(arg(1), 2) is not None \
                    and (arg(2) is None or const(arg(2), 1) is not None):
                return self._linear(const(arg(1), 2), const(arg(2), 1) if arg(2) is not None else None)
            if packet in ("batch_norm", "_native_batch_norm_legit_no_training"):
                train_at = 5 if packet == "batch_norm" else None
                if train_at is not None and arg(train_at) is not False:
                    raise ModelError(f"model file {self.shown}: its batch norm {p.name!r} runs in training "
                                     "mode; export the model in eval mode (model.eval())")
                eps = arg(7 if packet == "batch_norm" else 6, 1e-5)
                bn = self._batch_norm(arg(1), arg(2), arg(3), arg(4), eps, p)
                if bn is not None and (len(p.outputs) == 1 or not self._extra_used(p)):
                    p.outputs = p.outputs[:1]
                    return bn
            if packet in ("relu", "relu_"):
                return nn.ReLU(inplace=packet == "relu_")
            if packet == "hardtanh" and arg(1, -1.0) == 0 and arg(2, 1.0) == 6:
                return nn.ReLU6()
            if packet in ("adaptive_avg_pool2d", "_adaptive_avg_pool2d") and self._dims(arg(0)) == 4:
                return nn.AdaptiveAvgPool2d(tuple(arg(1)))
            if packet == "adaptive_max_pool2d" and not self._extra_used(p) and self._dims(arg(0)) == 4:
                p.outputs = p.outputs[:1]
                return nn.AdaptiveMaxPool2d(tuple(arg(1)))
            if packet == "avg_pool2d" and self._dims(arg(0)) == 4:
                return nn.AvgPool2d(tuple(arg(1)), tuple(arg(2)) or None, tuple(arg(3, [0])),
                                    arg(4, False), arg(5, True), arg(6))
            if packet in ("max_pool2d", "max_pool2d_with_indices") and not self._extra_used(p) \
                    and self._dims(arg(0)) == 4:
                p.outputs = p.outputs[:1]
                return nn.MaxPool2d(tuple(arg(1)), tuple(arg(2, [])) or None, tuple(arg(3, [0])),
                                    tuple(arg(4, [1])), ceil_mode=arg(5, False))
            if packet == "mean" and arg(2) is True and self._dims(arg(0)) == 4 \
                    and sorted(d % 4 for d in arg(1) or []) == [2, 3]:
                return nn.AdaptiveAvgPool2d(1)
            if packet == "flatten":
                return nn.Flatten(arg(1, 0), arg(2, -1))
            if packet in ("dropout", "feature_dropout"):
                return nn.Dropout(arg(1, 0.5))

        if packet in ("mm", "matmul") and not kw and len(a) == 2 and isinstance(arg(0), _Ref) \
                and dyn == [arg(0).name] and self._dims(arg(0)) == 2 and const(arg(1), 2) is not None:
            return self._linear(const(arg(1), 2).t(), None)  # x @ W.T, a head without bias
        if packet == "addmm" and getattr(p, "linear_weight", None) and isinstance(arg(1), _Ref) \
                and dyn == [arg(1).name] and kw.get("beta", 1) == 1 and kw.get("alpha", 1) == 1:
            return self._linear(self.tensors[p.linear_weight], const(arg(0), 1))
        return self._aten(p, dyn)

    def _extra_used(self, p: _Node) -> bool:
        """Whether anything reads an operator's outputs after its first (batch norm's statistics, max
        pooling's indices)."""
        return any(o in self.used for o in p.outputs[1:] if o)

    def _check_pads(self, p: _Node) -> None:
        """A pad's literal amounts allocate: each is bounded by max_image_size (on images and weights)."""
        if p.packet in _PADS:
            limit = settings().max_image_size
            pads = (p.args[1] if len(p.args) > 1 else p.kwargs.get("pad")) or []
            if not isinstance(pads, list) or any(not isinstance(v, int) or abs(v) > limit for v in pads):
                raise ModelError(f"model file {self.shown}: operator {p.name!r} pads by more than "
                                 f"{limit} pixels (max_image_size); the file is damaged or hostile")

    def _fold(self, p: _Node) -> None:
        """An operator on weights alone (a transposed or standardized weight) computed once, here: its
        results become constants. It runs first on the meta device (no memory): each result's shape and
        dtype must equal the file's record, which must fit the limits, and all folded results together
        must fit ``max_checkpoint_bytes``; only then is it computed."""
        self._check_pads(p)
        named = [o for o in p.outputs if o]
        for o in named:
            if self._expected(o) is None:
                raise _not_pt2(self.shown, f"the size of {o[:60]!r} is not recorded")
        try:
            with torch.no_grad():
                shapes = self._aten(p, [], meta=True).forward()
        except Exception as e:  # noqa: BLE001 - any failure of the file's graph is the file's fault
            raise ModelError(f"model file {self.shown}: its operator {p.name!r} on weights fails "
                             f"({type(e).__name__}: {str(e)[:160]}); the file is damaged") from None
        self._check_folded(p, shapes, meta=True)
        with torch.no_grad():
            value = self._aten(p, []).forward()
        self._check_folded(p, value, meta=False)
        values = [value] if len(p.outputs) == 1 else list(value)
        for o, v in zip(p.outputs, values, strict=True):
            if o:
                self.tensors[o] = v

    def _check_folded(self, p: _Node, value, meta: bool) -> None:
        """The results of an operator on weights (on the meta device, then real) are what the file
        records; the meta ones are counted against ``max_checkpoint_bytes``."""
        values = [value] if len(p.outputs) == 1 else list(value) if isinstance(value, tuple | list) else []
        if len(values) != len(p.outputs):
            raise _not_pt2(self.shown, f"operator {p.name!r} on weights returns {len(values)} values, the "
                                       f"file records {len(p.outputs)}")
        total = 0
        for o, v in zip(p.outputs, values, strict=True):
            if not o:
                continue
            if not isinstance(v, torch.Tensor):
                raise _not_pt2(self.shown, f"operator {p.name!r} on weights returns no tensor")
            want = tuple(self.batch if d == "batch" else d for d in self._expected(o))
            dtype = _DTYPES.get(self.values[o].get("dtype"))
            if tuple(v.shape) != want or v.dtype != dtype:
                got = f"{tuple(v.shape)} {str(v.dtype).removeprefix('torch.')}"
                raise ModelError(f"model file {self.shown}: its program does not compute what it records "
                                 f"({p.name}: {got}, the file records {want} "
                                 f"{str(dtype).removeprefix('torch.')}); the file is damaged")
            total += v.numel() * v.element_size()
        if meta:  # counted once, before computing
            self.folded += total
            max_bytes = _limits()[0]
            if self.folded > max_bytes:
                raise _limit_error(self.shown, f"its operators on weights compute {_size(self.folded)}",
                                   "max_checkpoint_bytes", max_bytes)

    def _const(self, ref, dims: int) -> torch.Tensor | None:
        t = self.tensors.get(ref.name) if isinstance(ref, _Ref) else None
        return t if t is not None and t.dim() == dims and t.is_floating_point() else None

    def _dims(self, ref) -> int | None:
        sizes = self._expected(ref.name) if isinstance(ref, _Ref) else None
        return len(sizes) if sizes is not None else None

    def _linear(self, w: torch.Tensor, b: torch.Tensor | None) -> nn.Linear:
        lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
        lin.weight = nn.Parameter(w, requires_grad=False)
        if b is not None:
            lin.bias = nn.Parameter(b, requires_grad=False)
        return lin

    def _batch_norm(self, weight, bias, mean, var, eps, p) -> nn.Module | None:
        mean, var = self._const(mean, 1), self._const(var, 1)
        w = self._const(weight, 1) if weight is not None else None
        b = self._const(bias, 1) if bias is not None else None
        dims = self._dims(p.args[0])
        if mean is None or var is None or (weight is None) != (bias is None) or (weight is not None and (
                w is None or b is None)) or dims not in (2, 3, 4) or not isinstance(eps, int | float):
            return None
        cls = nn.BatchNorm2d if dims == 4 else nn.BatchNorm1d
        bn = cls(mean.shape[0], eps=float(eps), affine=w is not None, device="meta")
        if w is not None:
            bn.weight, bn.bias = nn.Parameter(w, requires_grad=False), nn.Parameter(b, requires_grad=False)
        bn.running_mean, bn.running_var = mean, var
        bn.num_batches_tracked = torch.tensor(0)
        return bn

    def _aten(self, p: _Node, dyn: list, meta: bool = False) -> AtenOp:
        """The operator as an AtenOp; ``meta``: its constants on the meta device (shapes only)."""
        constants: dict[str, torch.Tensor] = {}

        def template(v):
            if isinstance(v, _Ref):
                if v.name in dyn:
                    return _In(dyn.index(v.name))
                key = f"c{len(constants)}"
                constants[key] = self.tensors[v.name].to("meta") if meta else self.tensors[v.name]
                return _Const(key)
            if isinstance(v, list):
                return [template(b) for b in v]
            return v
        args = [template(v) for v in p.args]
        return AtenOp(p.op, args, {k: template(v) for k, v in p.kwargs.items()}, constants)


@dataclass(eq=False)
class _Node:
    raw: dict
    op: torch._ops.OpOverload
    packet: str
    target: str
    name: str
    args: list
    kwargs: dict
    outputs: list
    mutates: bool
    mutated: list
    path: str
    linear_weight: str | None = None


def _refs(values) -> list[str]:
    out = []
    for v in values:
        if isinstance(v, _Ref):
            out.append(v.name)
        elif isinstance(v, list):
            out.extend(_refs(v))
    return out


def _only(union, shown: str) -> tuple[str, object]:
    """The one (kind, value) of a serialized union ({"as_tensor": {...}})."""
    if not isinstance(union, dict) or len(union) != 1:
        raise _not_pt2(shown, "a value of its graph is malformed")
    return next(iter(union.items()))


def _arg_name(arg) -> str | None:
    if isinstance(arg, dict) and isinstance(arg.get("as_tensor"), dict) \
            and isinstance(arg["as_tensor"].get("name"), str):
        return arg["as_tensor"]["name"]
    return None


def _sym_name(body, shown: str) -> str:
    if isinstance(body, dict) and isinstance(body.get("as_name"), str):
        return body["as_name"]
    raise _not_pt2(shown, "a symbolic size output is malformed")


def _sym(size, shown: str) -> int | str:
    """A recorded size: an int, or the name of the plain symbol it is (an expression is refused)."""
    kind, body = _only(size, shown)
    if kind == "as_int" and isinstance(body, int) and body >= 0:
        return body
    if kind == "as_expr" and isinstance(body, dict) and isinstance(body.get("expr_str"), str):
        m = _SYMBOL.fullmatch(body["expr_str"])
        if m:
            return m.group(1) or m.group(2)
        raise ModelError(f"model file {shown}: the program records the symbolic size "
                         f"{body['expr_str'][:60]!r}, which this reader does not evaluate; only the batch "
                         f"may be dynamic ({_FIX_BATCH})")
    raise _not_pt2(shown, "a recorded size is malformed")


def _hint(size) -> int | None:
    body = size.get("as_expr") if isinstance(size, dict) else None
    hint = body.get("hint") if isinstance(body, dict) else None
    value = hint.get("as_int") if isinstance(hint, dict) else None
    return value if isinstance(value, int) and 0 < value <= 1024 else None


def _tensor_meta(meta, what: str, shown: str) -> tuple[torch.dtype, list, list, int]:
    if not isinstance(meta, dict) or meta.get("dtype") not in _DTYPES or meta.get("layout") != 7:
        raise ModelError(f"model file {shown}: {what} is not a dense tensor of a supported dtype "
                         f"({', '.join(str(d).removeprefix('torch.') for d in _DTYPES.values())})")
    try:
        sizes = [_sym(s, shown) for s in meta["sizes"]]
        strides = [_sym(s, shown) for s in meta["strides"]]
        offset = _sym(meta["storage_offset"], shown)
    except (KeyError, TypeError):
        raise _not_pt2(shown, f"the sizes of {what} are malformed") from None
    if not all(isinstance(v, int) for v in [*sizes, *strides, offset]) or len(sizes) != len(strides) \
            or len(sizes) > 8:
        raise _not_pt2(shown, f"the sizes of {what} are malformed")
    return _DTYPES[meta["dtype"]], sizes, strides, offset


def _open_zip(data: bytes, shown: str) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    """The archive's zip directory, checked against the limits before any entry is inflated."""
    max_bytes, max_tensors, _ = _limits()
    max_entries = 2 * max_tensors + _ZIP_EXTRA_ENTRIES
    if not data:
        raise ModelError(f"model file {shown} is empty (0 bytes): it was not saved completely; save it again")
    if not data.startswith(b"PK\x03\x04"):
        text = all(32 <= b < 127 or b in b"\t\r\n" for b in data[:8])
        raise _not_pt2(shown, "it is text" if text else "it is not a zip archive")
    f = io.BytesIO(data)
    try:
        end = zipfile._EndRecData(f)
    except OSError:
        end = None
    # The end record must end the file: a truncated archive can still hold the end record of a zip stored
    # inside it (torch.export.save stores sample inputs as a torch.save zip), and zipfile would read that.
    if end is None or end[zipfile._ECD_LOCATION] + zipfile.sizeEndCentDir + len(end[zipfile._ECD_COMMENT]) \
            != len(data):
        raise _not_pt2(shown, "a zip archive without its end record: the file is truncated or damaged")
    if end[zipfile._ECD_ENTRIES_TOTAL] > max_entries:
        raise _limit_error(shown, f"its zip archive lists {end[zipfile._ECD_ENTRIES_TOTAL]} entries",
                           "max_checkpoint_tensors", max_tensors, str)
    try:
        z = zipfile.ZipFile(f)
        infos = z.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        raise _not_pt2(shown, "a damaged zip archive: the file is truncated") from None
    total = sum(i.file_size for i in infos)
    if total > max_bytes:
        raise _limit_error(shown, f"its contents take {_size(total)} once decompressed",
                           "max_checkpoint_bytes", max_bytes)
    for i in infos:
        if i.flag_bits & 0x1:
            raise _not_pt2(shown, f"entry {i.filename[:80]!r} is encrypted")
        if i.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _not_pt2(shown, f"entry {i.filename[:80]!r} uses zip compression method {i.compress_type}")
    packed = [i for i in infos if i.compress_type == zipfile.ZIP_DEFLATED]
    inflated, stored = sum(i.file_size for i in packed), sum(i.compress_size for i in packed)
    if inflated > _INFLATION_FREE and inflated > _MAX_INFLATION * stored:
        raise ModelError(f"model file {shown} is refused: its compressed entries inflate from "
                         f"{_size(stored)} to {_size(inflated)} ({inflated / max(stored, 1):.0f}×), "
                         "a decompression bomb; save it again with torch.export.save, which does not "
                         "compress")
    return z, infos


def _drop_dead(g: fx.Graph) -> None:
    """Remove nodes whose values nothing reads (e.g. the ``t(W)`` an ``nn.Linear`` replaced); operators that
    write in place are kept."""
    for node in reversed(list(g.nodes)):
        if node.op in ("call_module", "call_function") and not node.users:
            g.erase_node(node)


class _ShapeCheck(fx.Interpreter):
    def __init__(self, net: fx.GraphModule, batch: int):
        super().__init__(net)
        self.batch, self.bad = batch, None

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        want = n.meta.get("nve_sizes")
        if n.op in ("call_module", "call_function") and isinstance(out, torch.Tensor) and self.bad is None:
            expected = None if want is None else tuple(self.batch if d == "batch" else d for d in want)
            if tuple(out.shape) != expected:
                self.bad = f"{n.target}: shape {tuple(out.shape)}, the file records {expected or 'none'}"
                raise _Mismatch
        return out


class _Mismatch(Exception):
    pass


def _verify(net: fx.GraphModule, program: _Program) -> fx.GraphModule:
    """Run once at a batch size other than the exported one and compare each activation's shape with the
    file's record (see the module notes): first on fake tensors, which allocate nothing (so an activation
    larger than its record is refused before it exists), then for real."""
    shape = program._expected(program.user)
    batch = 1 if program.batch != 1 else 2
    with FakeTensorMode(allow_non_fake_inputs=True):
        _run_checked(net, program, torch.empty((batch, *shape[1:])), batch)
    _run_checked(net, program, torch.rand((batch, *shape[1:]), generator=torch.Generator().manual_seed(0)),
                 batch)
    return net


def _run_checked(net: fx.GraphModule, program: _Program, x: torch.Tensor, batch: int) -> None:
    check = _ShapeCheck(net, batch)
    try:
        with torch.no_grad():
            out = check.run(x)
    except _Mismatch:
        out = None
    except Exception as e:  # noqa: BLE001 - any failure of the file's graph is the file's fault
        if program.batch_symbol is None:
            raise ModelError(f"model file {program.shown} was exported for batches of exactly "
                             f"{program.batch} image(s) and fails on {batch} ({type(e).__name__}); "
                             f"{_FIX_BATCH}") from None
        raise ModelError(f"model file {program.shown}: its program fails on a batch of {batch} "
                         f"({type(e).__name__}: {str(e)[:160]})") from None
    if out is None or not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != batch:
        if program.batch_symbol is None:
            raise ModelError(f"model file {program.shown} was exported for batches of exactly "
                             f"{program.batch} image(s) and computes other shapes for {batch} ({check.bad}); "
                             f"{_FIX_BATCH}")
        raise ModelError(f"model file {program.shown}: its program does not compute what it records "
                         f"({check.bad or 'its output is no (batch, classes) tensor'}); the file is damaged")

