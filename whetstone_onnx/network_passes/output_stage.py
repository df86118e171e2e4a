"""The output stage: an N-hot spiking code with a decode, or a float readout.

N-hot (Whetstone's default): the last Dense layer grows from ``classes`` to
``width`` units; each class owns width // classes units of a seeded key, and
each unit starts as a copy of its class's logit row, centred (minus the mean
row). The units of one class get staggered thresholds, a thermometer code: the
j-th of n units fires when the class's logit passes its
(1 - 1/classes + span / classes * (j / (n - 1) - 1/2)) quantile on the
calibration samples, so the class's units fire around the share of inputs it should win,
and the decode (the class with the most units firing) still ranks two classes
that both pass the middle threshold. Identical copies fire together and carry
one bit per class: measured with the float hidden layers of the MNIST fixtures,
copies keep 89.8-92.0 % of the 96-99 % float accuracy, staggered thresholds
(span 0.6 / classes, i.e. quantiles 0.87, 0.89, 0.91, 0.93 for 10 classes)
95.5-97.8 %; a span half as large or twice as large loses 0.5-2 points.

Readout: the last Dense layer stays non-spiking; the class is the argmax of
its potential.

Regression (reconstruct, regress: tasks.py): the last weight layer is a real-valued
readout, and what the model computes after it (its output activation, such as a
sigmoid, and output reshapes) is its readout tail: kept as the model has it, out of
the passes' reach (an output sigmoid must not become a spiking unit).
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedModelError
from ..network import Layer, Network
from ..ops.activation import Activation, Sharpenable
from ..ops.conv import Conv2d
from ..ops.decode import NHotDecode
from ..spiking_onnx import nhot_key
from ..ops.dense import Dense
from ..ops.shape import Reshape

# "auto": both trained side by side during fine-tuning, the better validated one kept
# (finetune.py); N-hot when there is no fine-tuning to choose with.
OUTPUT_MODES = ("auto", "nhot", "readout")
# The code units' thresholds are placed by quantile; this scale only sets the
# ramp at sharpness 0, which should stay faithful.
OUTPUT_SCALE_PERCENTILE = 99.9
# The quantile levels of one class's units span this much, in units of 1 / classes.
THERMOMETER_SPAN = 0.6
# Default code units per class. After fine-tuning, ties between classes firing
# equally many units cost the N-hot output; more levels per class make them rarer.
# Held-out ties decided wrongly on mnist_conv: about 20 with 4 units (the paper's
# choice, for sharpening without a straight-through phase), 10 with 10 units, 2-4 with
# 20. Spiking % with the fine-tuning defaults (the decode's temperature scaled with
# the units, see finetune.py): mnist_conv 98.40 (20 units) vs 98.10 (10),
# torchstyle_mnist_conv 98.50 vs 98.85, mnist_dense 96.50 vs 95.60.
UNITS_PER_CLASS = 20


def conv_head_to_dense(network: Network) -> int:
    """A classifier head written as a 1x1 convolution over a 1x1 map and a flatten (the
    all-conv nets' global average pooling, Conv 1x1, Flatten) becomes the flatten and the
    Dense layer it computes, so that it can be the output stage. Returns 1 if it did."""
    layers = network.layers
    if len(layers) < 2 or not isinstance(layers[-1], Reshape) or not isinstance(layers[-2], Conv2d) \
            or network.follower(len(layers) - 2) != len(layers) - 1:
        return 0
    conv = layers[-2]
    channels, *spatial = ([network.input_shape] + network.shapes())[network.source_indices(len(layers) - 2)[0] + 1]
    if spatial != [1, 1] or conv.weight.shape[2:] != (1, 1) or conv.group != 1 or any(conv.pads) \
            or tuple(layers[-1].shape) != (conv.out_channels,):
        return 0
    flatten = Reshape(f"{conv.name}/flatten", (channels,))
    if conv.name in network.links:                 # the flatten reads what the convolution read
        network.links[flatten.name] = network.links.pop(conv.name)
    layers[-2:] = [flatten,
                   Dense(conv.name, conv.weight[:, :, 0, 0].copy(), None if conv.bias is None else conv.bias.copy())]
    return 1


def split_readout_tail(network: Network) -> list[Layer]:
    """Remove and return the readout tail of a regression network: the reshapes and the one float
    activation after its last Dense layer (``UnsupportedModelError`` when that layer is not a
    Dense, or the activation has per-channel parameters, which the host could not apply to
    the readout's flat values)."""
    layers, tail = network.layers, []
    while layers and layers[-1].name not in network.links and (
            isinstance(layers[-1], Reshape) or (isinstance(layers[-1], Activation)
                                                and not any(isinstance(t, Activation) for t in tail))):
        tail.insert(0, layers.pop())
    readout = layers[-1] if layers else None
    per_channel = next((t for t in tail if getattr(t, "slope", None) is not None and t.slope.size > 1), None)
    if not isinstance(readout, Dense) or per_channel is not None:
        layers.extend(tail)
        found = f"'{readout.name}' ({readout.kind})" if readout is not None else "nothing"
        raise UnsupportedModelError(
            f"the output activation '{per_channel.name}' has a slope per channel: only elementwise output "
            "activations are supported" if per_channel is not None else
            f"the output must be read out of a Dense (Gemm/MatMul) layer, optionally through one activation "
            f"and reshapes; found {found} before {'them' if tail else 'the output'}")
    return tail


def make_regression_output(network: Network, tail: list[Layer]) -> int:
    """The real-valued output stage: the last weight layer stays a float readout and its tail
    (see split_readout_tail) is put back after it. Returns the layers put back."""
    network.layers.extend(tail)
    network.regression = True
    network.num_classes = None
    return len(tail)


def make_output_stage(network: Network, mode: str, logits: np.ndarray, *, key_width: int | None = None,
                      seed: int = 0) -> int:
    last = network.layers[-1] if network.layers else None
    if isinstance(last, NHotDecode):
        # A Whetstone Keras model's export already decodes its own N-hot code: it is kept, whatever the mode.
        network.num_classes = int(last.key.shape[0])
        return 0
    if not isinstance(last, Dense):
        raise UnsupportedModelError(f"the last layer must be a Dense (Gemm/MatMul) layer to become the "
                                    f"output stage, found {last.kind if last else 'nothing'}")
    classes = last.out_channels
    if classes < 2:
        raise UnsupportedModelError(f"the last layer '{last.name}' has {classes} output: a classifier needs at least "
                                    "2 classes")
    network.num_classes = classes
    if mode == "readout":
        return 0
    width = key_width if key_width is not None else UNITS_PER_CLASS * classes
    if width < classes:
        raise UnsupportedModelError(f"--key-width {width} is smaller than the model's {classes} classes")
    key = nhot_key(classes, width, seed)

    weight = last.weight.astype(np.float64)
    bias = last.bias_or_zero().astype(np.float64)
    weight, bias = weight - weight.mean(axis=0), bias - bias.mean()
    # ``logits``: the network's outputs on the calibration samples (calibrate_scales computes them).
    logits = logits - logits.mean(axis=1, keepdims=True)          # the centred rows' outputs
    per_class = width // classes
    # Quantile level of the j-th unit of each class: evenly staggered around 1 - 1/classes.
    position = np.arange(per_class) / (per_class - 1) - 0.5 if per_class > 1 else np.zeros(1)
    levels = np.clip(1.0 - 1.0 / classes + position * THERMOMETER_SPAN / classes, 0.0, 1.0)
    thresholds = np.quantile(logits, levels, axis=0)                # (per_class, classes)
    shifted = logits - thresholds[(per_class - 1) // 2]
    positive = shifted[shifted > 0]
    scale = float(np.percentile(positive, OUTPUT_SCALE_PERCENTILE)) if positive.size else 1.0
    # Unit j of class c fires (sharpness 1) when (logit_c - threshold_jc) / scale + 0.5 >= 0.5.
    unit_weight = np.zeros((width, weight.shape[1]))     # (out, in); units no class owns stay silent
    unit_bias = np.zeros(width)
    for c in range(classes):
        for j, unit in enumerate(np.flatnonzero(key[c])):
            unit_weight[unit] = weight[c] / scale
            unit_bias[unit] = (bias[c] - thresholds[j, c]) / scale + 0.5
    last.weight, last.bias = unit_weight.astype(np.float32), unit_bias.astype(np.float32)
    network.layers.append(Sharpenable(f"{last.name}/code", "bounded_relu", 0.0, source="nhot"))
    network.layers.append(NHotDecode(f"{last.name}/decode", key))
    return 1
