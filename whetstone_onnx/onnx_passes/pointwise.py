"""Chains of elementwise ops that compute a known activation become that activation.

Opset 18 has no GELU or SiLU op, and exporters write them out as formulas:
PyTorch's GELU as ``0.5 x (1 + erf(x / sqrt 2))``, its tanh approximation with a
``Pow`` and a ``Tanh``, SiLU as ``x * sigmoid(x)``, tf2onnx the same with other
constants and node orders. Rather than match each exporter's spelling, this pass
finds every island of elementwise nodes fed by one tensor (and scalar constants),
evaluates the island on a grid of inputs, and compares what it computes with the
activations of ``ops.activation.POINTWISE_FUNCTIONS``; an island that matches one
becomes that op (a project-domain node for the ones without an opset-18 op).
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir
from scipy import special

from ..ops.activation import FLOAT_FUNCTIONS, FORMULA_ONLY, POINTWISE_FUNCTIONS
from ..ops.registry import lifter_for
from ..spiking_onnx import DOMAIN, DOMAIN_VERSION
from ..onnx_graph import const_array, replace_node

# The elementwise ops an island may hold, as float64 NumPy functions of their inputs
# (and attributes, for those that have any).
ELEMENTWISE = {
    "Add": lambda node, a, b: a + b,
    "Sub": lambda node, a, b: a - b,
    "Mul": lambda node, a, b: a * b,
    "Div": lambda node, a, b: a / b,
    "Pow": lambda node, a, b: np.power(a, b),
    "Max": lambda node, *xs: np.maximum.reduce(np.broadcast_arrays(*xs)),
    "Min": lambda node, *xs: np.minimum.reduce(np.broadcast_arrays(*xs)),
    "Neg": lambda node, a: -a,
    "Abs": lambda node, a: np.abs(a),
    "Reciprocal": lambda node, a: 1.0 / a,
    "Sqrt": lambda node, a: np.sqrt(a),
    "Exp": lambda node, a: np.exp(a),
    "Log": lambda node, a: np.log(a),
    "Erf": lambda node, a: special.erf(a),
    "Tanh": lambda node, a: np.tanh(a),
    "Sigmoid": lambda node, a: FLOAT_FUNCTIONS["Sigmoid"](a),
    "Softplus": lambda node, a: FLOAT_FUNCTIONS["Softplus"](a),
    "Relu": lambda node, a: np.maximum(a, 0.0),
    "HardSigmoid": lambda node, a: np.clip(node.attributes.get_float("alpha", 0.2) * a
                                           + node.attributes.get_float("beta", 0.5), 0.0, 1.0),
    "Clip": lambda node, a, low=None, high=None: np.clip(a, -np.inf if low is None else low,
                                                         np.inf if high is None else high),
}
# Where the functions are compared: fine enough to separate GELU from its tanh
# approximation (they differ by up to 4.7e-4), wide enough to see every saturation
# (a Min(Max(x, 0), 100) is no Relu).
GRID = np.concatenate([[-1e4, -1e2, -2e1], np.linspace(-8.0, 8.0, 641), [2e1, 1e2, 1e4]])
TOLERANCE = 1e-5                    # relative to 1 + |f|: float32 constants, float64 arithmetic


def recognise_pointwise_activations(model: ir.Model) -> int:
    graph, count = model.graph, 0
    changed = True
    while changed:                  # each replacement changes the graph: look again from the start
        changed = False
        for root in _float_values(graph):
            found = _largest_match(_island(root))
            if found is not None:
                op_type, nodes = found
                _replace(model, root, nodes, op_type)
                count, changed = count + 1, True
                break
    return count


def _float_values(graph: ir.Graph):
    """Every non-constant value a node reads: the roots islands grow from."""
    seen = set()
    for node in graph:
        for value in node.inputs:
            if value is not None and value.const_value is None and id(value) not in seen:
                seen.add(id(value))
                yield value


def _island(root: ir.Value) -> list[ir.Node]:
    """The elementwise nodes computed from ``root`` and scalar constants alone, in graph order."""
    inside, frontier = {id(root)}, [root]
    nodes: list[ir.Node] = []
    while frontier:
        value = frontier.pop()
        for node in value.consumers():
            if node in nodes or not _is_elementwise(node):
                continue
            if all(v is None or id(v) in inside or _is_scalar_constant(v) for v in node.inputs):
                nodes.append(node)
                inside.add(id(node.outputs[0]))
                frontier.append(node.outputs[0])
    if len(nodes) < 2:                  # (most islands: one activation node; no need to walk the graph)
        return nodes
    order = {id(node): i for i, node in enumerate(root.graph or nodes[0].graph)}
    return sorted(nodes, key=lambda node: order[id(node)])


def _is_elementwise(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx") and node.op_type in ELEMENTWISE and len(node.outputs) == 1


def _is_scalar_constant(value: ir.Value) -> bool:
    array = const_array(value)
    return array is not None and array.size == 1 and array.dtype.kind == "f"


def _largest_match(island: list[ir.Node]) -> tuple[str, list[ir.Node]] | None:
    """The known activation computed by the largest closed part of ``island`` (the nodes one
    value depends on, none of whose other values is read outside them), with those nodes."""
    for last in reversed(island):
        part = _ancestors(last, island)
        if not _closed(part, last):
            continue
        op_type = _identify(part)
        if op_type is None:
            continue
        if len(part) == 1 and lifter_for(part[0]) is not None:
            return None             # a lone op that lifts as it is
        return op_type, part
    return None


def _ancestors(last: ir.Node, island: list[ir.Node]) -> list[ir.Node]:
    members, stack = [], [last]
    while stack:
        node = stack.pop()
        if node in members:
            continue
        members.append(node)
        stack.extend(v.producer() for v in node.inputs if v is not None and v.producer() in island)
    return [node for node in island if node in members]


def _closed(part: list[ir.Node], last: ir.Node) -> bool:
    for node in part:
        if node is last:
            continue
        output = node.outputs[0]
        if output.is_graph_output() or any(consumer not in part for consumer in output.consumers()):
            return False
    return True


def _identify(part: list[ir.Node]) -> str | None:
    """The POINTWISE_FUNCTIONS entry ``part`` computes on GRID, if any."""
    root = next(v for v in part[0].inputs if v is not None and v.const_value is None)
    values = {id(root): GRID}
    with np.errstate(all="ignore"):
        for node in part:
            inputs = [None if v is None else values[id(v)] if id(v) in values else float(const_array(v).reshape(-1)[0])
                      for v in node.inputs]
            values[id(node.outputs[0])] = np.asarray(ELEMENTWISE[node.op_type](node, *inputs), np.float64)
        computed = values[id(part[-1].outputs[0])]
    if computed.shape != GRID.shape or not np.all(np.isfinite(computed)):
        return None
    for op_type in POINTWISE_FUNCTIONS:
        expected = FLOAT_FUNCTIONS[op_type](GRID)
        if np.all(np.abs(computed - expected) <= TOLERANCE * (1.0 + np.abs(expected))):
            return op_type
    return None


def _replace(model: ir.Model, root: ir.Value, part: list[ir.Node], op_type: str) -> None:
    graph = model.graph
    domain = DOMAIN if op_type in FORMULA_ONLY else ""
    # PyTorch names the nodes "/act/Mul" etc.: the op takes the module's name.
    name = (part[-1].name or op_type).rsplit("/", 1)[0] or op_type
    replacement = ir.Node(domain, op_type, [root], name=name)
    replace_node(graph, part[-1], replacement)
    for stale in reversed(part[:-1]):
        graph.remove(stale, safe=True)
    if domain:
        model.opset_imports[DOMAIN] = DOMAIN_VERSION
