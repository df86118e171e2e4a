"""The model's trailing Softmax / LogSoftmax goes: the spiking network decodes its own output.
The op type removed is kept in the graph's metadata under ``REMOVED_NORMALISER``, for the report."""
from __future__ import annotations

import onnx_ir as ir

from ..onnx_graph import bypass

OUTPUT_NORMALISERS = ("Softmax", "LogSoftmax")
REMOVED_NORMALISER = "whetstone_onnx.removed_normaliser"


def remove_output_softmax(model: ir.Model) -> int:
    graph = model.graph
    producer = graph.outputs[0].producer()
    if producer is None or producer.op_type not in OUTPUT_NORMALISERS:
        return 0
    graph.meta[REMOVED_NORMALISER] = producer.op_type
    bypass(graph, producer, producer.inputs[0])
    return 1
