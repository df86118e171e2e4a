"""Chains of standard ops that compute one of the project's ops become that op.

A Keras model built with ``whetstone_onnx.keras`` layers and exported with
``model.export(format="onnx")`` (tf2onnx underneath) holds no Whetstone op: the
exporter freezes each layer's sharpness and writes its formula out, e.g. a
BoundedRelu at sharpness 1 as ``Cast(GreaterOrEqual(x, 0.5))`` and a
Softmax_Decode as ``Softmax(MatMul(2 x - 1, 2 key - 1))``. The op families
register recognisers for these chains (ops/registry.py ``recognises``); this pass
runs them and puts the project's op in place of each chain, so such a model lifts
to the same Network as the one it was built from. It runs before the passes that
would fold the chains' Mul / Sub into the linear layers.
"""
from __future__ import annotations

import onnx_ir as ir

from ..ops.registry import RECOGNISERS
from ..spiking_onnx import DOMAIN, DOMAIN_VERSION
from ..onnx_graph import add_initializer, replace_node


def recognise_whetstone_layers(model: ir.Model) -> int:
    graph, count = model.graph, 0
    for node in list(graph):
        if node.graph is None or node.domain not in ("", "ai.onnx"):
            continue                       # removed as part of an earlier chain, or not a standard op
        for recogniser in RECOGNISERS.get(node.op_type, ()):
            found = recogniser(node)
            if found is None:
                continue
            # Keras names nodes "<model>/<layer>/<op>": the op takes the layer's name.
            name = (node.name or found.op_type).rsplit("/", 1)[0]
            constants = [add_initializer(graph, f"{name}.{suffix}", array) for suffix, array in found.constants]
            replacement = ir.Node(DOMAIN, found.op_type, [found.data, *constants], name=name)
            replace_node(graph, found.nodes[-1], replacement)
            for stale in reversed(found.nodes[:-1]):
                graph.remove(stale, safe=True)
            model.opset_imports[DOMAIN] = DOMAIN_VERSION
            count += 1
            break
    return count
