"""Layout transposes in front of a flatten are folded into the next dense layer.

Keras exports a conv net as NCHW convolutions followed by a Transpose back to
NHWC and a flatten; the dense layer after it expects H,W,C-ordered features.
Permuting that layer's weight columns instead lets the network stay in one
layout (channels first) from input to output.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .graph import add_initializer, const_array, only_consumer, static_shape


def fold_layout_transpose(model: ir.Model) -> int:
    graph, count = model.graph, 0
    for node in list(graph):
        if node.op_type != "Transpose" or node.graph is None:
            continue
        perm = list(node.attributes.get_ints("perm", []))
        in_shape = static_shape(node.inputs[0])
        flatten = only_consumer(node.outputs[0])
        if not perm or perm[0] != 0 or in_shape is None or flatten is None \
                or flatten.op_type not in ("Reshape", "Flatten"):
            continue
        flat_shape = static_shape(flatten.outputs[0])
        gemm = only_consumer(flatten.outputs[0])
        if flat_shape is None or len(flat_shape) != 2 or gemm is None or gemm.op_type != "Gemm" \
                or gemm.attributes.get_int("transB", 0) != 1:
            continue
        # source[k]: position, in the untransposed flatten, of feature k of the transposed one.
        sample_perm = [p - 1 for p in perm[1:]]
        source = np.arange(int(np.prod(in_shape[1:]))).reshape(in_shape[1:]).transpose(sample_perm).reshape(-1)
        weight = const_array(gemm.inputs[1])
        permuted = np.empty_like(weight)
        permuted[:, source] = weight
        gemm.replace_input_with(1, add_initializer(graph, f"{gemm.name}.weight", permuted))
        flatten.replace_input_with(0, node.inputs[0])
        graph.remove(node, safe=True)
        count += 1
    return count
