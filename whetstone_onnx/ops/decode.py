"""N-hot output decoding (Whetstone's Softmax_Decode) as the project's NHotDecode op."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..network import Layer, OnnxBuilder


@dataclass(eq=False)
class NHotDecode(Layer):
    name: str
    key: np.ndarray        # (classes, width) of 0/1

    kind = "nhot_decode"

    def output_shape(self, input_shape):
        return (int(self.key.shape[0]),)

    def forward(self, x):
        scores = (2.0 * x - 1.0) @ (2.0 * self.key.astype(np.float64) - 1.0).T
        scores -= scores.max(axis=1, keepdims=True)
        exp = np.exp(scores)
        return exp / exp.sum(axis=1, keepdims=True)

    def emit(self, builder: OnnxBuilder, x: str) -> str:
        key = builder.constant(f"{self.name}.key", self.key)
        return builder.node("NHotDecode", [x, key], self.name, name=self.name, custom=True)

    def to_nir(self, builder, input_shape) -> None:
        # No NIR node decodes: the output is the code layer's spikes, the key rides in the metadata.
        builder.metadata["nhot_key"] = self.key.astype(np.int64).tolist()
        builder.metadata["decode"] = "class = argmax over classes of (2 spikes - 1) . (2 key - 1)"
        return tuple(input_shape)

    def to_keras(self, builder) -> None:
        from ..keras.layers import SoftmaxDecode
        builder.to_channels_first(self.name)
        builder.apply(SoftmaxDecode(self.key, name=builder.name(self.name)), owner=self)

    def describe(self):
        return {**super().describe(), "classes": int(self.key.shape[0]), "code_width": int(self.key.shape[1]),
                "units_per_class": int(self.key.sum(axis=1).max())}


def nhot_key(classes: int, width: int, seed: int) -> np.ndarray:
    """A seeded disjoint N-hot key: each class owns ``width // classes`` units, randomly placed."""
    if width < classes:
        raise ValueError(f"key width {width} is smaller than the {classes} classes")
    per_class = width // classes
    units = np.random.default_rng(seed).permutation(width)[:classes * per_class]
    key = np.zeros((classes, width), np.float32)
    key[np.repeat(np.arange(classes), per_class), units] = 1.0
    return key
