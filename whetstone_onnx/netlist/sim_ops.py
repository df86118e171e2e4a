"""The explicit-netlist simulator's operators (see ``netlist/sim.py``): the neuron layouts the
populations travel in, and the fast operators (dense, conv2d, pooling) and the CSR fallback
that compute a population's potentials from its pre populations' values."""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..ops.padding import window_cells

COMPUTE_DTYPE = np.float32      # the fast path's sums for spiking populations (see netlist/sim.py)
COLUMN_BYTES = 1 << 19          # im2col columns built and multiplied at a time (within the core's cache)


class Reject(Exception):
    """A descriptor that cannot be used (the reason is the message): the CSR path takes over."""


# ---------------------------------------------------------------- layouts
# A population's values travel as (batch, count) arrays: a (C, H, W) population made by a
# convolution or pooling channels last ((H, W, C) flattened), every other in its own C order.


def channels_last(population: dict, kind: str) -> bool:
    return kind in ("conv2d", "maxpool2d", "avgpool2d") and len(population["shape"]) == 3


def travel_positions(population: dict, channels_last: bool) -> np.ndarray | None:
    """Where each neuron (C order) sits in the travelling array; None: in place."""
    if not channels_last:
        return None
    c, h, w = population["shape"]
    return np.arange(population["count"]).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)


def to_travel(values: np.ndarray, positions: np.ndarray | None) -> np.ndarray:
    """Per-neuron values (C order, last axis) rearranged into the travelling order."""
    if positions is None:
        return values
    travel = np.empty_like(values)
    travel[..., positions] = values
    return travel


