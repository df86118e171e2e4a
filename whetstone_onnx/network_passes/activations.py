"""Network passes that turn float activations into sharpenable Whetstone units."""
from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import UnsupportedModelError
from ..network import LinearLayer, Network
from ..ops.activation import Activation, Sharpenable
from ..ops.batchnorm import BatchNorm
from ..ops.merge import Add, Concat
from ..ops.pool import AvgPool2d
from ..spiking_onnx import SHARPNESS_EPSILON, SIGMOID_GAIN
from .step_network import check_batchnorm_folds, sink_batchnorms

# Activations no Whetstone unit reproduces: a bounded ReLU stands in, scaled from data as Relu's.
APPROXIMATED_OPS = ("LeakyRelu", "PRelu", "Elu", "Selu", "Softplus", "HardSwish", "Mish", "Gelu", "GeluTanh", "Silu")
# The sources whose units calibrate_scales scales: unbounded above, about the identity for large inputs.
CALIBRATED_SOURCES = ("Relu", *APPROXIMATED_OPS)
# The sources scaled exactly by their cap that calibrate_scales scales further when their
# inputs seldom reach it (Clip(0, k): ReLU6).
CAPPED_SOURCES = ("Clip",)


def activations_before_pooling(network: Network) -> int:
    """Move each activation up against its linear layer, each batch norm down past max pooling.

    relu(maxpool(x)) == maxpool(relu(x)) for any non-decreasing activation (HardSwish,
    Mish, GELU and SiLU are not, but become bounded ReLUs, which are), and reshapes commute with
    every elementwise op; after this pass each activation
    directly follows the Dense / Conv whose bias becomes its threshold. A batch
    norm before max pooling moves below it when that is exact (network_passes/step_network.py),
    so that what training does to its scales cannot stop it from folding.
    """
    count = 0
    pending = [layer for layer in network.layers if isinstance(layer, (Activation, Sharpenable))]
    while pending:
        layer = pending.pop(0)
        while True:
            index = network.index_of(layer)
            producer = network.producer(index)
            if producer is not None and network.layers[producer].commutes_with_activations:
                network.swap_with_follower(producer)
            elif _concat_before(network, index) is not None:
                pending += _split_over_concat(network, index)
                count += 1
                break
            else:
                break
            count += 1
    return count + sink_batchnorms(network)


def _concat_before(network: Network, index: int) -> int | None:
    """The Concat that only the activation at ``index`` reads, if it reads one."""
    (source,) = network.source_indices(index)
    if source >= 0 and isinstance(network.layers[source], Concat) and network.only_reader(source) == index:
        return source
    return None


def _split_over_concat(network: Network, index: int) -> list:
    """act(concat(a, b, ...)) == concat(act(a), act(b), ...): one copy of the activation per part,
    before the Concat (a per-channel PRelu slope split with the channels); returns the copies."""
    activation = network.layers[index]

    def part_of(k: int, offset: int, width: int):
        slope = getattr(activation, "slope", None)
        if slope is not None and slope.size > 1:
            slope = slope[offset:offset + width]
        return dataclasses.replace(activation, name=network.unique_name(f"{activation.name}/{k}"),
                                   **({"slope": slope} if hasattr(activation, "slope") else {}))

    return network.split_over_concat(index, part_of)


def compensate_output_scale(network: Network, index: int, factor: float,
                            shape: tuple[int, ...] | None = None) -> None:
    """The layer at ``index`` now outputs its former values divided by ``factor``: on every path
    from it, the first layer that can takes the factor back, exactly (a Dense / Conv in its
    weights, a batch norm in its statistics, an Add in its weight for that input), across
    scale-transparent layers; a Concat passes it on to its part of the channels. ``shape``: the
    layer's output shape, when the caller knows it."""
    shape = network.shapes()[index] if shape is None else shape
    for reader in network.consumers(index):
        _take_back(network, index, reader, np.full(shape, factor, np.float64))


def _take_back(network: Network, source: int, reader: int, factors: np.ndarray) -> None:
    """``factors``: per element of layer ``source``'s output, what layer ``reader`` must multiply back."""
    layer = network.layers[reader]
    uniform = bool(np.all(factors == factors.flat[0]))
    if isinstance(layer, Add):
        for position, index in enumerate(network.source_indices(reader)):
            if index == source:                  # every input it is (an Add may read a layer twice)
                layer.scale_input(position, factors.reshape(len(factors), -1)[:, 0])
    elif isinstance(layer, Concat):
        positions = network.source_indices(reader)
        shapes = [network.input_shape if i < 0 else network.shapes()[i] for i in positions]
        whole = np.concatenate([factors if i == source else np.ones(shape) for i, shape in zip(positions, shapes)])
        for following in network.consumers(reader):
            _take_back(network, reader, following, whole)
    elif isinstance(layer, (LinearLayer, BatchNorm)) and uniform:
        layer.scale_inputs(float(factors.flat[0]))
    elif isinstance(layer, LinearLayer):
        layer.scale_input_elements(factors)
    elif layer.scale_transparent and (uniform or not getattr(layer, "pads", None) or not any(layer.pads)):
        carried = np.full(layer.output_shape(factors.shape), factors.flat[0]) if uniform else \
            layer.forward(factors[None])[0]
        for following in network.consumers(reader):
            _take_back(network, reader, following, carried)
    elif not uniform:
        raise UnsupportedModelError(f"'{layer.name}' ({layer.kind}) cannot pass on the per-channel scales of "
                                    f"'{network.layers[source].name}'")


