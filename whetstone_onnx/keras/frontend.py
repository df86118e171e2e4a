"""Keras front end: a Keras model built with the Whetstone layers becomes a Network.

This is how a model written in the classic Whetstone style (Dense +
Spiking_BRelu + Softmax_Decode, trained under a sharpener) reaches the same
emitters, checks and artifacts as a converted ONNX model. Keras tensors are
channels-last; the Network is channels-first, so a Transpose is put in front
of the first convolution and before a flatten that follows one.
A BatchNormalization right after a Dense / Conv2D is folded into it; any other
(after an activation, on the input) stays a batch-norm layer, which the step
network folds away.
"""
from __future__ import annotations

import keras
import numpy as np

from ..errors import UnsupportedModelError
from ..network import LinearLayer, Network
from ..ops.activation import Activation, Sharpenable
from ..ops.batchnorm import BatchNorm, batchnorm_affine
from ..ops.conv import Conv2d
from ..ops.decode import NHotDecode
from ..ops.dense import Dense
from ..ops.padding import same_padding
from ..ops.pool import AvgPool2d, MaxPool2d
from ..ops.shape import Reshape, Transpose
from .layers import BoundedRelu, SharpSigmoid, SoftmaxDecode

_ACTIVATIONS = {"relu": "Relu", "sigmoid": "Sigmoid"}


def network_from_keras(model: keras.Model) -> Network:
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    network = Network(input_name="input", input_shape=shape, output_name="output")
    channels_last = len(shape) == 3           # Keras images are (H, W, C)

    def to_channels_first(name: str) -> None:
        nonlocal channels_last
        if channels_last:
            network.layers.append(Transpose(f"{name}/to_nchw", (2, 0, 1)))
            channels_last = False

    def to_channels_last(name: str) -> None:
        nonlocal channels_last
        if not channels_last and len(network.shapes()[-1] if network.layers else shape) == 3:
            network.layers.append(Transpose(f"{name}/to_nhwc", (1, 2, 0)))
            channels_last = True

    for layer in model.layers:
        name = layer.name
        if isinstance(layer, (keras.layers.InputLayer, keras.layers.Dropout)):
            continue
        if isinstance(layer, keras.layers.Dense):
            weights = layer.get_weights()
            network.layers.append(Dense(name, np.ascontiguousarray(weights[0].T, np.float32),
                                        weights[1].astype(np.float32) if layer.use_bias else None))
            _activation(network, layer)
        elif isinstance(layer, keras.layers.Conv2D):
            to_channels_first(name)
            weights = layer.get_weights()
            kernel = weights[0].transpose(3, 2, 0, 1)
            in_shape = network.shapes()[-1] if network.layers else shape
            pads = _same_pads(in_shape[1:], kernel.shape[2:], layer.strides, layer.dilation_rate) \
                if layer.padding == "same" else (0, 0, 0, 0)
            network.layers.append(Conv2d(name, np.ascontiguousarray(kernel, np.float32),
                                         weights[1].astype(np.float32) if layer.use_bias else None,
                                         tuple(layer.strides), pads, tuple(layer.dilation_rate), layer.groups))
            _activation(network, layer)
        elif isinstance(layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)):
            to_channels_first(name)
            in_shape = network.shapes()[-1]
            pads = _same_pads(in_shape[1:], layer.pool_size, layer.strides, (1, 1)) \
                if layer.padding == "same" else (0, 0, 0, 0)
            pool = MaxPool2d if isinstance(layer, keras.layers.MaxPooling2D) else AvgPool2d
            network.layers.append(pool(name, tuple(layer.pool_size), tuple(layer.strides), pads))
        elif isinstance(layer, keras.layers.Flatten):
            to_channels_last(name)        # Keras flattens in H, W, C order
            network.layers.append(Reshape(name, (int(np.prod(network.shapes()[-1])),)))
            channels_last = False
        elif isinstance(layer, keras.layers.BatchNormalization):
            if layer.axis not in (-1, len(layer.input.shape) - 1):
                raise UnsupportedModelError(f"Keras layer '{name}' (BatchNormalization) normalises axis "
                                            f"{layer.axis}; only the last (channels) axis is supported")
            if network.layers and isinstance(network.layers[-1], LinearLayer):
                _fold_batchnorm(network.layers[-1], layer)
            else:
                to_channels_first(name)       # the network's channel axis is the first per sample
                weights = (np.asarray(w, np.float32) for w in _batchnorm_weights(layer))
                network.layers.append(BatchNorm(name, *weights, epsilon=float(np.float32(layer.epsilon))))
        elif isinstance(layer, (BoundedRelu, SharpSigmoid)):
            function = "bounded_relu" if isinstance(layer, BoundedRelu) else "sharp_sigmoid"
            network.layers.append(Sharpenable(name, function, layer.get_sharpness(), source="keras"))
        elif isinstance(layer, SoftmaxDecode):
            network.layers.append(NHotDecode(name, np.asarray(layer.key_array, np.float32)))
            network.num_classes = int(layer.key_array.shape[0])
        elif isinstance(layer, keras.layers.ReLU) and layer.max_value is None:
            network.layers.append(Activation(name, "Relu"))
        elif isinstance(layer, keras.layers.Activation) and layer.activation.__name__ in _ACTIVATIONS:
            network.layers.append(Activation(name, _ACTIVATIONS[layer.activation.__name__]))
        else:
            raise UnsupportedModelError(f"Keras layer '{name}' ({type(layer).__name__}) is not supported")
    to_channels_first("output")
    if network.num_classes is None and network.layers and isinstance(network.layers[-1], Dense):
        network.num_classes = network.layers[-1].out_channels
    return network


def _activation(network: Network, layer) -> None:
    name = getattr(layer.activation, "__name__", "linear")
    if name == "linear":
        return
    if name not in _ACTIVATIONS:
        raise UnsupportedModelError(f"Keras layer '{layer.name}': activation '{name}' is not supported")
    network.layers.append(Activation(f"{layer.name}/{name}", _ACTIVATIONS[name]))


def _fold_batchnorm(linear: LinearLayer, layer) -> None:
    linear.scale_outputs(*batchnorm_affine(*_batchnorm_weights(layer), layer.epsilon))


def _batchnorm_weights(layer) -> list[np.ndarray]:
    weights = {w.path.split("/")[-1]: w.numpy() for w in layer.weights}
    channels = weights["moving_mean"].shape
    return [weights.get("gamma", np.ones(channels)), weights.get("beta", np.zeros(channels)),
            weights["moving_mean"], weights["moving_variance"]]


def _same_pads(spatial, kernel, strides, dilations) -> tuple[int, int, int, int]:
    (top, left), (bottom, right) = same_padding(spatial, kernel, strides, dilations)
    return top, left, bottom, right
