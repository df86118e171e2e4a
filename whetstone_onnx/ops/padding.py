"""Window geometry of convolutions and pooling: 'SAME' padding, as ONNX auto_pad and
Keras/TensorFlow compute it, and the input cells a window reads."""
from __future__ import annotations

import numpy as np


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


def window_cells(outputs: np.ndarray, stride: int, pad: int, kernel: int, dilation: int, size: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Along one spatial axis: the input index that each output reads at each kernel offset.

    Output o reads input o * stride - pad + k * dilation at kernel offset k (``pad``: the
    padding before the input). Returns two (len(outputs), kernel) arrays: that index clipped
    into [0, size), so it can index the input even where it falls in the padding, and
    whether it lies inside the input (the mask that drops or zeroes the padded cells).
    """
    index = np.asarray(outputs)[:, None] * stride - pad + np.arange(kernel) * dilation
    inside = (index >= 0) & (index < size)
    return np.clip(index, 0, size - 1), inside
