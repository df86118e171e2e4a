"""The conversion pipeline, in order: ONNX-level passes over an onnx-ir model,
then the lift to a Network, then Network-level passes.

Each pass does one job and returns how many rewrites it made; ``run_onnx_passes``
records the counts for the report.
"""
from __future__ import annotations

from typing import Callable

import onnx
import onnx_ir as ir

from ..ops import lifter_for
from .batchnorm_folds import SCALE_SHIFT_OPS, batchnorm_from_scale_shift, fold_batchnorm, fold_scale_shift
from .cleanup import PASS_THROUGH_OPS, fold_constants, lift_constants, pin_batch, remove_dead_nodes, \
    remove_pass_through
from .layout import fold_layout_transpose, move_transposes
from .linear import canonicalise_linear
from .normalisers import OUTPUT_NORMALISERS, remove_output_softmax
from .padding import fold_zero_padding
from .pointwise import recognise_pointwise_activations
from .recognise import recognise_whetstone_layers

ONNX_PASSES: list[tuple[str, Callable[[ir.Model], int]]] = [
    ("remove_pass_through", remove_pass_through),
    ("lift_constants", lift_constants),
    ("pin_batch", pin_batch),
    ("fold_constants", fold_constants),
    ("remove_dead_nodes", remove_dead_nodes),
    ("fold_zero_padding", fold_zero_padding),
    # Before the output softmax goes (a Softmax_Decode ends with one) and before the
    # scale/shift folds would take the recognised chains apart.
    ("recognise_whetstone_layers", recognise_whetstone_layers),
    # GELU, SiLU and the like written out as formulas, before folds take their Mul / Add.
    ("recognise_pointwise_activations", recognise_pointwise_activations),
    ("move_transposes", move_transposes),
    ("remove_output_softmax", remove_output_softmax),
    ("canonicalise_linear", canonicalise_linear),
    # Before the batch-norm folds: a batch norm before Keras' Transpose + flatten can then
    # fold forward into the dense layer.
    ("fold_layout_transpose", fold_layout_transpose),
    ("fold_batchnorm", fold_batchnorm),
    ("fold_scale_shift", fold_scale_shift),
    ("batchnorm_from_scale_shift", batchnorm_from_scale_shift),
    ("remove_dead_nodes_final", remove_dead_nodes),
]

# Ops that the passes above fold away when their inputs are constant or
# their neighbours allow: shape arithmetic (as Keras' dynamic flatten writes it),
# batch norm and scale/shift, MatMul (+ Add), pass-throughs, output normalisers.
SHAPE_ARITHMETIC_OPS = ("Constant", "Shape", "Size", "Gather", "Cast", "Slice", "Concat", "ReduceProd",
                        "Range", "ConstantOfShape", "Expand")
PASS_HANDLED_OPS = frozenset((*PASS_THROUGH_OPS, *SHAPE_ARITHMETIC_OPS, "BatchNormalization",
                              *SCALE_SHIFT_OPS, "MatMul", *OUTPUT_NORMALISERS))


def unsupported_nodes(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(op type, node name) of every node no pass or op family handles. The nodes of a
    chain an op family recognises (onnx_passes/recognise.py, onnx_passes/pointwise.py) count as
    handled: the passes up to the recognitions run first, as in the conversion, so that
    constants are in place."""
    graph = ir.serde.deserialize_model(model)
    recognised = [name for name, _ in ONNX_PASSES].index("recognise_pointwise_activations") + 1
    _run(graph, ONNX_PASSES[:recognised])
    return [(qualified_op_type(node), node.name) for node in graph.graph
            if lifter_for(node) is None and (node.domain not in ("", "ai.onnx") or node.op_type not in PASS_HANDLED_OPS)]


def qualified_op_type(node: onnx.NodeProto | ir.Node) -> str:
    """The op type, prefixed with its domain unless that is the standard one."""
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def run_onnx_passes(proto: onnx.ModelProto) -> tuple[ir.Model, dict[str, int]]:
    model = ir.serde.deserialize_model(proto)
    return model, _run(model, ONNX_PASSES)


def _run(model: ir.Model, passes: list[tuple[str, Callable[[ir.Model], int]]]) -> dict[str, int]:
    return {name: onnx_pass(model) for name, onnx_pass in passes}