class Scratch(threading.local):
    """Per-thread buffers reused from chunk to chunk: fresh large arrays page-fault every time."""

    def __init__(self):
        self.arrays: dict = {}

    def get(self, owner, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """A buffer of this shape, zero-initialised when first made."""
        key = (id(owner), name, shape, np.dtype(dtype))
        if key not in self.arrays:
            self.arrays[key] = np.zeros(shape, dtype)
        return self.arrays[key]


# ---------------------------------------------------------------- fast operators


def _coordinates(shape) -> tuple[np.ndarray, ...]:
    """(channel, row, column) of every C-order index of a (C, H, W) shape, int32."""
    return tuple(a.astype(np.int32) for a in np.unravel_index(np.arange(math.prod(shape)), shape))


def _divide(a: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray | int]:
    """divmod, skipping the (slow) integer division by 1."""
    return (a, 0) if b == 1 else np.divmod(a, b)


@dataclass(eq=False)
class Geometry:
    """A convolution or pooling window: output (co, oh, ow) reads input (ci, oh*s - pad + i*d, ...)."""

    in_shape: tuple[int, int, int]       # (C, H, W) of the layer input
    out_shape: tuple[int, int, int]
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    top: int
    left: int

    def __post_init__(self):
        # Per input index: (channel, row, column); per output index: (channel, first row, first column).
        self.inputs = _coordinates(self.in_shape)
        channel, row, col = _coordinates(self.out_shape)
        self.outputs = (channel, row * self.strides[0] - self.top, col * self.strides[1] - self.left)

    def cells(self, out_rows: np.ndarray, out_cols: np.ndarray):
        """((rows, rows inside), (columns, columns inside)): the input row (len(out_rows), kh) and column
        (len(out_cols), kw) each kernel offset of these output rows / columns reads, clipped into the
        input, and whether it lies inside it."""
        _, height, width = self.in_shape
        return (window_cells(out_rows, self.strides[0], self.top, self.kernel[0], self.dilations[0], height),
                window_cells(out_cols, self.strides[1], self.left, self.kernel[1], self.dilations[1], width))

    def inside(self) -> tuple[np.ndarray, np.ndarray]:
        """(out_h, kh) and (out_w, kw): whether a kernel row / column of an output lies inside the input."""
        _, out_h, out_w = self.out_shape
        (_, rows), (_, cols) = self.cells(np.arange(out_h), np.arange(out_w))
        return rows, cols

    def offsets(self, k: np.ndarray, post: np.ndarray):
        """Input channel, output channel, kernel row and column of each (input, output) pair (int32 indices),
        and whether the pair is one of the window's."""
        # Coordinates by table look-up: far faster than dividing millions of indices.
        ci, row, col = (table[k] for table in self.inputs)
        co, first_row, first_col = (table[post] for table in self.outputs)
        i, i_rest = _divide(row - first_row, self.dilations[0])
        j, j_rest = _divide(col - first_col, self.dilations[1])
        # As unsigned, a negative offset is huge: one comparison tests both ends.
        ok = (i.view(np.uint32) < self.kernel[0]) & (j.view(np.uint32) < self.kernel[1])
        if self.dilations != (1, 1):
            ok &= (i_rest == 0) & (j_rest == 0)
        return ci, co, i, j, ok

    def padded(self, x: np.ndarray, scratch: Scratch, owner, dtype) -> np.ndarray:
        """x (batch, H, W, C) in ``dtype``, inside zero borders wide enough for every window slice."""
        (channels, height, width), (_, out_h, out_w) = self.in_shape, self.out_shape
        bottom = max(0, (out_h - 1) * self.strides[0] + (self.kernel[0] - 1) * self.dilations[0] + 1
                     - self.top - height)
        right = max(0, (out_w - 1) * self.strides[1] + (self.kernel[1] - 1) * self.dilations[1] + 1
                    - self.left - width)
        if not (self.top or self.left or bottom or right) and x.dtype == dtype:
            return x
        shape = (len(x), self.top + height + bottom, self.left + width + right, channels)
        buffer = scratch.get(owner, "padded", shape, dtype)       # borders stay zero: only the inside is written
        buffer[:, self.top:self.top + height, self.left:self.left + width] = x
        return buffer

    def windows(self, padded: np.ndarray):
        """Each kernel offset's strided slice (batch, out_h, out_w, C) of the padded input."""
        (_, out_h, out_w), (sh, sw), (dh, dw) = self.out_shape, self.strides, self.dilations
        for i in range(self.kernel[0]):
            for j in range(self.kernel[1]):
                yield padded[:, i * dh:i * dh + sh * (out_h - 1) + 1:sh, j * dw:j * dw + sw * (out_w - 1) + 1:sw]

    def window_view(self, padded: np.ndarray) -> np.ndarray:
        """All windows as a read-only view (batch, out_h, out_w, kh, kw, C) of the padded input."""
        batch, row, col, channel = padded.strides
        (_, out_h, out_w), (sh, sw), (dh, dw) = self.out_shape, self.strides, self.dilations
        return np.lib.stride_tricks.as_strided(
            padded, (len(padded), out_h, out_w, *self.kernel, padded.shape[3]),
            (batch, row * sh, col * sw, row * dh, col * dw, channel), writeable=False)


def error_bound(weights: np.ndarray, axis) -> np.ndarray | None:
    """Per output: a bound on |float32 sum - exact sum| for inputs of magnitude <= 1, or None in float64.

    Any summation order of n float32 products errs by at most n u sum|w x| (u = eps / 2), the cast
    of real inputs to float32 by u sum|w x| more; 2 u (n + 2) sum|w| covers both with room to spare.
    """
    if weights.dtype != np.float32:
        return None
    terms = np.count_nonzero(weights, axis=axis)
    return np.finfo(np.float32).eps * (terms + 2) * np.abs(weights.astype(np.float64)).sum(axis=axis)


@dataclass(eq=False)
class DenseOp:
    kind = "dense"
    matrix: np.ndarray                   # (pre count, post count) in the travelling orders

    def __post_init__(self):
        self.bound = error_bound(self.matrix, 0)

    def potential(self, x: np.ndarray, scratch: Scratch) -> np.ndarray:
        return x.astype(self.matrix.dtype, copy=False) @ self.matrix

    def exact(self, x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """float64 potentials of (sample, neuron) pairs."""
        return np.einsum("ij,ji->i", x[rows].astype(np.float64), self.matrix[:, cols].astype(np.float64))


@dataclass(eq=False)
class ConvOp:
    kind = "conv2d"
    geometry: Geometry
    gather: np.ndarray | None            # travelling positions of the layer input, (H, W, C) order
    kernel: np.ndarray                   # (out, in per group, kh, kw) float32
    group: int
    dtype: type

    def __post_init__(self):
        out_ch, in_per_group, kh, kw = self.kernel.shape
        per_group = out_ch // self.group
        # Per group: (kh * kw * in per group, out per group), rows in (i, j, c) order like the columns.
        self.weights = [np.ascontiguousarray(self.kernel[g * per_group:(g + 1) * per_group].transpose(2, 3, 1, 0)
                                             .reshape(-1, per_group), self.dtype) for g in range(self.group)]
        self.exact_kernel = self.kernel.transpose(0, 2, 3, 1).astype(np.float64)          # (out, kh, kw, in)
        bound = error_bound(self.kernel.astype(self.dtype).reshape(out_ch, -1), 1)
        positions = self.geometry.out_shape[1] * self.geometry.out_shape[2]
        self.bound = None if bound is None else np.tile(bound, positions)      # (H, W, C) travelling order

    def exact(self, x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """float64 potentials of (sample, travelling position) pairs, from the unpadded input."""
        channels, _, width = self.geometry.in_shape
        out_ch, in_per_group = self.kernel.shape[:2]
        position, co = np.divmod(cols, out_ch)
        oh, ow = np.divmod(position, self.geometry.out_shape[2])
        (ih, row_ok), (iw, col_ok) = self.geometry.cells(oh, ow)                       # (F, kh), (F, kw)
        inside = row_ok[:, :, None, None] & col_ok[:, None, :, None]
        ci = (co // (out_ch // self.group))[:, None] * in_per_group + np.arange(in_per_group)   # (F, in)
        element = ((ih[:, :, None, None] * width + iw[:, None, :, None]) * channels
                   + ci[:, None, None, :])                                             # (F, kh, kw, in)
        travel = element if self.gather is None else self.gather[element]
        # One flat take is several times faster than indexing with two broadcast index arrays.
        values = np.take(x, rows[:, None, None, None] * x.shape[1] + travel) * inside
        return np.einsum("fk,fk->f", values.reshape(len(rows), -1).astype(np.float64),
                         self.exact_kernel[co].reshape(len(rows), -1))

    def potential(self, x: np.ndarray, scratch: Scratch) -> np.ndarray:
        channels, height, width = self.geometry.in_shape
        out_ch, out_h, out_w = self.geometry.out_shape
        x = (x if self.gather is None else x[:, self.gather]).reshape(len(x), height, width, channels)
        in_per_group, per_group = channels // self.group, out_ch // self.group
        out = scratch.get(self, "out", (len(x), out_h * out_w, out_ch), self.dtype)
        # A few samples at a time, so their columns stay in the core's cache for the product.
        step = max(1, COLUMN_BYTES // (out_h * out_w * self.weights[0].shape[0] * np.dtype(self.dtype).itemsize))
        for start in range(0, len(x), step):
            padded = self.geometry.padded(x[start:start + step], scratch, self, self.dtype)
            rows = out[start:start + step].reshape(-1, out_ch)
            for g, weight in enumerate(self.weights):
                columns = self._columns(padded[..., g * in_per_group:(g + 1) * in_per_group], scratch)
                if self.group == 1:
                    np.matmul(columns, weight, out=rows)
                else:
                    rows[:, g * per_group:(g + 1) * per_group] = columns @ weight
        return out.reshape(len(x), -1)

    def _columns(self, padded: np.ndarray, scratch: Scratch) -> np.ndarray:
        """im2col: (samples x output positions, kh x kw x channels), columns in (i, j, c) order."""
        samples, channels = len(padded), padded.shape[3]
        _, out_h, out_w = self.geometry.out_shape
        kh, kw = self.geometry.kernel
        if channels <= 3:
            # Few channels: copying one channel of one window at a time moves whole rows, far faster
            # than interleaving runs of 1 to 3 values (the transpose is free in BLAS).
            columns = scratch.get(self, "columns_t", (kh * kw * channels, samples, out_h, out_w), self.dtype)
            for k, window in enumerate(self.geometry.windows(padded)):
                for c in range(channels):
                    columns[k * channels + c] = window[..., c]
            return columns.reshape(kh * kw * channels, -1).T
        columns = scratch.get(self, "columns", (samples, out_h, out_w, kh, kw, channels), self.dtype)
        np.copyto(columns, self.geometry.window_view(padded))
        return columns.reshape(samples * out_h * out_w, -1)


@dataclass(eq=False)
class PoolOp:
    """A window sum of each channel times the window's weight (average pooling), or the window's spike
    count (max pooling of spikes: an OR neuron fires on a count >= its threshold)."""

    kind: str                            # maxpool2d or avgpool2d
    geometry: Geometry
    gather: np.ndarray | None
    weight: np.ndarray | None            # (out_h, out_w, 1) float64 for average pooling

    def __post_init__(self):
        cells = self.geometry.kernel[0] * self.geometry.kernel[1]
        # Spike counts in the smallest integers that hold a window's count and one more.
        self.dtype = np.float64 if self.weight is not None else np.uint8 if cells < 255 else np.uint32

    def potential(self, x: np.ndarray, scratch: Scratch) -> np.ndarray:
        channels, height, width = self.geometry.in_shape
        x = (x if self.gather is None else x[:, self.gather]).reshape(len(x), height, width, channels)
        padded = self.geometry.padded(x.view(np.uint8) if x.dtype == bool else x, scratch, self, self.dtype)
        windows = self.geometry.windows(padded)
        first = next(windows)
        out = scratch.get(self, "out", first.shape, self.dtype)
        np.copyto(out, first)
        for window in windows:
            np.add(out, window, out=out)
        if self.weight is not None:
            out *= self.weight
        return out.reshape(len(x), -1)

    def threshold(self, threshold: np.ndarray) -> np.ndarray:
        """The threshold to compare this operator's potentials with: counts reach t when they reach ceil(t)."""
        if self.weight is not None:
            return threshold
        cells = self.geometry.kernel[0] * self.geometry.kernel[1]
        return np.clip(np.ceil(threshold), 0, cells + 1).astype(self.dtype)


@dataclass(eq=False)
class SparseOp:
    kind = "csr"
    matrix: sp.csr_matrix                # (post count, sum of pre counts) float64, neurons in C order
    positions: list[np.ndarray | None]   # per pre population: where its neurons travel

    def potential(self, *xs: np.ndarray, scratch: Scratch | None = None) -> np.ndarray:
        columns = [x if p is None else x[:, p] for x, p in zip(xs, self.positions)]
        pre = np.concatenate(columns, axis=1) if len(columns) > 1 else columns[0]
        return np.ascontiguousarray((self.matrix @ np.asarray(pre, np.float64).T).T)
