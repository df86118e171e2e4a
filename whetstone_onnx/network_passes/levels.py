"""Levels: each hidden unit becomes K binary units with staggered thresholds.

One binary spike carries one bit; a real-valued output (an autoencoder's
reconstruction, a regression) needs more from the units before it. With
``levels`` K, the bounded-ReLU unit u computed by a Dense layer (or a channel of a
convolution) becomes K units: copy j computes clip(K z_u - j, 0, 1) (weights K w_u,
bias K b_u - j), and the next Dense or convolution reads each copy with weight
w'_u / K. At sharpness 0 this is exact: sum_j clip(K z - j, 0, 1) / K = clip(z, 0, 1),
the unit it replaces. At sharpness 1 copy j fires when z >= (j + 1/2) / K, so the K
spikes are a thermometer code of z rounded to 1/K: still one time step, at most one
spike per neuron, K times the neurons of that layer and K times the synapses into and
out of it. A convolution's copies are K adjacent channels (of a grouped convolution,
such as MobileNet's depthwise one, K outputs of the channel's own group); pooling between the units
and their reader acts on each copy alone (max and average commute with the code: a
thermometer code of the max is the max of the codes, and the reader is linear), and a
flatten before a Dense reader keeps channel-major order. Units read directly by several
Dense / ungrouped convolutions (the composed projections of a linear bottleneck that
several layers read) give each of them the copies.
"""
from __future__ import annotations

import numpy as np

from ..network import Layer, Network
from ..ops.activation import Sharpenable
from ..ops.conv import Conv2d
from ..ops.dense import Dense
from ..ops.pool import Pool2d
from ..ops.shape import Reshape

MAX_LEVELS = 64


def expand_levels(network: Network, levels: int) -> int:
    """Give every bounded-ReLU unit computed by a Dense or convolution (grouped too: each channel's
    copies stay in its group) that only it reads, and read by Dense or ungrouped convolutions
    (directly, or one across pooling and a flatten), ``levels`` copies (see the module
    docstring). Returns the layers expanded."""
    if levels <= 1:
        return 0
    count = 0
    for index, unit in enumerate(network.layers):
        producer = network.producer(index)
        # (A unit already sharpened, as a Whetstone model's, is a step: copies would change it.)
        if not isinstance(unit, Sharpenable) or unit.function != "bounded_relu" or unit.sharpness > 0 \
                or producer is None or network.only_reader(producer) != index \
                or not isinstance(network.layers[producer], (Dense, Conv2d)):
            continue
        readers = [network.layers[i] for i in dict.fromkeys(network.consumers(index))]
        if len(readers) == 1:       # across pooling and a flatten: the path's last layer reads the copies
            path = _path_to_reader(network, index)
            readers = path[-1:] if path else []
        else:
            path = readers
        if not readers or not all(_weighted(layer) for layer in readers):
            continue
        flatten = next((layer for layer in path if isinstance(layer, Reshape)), None)
        # Channel-major: a Dense after a flatten reads one block of columns per channel.
        positions = 1 if flatten is None else \
            int(np.prod(network.shapes()[network.producer(network.index_of(flatten))][1:]))
        _copy_outputs(network.layers[producer], levels)
        if flatten is not None:
            flatten.shape = (flatten.shape[0] * levels,)
        for reader in readers:
            _read_copies(reader, levels, positions)
        count += 1
    return count


def _weighted(layer: Layer) -> bool:
    """A Dense, or a convolution whose every output channel reads every input channel."""
    return isinstance(layer, Dense) or (isinstance(layer, Conv2d) and layer.group == 1)


def _path_to_reader(network: Network, index: int) -> list[Layer] | None:
    """The layers from the unit at ``index`` to the weighted layer that reads it, each the only
    reader of the one before: pooling, then at most one flatten to a Dense; None otherwise."""
    path, position, flattened = [], index, False
    while (reader := network.only_reader(position)) is not None:
        layer = network.layers[reader]
        path.append(layer)
        if _weighted(layer):
            return path if isinstance(layer, Dense) or not flattened else None
        if isinstance(layer, Reshape) and len(layer.shape) == 1 and not flattened:
            flattened = True
        elif not isinstance(layer, Pool2d) or flattened:
            return None
        position = reader
    return None


def _copy_outputs(layer: Dense | Conv2d, levels: int) -> None:
    """Each output unit (channel) becomes ``levels`` adjacent ones: weights times K, bias K b - j."""
    offsets = np.tile(np.arange(levels, dtype=np.float64), layer.out_channels)
    layer.weight = (np.repeat(layer.weight.astype(np.float64), levels, axis=0) * levels).astype(np.float32)
    layer.bias = (np.repeat(layer.bias_or_zero().astype(np.float64), levels) * levels - offsets).astype(np.float32)


def _read_copies(layer: Dense | Conv2d, levels: int, positions: int) -> None:
    """The reader takes each copy with the weight of the unit it replaces, over K; a Dense after a
    flatten reads ``positions`` columns per channel."""
    weight = layer.weight.astype(np.float64)
    if isinstance(layer, Dense):
        weight = np.repeat(weight.reshape(len(weight), -1, positions), levels, axis=1).reshape(len(weight), -1)
    else:
        weight = np.repeat(weight, levels, axis=1)
    layer.weight = (weight / levels).astype(np.float32)
