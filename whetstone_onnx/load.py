"""Reading and validating ONNX models, and pinning them to one opset.

Everything downstream sees models at ``PINNED_OPSET`` so the passes need to
know one version of each op's attributes (Clip bounds as inputs, Reshape's
allowzero, BatchNormalization without training outputs, ...).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx.version_converter
from google.protobuf.message import DecodeError

from .errors import InputError

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


def load_model(model: str | Path | onnx.ModelProto) -> LoadedModel:
    """Read, check, convert to ``PINNED_OPSET`` and shape-infer a model.

    The caller's file or ModelProto is never modified: conversion works on a copy.
    """
    if isinstance(model, onnx.ModelProto):
        source = "<memory>"
        raw = model.SerializeToString()
    else:
        path = Path(model)
        source = str(path)
        if not path.is_file():
            raise InputError(f"{source}: file not found")
        raw = path.read_bytes()
    sha256 = hashlib.sha256(raw).hexdigest()
    try:
        proto = onnx.ModelProto.FromString(raw)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise InputError(f"{source}: not a readable ONNX model ({_first_line(exc) or 'protobuf decode error'})") from None
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
    if len(proto.graph.output) != 1:
        raise InputError(f"{source}: the model must have exactly one output (found {len(proto.graph.output)})")
    original_ir = proto.ir_version
    if original_opset != PINNED_OPSET:
        try:
            proto = onnx.version_converter.convert_version(proto, PINNED_OPSET)
        except Exception as exc:  # the converter raises bare RuntimeErrors/ValueErrors
            raise InputError(f"{source}: cannot convert opset {original_opset} to {PINNED_OPSET} "
                             f"({_first_line(exc)})") from None
    else:
        proto = onnx.ModelProto.FromString(raw)
    proto.ir_version = PINNED_IR_VERSION
    _drop_initializer_inputs(proto)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    except Exception as exc:
        raise InputError(f"{source}: shape inference failed ({_first_line(exc)})") from None
    return LoadedModel(proto, source, sha256, original_opset, original_ir)


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
