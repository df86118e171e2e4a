"""Keras 3 layers of the Whetstone method, usable on their own.

The formulas are those of docs/spiking-ops.md, in float32 and in the same
order, so a Keras model and its ONNX export compute identical spikes. Sharpness
and keys are *non-trainable* weights (the original library let tf.keras train
them by accident).
"""
from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from ..spiking_onnx import BRELU_THRESHOLD, SHARPNESS_EPSILON, SIGMOID_CLIP, SIGMOID_GAIN, nhot_key


class Spiking(keras.layers.Layer):
    """Base of the sharpenable activations: a scalar, non-trainable sharpness in [0, 1]."""

    def __init__(self, sharpness: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.initial_sharpness = float(sharpness)
        # Straight-through training at full sharpness: the forward pass stays the
        # step, the backward pass takes the gradient of the ramp at this sharpness
        # (None: the step's zero gradient, as in the original library).
        self.straight_through: float | None = None

    def build(self, input_shape):
        self.sharpness = self.add_weight(name="sharpness", shape=(), trainable=False,
                                         initializer=keras.initializers.Constant(self.initial_sharpness))

    def get_sharpness(self) -> float:
        return float(self.sharpness.numpy())

    def set_sharpness(self, value: float) -> None:
        self.sharpness.assign(float(min(max(value, 0.0), 1.0)))

    def sharpen(self, amount: float = 0.01) -> None:
        self.set_sharpness(self.get_sharpness() + amount)

    def _span(self, sharpness=None):
        return (1.0 - (self.sharpness if sharpness is None else sharpness)) + SHARPNESS_EPSILON

    def _select(self, step, smooth, surrogate):
        """The step at full sharpness (with a straight-through gradient if enabled), else the smooth form."""
        if self.straight_through is not None:
            step = surrogate + ops.stop_gradient(step - surrogate)
        return ops.where(self.sharpness >= 1.0, step, smooth)

    def get_config(self):
        return {**super().get_config(), "sharpness": self.initial_sharpness}


@keras.saving.register_keras_serializable(package="whetstone_onnx")
class BoundedRelu(Spiking):
    """clip((x - 0.5) / (1 - s + 1e-3) + 0.5, 0, 1); the step x >= 0.5 at s == 1."""

    def call(self, x):
        half = ops.cast(BRELU_THRESHOLD, x.dtype)
        ramp = ops.clip((x - half) / self._span() + half, 0.0, 1.0)
        step = ops.cast(x >= half, x.dtype)
        surrogate = None
        if self.straight_through is not None:
            surrogate = ops.clip((x - half) / self._span(self.straight_through) + half, 0.0, 1.0)
        return self._select(step, ramp, surrogate)


@keras.saving.register_keras_serializable(package="whetstone_onnx")
class SharpSigmoid(Spiking):
    """sigmoid(clip(k x, -40, 40)), k = 4 ln(2 + sqrt 3) / (1 - s + 1e-3); the step x >= 0 at s == 1."""

    def _smooth(self, x, sharpness=None):
        k = ops.cast(SIGMOID_GAIN, x.dtype) / self._span(sharpness)
        return ops.sigmoid(ops.clip(x * k, -float(SIGMOID_CLIP), float(SIGMOID_CLIP)))

    def call(self, x):
        surrogate = None if self.straight_through is None else self._smooth(x, self.straight_through)
        return self._select(ops.cast(x >= 0.0, x.dtype), self._smooth(x), surrogate)


@keras.saving.register_keras_serializable(package="whetstone_onnx")
class SoftmaxDecode(keras.layers.Layer):
    """softmax((2x - 1) @ (2 key - 1)^T): decodes an N-hot code; the key is not trainable."""

    def __init__(self, key=None, size: tuple[int, int] | None = None, **kwargs):
        super().__init__(**kwargs)
        if key is None:
            if size is None:
                raise ValueError("SoftmaxDecode needs a key or a size (classes, width)")
            key = key_generator(*size)
        self.key_array = np.asarray(key, np.float32)

    def build(self, input_shape):
        if input_shape[-1] != self.key_array.shape[1]:
            raise ValueError(f"key width {self.key_array.shape[1]} does not match the input width {input_shape[-1]}")
        self.key = self.add_weight(name="key", shape=self.key_array.shape, trainable=False,
                                   initializer=keras.initializers.Constant(self.key_array))

    def call(self, x):
        signed_key = 2.0 * self.key - 1.0
        return ops.softmax(ops.matmul(2.0 * x - 1.0, ops.transpose(signed_key)), axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.key_array.shape[0])

    def get_config(self):
        return {**super().get_config(), "key": self.key_array.tolist()}


def key_generator(num_classes: int, width: int, sparsity: float = 0.1, overlapping: bool = True,
                  seed: int = 0) -> np.ndarray:
    """A (num_classes, width) 0/1 key, seeded (the original took no seed).

    overlapping=True: each class gets a random code of about ``sparsity * width``
    ones (at least one), all codes distinct; codes may share units.
    overlapping=False: disjoint codes of ``width // num_classes`` units each.
    """
    if not overlapping:
        return nhot_key(num_classes, width, seed)
    ones = max(1, int(round(sparsity * width)))
    if math.comb(width, ones) < num_classes:
        raise ValueError(f"{num_classes} distinct codes of {ones} ones do not fit in width {width}")
    rng = np.random.default_rng(seed)
    codes: set[tuple[int, ...]] = set()
    key = np.zeros((num_classes, width), np.float32)
    for c in range(num_classes):
        while True:
            units = tuple(sorted(rng.choice(width, ones, replace=False).tolist()))
            if units not in codes:
                break
        codes.add(units)
        key[c, list(units)] = 1.0
    return key


@keras.saving.register_keras_serializable(package="whetstone_onnx")
class ConstantPad2D(keras.layers.Layer):
    """Pads the two spatial axes of an NHWC tensor with a constant (-inf for max pooling)."""

    def __init__(self, pads: tuple[int, int, int, int], value: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.pads, self.value = tuple(int(p) for p in pads), float(value)

    def call(self, x):
        top, left, bottom, right = self.pads
        return ops.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]], constant_values=self.value)

    def compute_output_shape(self, input_shape):
        top, left, bottom, right = self.pads
        n, h, w, c = input_shape
        return (n, None if h is None else h + top + bottom, None if w is None else w + left + right, c)

    def get_config(self):
        return {**super().get_config(), "pads": list(self.pads), "value": self.value}


