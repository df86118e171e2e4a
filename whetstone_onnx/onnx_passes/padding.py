"""Explicit zero padding folds into the convolution or average pooling that reads it.

PyTorch writes ``nn.ZeroPad2d`` (and asymmetric "same" padding) as a ``Pad`` node
before the ``Conv``; a convolution's own ``pads`` compute the same thing, so the
``Pad`` goes and the ``Conv`` pads more. The same holds for an ``AveragePool`` that
counts the padding (``count_include_pad = 1``). A ``Pad`` that anything else reads,
or that pads with another value or mode, stays, and the unsupported-op report names it.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..onnx_graph import const_array

# op type -> the attribute value its pads must mean "zeros, counted" for the fold to be exact
FOLDS_INTO = {"Conv": None, "AveragePool": ("count_include_pad", 1)}


def fold_zero_padding(model: ir.Model) -> int:
    graph, count = model.graph, 0
    for node in list(graph):
        if node.op_type != "Pad" or node.domain not in ("", "ai.onnx"):
            continue
        spatial = _spatial_zero_pads(node)
        readers = node.outputs[0].consumers()
        if spatial is None or not readers or node.outputs[0].is_graph_output() \
                or not all(_absorbs(reader, node.outputs[0]) for reader in readers):
            continue
        (top, left), (bottom, right) = spatial
        for reader in readers:
            pads = _pads(reader)
            reader.attributes["pads"] = ir.AttrInt64s("pads", [pads[0] + top, pads[1] + left,
                                                               pads[2] + bottom, pads[3] + right])
            reader.attributes.pop("auto_pad", None)
            reader.replace_input_with(0, node.inputs[0])
        graph.remove(node, safe=True)
        count += 1
    return count


def _spatial_zero_pads(node: ir.Node) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """((top, left), (bottom, right)) of a constant zero Pad of the H and W axes of an NCHW tensor, else None."""
    if node.attributes.get_string("mode", "constant") != "constant" or len(node.inputs) < 2:
        return None
    pads = const_array(node.inputs[1])
    value = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    axes = node.inputs[3] if len(node.inputs) > 3 else None
    shape = node.inputs[0].shape
    if pads is None or axes is not None or shape is None or len(shape) != 4 or pads.shape != (8,) \
            or (value is not None and np.any(value != 0)):
        return None
    pads = [int(p) for p in pads]
    if any(p < 0 for p in pads) or pads[0] or pads[1] or pads[4] or pads[5]:
        return None
    return (pads[2], pads[3]), (pads[6], pads[7])


def _absorbs(reader: ir.Node, value: ir.Value) -> bool:
    if reader.domain not in ("", "ai.onnx") or reader.op_type not in FOLDS_INTO or reader.inputs[0] is not value:
        return False
    if reader.attributes.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return False
    required = FOLDS_INTO[reader.op_type]
    return required is None or reader.attributes.get_int(required[0], 0) == required[1]


def _pads(reader: ir.Node) -> list[int]:
    if reader.attributes.get_string("auto_pad", "NOTSET") == "VALID":
        return [0, 0, 0, 0]
    return [int(p) for p in reader.attributes.get_ints("pads", [0, 0, 0, 0])]
