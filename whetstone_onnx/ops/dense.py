"""Fully connected layers: ONNX Gemm (canonical form, see onnx_passes/linear.py)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedModelError
from ..network import LinearLayer, OnnxBuilder
from .registry import LiftContext, lifts


@dataclass(eq=False)
class Dense(LinearLayer):
    name: str
    weight: np.ndarray          # (out_features, in_features), float32
    bias: np.ndarray | None     # (out_features,) float32, or None

    kind = "dense"

    def output_shape(self, input_shape):
        return (self.out_channels,)

    def forward(self, x):
        y = x.reshape(len(x), -1) @ self.weight.astype(np.float64).T
        return y if self.bias is None else y + self.bias.astype(np.float64)

    def emit(self, builder: OnnxBuilder, x: str) -> str:
        inputs = [x, builder.constant(f"{self.name}.weight", self.weight)]
        if self.bias is not None:
            inputs.append(builder.constant(f"{self.name}.bias", self.bias))
        return builder.node("Gemm", inputs, self.name, name=self.name, transB=1)

    def to_nir(self, builder, input_shape) -> None:
        import nir
        builder.add(self.name, nir.Affine(self.weight, self.bias_or_zero()))

    def to_keras(self, builder) -> None:
        import keras
        builder.to_channels_first(self.name)
        weights = [self.weight.T] + ([self.bias] if self.bias is not None else [])
        builder.apply(keras.layers.Dense(self.out_channels, use_bias=self.bias is not None,
                                         name=builder.name(self.name)), owner=self, weights=weights)

    def macs(self, input_shape) -> int:
        return int(self.weight.size)

    def check_netlist_input(self, shape) -> None:
        if self.weight.shape[1] != int(np.prod(shape)):
            raise UnsupportedModelError(f"layer '{self.name}' (dense): {self.weight.shape[1]} inputs, "
                                        f"the tensor before it has {int(np.prod(shape))}")

    def netlist_synapses(self, planner, weight, post):
        pre_ids = planner.ids.reshape(-1)
        out = weight.shape[0]
        rows = max(1, planner.chunk_synapses // max(1, len(pre_ids)))

        def chunks():
            for r0 in range(0, out, rows):
                r1 = min(out, r0 + rows)
                w = weight[r0:r1]
                mask = w != 0
                posts = np.broadcast_to((post.first_id + np.arange(r0, r1, dtype=np.int64))[:, None], w.shape)
                yield np.broadcast_to(pre_ids[None, :], w.shape)[mask], posts[mask], w[mask]
        return chunks, weight.size, planner.connectivity("dense", post)

    def scale_input_elements(self, scale) -> None:
        self.weight = (self.weight.astype(np.float64) * np.reshape(scale, (1, -1))).astype(np.float32)

    def from_keras(self, keras_layer) -> None:
        weights = keras_layer.get_weights()
        self.weight = np.ascontiguousarray(weights[0].T, dtype=np.float32)
        if self.bias is not None:
            self.bias = weights[1].astype(np.float32)

    def describe(self):
        return {**super().describe(), "in_features": int(self.weight.shape[1]),
                "out_features": self.out_channels, "parameters": int(self.weight.size + self.out_channels)}


@lifts("Gemm")
def lift_gemm(node, ctx: LiftContext) -> Dense:
    if ctx.int("transA", 0) or not ctx.int("transB", 0) or ctx.float("alpha", 1.0) != 1.0 \
            or ctx.float("beta", 1.0) != 1.0:
        raise ctx.fail("not in canonical form (the canonicalise_linear pass should have run)")
    if len(ctx.input_shape) != 1:
        raise ctx.fail(f"expects (batch, features) input, got per-sample shape {ctx.input_shape}")
    weight = ctx.constant(1, "weight").astype(np.float32)
    bias = ctx.optional_constant(2)
    return Dense(node.name, weight, None if bias is None else bias.astype(np.float32).reshape(-1))
