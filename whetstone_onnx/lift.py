"""Lifting: the canonical ONNX graph (after the ONNX passes) becomes a Network.

Every node on the way from the data input to the output is handed to the
lifter its op family registered; branches and merges (Add, Concat) become
``Network.links``.
"""
from __future__ import annotations

import onnx_ir as ir

from .errors import UnsupportedModelError
from .network import Network
from .ops import LiftContext, lifter_for
from .onnx_graph import static_shape


def lift(model: ir.Model) -> Network:
    """Each node, in the graph's (topological) order, becomes the layer its op family lifts; a node
    that reads other values than the previous node's output is recorded in ``Network.links``."""
    graph = model.graph
    data, output = graph.inputs[0], graph.outputs[0]
    if data.dtype != ir.DataType.FLOAT:
        raise UnsupportedModelError(f"input '{data.name}' has element type {data.dtype}; float32 is required")
    shape = static_shape(data)
    if shape is None or not shape:
        raise UnsupportedModelError(f"input '{data.name}' has no static per-sample shape")
    network = Network(input_name=data.name, input_shape=shape[1:], output_name=output.name)
    names: set[str] = {data.name}
    produced_by = {data.name: data.name}        # value name -> the layer (or input) that computes it
    for node in graph:
        lifter = lifter_for(node)
        if lifter is None:
            raise UnsupportedModelError(f"node '{node.name}' ({node.op_type}) could not be folded into a "
                                        "supported layer")
        reads = [value for value in node.inputs if value is not None and value.name in produced_by]
        if not reads:
            raise UnsupportedModelError(f"node '{node.name}' ({node.op_type}) reads none of the network's data")
        layer = lifter(node, LiftContext(node))
        if not layer.merges and (len(reads) > 1 or node.inputs[0] is not reads[0]):
            names_read = [v.name if v else '' for v in node.inputs]
            raise UnsupportedModelError(f"node '{node.name}' ({node.op_type}) reads the data as input "
                                        f"{names_read.index(reads[-1].name)}, not as its first and only input")
        layer.name = _unique_name(node.name or f"{layer.kind}_{len(network.layers)}", names)
        sources = tuple(produced_by[value.name] for value in reads)
        previous = network.layers[-1].name if network.layers else data.name
        if sources != (previous,):
            network.links[layer.name] = sources
        network.layers.append(layer)
        produced_by[node.outputs[0].name] = layer.name
    if not network.layers:
        raise UnsupportedModelError(f"the output '{output.name}' is the input: the graph computes nothing to convert")
    if produced_by.get(output.name) != network.layers[-1].name:
        raise UnsupportedModelError(f"the output '{output.name}' is not computed by the graph's last node")
    unread = [layer for i, layer in enumerate(network.layers[:-1]) if not network.consumers(i)]
    if unread:
        raise UnsupportedModelError(f"{len(unread)} node(s) compute values the output does not depend on, e.g. "
                                    f"'{unread[0].name}' ({unread[0].kind})")
    return network


def _unique_name(name: str, taken: set[str]) -> str:
    candidate, k = name, 1
    while candidate in taken:
        candidate, k = f"{name}_{k}", k + 1
    taken.add(candidate)
    return candidate
