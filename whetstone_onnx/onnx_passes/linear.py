"""Canonical linear layers: every fully connected layer becomes
Gemm(x, W (out, in), b (out,), transB=1) and every Conv gets an explicit bias.

After this pass the batch-norm folding and the op lifters see one form only.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..errors import UnsupportedModelError
from ..onnx_graph import add_initializer, bypass, const_array, only_consumer, replace_node, static_shape


def canonicalise_linear(model: ir.Model) -> int:
    graph, count = model.graph, 0
    for node in list(graph):
        if node.graph is None:
            continue  # removed earlier in this loop (an Add merged into a MatMul)
        if node.op_type == "Gemm":
            count += _canonical_gemm(graph, node)
        elif node.op_type == "MatMul" and const_array(node.inputs[1]) is not None:
            count += _matmul_to_gemm(graph, node)
        elif node.op_type == "Conv" and (len(node.inputs) < 3 or node.inputs[2] is None):
            weight = const_array(node.inputs[1])
            if weight is None:
                raise UnsupportedModelError(f"node '{node.name}' (Conv): the weight is not a constant")
            bias = add_initializer(graph, f"{node.name}.bias", np.zeros(weight.shape[0], weight.dtype))
            node.resize_inputs(3)
            node.replace_input_with(2, bias)
            count += 1
    return count


def _gemm(graph: ir.Graph, like: ir.Node, x: ir.Value, weight: np.ndarray, bias: np.ndarray) -> ir.Node:
    """A canonical Gemm named after the node it replaces."""
    w = add_initializer(graph, f"{like.name}.weight", weight.astype(np.float32))
    b = add_initializer(graph, f"{like.name}.bias", bias.astype(np.float32))
    return ir.Node("", "Gemm", [x, w, b], attributes=[ir.AttrInt64("transB", 1)], name=like.name)


def _canonical_gemm(graph: ir.Graph, node: ir.Node) -> int:
    attrs = node.attributes
    alpha, beta = attrs.get_float("alpha", 1.0), attrs.get_float("beta", 1.0)
    trans_a, trans_b = attrs.get_int("transA", 0), attrs.get_int("transB", 0)
    a_value, b_value = node.inputs[0], node.inputs[1]
    c_value = node.inputs[2] if len(node.inputs) > 2 else None
    b_array = const_array(b_value)
    if b_array is None:
        raise UnsupportedModelError(f"node '{node.name}' (Gemm): input B must be a constant weight")
    if trans_a:
        # A^T B with A = Transpose(x): undo the transpose; any other transA layout
        # would put the batch on the second axis, which no classifier does.
        producer = a_value.producer()
        if producer is None or producer.op_type != "Transpose" or \
                list(producer.attributes.get_ints("perm", [1, 0])) != [1, 0]:
            raise UnsupportedModelError(
                f"node '{node.name}' (Gemm): transA=1 is supported only on a transposed data tensor")
        a_value = producer.inputs[0]
    weight = (b_array if trans_b else b_array.T) * alpha     # (out, in)
    out_features = weight.shape[0]
    if c_value is None:
        bias = np.zeros(out_features)
    else:
        c_array = const_array(c_value)
        if c_array is None:
            raise UnsupportedModelError(f"node '{node.name}' (Gemm): input C must be a constant bias")
        c_array = np.asarray(c_array)
        if c_array.ndim == 2 and c_array.shape[0] != 1:
            raise UnsupportedModelError(f"node '{node.name}' (Gemm): a bias C of shape {c_array.shape} "
                                        "varies over the batch")
        bias = np.broadcast_to(c_array.reshape(-1), (out_features,)) * beta
    canonical = (not trans_a and trans_b and alpha == 1.0 and beta == 1.0 and c_value is not None
                 and np.asarray(const_array(c_value)).shape == (out_features,))
    if canonical:
        return 0
    replace_node(graph, node, _gemm(graph, node, a_value, weight, bias))
    return 1


def _matmul_to_gemm(graph: ir.Graph, node: ir.Node) -> int:
    x = node.inputs[0]
    shape = static_shape(x)
    if shape is None or len(shape) != 2:
        raise UnsupportedModelError(f"node '{node.name}' (MatMul): only (batch, features) inputs are "
                                    f"supported, got shape {shape}")
    weight = const_array(node.inputs[1]).T          # (in, out) -> (out, in)
    bias = np.zeros(weight.shape[0])
    add = only_consumer(node.outputs[0])
    bias_array = _bias_of(add, node.outputs[0], weight.shape[0]) if add is not None else None
    gemm = _gemm(graph, node, x, weight, bias if bias_array is None else bias_array)
    replace_node(graph, node, gemm)
    if bias_array is not None:
        bypass(graph, add, gemm.outputs[0])  # the Gemm now carries the Add's bias
    return 1


def _bias_of(add: ir.Node, matmul_out: ir.Value, out_features: int) -> np.ndarray | None:
    """The bias vector if ``add`` adds a per-feature constant to ``matmul_out``."""
    if add.op_type != "Add":
        return None
    other = add.inputs[1] if add.inputs[0] is matmul_out else add.inputs[0]
    array = const_array(other)
    if array is None or array.size not in (1, out_features) or (array.ndim == 2 and array.shape[0] != 1) \
            or array.ndim > 2:
        return None
    return np.broadcast_to(array.reshape(-1), (out_features,)).astype(np.float64)
