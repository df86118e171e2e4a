"""The step network: every sharpenable unit at sharpness 1 becomes a Spike, and
every batch norm is folded away, so no spiking artifact carries one.

A unit computing step(W.x + b >= t) is emitted as Spike(W.x, threshold = t - b):
the bias is folded into a per-neuron threshold, as neuromorphic hardware wants it.

A batch norm x -> a x + c (per channel) folds exactly:
  * backward into the Dense / Conv right before it (W a, b a + c);
  * otherwise forward into the Dense / Conv it feeds, through reshapes and
    transposes only: L(a x + c) = L_a(x) + L(c). L(c) is one constant per output
    channel, except before a zero-padded Conv: there the windows that overlap
    the padding miss part of c, so it is one per output position, and it goes
    into the next Spike's thresholds, which become per neuron, (C, H, W).
Max pooling commutes with a batch norm whose scales are all >= 0
(maxpool(a x + c) = a maxpool(x) + c, bit for bit, since rounding is monotone
too): such a batch norm is first moved below the pooling.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedModelError
from ..network import LinearLayer, Network
from ..ops.activation import Sharpenable, Spike
from ..ops.batchnorm import BatchNorm
from ..ops.conv import Conv2d
from ..ops.pool import MaxPool2d


def to_step_network(network: Network) -> int:
    sink_batchnorms(network)
    for bn in _batchnorms(network):
        index = network.index_of(bn)
        if index > 0 and isinstance(network.layers[index - 1], LinearLayer):
            network.layers[index - 1].scale_outputs(*bn.affine())
            del network.layers[index]
    count = 0
    for i, layer in enumerate(network.layers):
        if not isinstance(layer, Sharpenable):
            continue
        linear = network.layers[i - 1]
        assert isinstance(linear, LinearLayer), "replace_activations keeps activations after linear layers"
        threshold = (layer.threshold - linear.bias_or_zero()).astype(np.float32)
        if isinstance(linear, Conv2d):
            threshold = threshold.reshape(-1, 1, 1)
        linear.bias = None
        network.layers[i] = Spike(layer.name, threshold)
        count += 1
    for bn in _batchnorms(network):
        _fold_forward(network, bn)
    return count


def sink_batchnorms(network: Network) -> int:
    """Move each batch norm whose scales are all >= 0 below the max pooling after it."""
    layers, count = network.layers, 0
    for i in reversed(range(len(layers))):
        j = i
        while isinstance(layers[j], BatchNorm) and j + 1 < len(layers) and isinstance(layers[j + 1], MaxPool2d) \
                and np.all(layers[j].affine()[0] >= 0):
            layers[j], layers[j + 1] = layers[j + 1], layers[j]
            j, count = j + 1, count + 1
    return count


def check_batchnorm_folds(network: Network) -> None:
    """Refuse, before any training, a network with a batch norm that the step network could not fold.

    Checked on the structure, not on values that training changes: the batch norm must
    follow a Dense / Conv or reach one through reshapes and transposes; a Conv must see
    each of its input channels come from one batch-norm channel (its weights are shared
    over positions); before a zero-padded Conv, a spiking layer must follow that Conv to
    take the per-position offset into its thresholds.
    """
    network = network.copy()
    sink_batchnorms(network)            # as to_step_network will
    shapes = network.shapes()
    for index, bn in enumerate(network.layers):
        if not isinstance(bn, BatchNorm) or (index > 0 and isinstance(network.layers[index - 1], LinearLayer)):
            continue
        channels = bn.per_element(np.arange(bn.channels, dtype=np.float64), shapes[index])
        target, (channels,) = fold_target(network, index, [channels])
        if not isinstance(target, Conv2d):
            continue
        if not np.all(channels == channels[:, :1, :1]):
            raise UnsupportedModelError(f"batch norm '{bn.name}' cannot be folded into '{target.name}' (conv2d): "
                                        "its channels do not stay the convolution's input channels")
        following = network.neighbour(network.index_of(target), +1, (Sharpenable, Spike), through=lambda layer: False)
        if any(target.pads) and following is None:
            raise UnsupportedModelError(f"batch norm '{bn.name}' before the zero-padded '{target.name}' (conv2d) "
                                        "folds into per-neuron thresholds, but no spiking layer follows it")


def fold_target(network: Network, index: int, maps: list[np.ndarray]) -> tuple[LinearLayer, list[np.ndarray]]:
    """The Dense / Conv that the batch norm at ``index`` folds forward into, and ``maps``
    (per-sample arrays of the batch norm's output shape) carried through the layers between."""
    bn = network.layers[index]
    for layer in network.layers[index + 1:]:
        if isinstance(layer, LinearLayer):
            return layer, maps
        if not layer.rearranges:
            raise UnsupportedModelError(
                f"batch norm '{bn.name}' is followed by '{layer.name}' ({layer.kind}) before any Dense or Conv "
                "layer, so it cannot be folded into the spiking network: only reshapes, transposes and (when "
                "every scale is >= 0) max pooling may stand between them")
        maps = [layer.forward(m[None])[0] for m in maps]
    raise UnsupportedModelError(f"batch norm '{bn.name}' is followed by no Dense or Conv layer to fold into")


def _fold_forward(network: Network, bn: BatchNorm) -> None:
    index = network.index_of(bn)
    shape = network.shapes()[index]
    scale, shift = bn.affine()
    target, (scale, shift) = fold_target(network, index, [bn.per_element(scale, shape),
                                                          bn.per_element(shift, shape)])
    offset = target.fold_input_affine(scale, shift)
    position = network.index_of(target)
    following = network.layers[position + 1] if position + 1 < len(network.layers) else None
    if isinstance(following, Spike):
        following.threshold = (following.threshold.astype(np.float64) - offset).astype(np.float32)
    elif offset.size == target.out_channels:
        target.bias = (target.bias_or_zero().astype(np.float64) + offset.reshape(-1)).astype(np.float32)
    else:
        raise UnsupportedModelError(f"batch norm '{bn.name}' before the zero-padded '{target.name}' (conv2d) "
                                    "folds into per-neuron thresholds, but no spiking layer follows it")
    del network.layers[index]


def _batchnorms(network: Network) -> list[BatchNorm]:
    return [layer for layer in network.layers if isinstance(layer, BatchNorm)]
