"""Small helpers over onnx-ir graphs shared by the ONNX-level passes."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .errors import UnsupportedModelError


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's data if it is a constant (initializer), else None."""
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def data_input(node: ir.Node) -> ir.Value | None:
    """The node's first input that is not a constant, or None when all are."""
    return next((v for v in node.inputs if v is not None and v.const_value is None), None)


def add_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """Register ``array`` as a new initializer with a name unique in the graph."""
    taken = set(graph.initializers) | {v.name for n in graph for v in n.outputs} | {v.name for v in graph.inputs}
    unique, k = name, 1
    while unique in taken:
        unique, k = f"{name}_{k}", k + 1
    array = np.ascontiguousarray(array).reshape(np.shape(array))     # (ascontiguousarray makes scalars 1-d)
    value = ir.Value(name=unique, shape=ir.Shape(array.shape),
                     type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                     const_value=ir.tensor(array, name=unique))
    graph.register_initializer(value)
    return value


def only_consumer(value: ir.Value) -> ir.Node | None:
    """The single node reading ``value``, or None when zero or several do (or it is a graph output)."""
    consumers = value.consumers()
    if len(consumers) != 1 or value.is_graph_output():
        return None
    return consumers[0]


def follow_chain(node: ir.Node, pattern: tuple[str | tuple[str, ...], ...]) -> list[ir.Node] | None:
    """``node`` and the nodes after it, each the only reader of the one before, when their
    op types match ``pattern`` (an entry may be a tuple of alternatives); else None."""
    chain = [node]
    for expected in pattern[1:]:
        following = only_consumer(chain[-1].outputs[0])
        if following is None or following.op_type not in ((expected,) if isinstance(expected, str) else expected):
            return None
        chain.append(following)
    first = pattern[0]
    return chain if node.op_type in ((first,) if isinstance(first, str) else first) else None


def scalar_operand(node: ir.Node, data: ir.Value) -> float | None:
    """The value of the one-element constant that binary ``node`` combines with ``data``, else None."""
    if len(node.inputs) != 2 or data not in node.inputs:
        return None
    other = const_array(node.inputs[1 - list(node.inputs).index(data)])
    return float(other.reshape(-1)[0]) if other is not None and other.size == 1 else None


def bypass(graph: ir.Graph, node: ir.Node, replacement: ir.Value) -> None:
    """Remove ``node``, making every reader of its first output read ``replacement`` instead."""
    output = node.outputs[0]
    if output.is_graph_output():
        # Keep the model's output name stable: the replacement takes it over.
        index = list(graph.outputs).index(output)
        output.replace_all_uses_with(replacement, replace_graph_outputs=True)
        replacement.name, output.name = output.name, f"{output.name}__removed"
        graph.outputs[index] = replacement
    else:
        output.replace_all_uses_with(replacement)
    graph.remove(node, safe=True)


def replace_node(graph: ir.Graph, old: ir.Node, new: ir.Node) -> None:
    """Put ``new`` where ``old`` was; ``new``'s first output takes over ``old``'s (and its shape)."""
    new.outputs[0].shape, new.outputs[0].type = old.outputs[0].shape, old.outputs[0].type
    graph.insert_before(old, new)
    bypass(graph, old, new.outputs[0])


def static_shape(value: ir.Value) -> tuple[int, ...] | None:
    shape = value.shape
    if shape is None or not shape.is_static():
        return None
    return tuple(int(d) for d in shape)


def require_static_shape(value: ir.Value, node: ir.Node) -> tuple[int, ...]:
    shape = static_shape(value)
    if shape is None:
        raise UnsupportedModelError(f"node '{node.name}' ({node.op_type}): the shape of '{value.name}' "
                                    "is not known after shape inference")
    return shape


def per_channel(array: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """Read a broadcastable constant as one value per channel (axis 1 of a rank-``rank`` tensor).

    Returns None when the constant varies along another axis, so it is not a
    per-channel scale or shift.
    """
    array = np.asarray(array)
    if array.ndim > rank:
        return None
    full = array.reshape((1,) * (rank - array.ndim) + array.shape)
    if any(d != 1 for i, d in enumerate(full.shape) if i != 1):
        return None
    if full.shape[1] not in (1, channels):
        return None
    return np.broadcast_to(full.reshape(-1), (channels,)).astype(np.float64)
