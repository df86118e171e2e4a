"""The output stage: an N-hot spiking code with a decode, or a float readout.

N-hot (Whetstone's default): the last Dense layer grows from ``classes`` to
``width`` units; each class owns width // classes units of a seeded key, and
each unit starts as a copy of its class's logit row. The rows are centred
(minus the mean row) and each class's threshold is placed at the
(1 - 1/classes) quantile of its logit on the calibration samples, so that a
unit fires for about the share of inputs its class should win.

Readout: the last Dense layer stays non-spiking; the class is the argmax of
its potential.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedModelError
from ..network import Network
from ..ops.activation import Sharpenable
from ..ops.decode import NHotDecode, nhot_key
from ..ops.dense import Dense

OUTPUT_MODES = ("nhot", "readout")
# The code units' thresholds are placed by quantile; this scale only sets the
# ramp at sharpness 0, which should stay faithful.
OUTPUT_SCALE_PERCENTILE = 99.9


def make_output_stage(network: Network, mode: str, samples: np.ndarray, *, key_width: int | None = None,
                      seed: int = 0) -> int:
    last = network.layers[-1] if network.layers else None
    if not isinstance(last, Dense):
        raise UnsupportedModelError(f"the last layer must be a Dense (Gemm/MatMul) layer to become the "
                                    f"output stage, found {last.kind if last else 'nothing'}")
    classes = last.out_channels
    network.num_classes = classes
    if mode == "readout":
        return 0
    width = key_width if key_width is not None else 4 * classes
    if width < classes:
        raise UnsupportedModelError(f"--key-width {width} is smaller than the model's {classes} classes")
    key = nhot_key(classes, width, seed)

    weight = last.weight.astype(np.float64)
    bias = last.bias_or_zero().astype(np.float64)
    weight, bias = weight - weight.mean(axis=0), bias - bias.mean()
    logits = network.forward(samples)
    logits = logits - logits.mean(axis=1, keepdims=True)          # the centred rows' outputs
    quantile = np.quantile(logits, 1.0 - 1.0 / classes, axis=0)     # per class
    shifted = logits - quantile
    positive = shifted[shifted > 0]
    scale = float(np.percentile(positive, OUTPUT_SCALE_PERCENTILE)) if positive.size else 1.0
    # Unit of class c: fires (sharpness 1) when (logit_c - quantile_c) / scale + 0.5 >= 0.5.
    class_rows = weight / scale
    class_bias = (bias - quantile) / scale + 0.5
    owner = key.argmax(axis=0)
    owned = key.sum(axis=0) > 0
    unit_weight = np.where(owned[:, None], class_rows[owner], 0.0)
    unit_bias = np.where(owned, class_bias[owner], 0.0)
    last.weight, last.bias = unit_weight.astype(np.float32), unit_bias.astype(np.float32)
    network.layers.append(Sharpenable(f"{last.name}/code", "bounded_relu", 0.0, source="nhot"))
    network.layers.append(NHotDecode(f"{last.name}/decode", key))
    return 1
