"""Layout transposes: moved past Whetstone units, cancelled in inverse pairs, and
folded into the dense layer after a flatten.

Keras exports a conv net as NCHW convolutions followed by a Transpose back to
NHWC and a flatten; the dense layer after it expects H,W,C-ordered features.
Permuting that layer's weight columns instead lets the network stay in one
layout (channels first) from input to output. tf2onnx moves its transposes
through the activations it knows (Relu) but not through the chains it writes for
a Whetstone layer, so after those are recognised a Transpose may still sit
between a convolution and its unit, or between the unit and a flatten.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..spiking_onnx import DOMAIN
from ..onnx_graph import add_initializer, bypass, const_array, data_input, only_consumer, static_shape

# Elementwise ops with scalar parameters; Mul / Add / Sub / Div with a constant also
# let a transpose cross them (the constant's axes permuted along).
ELEMENTWISE_UNITS = ((DOMAIN, "BoundedRelu"), (DOMAIN, "SharpSigmoid"))
FLATTENS = ("Reshape", "Flatten")


def move_transposes(model: ir.Model) -> int:
    """Move each Transpose across the elementwise ops next to it where that makes it go:

    - down to its inverse Transpose (both go) or to a flatten (``fold_layout_transpose``
      then folds it into the dense layer);
    - up to the graph input when only such ops stand between (the network then starts
      with the input's layout change, as a Keras image model does).
    """
    graph, count = model.graph, 0
    for transpose in list(graph):
        if transpose.op_type != "Transpose" or transpose.graph is None or not _perm(transpose):
            continue
        perm, data = _perm(transpose), transpose.inputs[0]
        below = _movable_run(transpose.outputs[0], len(perm))
        end = only_consumer(below[-1].outputs[0] if below else transpose.outputs[0])
        above, source = _movable_run_up(data, len(perm))
        if end is not None and end.op_type == "Transpose" and _is_inverse(perm, _perm(end)):
            _move_below(graph, transpose, below)
            bypass(graph, end, below[-1].outputs[0] if below else data)
            graph.remove(transpose, safe=True)
        elif below and end is not None and end.op_type in FLATTENS:
            transposed_shape = below[-1].outputs[0].shape
            _move_below(graph, transpose, below)
            moved = _transpose_node(below[-1].outputs[0], perm, transpose.name, transposed_shape)
            graph.insert_after(below[-1], moved)
            end.replace_input_with(0, moved.outputs[0])
            graph.remove(transpose, safe=True)
        elif above and graph.inputs and source is graph.inputs[0]:
            moved = _transpose_node(source, perm, transpose.name, ir.Shape([source.shape[i] for i in perm]))
            graph.insert_before(above[0], moved)
            above[0].replace_input_with(list(above[0].inputs).index(source), moved.outputs[0])
            _relayout(graph, above, perm)
            bypass(graph, transpose, above[-1].outputs[0])
        else:
            continue
        count += 1
    return count


def _perm(node: ir.Node) -> list[int]:
    return list(node.attributes.get_ints("perm", []))


def _inverse(perm: list[int]) -> list[int]:
    return [int(i) for i in np.argsort(perm)]


def _is_inverse(perm: list[int], other: list[int]) -> bool:
    return len(perm) == len(other) and [perm[i] for i in other] == list(range(len(perm)))


def _movable(node: ir.Node, data: ir.Value, rank: int) -> bool:
    """``node`` is elementwise in ``data`` with constant other inputs of rank <= ``rank``."""
    others = [v for v in node.inputs if v is not data]
    constants = [const_array(v) for v in others]
    if any(c is None or c.ndim > rank for c in constants) or len(others) != len(node.inputs) - 1:
        return False
    if (node.domain, node.op_type) in ELEMENTWISE_UNITS:
        return node.inputs[0] is data and all(c.size == 1 for c in constants)
    return node.domain in ("", "ai.onnx") and len(node.inputs) == 2 and (
        node.op_type in ("Mul", "Add") or (node.op_type in ("Sub", "Div") and node.inputs[0] is data))


def _movable_run(value: ir.Value, rank: int) -> list[ir.Node]:
    """The movable nodes after ``value``, each the only reader of the one before."""
    run = []
    while (node := only_consumer(value)) is not None and _movable(node, value, rank):
        run.append(node)
        value = node.outputs[0]
    return run


def _movable_run_up(value: ir.Value, rank: int) -> tuple[list[ir.Node], ir.Value]:
    """The movable nodes before ``value`` (each output read only by the next), first first,
    and the value the run starts from."""
    run: list[ir.Node] = []
    while (node := value.producer()) is not None and only_consumer(value) is not None:
        data = data_input(node)
        if data is None or not _movable(node, data, rank):
            break
        run.insert(0, node)
        value = data
    return run, value


def _move_below(graph: ir.Graph, transpose: ir.Node, run: list[ir.Node]) -> None:
    """``run`` (the movable nodes after ``transpose``) now reads the untransposed data."""
    if run:
        _relayout(graph, run, _inverse(_perm(transpose)))
        run[0].replace_input_with(list(run[0].inputs).index(transpose.outputs[0]), transpose.inputs[0])


def _relayout(graph: ir.Graph, run: list[ir.Node], perm: list[int]) -> None:
    """The run's ops now compute on their data transposed by ``perm``: constants and shapes follow."""
    for node in run:
        for index, value in enumerate(node.inputs):
            array = const_array(value)
            if array is not None and array.size > 1:
                full = array.reshape((1,) * (len(perm) - array.ndim) + array.shape).transpose(perm)
                node.replace_input_with(index, add_initializer(graph, value.name, full))
        output = node.outputs[0]
        if output.shape is not None:
            output.shape = ir.Shape([output.shape[i] for i in perm])


def _transpose_node(data: ir.Value, perm: list[int], name: str, shape) -> ir.Node:
    node = ir.Node("", "Transpose", [data], attributes=[ir.AttrInt64s("perm", perm)], name=name)
    node.outputs[0].shape, node.outputs[0].type = shape, data.type
    return node


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
