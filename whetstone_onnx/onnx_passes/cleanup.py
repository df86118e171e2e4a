"""Clean-up passes: pass-through ops, Constant nodes, shape computations, dead nodes.

Each pass takes an onnx-ir model, rewrites it in place and returns how many
rewrites it made (the report lists the counts).
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from ..load import PINNED_OPSET, evaluate_node
from ..onnx_graph import add_initializer, bypass, const_array, static_shape

PASS_THROUGH_OPS = ("Identity", "Dropout")


def remove_pass_through(model: ir.Model) -> int:
    """Identity, (inference-mode) Dropout and a Cast to the type the tensor already has (skl2onnx
    casts its float input to float) compute nothing: wire around them."""
    graph, count = model.graph, 0
    for node in list(graph):
        if node.domain not in ("", "ai.onnx") or not (node.op_type in PASS_THROUGH_OPS or _casts_to_itself(node)):
            continue
        if any(out.uses() for out in node.outputs[1:]):
            continue  # a Dropout mask is read: leave it for the unsupported-op report
        bypass(graph, node, node.inputs[0])
        count += 1
    return count


def _casts_to_itself(node: ir.Node) -> bool:
    to = node.attributes.get("to")
    return node.op_type == "Cast" and to is not None and node.inputs[0].dtype is not None \
        and int(node.inputs[0].dtype) == to.value


def lift_constants(model: ir.Model) -> int:
    """Constant nodes become initializers, so every later pass sees weights one way."""
    before = sum(1 for n in model.graph if n.op_type == "Constant")
    common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    return before - sum(1 for n in model.graph if n.op_type == "Constant")


def pin_batch(model: ir.Model) -> int:
    """Give the data input a batch of 1 and infer every shape statically.

    The canonical network is described per sample; with the batch pinned, the
    shape sub-graphs exporters write (Shape -> Gather -> Concat -> Reshape)
    become constants that the next pass folds. Emitters put a dynamic batch back.
    """
    data_input = model.graph.inputs[0]
    dims = list(data_input.shape) if data_input.shape is not None else []
    changed = int(bool(dims) and dims[0] != 1)
    if dims:
        data_input.shape = ir.Shape([1, *dims[1:]])
    _infer_shapes(model)
    return changed


def _infer_shapes(model: ir.Model) -> None:
    """Every intermediate shape inferred afresh."""
    for node in model.graph:
        for out in node.outputs:
            if not out.is_graph_output():
                out.shape = None
    common_passes.ShapeInferencePass(strict_mode=False)(model)


def fold_constants(model: ir.Model) -> int:
    """Evaluate every node whose inputs are all known: shape arithmetic, weight transposes, casts."""
    graph, count = model.graph, 0
    for node in list(graph):
        values = _known_outputs(node)
        if values is None:
            continue
        for out, array in zip(node.outputs, values):
            const = add_initializer(graph, out.name or "folded", np.asarray(array))
            if out.is_graph_output():
                continue  # a constant model output is nonsense; leave it to fail later
            out.replace_all_uses_with(const)
        if not any(out.is_graph_output() for out in node.outputs):
            graph.remove(node, safe=True)
            count += 1
    if count:
        # A shape that only shape arithmetic knew (PyTorch's Unflatten: Reshape(x, Concat(Slice(Shape(x)),
        # ...)) with Mod and Add on the way) is a constant now: the Reshape's output shape is known too.
        _infer_shapes(model)
    return count


def remove_dead_nodes(model: ir.Model) -> int:
    before = model.graph.num_nodes()
    common_passes.RemoveUnusedNodesPass()(model)
    return before - model.graph.num_nodes()


def _known_outputs(node: ir.Node) -> list[np.ndarray] | None:
    if node.domain not in ("", "ai.onnx") or node.op_type in ("RandomNormal", "RandomUniform",
                                                             "RandomNormalLike", "RandomUniformLike"):
        return None
    if node.op_type == "Shape" and node.inputs[0] is not None:
        shape = static_shape(node.inputs[0])
        if shape is None:
            return None
        start = node.attributes.get_int("start", 0)
        end = node.attributes.get_int("end", len(shape))
        return [np.array(shape[start:end], dtype=np.int64)]
    if node.op_type == "Size" and node.inputs[0] is not None:
        shape = static_shape(node.inputs[0])
        return None if shape is None else [np.array(int(np.prod(shape)), dtype=np.int64)]
    arrays = [const_array(v) if v is not None else None for v in node.inputs]
    if not node.inputs or any(v is not None and a is None for v, a in zip(node.inputs, arrays)):
        return None
    return _evaluate(node, arrays)


def _evaluate(node: ir.Node, arrays: list[np.ndarray | None]) -> list[np.ndarray]:
    """Run one node with onnx's reference evaluator."""
    return evaluate_node(ir.serde.serialize_node(node), arrays, PINNED_OPSET)
