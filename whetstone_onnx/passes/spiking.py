"""The step network: every sharpenable unit at sharpness 1 becomes a Spike.

A unit computing step(W.x + b >= t) is emitted as Spike(W.x, threshold = t - b):
the bias is folded into a per-neuron threshold, as neuromorphic hardware wants it.
"""
from __future__ import annotations

import numpy as np

from ..network import LinearLayer, Network
from ..ops.activation import Sharpenable, Spike
from ..ops.conv import Conv2d


def to_step_network(network: Network) -> int:
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
    return count
