"""Network passes that turn float activations into sharpenable Whetstone units."""
from __future__ import annotations

from ..errors import UnsupportedModelError
from ..network import LinearLayer, Network
from ..ops.activation import Activation, Sharpenable
from ..ops.batchnorm import BatchNorm
from ..ops.pool import AvgPool2d, MaxPool2d
from ..ops.shape import Reshape, Transpose
from ..spiking_onnx import SHARPNESS_EPSILON, SIGMOID_GAIN
from .spiking import check_batchnorm_folds, sink_batchnorms

# Layers an elementwise monotone activation commutes with.
COMMUTING_LAYERS = (MaxPool2d, Reshape, Transpose)
# Layers a uniform scale x -> k x passes through unchanged (positively homogeneous ones).
SCALE_TRANSPARENT_LAYERS = (*COMMUTING_LAYERS, AvgPool2d)


def activations_before_pooling(network: Network) -> int:
    """Move each activation up against its linear layer, each batch norm down past max pooling.

    relu(maxpool(x)) == maxpool(relu(x)) for any non-decreasing activation, and
    reshapes commute with every elementwise op; after this pass each activation
    directly follows the Dense / Conv whose bias becomes its threshold. A batch
    norm before max pooling moves below it when that is exact (passes/spiking.py),
    so that what training does to its scales cannot stop it from folding.
    """
    layers, count = network.layers, 0
    for i in range(len(layers)):
        j = i
        while isinstance(layers[j], (Activation, Sharpenable)) and j > 0 \
                and isinstance(layers[j - 1], COMMUTING_LAYERS):
            layers[j - 1], layers[j] = layers[j], layers[j - 1]
            j, count = j - 1, count + 1
    return count + sink_batchnorms(network)


def compensate_output_scale(network: Network, index: int, factor: float) -> None:
    """The layer at ``index`` now outputs its former values divided by ``factor``: the
    next layer that can takes the factor back, exactly (a Dense / Conv in its weights,
    a batch norm in its statistics)."""
    following = network.neighbour(index, +1, (LinearLayer, BatchNorm), through=SCALE_TRANSPARENT_LAYERS)
    if following is not None:
        following.scale_inputs(factor)


def replace_activations(network: Network) -> int:
    """Relu, Clip(0, k), HardSigmoid -> BoundedRelu; Sigmoid -> SharpSigmoid.

    The preceding linear layer absorbs what makes the replacement exact at
    sharpness 0: Clip's 1/k (and the next linear layer or batch norm its k),
    HardSigmoid's alpha and beta, Sigmoid's gain. Relu, which is unbounded, is
    scaled by ``calibrate_scales`` from data instead. A network with a batch norm
    that the step network could not fold is refused here, before any training.
    """
    count = 0
    for i, layer in enumerate(network.layers):
        if not isinstance(layer, (Activation, Sharpenable)):
            continue
        linear = network.layers[i - 1] if i > 0 else None
        if not isinstance(linear, LinearLayer):
            raise UnsupportedModelError(f"activation '{layer.name}' ({layer.op_type}) does not follow a "
                                        "Dense or Conv layer, so it has no threshold to become")
        if isinstance(layer, Sharpenable):
            continue                   # already a Whetstone unit (a Whetstone Keras model's export)
        function = "bounded_relu"
        if layer.op_type == "Clip":
            bound = layer.params["max"]
            linear.scale_outputs(1.0 / bound)
            compensate_output_scale(network, i, bound)
        elif layer.op_type == "HardSigmoid":
            linear.scale_outputs(layer.params["alpha"], layer.params["beta"])
        elif layer.op_type == "Sigmoid":
            function = "sharp_sigmoid"
            linear.scale_outputs(float((1.0 + SHARPNESS_EPSILON) / SIGMOID_GAIN))
        network.layers[i] = Sharpenable(layer.name, function, 0.0, source=layer.op_type)
        count += 1
    check_batchnorm_folds(network)
    return count
