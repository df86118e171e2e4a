"""Reading and validating ONNX models, and pinning them to one opset.

Everything downstream sees models at ``PINNED_OPSET`` so the passes need to
know one version of each op's attributes (Clip bounds as inputs, Reshape's
allowzero, BatchNormalization without training outputs, ...).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

import numpy as np
import onnx
import onnx.reference
import onnx.version_converter
from onnx import external_data_helper
from google.protobuf.message import DecodeError

from .errors import InputError, UnsupportedModelError
from .network import OnnxBuilder
from .ops.activation import Activation

PINNED_OPSET = 18
# IR version 8 is what onnx 1.13 wrote for opset 18: old enough for every
# onnxruntime that knows opset 18, new enough for model-local functions.
PINNED_IR_VERSION = 8


@dataclass
class LoadedModel:
    """A validated model at the pinned opset, plus where it came from."""

    model: onnx.ModelProto
    source: str              # file path, or "<memory>"
    sha256: str              # of the serialized model as given
    original_opset: int      # ai.onnx opset before conversion
    original_ir_version: int


def load_model(model: str | Path | bytes | onnx.ModelProto, base_dir: str | Path | None = None,
               output_name: str | None = None) -> LoadedModel:
    """Read, check, convert to ``PINNED_OPSET`` and shape-infer a model.

    Weights stored outside the model (``m.onnx.data``, as PyTorch's exporter writes
    them) are read from the model file's folder, or for bytes and a ModelProto from
    ``base_dir``, never from the working directory, and only from inside that folder.
    A model with several outputs (a classifier's labels beside its class scores) is cut
    down to one: ``output_name``, or the only float tensor output of rank 2 or more.
    The caller's file or ModelProto is never modified: conversion works on a copy.
    """
    if isinstance(model, (onnx.ModelProto, bytes)):
        source = "<memory>"
        raw = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    else:
        path = Path(model)
        source = str(path)
        if path.is_dir():
            raise InputError(f"{source}: is a folder, not a model file")
        if not path.is_file():
            raise InputError(f"{source}: file not found")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise InputError(f"{source}: cannot be read ({exc.strerror or type(exc).__name__})") from None
        base_dir = path.parent if base_dir is None else base_dir
    sha256 = hashlib.sha256(raw).hexdigest()
    try:
        proto = onnx.ModelProto.FromString(raw)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise InputError(f"{source}: not a readable ONNX model ({_first_line(exc) or 'protobuf decode error'})") from None
    _check_names(proto, source)
    _embed_external_data(proto, None if base_dir is None else Path(base_dir), source)
    if not proto.graph.node:
        raise InputError(f"{source}: not an ONNX model (the graph has no nodes)")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise InputError(f"{source}: invalid ONNX model ({_first_line(exc)})") from None
    original_opset = default_opset(proto)
    if original_opset is None:
        raise InputError(f"{source}: the model imports no ai.onnx opset")
    if len(_data_inputs(proto)) != 1:
        raise InputError(f"{source}: the model must have exactly one data input "
                         f"(found {len(_data_inputs(proto))})")
    _keep_one_output(proto, output_name, source)
    _check_weights_finite(proto, source)
    original_ir = proto.ir_version
    _expand_gelu(proto)
    if original_opset != PINNED_OPSET:
        try:
            proto = _convert_version(proto, original_opset)
        except Exception as exc:  # the converter raises bare RuntimeErrors/ValueErrors
            if "bad_alloc" in str(exc):       # C++ out of memory: not the model's fault
                raise MemoryError(f"{source}: out of memory converting opset {original_opset} to {PINNED_OPSET}") \
                    from None
            newer = _ops_newer_than_pinned(proto)
            if newer:
                raise UnsupportedModelError.for_ops(source, newer, f"no opset-{PINNED_OPSET} form to convert them "
                                                    "to") from None
            raise InputError(f"{source}: cannot convert opset {original_opset} to {PINNED_OPSET} "
                             f"({_first_line(exc)})") from None
    proto.ir_version = PINNED_IR_VERSION
    _drop_initializer_inputs(proto)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    except Exception as exc:
        raise InputError(f"{source}: shape inference failed ({_first_line(exc)})") from None
    return LoadedModel(proto, source, sha256, original_opset, original_ir)


FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def _check_names(proto: onnx.ModelProto, source: str) -> None:
    """``InputError`` for a name that is not valid UTF-8 (protobuf reads it, nothing can write it back)."""
    graph = proto.graph
    named = [("node", node.name) for node in graph.node] + [("tensor", t.name) for t in graph.initializer] + \
        [("value", name) for node in graph.node for name in (*node.input, *node.output)] + \
        [("value", v.name) for v in (*graph.input, *graph.output)]
    for kind, name in named:
        # protobuf hands back the bytes of a string field that is not valid UTF-8
        if isinstance(name, bytes):
            raise InputError(f"{source}: a {kind} name is not valid UTF-8 ({name!r})")


def _check_weights_finite(proto: onnx.ModelProto, source: str) -> None:
    """``InputError`` naming the first floating-point initializer or Constant holding NaN, or an infinity
    among several values (a weight; a scalar infinity is a bound, as in Clip(0, inf)): no conversion of
    such weights means anything (calibration, thresholds and reports turn NaN)."""
    tensors = [(t.name, t) for t in proto.graph.initializer]
    tensors += [(node.output[0], attribute.t) for node in proto.graph.node if node.op_type == "Constant"
                for attribute in node.attribute if attribute.name == "value"]
    for name, tensor in tensors:
        if tensor.data_type not in FLOAT_TYPES:
            continue
        values = onnx.numpy_helper.to_array(tensor)
        if np.isnan(values).any() or (values.size > 1 and not np.isfinite(values).all()):
            raise InputError(f"{source}: weight '{name}' holds NaN or infinite values")


def _keep_one_output(proto: onnx.ModelProto, output_name: str | None, source: str) -> None:
    """Keep the class-score output (``output_name``, or the only float tensor output of rank >= 2
    among several) and remove the nodes and weights only the others needed (label branches).
    Class probabilities that skl2onnx puts through a ZipMap (a sequence of maps, by default)
    are taken from the ZipMap's input tensor."""
    outputs = list(proto.graph.output)
    names = ", ".join(f"'{o.name}'" for o in outputs)
    zipmap_inputs = {node.output[0]: node.input[0] for node in proto.graph.node if node.op_type == "ZipMap"}
    scores = [o for o in outputs if o.type.HasField("tensor_type") and o.type.tensor_type.elem_type in FLOAT_TYPES
              and (not o.type.tensor_type.HasField("shape") or len(o.type.tensor_type.shape.dim) >= 2)]
    if output_name is not None:
        chosen = [o for o in outputs if o.name == output_name]
        if not chosen:
            raise InputError(f"{source}: no output named '{output_name}' (the outputs are {names})")
        if chosen[0] not in scores and chosen[0].name not in zipmap_inputs:
            raise InputError(f"{source}: output '{output_name}' is not a float tensor of class scores")
    else:
        chosen = scores or [o for o in outputs if o.name in zipmap_inputs]
    if len(chosen) != 1:
        raise InputError(f"{source}: {len(outputs)} outputs ({names}) and no single float class-score output "
                         "among them; choose one with --output-name")
    if chosen[0].name in zipmap_inputs:
        chosen = [onnx.helper.make_tensor_value_info(zipmap_inputs[chosen[0].name], onnx.TensorProto.FLOAT, None)]
    if outputs == chosen:
        return
    del proto.graph.output[:]
    proto.graph.output.extend(chosen)
    needed, kept = {chosen[0].name}, []
    for node in reversed(proto.graph.node):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(node.input)
    del proto.graph.node[:]
    proto.graph.node.extend(reversed(kept))
    weights = [init for init in proto.graph.initializer if init.name in needed]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(weights)


def _embed_external_data(proto: onnx.ModelProto, base_dir: Path | None, source: str) -> None:
    """Read every tensor stored in an external file into the model. The file must lie inside
    ``base_dir`` (no absolute path, no "..", no symlink leading out): a model names its files,
    and a hostile one must not make the converter copy others into its outputs."""
    for tensor in _tensors(proto):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = external_data_helper.ExternalDataInfo(tensor)
        where = f"{source}: tensor '{tensor.name}' is stored in external file '{info.location}'"
        if base_dir is None:
            raise InputError(f"{where}; give the model as a path, or the folder that holds that file")
        location = Path(info.location)
        if not info.location or location.is_absolute() or PureWindowsPath(info.location).is_absolute() \
                or ".." in location.parts or ".." in PureWindowsPath(info.location).parts:
            raise InputError(f"{where}, which is not a file inside the model's folder; refused")
        folder = base_dir.resolve()
        path = (folder / location).resolve()
        if not path.is_relative_to(folder):
            raise InputError(f"{where}, a link leading out of the model's folder; refused")
        if not path.is_file():
            raise InputError(f"{where}, not found in {base_dir}")
        offset, length = int(info.offset or 0), None if info.length is None else int(info.length)
        with path.open("rb") as file:
            file.seek(offset)
            data = file.read() if length is None else file.read(length)
        if length is not None and len(data) != length:
            raise InputError(f"{where}: it ends before the {length} bytes at offset {offset}")
        tensor.raw_data = data
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def _tensors(proto: onnx.ModelProto):
    """Every TensorProto of the model: initializers and constant attributes, in subgraphs and functions too."""
    def of_nodes(nodes):
        for node in nodes:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                if attribute.HasField("sparse_tensor"):
                    yield attribute.sparse_tensor.values
                if attribute.HasField("g"):
                    yield from of_graph(attribute.g)
                for graph in attribute.graphs:
                    yield from of_graph(graph)

    def of_graph(graph):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        yield from of_nodes(graph.node)

    yield from of_graph(proto.graph)
    for function in proto.functions:
        yield from of_nodes(function.node)


def _convert_version(proto: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """``proto`` at PINNED_OPSET. The converter has no down-adapter for some ops that exporters
    only use on constants (PyTorch 2.13 computes ZeroPad2d's pads with ConstantOfShape-20):
    if it fails, the nodes computed from constants alone are folded first and it tries again."""
    try:
        return onnx.version_converter.convert_version(proto, PINNED_OPSET)
    except Exception:  # the converter raises bare RuntimeErrors/ValueErrors
        if not _fold_constant_nodes(proto, opset):
            raise
        return onnx.version_converter.convert_version(proto, PINNED_OPSET)


def _fold_constant_nodes(proto: onnx.ModelProto, opset: int) -> int:
    """Replace every node whose inputs are all constants by initializers of its outputs; the count."""
    graph = proto.graph
    known = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    kept, folded = [], 0
    for node in graph.node:
        inputs = list(node.input)
        if node.domain not in ("", "ai.onnx") or node.op_type.startswith("Random") \
                or not all(name == "" or name in known for name in inputs):
            kept.append(node)
            continue
        outputs = evaluate_node(node, [known[name] if name else None for name in inputs], opset)
        known.update(zip(node.output, outputs))
        folded += 1
    if not folded:
        return 0
    needed = {name for node in kept for name in node.input} | {output.name for output in graph.output}
    initializers = {init.name for init in graph.initializer}
    graph.initializer.extend(onnx.numpy_helper.from_array(np.asarray(known[name]), name)
                             for name in sorted(needed & set(known) - initializers))
    del graph.node[:]
    graph.node.extend(kept)
    return folded


def evaluate_node(node: onnx.NodeProto, arrays: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    """Run one node on the given inputs (None: an omitted optional input) with onnx's reference evaluator."""
    input_names = [f"in{i}" if a is not None else "" for i, a in enumerate(arrays)]
    output_names = [f"out{i}" for i in range(len(node.output))]
    proto = onnx.NodeProto()
    proto.CopyFrom(node)
    proto.ClearField("input")
    proto.input.extend(input_names)
    proto.ClearField("output")
    proto.output.extend(output_names)
    graph = onnx.helper.make_graph(
        [proto], "fold",
        [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in zip(input_names, arrays) if a is not None],
        [onnx.helper.make_empty_tensor_value_info(n) for n in output_names])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    feeds = {n: a for n, a in zip(input_names, arrays) if a is not None}
    return list(onnx.reference.ReferenceEvaluator(model).run(None, feeds))


def _expand_gelu(proto: onnx.ModelProto) -> None:
    """Gelu (opset 20, what PyTorch's default exporter writes for nn.GELU) as the formula that
    opset 18 can express (the activation family's own emission), which onnx_passes/pointwise.py then
    recognises as GELU."""
    graph = proto.graph
    if not any(node.op_type == "Gelu" and node.domain in ("", "ai.onnx") for node in graph.node):
        return
    builder = OnnxBuilder(reserved={v for node in graph.node for v in (*node.input, *node.output)}
                          | {init.name for init in graph.initializer})
    nodes = []
    for node in graph.node:
        if node.op_type != "Gelu" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        tanh_form = any(a.name == "approximate" and a.s == b"tanh" for a in node.attribute)
        start = len(builder.nodes)
        Activation(node.name, "GeluTanh" if tanh_form else "Gelu").emit(builder, node.input[0])
        builder.nodes[-1].output[0] = node.output[0]
        nodes.extend(builder.nodes[start:])
    graph.initializer.extend(builder.initializers)
    del graph.node[:]
    graph.node.extend(nodes)


def _ops_newer_than_pinned(proto: onnx.ModelProto) -> list[tuple[str, str]]:
    """(op type, node name) of the standard ops that did not exist yet at PINNED_OPSET (e.g. Gelu, opset 20)."""
    newer = []
    for node in proto.graph.node:
        if node.domain in ("", "ai.onnx"):
            try:
                onnx.defs.get_schema(node.op_type, PINNED_OPSET, "")
            except onnx.defs.SchemaError:
                newer.append((node.op_type, node.name))
    return newer


def default_opset(proto: onnx.ModelProto) -> int | None:
    for opset in proto.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return opset.version
    return None


def _data_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs that are not initializers (models from IR < 4 list those too)."""
    names = {init.name for init in proto.graph.initializer}
    return [value for value in proto.graph.input if value.name not in names]


def _drop_initializer_inputs(proto: onnx.ModelProto) -> None:
    """From IR 4 on, graph inputs are the data only; the converter takes the weights as the
    constants they are meant to be (an older model's graph inputs may also list them, even
    before the data input)."""
    data_inputs = _data_inputs(proto)
    del proto.graph.input[:]
    proto.graph.input.extend(data_inputs)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
