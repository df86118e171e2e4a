"""Layout ops that move no information: Reshape (and Flatten, Squeeze,
Unsqueeze, which are reshapes) and Transpose, all per sample."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedModelError
from ..network import Layer, OnnxBuilder
from .registry import LiftContext, lifts


@dataclass(eq=False)
class Reshape(Layer):
    name: str
    shape: tuple[int, ...]      # per-sample target shape

    kind = "reshape"
    rearranges = commutes_with_activations = scale_transparent = True

    def output_shape(self, input_shape):
        return self.shape

    def forward(self, x):
        return x.reshape(len(x), *self.shape)

    def emit(self, builder: OnnxBuilder, x: str) -> str:
        target = builder.constant(f"{self.name}.shape", np.array([-1, *self.shape]), dtype=np.int64)
        return builder.node("Reshape", [x, target], self.name, name=self.name)

    def to_nir(self, builder, input_shape) -> None:
        import nir
        if builder.last == "input":
            # A reshape of the input keeps its C-order values: the NIR input takes the new shape.
            builder.input_shape = tuple(self.shape)
            builder.metadata["input_reshape"] = {"from": list(input_shape), "to": list(self.shape)}
            return None
        if len(self.shape) != 1 and builder.in_readout_tail:
            # NIR has Flatten only: a reshape of the output (an image out of a regression readout) is the host's.
            builder.after_output(self.name, "output_reshape", list(self.shape))
            return tuple(input_shape)
        if len(self.shape) != 1:
            raise UnsupportedModelError(f"layer '{self.name}': NIR has Flatten only, not a reshape to {self.shape}")
        # NIR shapes carry no batch axis: flatten the whole per-sample tensor.
        builder.add(self.name, nir.Flatten(input_type={"input": np.array(input_shape)}, start_dim=0, end_dim=-1))

    def to_keras(self, builder) -> None:
        import keras
        builder.to_channels_first(self.name)
        builder.apply(keras.layers.Reshape(self.shape, name=builder.name(self.name)))

    def to_netlist(self, planner, index: int) -> None:
        """No neurons: the next projection reads the same ones in the new shape."""
        if math.prod(self.shape) != planner.ids.size:
            raise UnsupportedModelError(f"layer '{self.name}' (reshape): {planner.ids.shape} cannot become "
                                        f"{self.shape}")
        planner.reshape(self.shape)

    def describe(self):
        return {**super().describe(), "shape": list(self.shape)}


@dataclass(eq=False)
class Transpose(Layer):
    name: str
    perm: tuple[int, ...]       # per-sample permutation of axes

    kind = "transpose"
    rearranges = commutes_with_activations = scale_transparent = True

    def output_shape(self, input_shape):
        return tuple(input_shape[p] for p in self.perm)

    def forward(self, x):
        return x.transpose(0, *(p + 1 for p in self.perm))

    def emit(self, builder: OnnxBuilder, x: str) -> str:
        return builder.node("Transpose", [x], self.name, name=self.name, perm=[0, *(p + 1 for p in self.perm)])

    def to_nir(self, builder, input_shape) -> None:
        if builder.last != "input":
            raise UnsupportedModelError(f"layer '{self.name}': NIR has no transpose; only the input's layout "
                                        "can change")
        # The NIR input takes the transposed layout (a Keras image model's NHWC becomes CHW);
        # the metadata says how to lay out the data for it.
        builder.input_shape = self.output_shape(input_shape)
        builder.metadata["input_transpose"] = {"from": list(input_shape), "perm": list(self.perm)}

    def to_keras(self, builder) -> None:
        import keras
        builder.to_channels_first(self.name)
        builder.apply(keras.layers.Permute(tuple(p + 1 for p in self.perm), name=builder.name(self.name)))

    def to_netlist(self, planner, index: int) -> None:
        planner.transpose(self.perm)

    def describe(self):
        return {**super().describe(), "perm": list(self.perm)}


@lifts("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def lift_reshape(node, ctx: LiftContext) -> Reshape:
    if node.op_type == "Flatten" and ctx.int("axis", 1) != 1:
        raise ctx.fail("only Flatten(axis=1) keeps the batch axis")
    return Reshape(node.name, ctx.output_shape)


@lifts("Transpose")
def lift_transpose(node, ctx: LiftContext) -> Transpose:
    perm = ctx.ints("perm", list(reversed(range(len(ctx.input_shape) + 1))))
    if perm[0] != 0:
        raise ctx.fail(f"perm {perm} moves the batch axis")
    return Transpose(node.name, tuple(p - 1 for p in perm[1:]))
