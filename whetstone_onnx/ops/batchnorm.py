"""Batch normalization that the ONNX passes could not fold into a linear layer
(onnx_passes/batchnorm_folds.py): typically one after an activation and before a
zero-padded Conv, or one on the input, including those Keras writes as a Mul
and an Add. It stays a layer of the float and sharpenable networks, is trained
through Keras, and is folded away exactly when the step network is made
(network_passes/step_network.py), so no spiking artifact carries it.

y = gamma * (x - mean) / sqrt(var + epsilon) + beta, per channel: axis 0 of the
per-sample tensor, i.e. C of (C, H, W) or the features of (F,).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..network import Layer, OnnxBuilder, batchnorm_affine
from .registry import LiftContext, lifts


@dataclass(eq=False)
class BatchNorm(Layer):
    name: str
    gamma: np.ndarray        # (C,) float32, as are the three below
    beta: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    epsilon: float           # a float32 value: ONNX stores the attribute as float32

    kind = "batchnorm"

    @property
    def channels(self) -> int:
        return int(self.gamma.size)

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(scale, shift) per channel in float64: y = x * scale + shift."""
        return batchnorm_affine(self.gamma, self.beta, self.mean, self.var, self.epsilon)

    def per_element(self, values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Per-channel ``values`` spread over a per-sample tensor of ``shape`` (channel axis first)."""
        return np.broadcast_to(values.reshape(-1, *(1,) * (len(shape) - 1)), shape)

    def forward(self, x):
        scale, shift = self.affine()
        return x * self.per_element(scale, x.shape[1:]) + self.per_element(shift, x.shape[1:])

    def scale_inputs(self, scale: float) -> None:
        """Compose with x -> x * scale. BN(k x) is BN on x with mean / k, var / k^2 and
        epsilon / k^2: gamma and beta keep their trained values and the statistics their meaning."""
        self.mean = (self.mean.astype(np.float64) / scale).astype(np.float32)
        self.var = (self.var.astype(np.float64) / scale ** 2).astype(np.float32)
        self.epsilon = float(np.float32(self.epsilon / scale ** 2))

    def emit(self, builder: OnnxBuilder, x: str) -> str:
        inputs = [x] + [builder.constant(f"{self.name}.{part}", getattr(self, part))
                        for part in ("gamma", "beta", "mean", "var")]
        return builder.node("BatchNormalization", inputs, self.name, name=self.name, epsilon=self.epsilon)

    def to_keras(self, builder) -> None:
        from ..keras.layers import FrozenBatchNormalization
        # Keras normalises one axis: the last of a channels-last image, the features of a flat tensor.
        if len(builder.tensor.shape) == 4:
            builder.to_channels_last(self.name)
            axis = -1
        else:
            builder.to_channels_first(self.name)
            axis = 1
        builder.apply(FrozenBatchNormalization(axis=axis, epsilon=self.epsilon, name=builder.name(self.name)),
                      owner=self, weights=[self.gamma, self.beta, self.mean, self.var])

    def from_keras(self, keras_layer) -> None:
        self.gamma, self.beta, self.mean, self.var = (w.astype(np.float32) for w in keras_layer.get_weights())

    def describe(self):
        return {**super().describe(), "channels": self.channels, "epsilon": self.epsilon}


@lifts("BatchNormalization")
def lift_batchnorm(node, ctx: LiftContext) -> BatchNorm:
    if any(out.uses() for out in node.outputs[1:]):
        raise ctx.fail("the training-mode outputs (running mean and variance) are read")
    channels = ctx.input_shape[0] if ctx.input_shape else 0
    params = [ctx.constant(index, what).astype(np.float32).reshape(-1)
              for index, what in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance"))]
    if any(p.size != channels for p in params):
        raise ctx.fail(f"expects {channels} values per parameter (the channels of {ctx.input_shape})")
    return BatchNorm(node.name, *params, epsilon=float(np.float32(ctx.float("epsilon", 1e-5))))
