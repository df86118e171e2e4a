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


# ---------------------------------------------------------------- spiking.onnx's pooling order

# The value and node of a max pooling over potentials that the fast form computes before their step.
POOLED = "/pooled"


def pool_before_steps(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """The fast form of a spiking model: (the model, the pairs rewritten).

    Each Spike read by a MaxPool alone, with one threshold per channel, becomes the MaxPool
    of its potentials followed by the Spike: maxpool(x >= t) == (maxpool(x) >= t) exactly,
    as the step is monotone and max only picks one of the float values compared. onnxruntime
    then runs the convolution and the pooling in its blocked (NCHWc) layout, leaving it once
    per layer on a quarter of the values (2 x 2 pooling) instead of leaving and re-entering
    it around the full-size step: measured on torchstyle_mnist_conv, one thread, 0.53x ->
    0.92x the float original's throughput at batch 256 (0.68x -> 0.93x at batch 1).
    The Spike node takes the MaxPool layer's name and value (it computes that layer's
    output); the pooling node and its value are the Spike's, suffixed with POOLED, from which
    ``steps_before_pools`` restores the layer-by-layer form the checks read."""
    fast = onnx.ModelProto()
    fast.CopyFrom(model)
    graph, count = fast.graph, 0
    thresholds = {t.name: t for t in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    taken = {name for node in graph.node for name in (node.name, *node.output)}
    outputs = {output.name for output in graph.output}
    nodes, moved = list(graph.node), set()
    for position, spike in enumerate(nodes):
        if spike.op_type != "Spike" or spike.domain != DOMAIN or spike.output[0] in outputs or id(spike) in moved:
            continue
        (pool, *others) = readers.get(spike.output[0], [None])
        threshold = thresholds.get(spike.input[1])
        if pool is None or others or pool.op_type != "MaxPool" or threshold is None \
                or any(d != 1 for d in threshold.dims[1:]) \
                or {spike.name + POOLED, spike.output[0] + POOLED} & taken:
            continue
        spike_name, spike_value = spike.name, spike.output[0]
        pool.input[0], pool.output[0], pool.name, spike.input[0], spike.output[0], spike.name = (
            spike.input[0], spike_value + POOLED, spike_name + POOLED, spike_value + POOLED, pool.output[0], pool.name)
        later = nodes.index(pool)
        nodes[position], nodes[later] = pool, spike
        moved.add(id(spike))
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return fast, count


def steps_before_pools(model: onnx.ModelProto) -> onnx.ModelProto:
    """The layer-by-layer form of a spiking model written by ``pool_before_steps``: each Spike
    after the pooling of its potentials back before the pooling, under its own name (a model
    without such pairs comes back as it is, copied)."""
    canonical = onnx.ModelProto()
    canonical.CopyFrom(model)
    nodes = list(canonical.graph.node)
    producer = {node.output[0]: node for node in nodes}
    for position, spike in enumerate(nodes):
        pool = producer.get(spike.input[0]) if spike.op_type == "Spike" and spike.domain == DOMAIN else None
        if pool is None or pool.op_type != "MaxPool" or not pool.name.endswith(POOLED) \
                or not pool.output[0].endswith(POOLED):
            continue
        spike_name, spike_value = pool.name[:-len(POOLED)], pool.output[0][:-len(POOLED)]
        spike.input[0], spike.output[0], spike.name, pool.input[0], pool.output[0], pool.name = (
            pool.input[0], spike_value, spike_name, spike_value, spike.output[0], spike.name)
        earlier = nodes.index(pool)
        nodes[earlier], nodes[position] = spike, pool
    del canonical.graph.node[:]
    canonical.graph.node.extend(nodes)
    return canonical
