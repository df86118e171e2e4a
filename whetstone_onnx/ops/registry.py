"""The registry mapping ONNX op types to the op family that lifts them."""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx_ir as ir

from ..errors import UnsupportedModelError
from ..passes.graph import const_array, static_shape
from .padding import same_padding

Lifter = Callable[[ir.Node, "LiftContext"], object]
LIFTERS: dict[str, Lifter] = {}


def lifts(*op_types: str):
    """Register the decorated function as the lifter of ``op_types`` (ai.onnx domain)."""
    def register(function: Lifter) -> Lifter:
        for op_type in op_types:
            if op_type in LIFTERS:
                raise ValueError(f"two lifters for {op_type}")
            LIFTERS[op_type] = function
        return function
    return register


class LiftContext:
    """What a lifter may ask about a node of the canonical ONNX graph."""

    def __init__(self, node: ir.Node):
        self.node = node

    def fail(self, problem: str) -> UnsupportedModelError:
        return UnsupportedModelError(f"node '{self.node.name}' ({self.node.op_type}): {problem}")

    def constant(self, index: int, what: str) -> np.ndarray:
        value = self.node.inputs[index] if index < len(self.node.inputs) else None
        array = const_array(value)
        if array is None:
            raise self.fail(f"the {what} must be a constant")
        return array

    def optional_constant(self, index: int) -> np.ndarray | None:
        value = self.node.inputs[index] if index < len(self.node.inputs) else None
        return const_array(value)

    def sample_shape(self, value: ir.Value) -> tuple[int, ...]:
        """Per-sample static shape (the batch axis, pinned to 1, removed)."""
        shape = static_shape(value)
        if shape is None or not shape or shape[0] != 1:
            raise self.fail(f"the shape of '{value.name}' is not a known (batch, ...) shape")
        return shape[1:]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.sample_shape(self.node.inputs[0])

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.sample_shape(self.node.outputs[0])

    def ints(self, name: str, default: list[int]) -> list[int]:
        return [int(v) for v in self.node.attributes.get_ints(name, default)]

    def int(self, name: str, default: int) -> int:
        return int(self.node.attributes.get_int(name, default))

    def float(self, name: str, default: float) -> float:
        return float(self.node.attributes.get_float(name, default))

    def string(self, name: str, default: str) -> str:
        return str(self.node.attributes.get_string(name, default))

    def explicit_pads(self, kernel: list[int], strides: list[int], dilations: list[int]) -> list[int]:
        """ONNX pads (top, left, bottom, right), with auto_pad resolved from the known shapes."""
        auto_pad = self.string("auto_pad", "NOTSET")
        if auto_pad in ("NOTSET", "VALID"):
            return self.ints("pads", [0] * 2 * len(kernel)) if auto_pad == "NOTSET" else [0] * 2 * len(kernel)
        begin, end = same_padding(self.input_shape[1:], kernel, strides, dilations,
                                  extra_at_end=auto_pad == "SAME_UPPER")
        return begin + end
