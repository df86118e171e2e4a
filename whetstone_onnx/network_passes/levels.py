"""Levels: each hidden unit of a dense chain becomes K binary units with staggered thresholds.

One binary spike carries one bit; a real-valued output (an autoencoder's
reconstruction, a regression) needs more from the units before it. With
``levels`` K, the bounded-ReLU unit u between two Dense layers becomes K units:
copy j computes clip(K z_u - j, 0, 1) (weights K w_u, bias K b_u - j), and the
next layer reads each copy with weight w'_u / K. At sharpness 0 this is exact:
sum_j clip(K z - j, 0, 1) / K = clip(z, 0, 1), the unit it replaces. At sharpness 1
copy j fires when z >= (j + 1/2) / K, so the K spikes are a thermometer code of z
rounded to 1/K: still one time step, at most one spike per neuron, K times the
neurons of that layer and K times the synapses into and out of it.
"""
from __future__ import annotations

import numpy as np

from ..network import Network
from ..ops.activation import Sharpenable
from ..ops.dense import Dense

MAX_LEVELS = 64


def expand_levels(network: Network, levels: int) -> int:
    """Give every bounded-ReLU unit read from one Dense layer and read by one Dense layer ``levels``
    copies (see the module docstring). Returns the layers expanded."""
    if levels <= 1:
        return 0
    count = 0
    for index, unit in enumerate(network.layers):
        producer, reader = network.producer(index), network.only_reader(index)
        # (A unit already sharpened, as a Whetstone model's, is a step: copies would change it.)
        if not isinstance(unit, Sharpenable) or unit.function != "bounded_relu" or unit.sharpness > 0 \
                or producer is None \
                or reader is None or network.only_reader(producer) != index:
            continue
        before, after = network.layers[producer], network.layers[reader]
        if not isinstance(before, Dense) or not isinstance(after, Dense):
            continue
        offsets = np.tile(np.arange(levels, dtype=np.float64), before.out_channels)
        before.weight = (np.repeat(before.weight.astype(np.float64), levels, axis=0) * levels).astype(np.float32)
        before.bias = (np.repeat(before.bias_or_zero().astype(np.float64), levels) * levels - offsets).astype(np.float32)
        after.weight = (np.repeat(after.weight.astype(np.float64), levels, axis=1) / levels).astype(np.float32)
        count += 1
    return count
