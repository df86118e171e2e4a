"""N-hot output decoding (Whetstone's Softmax_Decode) as the project's NHotDecode op.

It lifts from the project's NHotDecode node and from the chain Keras' ONNX export
writes for ``whetstone_onnx.keras.SoftmaxDecode``: Softmax(MatMul(2 x - 1, 2 key^T - 1)).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import onnx_ir as ir

from ..errors import UnsupportedModelError
from ..network import Layer, OnnxBuilder
from ..onnx_graph import const_array, data_input, follow_chain, scalar_operand
from ..spiking_onnx import DOMAIN, nhot_scores
from .registry import LiftContext, Recognised, lifts, recognises


@dataclass(eq=False)
class NHotDecode(Layer):
    name: str
    key: np.ndarray        # (classes, width) of 0/1

    kind = "nhot_decode"

    def output_shape(self, input_shape):
        return (int(self.key.shape[0]),)

    def forward(self, x):
        scores = nhot_scores(x, self.key)
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

    def to_netlist(self, planner, index: int) -> None:
        """No neurons: the header's decoding rule names the key."""
        if index + 1 < len(planner.network.layers) or planner.source_kind != "spiking" \
                or self.key.shape[1] != planner.ids.size:
            raise UnsupportedModelError(f"layer '{self.name}' (nhot_decode): must be the last layer and "
                                        "decode the spikes of a spiking layer as wide as its key")
        planner.decode = {"kind": "nhot", "key": self.key.astype(np.int64).tolist(),
                          "rule": "class = argmax over classes of (2 spikes - 1) . (2 key - 1), ties to the lowest"}

    def describe(self):
        return {**super().describe(), "classes": int(self.key.shape[0]), "code_width": int(self.key.shape[1]),
                "units_per_class": int(self.key.sum(axis=1).max())}


def _is_key(key: np.ndarray) -> bool:
    return key.ndim == 2 and bool(np.all((key == 0.0) | (key == 1.0))) and bool(np.all(key.sum(axis=1) > 0))


@lifts("NHotDecode", domain=DOMAIN)
def lift_nhot_decode(node, ctx: LiftContext) -> NHotDecode:
    key = ctx.constant(1, "key")
    if not _is_key(key):
        raise ctx.fail("the key must be a (classes, width) matrix of 0 and 1 with a unit in every class")
    return NHotDecode(node.name, key.astype(np.float32))


@recognises("Mul")
def recognise_exported_decode(node: ir.Node) -> Recognised | None:
    """Softmax((2 x - 1) @ S) over the last axis, S a constant of +-1: NHotDecode with key (S^T + 1) / 2."""
    chain = follow_chain(node, ("Mul", "Sub", "MatMul", "Softmax"))
    data = data_input(node)
    if chain is None or data is None or scalar_operand(node, data) != 2.0 \
            or chain[1].inputs[0] is not node.outputs[0] or scalar_operand(chain[1], node.outputs[0]) != 1.0 \
            or chain[2].inputs[0] is not chain[1].outputs[0] or chain[3].attributes.get_int("axis", -1) not in (-1, 1):
        return None
    signed = const_array(chain[2].inputs[1])
    key = None if signed is None else (signed.T + 1.0) / 2.0
    return None if key is None or not _is_key(key) else Recognised(chain, data, "NHotDecode",
                                                                   [("key", key.astype(np.float32))])
