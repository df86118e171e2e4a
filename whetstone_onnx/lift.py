"""Lifting: the canonical ONNX graph (after the ONNX passes) becomes a Network.

The graph must be one chain from the data input to the output; every node on
it is handed to the lifter its op family registered.
"""
from __future__ import annotations

import onnx_ir as ir

from .errors import UnsupportedModelError
from .network import Network
from .ops import LiftContext, lifter_for
from .passes.graph import static_shape


def lift(model: ir.Model) -> Network:
    graph = model.graph
    data, output = graph.inputs[0], graph.outputs[0]
    if data.dtype != ir.DataType.FLOAT:
        raise UnsupportedModelError(f"input '{data.name}' has element type {data.dtype}; float32 is required")
    shape = static_shape(data)
    if shape is None or not shape:
        raise UnsupportedModelError(f"input '{data.name}' has no static per-sample shape")
    network = Network(input_name=data.name, input_shape=shape[1:], output_name=output.name)
    names: set[str] = set()
    value, visited = data, 0
    while not value.is_graph_output():
        readers = value.consumers()
        if len(readers) != 1:
            raise UnsupportedModelError(
                f"'{value.name}' is read by {len(readers)} nodes; only sequential networks are supported")
        node = readers[0]
        lifter = lifter_for(node)
        if lifter is None:
            raise UnsupportedModelError(f"node '{node.name}' ({node.op_type}) could not be folded into a "
                                        "supported layer")
        if node.inputs[0] is not value:
            raise UnsupportedModelError(f"node '{node.name}' ({node.op_type}) reads the data as input "
                                        f"{[v.name if v else '' for v in node.inputs].index(value.name)}, "
                                        "not as its first input")
        layer = lifter(node, LiftContext(node))
        layer.name = _unique_name(node.name or f"{layer.kind}_{len(network.layers)}", names)
        network.layers.append(layer)
        value, visited = node.outputs[0], visited + 1
    if visited != graph.num_nodes():
        stray = [n for n in graph if n.outputs[0] is not None][visited:]
        raise UnsupportedModelError(f"{graph.num_nodes() - visited} node(s) off the main chain, e.g. "
                                    f"'{stray[0].name}' ({stray[0].op_type}); only sequential networks are supported")
    return network


def _unique_name(name: str, taken: set[str]) -> str:
    candidate, k = name, 1
    while candidate in taken:
        candidate, k = f"{name}_{k}", k + 1
    taken.add(candidate)
    return candidate
