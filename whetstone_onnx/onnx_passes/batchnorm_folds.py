"""Exact folding of batch norm and constant scale/shift ops into linear layers.

A BatchNormalization is the per-channel affine map x * s + t with
s = gamma / sqrt(var + epsilon) (the node's own epsilon) and t = beta - mean * s.
Constant Mul / Add / Sub / Div nodes (tf2onnx writes batch norm that way) are
the same kind of map. Each is folded, in float64:
  * backward into the Gemm / Conv that produces its input (W * s, b * s + t), or
  * forward into the Gemm / Conv that reads its output (W * s on the input axis,
    b + W . t), also through a flattening Reshape, but only into a Conv without
    zero padding: padding would add zeros where the map would have put t.
Maps that fit neither stay BatchNormalization nodes (a Mul / Add / Sub / Div
becomes one, merged into the batch norm before it), which the op family
ops/batchnorm.py lifts; the step network folds them (network_passes/step_network.py).
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..network import batchnorm_affine
from ..onnx_graph import add_initializer, bypass, const_array, only_consumer, per_channel, replace_node, static_shape

SCALE_SHIFT_OPS = ("Mul", "Add", "Sub", "Div")


def fold_batchnorm(model: ir.Model) -> int:
    count = 0
    for node in list(model.graph):
        if node.op_type == "BatchNormalization" and node.graph is not None:
            affine = _batchnorm_affine(node)
            count += affine is not None and _fold(model.graph, node, *affine)
    return count


def fold_scale_shift(model: ir.Model) -> int:
    # Until nothing folds: folding one node can open the way for its neighbour (the Add of
    # a Mul + Add pair before a dense layer folds forward first, then the Mul can).
    total, count = 0, None
    while count != 0:
        count = 0
        for node in list(model.graph):
            if node.op_type in SCALE_SHIFT_OPS and node.graph is not None:
                affine = _constant_affine(node)
                count += affine is not None and _fold(model.graph, node, *affine)
        total += count
    return total


def batchnorm_from_scale_shift(model: ir.Model) -> int:
    """Each constant per-channel Mul / Add / Sub / Div left after folding becomes a
    BatchNormalization computing x * s + t exactly (gamma s, beta t, mean 0, variance 1,
    epsilon 0), or is merged into the BatchNormalization it only reads (gamma s, beta s + t):
    the Mul + Add pair Keras writes for a batch norm becomes one layer."""
    graph, count = model.graph, 0
    for node in list(graph):
        if node.op_type not in SCALE_SHIFT_OPS or node.graph is None:
            continue
        affine = _constant_affine(node)
        if affine is None:
            continue
        data, scale, shift = affine
        producer = data.producer()
        params = _batchnorm_params(producer) if producer is not None and \
            producer.op_type == "BatchNormalization" and only_consumer(data) is node else None
        if params is not None:
            gamma, beta, mean, var = params
            _set_batchnorm_params(graph, producer, gamma * scale, beta * scale + shift, mean, var)
            bypass(graph, node, data)
        else:
            zeros, ones = np.zeros_like(scale), np.ones_like(scale)
            batchnorm = ir.Node("", "BatchNormalization", [data], attributes=[ir.AttrFloat32("epsilon", 0.0)],
                                name=node.name)
            replace_node(graph, node, batchnorm)
            _set_batchnorm_params(graph, batchnorm, scale, shift, zeros, ones)
        count += 1
    return count


def _batchnorm_params(node: ir.Node) -> list[np.ndarray] | None:
    """(gamma, beta, mean, var) in float64, or None if one is not a constant or the training outputs are read."""
    if len(node.outputs) > 1 and any(out.uses() for out in node.outputs[1:]):
        return None
    params = [const_array(v) for v in node.inputs[1:5]]
    return None if any(p is None for p in params) else [p.astype(np.float64) for p in params]


def _set_batchnorm_params(graph: ir.Graph, node: ir.Node, *params: np.ndarray) -> None:
    node.resize_inputs(5)
    for index, (part, values) in enumerate(zip(("gamma", "beta", "mean", "var"), params), start=1):
        node.replace_input_with(index, add_initializer(graph, f"{node.name}.{part}", values.astype(np.float32)))


def _batchnorm_affine(node: ir.Node) -> tuple[ir.Value, np.ndarray, np.ndarray] | None:
    params = _batchnorm_params(node)
    if params is None:
        return None
    epsilon = node.attributes.get_float("epsilon", 1e-5)
    return node.inputs[0], *batchnorm_affine(*params, np.float64(np.float32(epsilon)))


def _constant_affine(node: ir.Node) -> tuple[ir.Value, np.ndarray, np.ndarray] | None:
    """(data input, per-channel scale, per-channel shift) of a constant Mul/Add/Sub/Div."""
    first, second = node.inputs[0], node.inputs[1]
    if const_array(second) is not None:
        data, constant = first, const_array(second)
    elif const_array(first) is not None and node.op_type in ("Mul", "Add"):
        data, constant = second, const_array(first)
    else:
        return None
    shape = static_shape(data)
    if shape is None or len(shape) < 2:
        return None
    values = per_channel(constant, len(shape), shape[1])
    if values is None:
        return None
    ones, zeros = np.ones_like(values), np.zeros_like(values)
    if node.op_type == "Div":      # (computed only here: a Sub's constant may hold zeros)
        return data, 1.0 / values, zeros
    scale, shift = {"Mul": (values, zeros), "Add": (ones, values), "Sub": (ones, -values)}[node.op_type]
    return data, scale, shift


def _fold(graph: ir.Graph, node: ir.Node, data: ir.Value, scale: np.ndarray, shift: np.ndarray) -> bool:
    producer = data.producer()
    if producer is not None and producer.op_type in ("Gemm", "Conv") and only_consumer(data) is node:
        _fold_into_outputs(graph, producer, scale, shift)
        bypass(graph, node, data)
        return True
    reader = only_consumer(node.outputs[0])
    flatten_to = None
    if reader is not None and reader.op_type in ("Reshape", "Flatten"):
        flatten_to = reader
        reader = only_consumer(reader.outputs[0])
    if reader is None or reader.op_type not in ("Gemm", "Conv"):
        return False
    if flatten_to is not None:
        if reader.op_type != "Gemm":
            return False
        in_shape, out_shape = static_shape(node.outputs[0]), static_shape(flatten_to.outputs[0])
        if in_shape is None or out_shape is None or len(out_shape) != 2:
            return False
        per_position = int(np.prod(in_shape[2:]))  # C-order flatten: channel-major features
        scale, shift = np.repeat(scale, per_position), np.repeat(shift, per_position)
    if not _fold_into_inputs(graph, reader, scale, shift):
        return False
    bypass(graph, node, data)
    return True


def _fold_into_outputs(graph: ir.Graph, linear: ir.Node, scale: np.ndarray, shift: np.ndarray) -> None:
    weight = const_array(linear.inputs[1]).astype(np.float64)
    bias = const_array(linear.inputs[2]).astype(np.float64)
    axes = (slice(None),) + (None,) * (weight.ndim - 1)     # output axis is 0 for Conv and Gemm(transB=1)
    _set_weights(graph, linear, weight * scale[axes], bias * scale + shift)


def _fold_into_inputs(graph: ir.Graph, linear: ir.Node, scale: np.ndarray, shift: np.ndarray) -> bool:
    weight = const_array(linear.inputs[1]).astype(np.float64)
    bias = const_array(linear.inputs[2]).astype(np.float64)
    if linear.op_type == "Conv":
        pads = linear.attributes.get_ints("pads", [0])
        auto_pad = linear.attributes.get_string("auto_pad", "NOTSET")
        if weight.ndim != 4 or any(pads) or auto_pad not in ("NOTSET", "VALID") or linear.attributes.get_int("group", 1) != 1:
            return False
        if weight.shape[1] != scale.size:
            return False
        bias = bias + np.einsum("oikl,i->o", weight, shift)
        weight = weight * scale[None, :, None, None]
    else:
        if weight.shape[1] != scale.size:
            return False
        bias = bias + weight @ shift
        weight = weight * scale[None, :]
    _set_weights(graph, linear, weight, bias)
    return True


def _set_weights(graph: ir.Graph, linear: ir.Node, weight: np.ndarray, bias: np.ndarray) -> None:
    # New initializers rather than edits in place: another node may share the old ones.
    linear.replace_input_with(1, add_initializer(graph, f"{linear.name}.weight", weight.astype(np.float32)))
    linear.replace_input_with(2, add_initializer(graph, f"{linear.name}.bias", bias.astype(np.float32)))
