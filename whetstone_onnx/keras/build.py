"""Network -> Keras 3 model (TensorFlow backend), and trained weights back.

Keras convolutions run channels-last on the CPU, the Network is channels-first:
the builder tracks which layout the current tensor is in and inserts a Permute
only where a layer needs the other one (a conv after a reshape, a reshape after
a conv). Each op family's ``to_keras`` (in ``whetstone_onnx/ops``) adds its layers
through a ``KerasBuilder``; ``write_back`` reads trained weights, sharpness and
any re-enabled batch norm back into the Network.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import keras
import numpy as np

from ..errors import UnsupportedModelError
from ..network import Network, batchnorm_affine
from .layers import SwitchableBatchNormalization


class KerasBuilder:
    """The tensor under construction, its layout, and unique Keras layer names."""

    def __init__(self, network: Network):
        self.network = network
        self.inputs = keras.Input(shape=network.input_shape, name=_clean(network.input_name) or "input")
        self.tensor = self.inputs
        self.channels_last = False          # only meaningful for rank-3 per-sample tensors
        self.names: dict[int, str] = {}      # id(network layer) -> its main Keras layer's name
        self._taken: set[str] = set()

    def name(self, text: str) -> str:
        base = _clean(text) or "layer"
        candidate, k = base, 1
        while candidate in self._taken:
            candidate, k = f"{base}_{k}", k + 1
        self._taken.add(candidate)
        return candidate

    def apply(self, keras_layer: keras.layers.Layer, owner=None, weights: list[np.ndarray] | None = None):
        """Apply ``keras_layer`` to the current tensor; ``owner`` maps a network layer to it."""
        self.tensor = keras_layer(self.tensor)
        if weights is not None:
            keras_layer.set_weights(weights)
        if owner is not None:
            self.names[id(owner)] = keras_layer.name
        return keras_layer

    def to_channels_last(self, where: str) -> None:
        if len(self.tensor.shape) != 4:
            raise UnsupportedModelError(f"layer '{where}' needs a (C, H, W) input, got {self.tensor.shape[1:]}")
        if not self.channels_last:
            self.apply(keras.layers.Permute((2, 3, 1), name=self.name(f"{where}_to_nhwc")))
            self.channels_last = True

    def aligned(self, states: list[tuple], where: str) -> list:
        """The tensors of several ``(tensor, channels_last)`` states in one layout, channels last for
        images (the merge then works on the last axis), for a layer that merges them."""
        self.channels_last = any(len(tensor.shape) == 4 for tensor, _ in states)
        tensors = []
        for k, (tensor, last) in enumerate(states):
            if len(tensor.shape) == 4 and not last:
                tensor = keras.layers.Permute((2, 3, 1), name=self.name(f"{where}_input{k}_layout"))(tensor)
            tensors.append(tensor)
        return tensors

    def to_channels_first(self, where: str) -> None:
        if len(self.tensor.shape) == 4 and self.channels_last:
            self.apply(keras.layers.Permute((3, 1, 2), name=self.name(f"{where}_to_nchw")))
        self.channels_last = False


@dataclass
class KerasModel:
    model: keras.Model
    layer_names: dict[int, str] = field(default_factory=dict)     # id(network layer) -> Keras layer name
    batchnorm_names: dict[int, str] = field(default_factory=dict)  # id(linear layer) -> its BatchNormalization


def build_keras(network: Network, *, batchnorm_stats: dict[int, tuple[np.ndarray, np.ndarray]] | None = None
                ) -> KerasModel:
    """The network as a Keras model computing the same function.

    ``batchnorm_stats`` maps id(linear layer) -> (mean, variance) of its outputs:
    a BatchNormalization initialised to the identity on those statistics is
    inserted after that layer, for training; ``write_back`` folds it again.
    """
    builder = KerasBuilder(network)
    batchnorms: dict[int, str] = {}

    def add(layer, index: int, states: list[tuple]) -> tuple:
        if layer.merges:
            layer.to_keras(builder, states)
        else:
            builder.tensor, builder.channels_last = states[0]
            layer.to_keras(builder)
        if batchnorm_stats and id(layer) in batchnorm_stats:
            mean, variance = batchnorm_stats[id(layer)]
            axis = -1 if (len(builder.tensor.shape) != 4 or builder.channels_last) else 1
            epsilon = 1e-3
            std = np.sqrt(variance + epsilon)
            bn = builder.apply(SwitchableBatchNormalization(axis=axis, epsilon=epsilon,
                                                               name=builder.name(f"{layer.name}_bn")),
                               weights=[std.astype(np.float32), mean.astype(np.float32),
                                        mean.astype(np.float32), variance.astype(np.float32)])
            batchnorms[id(layer)] = bn.name
        return builder.tensor, builder.channels_last

    builder.tensor, builder.channels_last = network.walk(add, (builder.inputs, False))[0]
    builder.to_channels_first("output")
    model = keras.Model(builder.inputs, builder.tensor, name="whetstone")
    return KerasModel(model, builder.names, batchnorms)


def write_back(network: Network, built: KerasModel) -> None:
    """Trained weights, batch norms, sharpness and folded re-enabled batch norm from Keras into
    ``network`` (in place)."""
    for layer in network.layers:
        name = built.layer_names.get(id(layer))
        if name is None:
            continue
        layer.from_keras(built.model.get_layer(name))
        if id(layer) in built.batchnorm_names:
            batchnorm = built.model.get_layer(built.batchnorm_names[id(layer)])
            layer.scale_outputs(*batchnorm_affine(*batchnorm.get_weights(), batchnorm.epsilon))


def _clean(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip("_")
