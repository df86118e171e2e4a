"""The Whetstone method for Keras 3 users: layers, key generator, sharpeners,
and the builder that turns a converted Network into a trainable Keras model.

Classic Whetstone code runs with only its imports changed::

    from whetstone_onnx.keras import Spiking_BRelu, Softmax_Decode, key_generator, SimpleSharpener
"""
from .layers import (AveragePoolExcludingPad, BoundedRelu, ConstantPad2D, FrozenBatchNormalization, SharpSigmoid,
                     SoftmaxDecode, Softmax_Decode, Spiking, Spiking_BRelu, Spiking_Sigmoid, key_generator)
from .sharpeners import AdaptiveSharpener, ScheduledSharpener, Sharpener, SimpleSharpener, spiking_layers

__all__ = ["AdaptiveSharpener", "AveragePoolExcludingPad", "BoundedRelu", "ConstantPad2D", "FrozenBatchNormalization",
           "ScheduledSharpener", "SharpSigmoid", "Sharpener", "SimpleSharpener", "SoftmaxDecode", "Softmax_Decode",
           "Spiking", "Spiking_BRelu", "Spiking_Sigmoid", "key_generator", "spiking_layers"]
