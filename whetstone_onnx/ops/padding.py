"""'SAME' padding, as ONNX auto_pad and Keras/TensorFlow compute it."""
from __future__ import annotations


def same_padding(spatial, kernel, strides, dilations, *, extra_at_end: bool = True
                 ) -> tuple[list[int], list[int]]:
    """(begin pads, end pads) per spatial axis so that out = ceil(in / stride).

    An odd total puts the extra cell at the end (SAME_UPPER, TensorFlow) or at
    the beginning (SAME_LOWER).
    """
    begin, end = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begin.append(small if extra_at_end else large)
        end.append(large if extra_at_end else small)
    return begin, end
