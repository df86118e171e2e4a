"""The project's custom ONNX operator domain.

Each op is shipped inside every emitted model as a model-local ONNX function
(FunctionProto), so a stock onnxruntime runs the files with no extra library,
while other toolchains can match the op by (domain, name, version) and
implement it natively. docs/spiking-ops.md is the specification; the function
bodies below are its executable form and must agree with it.

Per-neuron parameters (sharpness, thresholds, keys) are tensor *inputs*, not
function attributes: onnxruntime has had bugs with attribute references inside
nested functions, and tensors let one graph hold per-neuron values.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper

DOMAIN = "org.whetstone"
DOMAIN_VERSION = 1
# ai.onnx opset the function bodies are written against.
BODY_OPSET = 18

# The Whetstone constants (Severa et al. 2019; original Spiking_BRelu / Spiking_Sigmoid).
SHARPNESS_EPSILON = np.float32(1e-3)                      # lambda in width + lambda
SIGMOID_GAIN = np.float32(4.0 * math.log(2.0 + math.sqrt(3.0)))
SIGMOID_CLIP = np.float32(40.0)
BRELU_THRESHOLD = np.float32(0.5)    # a bounded-ReLU unit fires when its input >= 0.5
SIGMOID_THRESHOLD = np.float32(0.0)  # a sigmoid unit fires when its input >= 0


def _const(name: str, value: float) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value_float=float(value))


def _function(name: str, inputs: list[str], outputs: list[str], nodes: list[onnx.NodeProto],
              doc: str) -> onnx.FunctionProto:
    return helper.make_function(
        DOMAIN, name, inputs, outputs, nodes,
        opset_imports=[helper.make_opsetid("", BODY_OPSET)], doc_string=doc)


def _bounded_relu() -> onnx.FunctionProto:
    nodes = [
        _const("one", 1.0), _const("zero", 0.0), _const("half", BRELU_THRESHOLD),
        _const("eps", SHARPNESS_EPSILON),
        helper.make_node("Sub", ["one", "sharpness"], ["width"]),
        helper.make_node("Add", ["width", "eps"], ["span"]),
        helper.make_node("Sub", ["X", "half"], ["centred"]),
        helper.make_node("Div", ["centred", "span"], ["scaled"]),
        helper.make_node("Add", ["scaled", "half"], ["shifted"]),
        helper.make_node("Clip", ["shifted", "zero", "one"], ["ramp"]),
        helper.make_node("GreaterOrEqual", ["X", "half"], ["fires"]),
        helper.make_node("Cast", ["fires"], ["step"], to=TensorProto.FLOAT),
        helper.make_node("Equal", ["sharpness", "one"], ["is_step"]),
        helper.make_node("Where", ["is_step", "step", "ramp"], ["Y"]),
    ]
    return _function("BoundedRelu", ["X", "sharpness"], ["Y"], nodes,
                     "Whetstone bounded ReLU: clip((X-0.5)/(1-s+1e-3)+0.5, 0, 1); X >= 0.5 when s == 1.")


def _sharp_sigmoid() -> onnx.FunctionProto:
    nodes = [
        _const("one", 1.0), _const("zero", SIGMOID_THRESHOLD), _const("eps", SHARPNESS_EPSILON),
        _const("gain", SIGMOID_GAIN), _const("lo", -SIGMOID_CLIP), _const("hi", SIGMOID_CLIP),
        helper.make_node("Sub", ["one", "sharpness"], ["width"]),
        helper.make_node("Add", ["width", "eps"], ["span"]),
        helper.make_node("Div", ["gain", "span"], ["k"]),
        helper.make_node("Mul", ["X", "k"], ["kx"]),
        helper.make_node("Clip", ["kx", "lo", "hi"], ["kx_clipped"]),
        helper.make_node("Sigmoid", ["kx_clipped"], ["smooth"]),
        helper.make_node("GreaterOrEqual", ["X", "zero"], ["fires"]),
        helper.make_node("Cast", ["fires"], ["step"], to=TensorProto.FLOAT),
        helper.make_node("Equal", ["sharpness", "one"], ["is_step"]),
        helper.make_node("Where", ["is_step", "step", "smooth"], ["Y"]),
    ]
    return _function("SharpSigmoid", ["X", "sharpness"], ["Y"], nodes,
                     "Whetstone sharpened sigmoid: sigmoid(clip(k X, -40, 40)), k = 4 ln(2+sqrt 3)/(1-s+1e-3); "
                     "X >= 0 when s == 1.")


def _spike() -> onnx.FunctionProto:
    nodes = [
        helper.make_node("GreaterOrEqual", ["X", "threshold"], ["fires"]),
        helper.make_node("Cast", ["fires"], ["Y"], to=TensorProto.FLOAT),
    ]
    return _function("Spike", ["X", "threshold"], ["Y"], nodes,
                     "One binary spike per neuron: 1.0 where X >= threshold (broadcast per neuron), else 0.0.")


def _nhot_decode() -> onnx.FunctionProto:
    nodes = [
        _const("one", 1.0), _const("two", 2.0),
        helper.make_node("Mul", ["X", "two"], ["x2"]),
        helper.make_node("Sub", ["x2", "one"], ["x_signed"]),
        helper.make_node("Mul", ["key", "two"], ["k2"]),
        helper.make_node("Sub", ["k2", "one"], ["key_signed"]),
        helper.make_node("Transpose", ["key_signed"], ["key_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["x_signed", "key_t"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["Y"], axis=-1),
    ]
    return _function("NHotDecode", ["X", "key"], ["Y"], nodes,
                     "N-hot output decode: softmax((2X-1) @ (2key-1)^T) over classes; key is (classes, width).")


_BUILDERS = {"BoundedRelu": _bounded_relu, "SharpSigmoid": _sharp_sigmoid,
             "Spike": _spike, "NHotDecode": _nhot_decode}
OP_TYPES = tuple(_BUILDERS)


def function_for(op_type: str) -> onnx.FunctionProto:
    """The model-local function that defines ``op_type`` of the project's domain."""
    return _BUILDERS[op_type]()


# ---------------------------------------------------------------- the N-hot code (NHotDecode's key)


def nhot_scores(x: np.ndarray, key) -> np.ndarray:
    """(samples, classes) float64 scores of codes x (samples, width) against a 0/1 key (classes, width):
    (2 x - 1) . (2 key - 1), agreements minus disagreements. The decoded class is their argmax; the
    netlist simulator decodes with this too, so it cannot drift from the layer's forward."""
    return (2.0 * x - 1.0) @ (2.0 * np.asarray(key, np.float64) - 1.0).T


def nhot_key(classes: int, width: int, seed: int) -> np.ndarray:
    """A seeded disjoint N-hot key: each class owns ``width // classes`` units, randomly placed."""
    if width < classes:
        raise ValueError(f"key width {width} is smaller than the {classes} classes")
    per_class = width // classes
    units = np.random.default_rng(seed).permutation(width)[:classes * per_class]
    key = np.zeros((classes, width), np.float32)
    key[np.repeat(np.arange(classes), per_class), units] = 1.0
    return key
