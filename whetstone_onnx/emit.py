"""Emitting a Network as an ONNX model (float, sharpenable or spiking).

Every layer's output value is named after the layer, so checks can expose any
layer's output; the last one takes the model's output name.
"""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from . import __version__
from .load import PINNED_IR_VERSION, PINNED_OPSET
from .network import Network, OnnxBuilder
from .spiking_onnx import DOMAIN, DOMAIN_VERSION, function_for

BATCH = "batch"


def to_onnx(network: Network, *, graph_name: str, doc: str = "",
            expose_layers: bool = False) -> onnx.ModelProto:
    """The network as a model; with ``expose_layers`` every layer's output is also a graph output
    (after the model output, in layer order), which is how the checks look inside."""
    builder = OnnxBuilder()
    builder.unique(network.input_name)
    names = network.walk(lambda layer, i, values: layer.emit(builder, *values), network.input_name, keep_all=True)
    # The last layer's output takes the model's output name (its last node writes it).
    last = next(node for node in reversed(builder.nodes) if node.output[0] == names[-1])
    last.output[0] = names[-1] = network.output_name
    shapes = network.shapes()
    outputs = [helper.make_tensor_value_info(network.output_name, TensorProto.FLOAT, [BATCH, *shapes[-1]])]
    if expose_layers:
        outputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, [BATCH, *shape])
                    for name, shape in zip(names[:-1], shapes[:-1])]
    graph = helper.make_graph(
        builder.nodes, graph_name,
        [helper.make_tensor_value_info(network.input_name, TensorProto.FLOAT, [BATCH, *network.input_shape])],
        outputs, initializer=builder.initializers, doc_string=doc)
    opsets = [helper.make_opsetid("", PINNED_OPSET)]
    if builder.custom_ops:
        opsets.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="whetstone_onnx",
                              producer_version=__version__,
                              functions=[function_for(op) for op in sorted(builder.custom_ops)])
    model.ir_version = PINNED_IR_VERSION
    return model