@keras.saving.register_keras_serializable(package="whetstone_onnx")
class AveragePoolExcludingPad(keras.layers.Layer):
    """ONNX AveragePool with padding and count_include_pad=0: window sum / count of real cells."""

    def __init__(self, kernel, strides, pads, **kwargs):
        super().__init__(**kwargs)
        self.kernel, self.strides, self.pads = tuple(kernel), tuple(strides), tuple(pads)
        self.sum_pool = keras.layers.AveragePooling2D(self.kernel, self.strides, padding="valid")
        self.pad_values = ConstantPad2D(self.pads, 0.0)

    def call(self, x):
        ones = ops.ones_like(x[..., :1])
        return self.sum_pool(self.pad_values(x)) / self.sum_pool(self.pad_values(ones))

    def get_config(self):
        return {**super().get_config(), "kernel": list(self.kernel), "strides": list(self.strides),
                "pads": list(self.pads)}


@keras.saving.register_keras_serializable(package="whetstone_onnx")
class WeightedSum(keras.layers.Layer):
    """sum_k weights[k] * x_k (+ bias), one fixed weight per input and channel (the last axis of
    channels-last tensors): the Add of residual connections (ops/merge.py). Nothing trains."""

    def __init__(self, weights, bias=None, **kwargs):
        super().__init__(**kwargs)
        self.coefficients = np.asarray(weights, np.float32)
        self.offset = None if bias is None else np.asarray(bias, np.float32)

    def call(self, xs):
        total = None
        for x, w in zip(xs, self.coefficients):
            term = x if np.all(w == 1.0) else x * ops.convert_to_tensor(w, x.dtype)
            total = term if total is None else total + term
        return total if self.offset is None else total + ops.convert_to_tensor(self.offset, total.dtype)

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]

    def get_config(self):
        return {**super().get_config(), "weights": self.coefficients.tolist(),
                "bias": None if self.offset is None else self.offset.tolist()}


class SwitchableBatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization that, once ``frozen``, normalises with its moving statistics in
    training too (gamma and beta still train). Fine-tuning re-enables batch norm with
    this layer: batch statistics while sharpening, then frozen, recalibrated statistics
    once every layer is a step (see training.freeze_batchnorms). Changing ``frozen``
    takes effect when the model is compiled again."""

    frozen = False

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=False if self.frozen else training, mask=mask)


@keras.saving.register_keras_serializable(package="whetstone_onnx")
class FrozenBatchNormalization(SwitchableBatchNormalization):
    """BatchNormalization that normalises with its moving statistics in training too.

    gamma and beta train; the statistics stay as the converted model had them. The
    model being trained then computes, at every step, the function of the network
    it is written back into (a batch norm in training mode would normalise with each
    batch's statistics instead), and a batch norm written as a Mul and an Add, which
    comes with no statistics at all (mean 0, variance 1, epsilon 0), trains as the
    per-channel scale and shift it is.
    """

    frozen = True


# The original library's names, so classic Whetstone code runs with only its imports changed.
Spiking_BRelu = BoundedRelu
Spiking_Sigmoid = SharpSigmoid
Softmax_Decode = SoftmaxDecode
