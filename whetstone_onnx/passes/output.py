"""The model's trailing Softmax / LogSoftmax goes: the spiking network decodes its own output."""
from __future__ import annotations

import onnx_ir as ir

from .graph import bypass

OUTPUT_NORMALISERS = ("Softmax", "LogSoftmax")


def remove_output_softmax(model: ir.Model) -> int:
    graph = model.graph
    producer = graph.outputs[0].producer()
    if producer is None or producer.op_type not in OUTPUT_NORMALISERS:
        return 0
    bypass(graph, producer, producer.inputs[0])
    return 1
