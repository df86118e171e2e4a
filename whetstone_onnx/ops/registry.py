"""The registry mapping ONNX op types to the op family that lifts them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx_ir as ir

from ..errors import UnsupportedModelError
from ..onnx_graph import const_array, static_shape
from .padding import same_padding

Lifter = Callable[[ir.Node, "LiftContext"], object]
# (domain, op type) -> lifter; the standard domain is "".
LIFTERS: dict[tuple[str, str], Lifter] = {}


def lifts(*op_types: str, domain: str = ""):
    """Register the decorated function as the lifter of ``op_types`` in ``domain``."""
    def register(function: Lifter) -> Lifter:
        for op_type in op_types:
            if (domain, op_type) in LIFTERS:
                raise ValueError(f"two lifters for {domain}.{op_type}")
            LIFTERS[(domain, op_type)] = function
        return function
    return register


def lifter_for(node: ir.Node) -> Lifter | None:
    return LIFTERS.get(("" if node.domain == "ai.onnx" else node.domain, node.op_type))


@dataclass
class Recognised:
    """A chain of standard nodes that computes one of the project's ops: ``nodes[0]``
    reads ``data``, ``nodes[-1]`` writes the result, and the op is ``op_type`` of the
    project's domain with ``constants`` (name suffix, array) as its inputs after the data."""
    nodes: list[ir.Node]
    data: ir.Value
    op_type: str
    constants: list[tuple[str, np.ndarray]]


Recogniser = Callable[[ir.Node], "Recognised | None"]
# First op type of the chain -> recognisers; see onnx_passes/recognise.py.
RECOGNISERS: dict[str, list[Recogniser]] = {}


def recognises(first_op_type: str):
    """Register the decorated function as a recogniser of chains that start with ``first_op_type``
    (how another tool, e.g. Keras' ONNX export, writes one of the project's ops)."""
    def register(function: Recogniser) -> Recogniser:
        RECOGNISERS.setdefault(first_op_type, []).append(function)
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
