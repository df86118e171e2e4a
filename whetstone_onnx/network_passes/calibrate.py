"""Data-driven scale calibration of unbounded units: ReLU's, and the bounded ReLUs
that stand in for LeakyRelu, Elu and the other unbounded activations
(network_passes/activations.py: CALIBRATED_SOURCES); and of the capped ReLUs (Clip(0, k),
ReLU6) whose inputs seldom reach their cap.

A bounded ReLU saturates at 1, a ReLU does not. Dividing a layer's weights and
bias by a high percentile p of its positive pre-activations (and giving p back
to the next linear layer's weights or batch norm's statistics, which is exact
because ReLU is positively homogeneous) makes the bounded unit at
sharpness 0 reproduce the original on all but the top (100 - percentile) % of
activations.

The same p sets where the fully sharpened unit fires (at p / 2), so the
percentile trades faithfulness at sharpness 0 against spiking accuracy before
fine-tuning. Measured on the fixtures (tools/bench_percentile.py): 99.9 keeps
sharpness 0 closest but silences most units once sharpened (17-64 % spiking
accuracy with no fine-tuning); 95 loses at most 0.6 points at sharpness 0 and
reaches 60-93 %; 80 and below start to cost at sharpness 0.

A capped ReLU (Clip(0, k): PyTorch's and Keras's ReLU6) is exact as a bounded ReLU
scaled by 1 / k (activations.py), but its step would then fire at k / 2: a trained
MobileNetV2's ReLU6 units mostly stay below 3, and with the exact scale its spiking
form starts at chance and loses 9 points after fine-tuning. When the percentile p of
such a unit's inputs is below its cap, it is scaled by p instead, as a ReLU is (the
cap was above nearly all of its values anyway).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..network import Network
from ..ops.activation import Sharpenable
from .activations import CALIBRATED_SOURCES, CAPPED_SOURCES, compensate_output_scale

DEFAULT_PERCENTILE = 95.0


@dataclass
class Calibration:
    scaled_layers: int
    outputs: np.ndarray      # the calibrated network's outputs on the samples (the output stage reuses them)


def calibrate_scales(network: Network, samples: np.ndarray, percentile: float = DEFAULT_PERCENTILE) -> Calibration:
    count = 0

    def forward(layer, i: int, inputs: list[np.ndarray]) -> np.ndarray:
        nonlocal count
        if isinstance(layer, Sharpenable) and layer.source in CALIBRATED_SOURCES + CAPPED_SOURCES:
            h = inputs[0]
            positive = h[h > 0]
            scale = float(np.percentile(positive, percentile)) if positive.size else 0.0
            # (A capped unit's inputs are already divided by its cap: 1 is the cap.)
            if scale > 0.0 and (layer.source not in CAPPED_SOURCES or scale < 1.0):
                # The layers that compensate come later in the order: the walk computes them as changed.
                network.layers[network.producer(i)].scale_outputs(1.0 / scale)
                inputs = [h / scale]
                compensate_output_scale(network, i, scale, h.shape[1:])
                count += 1
        return layer.forward(*inputs)

    outputs = network.walk(forward, np.asarray(samples, np.float64))[0]
    return Calibration(count, outputs)
