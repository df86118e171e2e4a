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
from ..ops.merge import Add
from ..ops.pool import MaxPool2d


def to_step_network(network: Network) -> int:
    sink_batchnorms(network)
    for bn in _batchnorms(network):
        producer = network.producer(network.index_of(bn))
        if producer is not None and network.layers[producer].weighted_sum:
            network.layers[producer].scale_outputs(*bn.affine())
            network.remove(network.index_of(bn))
    count, shapes = 0, network.shapes()
    for i, layer in enumerate(network.layers):
        if not isinstance(layer, Sharpenable):
            continue
        linear = network.layers[network.producer(i)]
        assert linear.weighted_sum, "replace_activations keeps activations after weighted sums"
        threshold = (layer.threshold - linear.bias_or_zero()).astype(np.float32)    # float32, as the unit computes
        linear.bias = None
        if isinstance(linear, Add):
            threshold = (threshold - _take_input_biases(network, network.index_of(linear))).astype(np.float32)
        threshold = threshold.reshape((-1,) + (1,) * (len(shapes[i]) - 1))
        network.layers[i] = Spike(layer.name, threshold)
        count += 1
    for bn in _batchnorms(network):
        _fold_forward(network, bn)
    return count


def _take_input_biases(network: Network, index: int) -> np.ndarray:
    """Remove the biases of the Dense / Conv layers that only the Add at ``index`` reads; return
    what they added to the sum (per channel): the thresholds after the sum take it."""
    add = network.layers[index]
    total, absorbed = np.zeros(add.out_channels), set()
    for source, weights in zip(network.source_indices(index), add.weights):
        layer = network.layers[source] if source >= 0 else None
        if isinstance(layer, LinearLayer) and network.only_reader(source) == index and layer.bias is not None:
            total += weights.astype(np.float64) * layer.bias.astype(np.float64)    # each time the sum reads it
            absorbed.add(source)
    for source in absorbed:
        network.layers[source].bias = None
    return total


def sink_batchnorms(network: Network) -> int:
    """Move each batch norm whose scales are all >= 0 below the max pooling after it."""
    count = 0
    for bn in reversed(_batchnorms(network)):
        while np.all(bn.affine()[0] >= 0):
            following = network.follower(network.index_of(bn))
            if following is None or not isinstance(network.layers[following], MaxPool2d):
                break
            network.swap_with_follower(network.index_of(bn))
            count += 1
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
        producer = network.producer(index)
        if not isinstance(bn, BatchNorm) or (producer is not None and network.layers[producer].weighted_sum):
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
    bn, position = network.layers[index], network.follower(index)
    while position is not None:
        layer, position = network.layers[position], network.follower(position)
        if isinstance(layer, LinearLayer):
            return layer, maps
        if not layer.rearranges:
            raise UnsupportedModelError(
                f"batch norm '{bn.name}' is followed by '{layer.name}' ({layer.kind}) before any Dense or Conv "
                "layer, so it cannot be folded into the spiking network: only reshapes, transposes and (when "
                "every scale is >= 0) max pooling may stand between them")
        maps = [layer.forward(m[None])[0] for m in maps]
    raise UnsupportedModelError(f"batch norm '{bn.name}' is followed by no Dense or Conv layer (that only it "
                                "reads) to fold into")


def _fold_forward(network: Network, bn: BatchNorm) -> None:
    index = network.index_of(bn)
    shape = network.shapes()[index]
    scale, shift = bn.affine()
    target, (scale, shift) = fold_target(network, index, [bn.per_element(scale, shape),
                                                          bn.per_element(shift, shape)])
    offset = target.fold_input_affine(scale, shift)
    position = network.follower(network.index_of(target))
    following = network.layers[position] if position is not None else None
    if isinstance(following, Spike):
        following.threshold = (following.threshold.astype(np.float64) - offset).astype(np.float32)
    elif offset.size == target.out_channels:
        target.bias = (target.bias_or_zero().astype(np.float64) + offset.reshape(-1)).astype(np.float32)
    else:
        raise UnsupportedModelError(f"batch norm '{bn.name}' before the zero-padded '{target.name}' (conv2d) "
                                    "folds into per-neuron thresholds, but no spiking layer follows it")
    network.remove(index)


def _batchnorms(network: Network) -> list[BatchNorm]:
    return [layer for layer in network.layers if isinstance(layer, BatchNorm)]