def replace_activations(network: Network) -> int:
    """Relu, Clip(0, k), HardSigmoid -> BoundedRelu; Sigmoid, Tanh -> SharpSigmoid; the
    activations with no Whetstone form (APPROXIMATED_OPS) -> BoundedRelu, marked approximated.

    The preceding linear layer absorbs what makes the replacement exact at
    sharpness 0: Clip's 1/k (and the next linear layer or batch norm its k),
    HardSigmoid's alpha and beta, Sigmoid's gain; for Tanh, since tanh x =
    2 sigmoid(2x) - 1, twice the gain, and the next linear layer the 2 y - 1
    (where nothing in between stops it: else Tanh is approximated too). Relu, which
    is unbounded, is scaled by ``calibrate_scales`` from data instead, and so are the
    approximated ops but Tanh (Selu's gamma first goes into the linear layer). A
    network with a batch norm that the step network could not fold is refused
    here, before any training.
    """
    count = 0
    for i, layer in enumerate(network.layers):
        if not isinstance(layer, (Activation, Sharpenable)):
            continue
        producer = network.producer(i)
        linear = network.layers[producer] if producer is not None else None
        if linear is None or not linear.weighted_sum:
            raise UnsupportedModelError(f"activation '{layer.name}' ({layer.op_type}) does not follow a "
                                        "Dense, Conv or Add layer that only it reads, so it has no threshold "
                                        "to become")
        if isinstance(layer, Sharpenable):
            continue                   # already a Whetstone unit (a Whetstone Keras model's export)
        function, approximation = "bounded_relu", ""
        if layer.op_type == "Clip":
            bound = layer.params["max"]
            linear.scale_outputs(1.0 / bound)
            compensate_output_scale(network, i, bound)
        elif layer.op_type == "HardSigmoid":
            linear.scale_outputs(layer.params["alpha"], layer.params["beta"])
        elif layer.op_type == "Sigmoid":
            function = "sharp_sigmoid"
            linear.scale_outputs(float((1.0 + SHARPNESS_EPSILON) / SIGMOID_GAIN))
        elif layer.op_type == "Tanh":
            following, obstacle = _output_affine_target(network, i)
            if following is None:
                approximation = f"a bounded ReLU stands in for it: {obstacle}"
            else:
                function = "sharp_sigmoid"
                linear.scale_outputs(2.0 * float((1.0 + SHARPNESS_EPSILON) / SIGMOID_GAIN))
                following.absorb_input_affine(2.0, -1.0)
        elif layer.op_type in APPROXIMATED_OPS:
            approximation = "no Whetstone form: a bounded ReLU, scaled from data as for Relu, stands in for it"
            if layer.op_type == "Selu":
                linear.scale_outputs(layer.params["gamma"])
        elif layer.op_type != "Relu":
            raise ValueError(f"activation '{layer.name}': no replacement is defined for {layer.op_type}")
        network.layers[i] = Sharpenable(layer.name, function, 0.0, source=layer.op_type, approximation=approximation)
        count += 1
    check_batchnorm_folds(network)
    return count


def approximated_activations(network: Network) -> list[dict]:
    """The units that only approximate the activation they replaced, for the report."""
    return [{"layer": layer.name, "op_type": layer.source, "reason": layer.approximation}
            for layer in network.layers if isinstance(layer, Sharpenable) and layer.approximation]


def _output_affine_target(network: Network, index: int) -> tuple[LinearLayer | None, str]:
    """The Dense / Conv after ``index`` that can take an affine y -> 2 y - 1 of its output
    into its weights and bias; else None and why not."""
    position = network.follower(index)
    while position is not None:
        layer = network.layers[position]
        position = network.follower(position)
        if isinstance(layer, LinearLayer):
            if layer.absorbs_uniform_shift():
                return layer, ""
            return None, (f"the next layer, '{layer.name}', is a zero-padded convolution, whose border windows "
                          "would miss part of tanh's shift")
        if isinstance(layer, AvgPool2d) and layer.count_include_pad and any(layer.pads):
            return None, f"'{layer.name}' averages over zero padding, which would miss part of tanh's shift"
        if not layer.scale_transparent:
            return None, f"'{layer.name}' ({layer.kind}) stands between it and the next Dense or Conv"
    return None, "no Dense or Conv follows it to take tanh's shift"
