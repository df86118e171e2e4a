"""Network passes that turn float activations into sharpenable Whetstone units."""
from __future__ import annotations

from ..errors import UnsupportedModelError
from ..network import LinearLayer, Network
from ..ops.activation import Activation, Sharpenable
from ..ops.pool import MaxPool2d
from ..ops.shape import Reshape, Transpose
from ..spiking_onnx import SHARPNESS_EPSILON, SIGMOID_GAIN

# Layers an elementwise monotone activation commutes with, and that a uniform
# input scale passes through unchanged.
COMMUTING_LAYERS = (MaxPool2d, Reshape, Transpose)


def activations_before_pooling(network: Network) -> int:
    """Move each activation up against its linear layer.

    relu(maxpool(x)) == maxpool(relu(x)) for any non-decreasing activation, and
    reshapes commute with every elementwise op; after this pass each activation
    directly follows the Dense / Conv whose bias becomes its threshold.
    """
    layers, count = network.layers, 0
    for i in range(len(layers)):
        j = i
        while isinstance(layers[j], Activation) and j > 0 and isinstance(layers[j - 1], COMMUTING_LAYERS):
            layers[j - 1], layers[j] = layers[j], layers[j - 1]
            j, count = j - 1, count + 1
    return count


def replace_activations(network: Network) -> int:
    """Relu, Clip(0, k), HardSigmoid -> BoundedRelu; Sigmoid -> SharpSigmoid.

    The preceding linear layer absorbs what makes the replacement exact at
    sharpness 0: Clip's 1/k (and the next linear layer its k), HardSigmoid's
    alpha and beta, Sigmoid's gain. Relu, which is unbounded, is scaled by
    ``calibrate_scales`` from data instead.
    """
    count = 0
    for i, layer in enumerate(network.layers):
        if not isinstance(layer, Activation):
            continue
        linear = network.layers[i - 1] if i > 0 else None
        if not isinstance(linear, LinearLayer):
            raise UnsupportedModelError(f"activation '{layer.name}' ({layer.op_type}) does not follow a "
                                        "Dense or Conv layer, so it has no threshold to become")
        function = "bounded_relu"
        if layer.op_type == "Clip":
            bound = layer.params["max"]
            linear.scale_outputs(1.0 / bound)
            following = network.neighbour(i, +1, (LinearLayer,), through=COMMUTING_LAYERS)
            if following is not None:
                following.scale_inputs(bound)
        elif layer.op_type == "HardSigmoid":
            linear.scale_outputs(layer.params["alpha"], layer.params["beta"])
        elif layer.op_type == "Sigmoid":
            function = "sharp_sigmoid"
            linear.scale_outputs(float((1.0 + SHARPNESS_EPSILON) / SIGMOID_GAIN))
        network.layers[i] = Sharpenable(layer.name, function, 0.0, source=layer.op_type)
        count += 1
    return count
