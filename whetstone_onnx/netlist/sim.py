"""The reference simulator of an explicit netlist (``whetstone_onnx.netlist.explicit``).

It reads nothing but the netlist (header, neuron and synapse records), so agreeing
with the step network's NumPy forward proves the files, not just the exporter.
One time step per population, in header order. A spiking or OR neuron fires
when its potential >= its threshold; a linear or readout neuron passes its
potential (plus the readout's bias) on.

Two ways to compute a population's potentials (``_Step.path``):

* fast: a projection whose header carries a ``connectivity`` descriptor (dense,
  conv2d, maxpool2d, avgpool2d) has its compact weights (weight matrix, kernel,
  pooling window weight) rebuilt FROM ITS SYNAPSE RECORDS, and used only if
  they reproduce the records exactly: every record is one slot of the
  descriptor's expansion with that slot's weight, (post, slot) keys strictly
  ascend (so no slot twice), and there are as many records as non-zero slots
  inside the input. Then dense is one BLAS product, conv2d an im2col (channels
  last) and one BLAS product per group, max pooling of spikes a strided count
  of the window's spikes, average pooling a strided sum times the window's
  weight.
* CSR: anything else (no descriptor, records the descriptor does not
  reproduce, several incoming projections) is one ``scipy.sparse`` matrix
  (post x pre) of the records, summed in float64; ``_Step.fallback`` says why.

Precision. The fast path sums spiking populations' potentials in float32
(COMPUTE_DTYPE): measured on one thread on the bench's nets, 1.7x the images
per second of float64 (mnist_conv 12,900 against 7,600; the 15.5M-synapse
synthetic net 1,000 against 600), as BLAS and memory traffic halve. Spikes
stay float64's: a float32 sum of n products lies within 2 eps32 (n + 2)
sum|w| max|x| of the exact sum whatever the summation order (this covers the
rounding of real inputs to float32 too), and the potentials closer than that
to their threshold (on mnist_conv, 2 in a million potentials of the first
convolution, 6 in 1,000 of the 1,568-input dense layer) are recomputed in
float64 from the same inputs. Linear and readout values, passed on as real numbers, are summed in
float64. Potentials within ``TIE_TOLERANCE`` (relative to max(1, |threshold|))
of a threshold are counted per population in ``SimResult.near_threshold``:
there a different summation order (the step network's BLAS, a chip's integer
adder) may decide the other way.

Batch chunks run on one thread per CPU (NumPy and BLAS release the GIL), each
with its own reused buffers.
"""
from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from ..errors import InputError
from ..ops.decode import nhot_scores
from ..ops.padding import window_cells

TIE_TOLERANCE = 1e-9
COMPUTE_DTYPE = np.float32      # the fast path's sums for spiking populations (see above)
RECORD_CHUNK = 1 << 22          # synapse records verified at a time (bounds compile memory)
CHUNK_BYTES = 1 << 21           # float32 potentials of one batch chunk's largest population (measured best)
COLUMN_BYTES = 1 << 19          # im2col columns built and multiplied at a time (within the core's cache)


@dataclass
class SimResult:
    outputs: dict[str, np.ndarray]          # population -> (batch, *shape): spikes (bool), or real values (float64)
    potentials: dict[str, np.ndarray]       # with keep_potentials: population -> (batch, count) float64
    classes: np.ndarray                     # (batch,) decoded class
    synops: float                           # synaptic events per inference (batch mean)
    spike_rate: dict[str, float]            # spiking / or population -> mean fraction firing
    near_threshold: dict[str, int] = field(default_factory=dict)   # population -> potentials within tolerance


class _Reject(Exception):
    """A descriptor that cannot be used (the reason is the message): the CSR path takes over."""


# ---------------------------------------------------------------- layouts
# A population's values travel as (batch, count) arrays: a (C, H, W) population made by a
# convolution or pooling channels last ((H, W, C) flattened), every other in its own C order.


def _channels_last(population: dict, kind: str) -> bool:
    return kind in ("conv2d", "maxpool2d", "avgpool2d") and len(population["shape"]) == 3


def _positions(population: dict, channels_last: bool) -> np.ndarray | None:
    """Where each neuron (C order) sits in the travelling array; None: in place."""
    if not channels_last:
        return None
    c, h, w = population["shape"]
    return np.arange(population["count"]).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)


def _to_travel(values: np.ndarray, positions: np.ndarray | None) -> np.ndarray:
    """Per-neuron values (C order, last axis) rearranged into the travelling order."""
    if positions is None:
        return values
    travel = np.empty_like(values)
    travel[..., positions] = values
    return travel


class _Scratch(threading.local):
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
class _Geometry:
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

    def padded(self, x: np.ndarray, scratch: _Scratch, owner, dtype) -> np.ndarray:
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


def _error_bound(weights: np.ndarray, axis) -> np.ndarray | None:
    """Per output: a bound on |float32 sum - exact sum| for inputs of magnitude <= 1, or None in float64.

    Any summation order of n float32 products errs by at most n u sum|w x| (u = eps / 2), the cast
    of real inputs to float32 by u sum|w x| more; 2 u (n + 2) sum|w| covers both with room to spare.
    """
    if weights.dtype != np.float32:
        return None
    terms = np.count_nonzero(weights, axis=axis)
    return np.finfo(np.float32).eps * (terms + 2) * np.abs(weights.astype(np.float64)).sum(axis=axis)


@dataclass(eq=False)
class _Dense:
    kind = "dense"
    matrix: np.ndarray                   # (pre count, post count) in the travelling orders

    def __post_init__(self):
        self.bound = _error_bound(self.matrix, 0)

    def potential(self, x: np.ndarray, scratch: _Scratch) -> np.ndarray:
        return x.astype(self.matrix.dtype, copy=False) @ self.matrix

    def exact(self, x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """float64 potentials of (sample, neuron) pairs."""
        return np.einsum("ij,ji->i", x[rows].astype(np.float64), self.matrix[:, cols].astype(np.float64))


@dataclass(eq=False)
class _Conv:
    kind = "conv2d"
    geometry: _Geometry
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
        bound = _error_bound(self.kernel.astype(self.dtype).reshape(out_ch, -1), 1)
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

    def potential(self, x: np.ndarray, scratch: _Scratch) -> np.ndarray:
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

    def _columns(self, padded: np.ndarray, scratch: _Scratch) -> np.ndarray:
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
class _Pool:
    """A window sum of each channel times the window's weight (average pooling), or the window's spike
    count (max pooling of spikes: an OR neuron fires on a count >= its threshold)."""

    kind: str                            # maxpool2d or avgpool2d
    geometry: _Geometry
    gather: np.ndarray | None
    weight: np.ndarray | None            # (out_h, out_w, 1) float64 for average pooling

    def __post_init__(self):
        cells = self.geometry.kernel[0] * self.geometry.kernel[1]
        # Spike counts in the smallest integers that hold a window's count and one more.
        self.dtype = np.float64 if self.weight is not None else np.uint8 if cells < 255 else np.uint32

    def potential(self, x: np.ndarray, scratch: _Scratch) -> np.ndarray:
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
class _Sparse:
    kind = "csr"
    matrix: sp.csr_matrix                # (post count, sum of pre counts) float64, neurons in C order
    positions: list[np.ndarray | None]   # per pre population: where its neurons travel

    def potential(self, *xs: np.ndarray, scratch: _Scratch | None = None) -> np.ndarray:
        columns = [x if p is None else x[:, p] for x, p in zip(xs, self.positions)]
        pre = np.concatenate(columns, axis=1) if len(columns) > 1 else columns[0]
        return np.ascontiguousarray((self.matrix @ np.asarray(pre, np.float64).T).T)


# ---------------------------------------------------------------- compile


@dataclass(eq=False)
class _Step:
    population: dict
    pre: list[dict]                         # pre populations, by first id
    op: _Dense | _Conv | _Pool | _Sparse
    fan_out: list[np.ndarray]               # per pre population: synapses per neuron, travelling order
    threshold: np.ndarray | None            # (count,) float32 as in the file, travelling order
    bias: np.ndarray | None
    positions: np.ndarray | None            # where this population's neurons travel
    fallback: str | None = None             # why the CSR path was taken

    def __post_init__(self):
        # What the operator's potentials are compared with (spike counts: an integer threshold).
        self.compare = self.op.threshold(self.threshold) if isinstance(self.op, _Pool) and \
            self.threshold is not None else self.threshold

    @property
    def path(self) -> str:
        return self.op.kind

    @property
    def name(self) -> str:
        return self.population["name"]


def compile_netlist(netlist) -> list[_Step]:
    """One step per non-input population: a verified fast operator, or else its CSR matrix."""
    populations = {p["name"]: p for p in netlist.populations}
    incoming: dict[str, list[dict]] = {}
    for projection in netlist.projections:
        incoming.setdefault(projection["post"], []).append(projection)
    positions = {netlist.populations[0]["name"]: None}
    steps = []
    for population in netlist.populations[1:]:
        projections = incoming.get(population["name"], [])
        pre = sorted({name for pr in projections for name in pr["pre"]}, key=lambda n: populations[n]["first_id"])
        if not pre:
            raise InputError(f"{netlist.path}: population '{population['name']}' has no incoming projection")
        pre_pops = [populations[n] for n in pre]
        try:
            if len(projections) != 1 or len(pre) != 1:
                raise _Reject(f"{len(projections)} incoming projections from {len(pre)} populations")
            op, fan_out = _fast(netlist, projections[0], pre_pops[0], population, positions[pre[0]])
            fallback = None
        except _Reject as reason:
            op, fan_out = _sparse(netlist, projections, pre_pops, population, [positions[n] for n in pre])
            fallback = str(reason)
        here = _positions(population, _channels_last(population, op.kind))
        positions[population["name"]] = here
        threshold = None
        if population["kind"] in ("spiking", "or"):
            threshold = _to_travel(np.asarray(netlist.thresholds(population), np.float32), here)
        bias = None
        if population.get("bias") is not None:
            bias = _to_travel(np.asarray(population["bias"], np.float64), here)
        steps.append(_Step(population, pre_pops, op, fan_out, threshold, bias, here, fallback))
    return steps


def _sparse(netlist, projections, pre_pops, population, positions) -> tuple[_Sparse, list[np.ndarray]]:
    """The CSR matrix of every record into ``population`` (the path that needs no descriptor)."""
    starts = np.array([p["first_id"] for p in pre_pops], np.int64)
    columns_before = np.cumsum([0] + [p["count"] for p in pre_pops])
    n_pre = int(columns_before[-1])
    matrix = sp.csr_matrix((population["count"], n_pre), dtype=np.float64)
    for projection in projections:
        records = netlist.projection_synapses(projection)
        pre_ids = np.asarray(records["pre"], np.int64)
        which = np.searchsorted(starts, pre_ids, side="right") - 1
        columns = pre_ids - starts[which] + columns_before[which]
        rows = np.asarray(records["post"], np.int64) - population["first_id"]
        if len(rows) and (rows.min() < 0 or rows.max() >= population["count"] or columns.min() < 0
                          or (columns >= np.asarray(columns_before[1:])[which]).any()):
            raise InputError(f"{netlist.path}: projection '{projection['name']}' has synapses outside "
                             "its populations")
        matrix = matrix + sp.csr_matrix((np.asarray(records["weight"], np.float64), (rows, columns)),
                                        shape=matrix.shape)
    matrix = matrix.tocsr()
    matrix.sum_duplicates()
    fan_out = np.bincount(matrix.indices, minlength=n_pre).astype(np.float64)
    per_pre = [_to_travel(fan_out[a:b], p) for a, b, p in zip(columns_before[:-1], columns_before[1:], positions)]
    return _Sparse(matrix, positions), per_pre


# ---------------------------------------------------------------- descriptors, verified


def _fast(netlist, projection, pre_pop, population, pre_positions):
    """The fast operator of ``projection`` and the pre population's fan-out, or ``_Reject``."""
    connectivity = projection.get("connectivity")
    if not connectivity:
        raise _Reject("no connectivity descriptor")
    try:
        kind = connectivity["kind"]
        if list(connectivity["output_shape"]) != list(population["shape"]):
            raise _Reject("output_shape is not the post population's shape")
        index = _layer_input(connectivity, pre_pop)
        if kind == "dense":
            return _verify_dense(netlist, projection, index, pre_pop, population, pre_positions)
        if kind == "conv2d":
            return _verify_conv(netlist, projection, connectivity, index, pre_pop, population, pre_positions)
        if kind in ("maxpool2d", "avgpool2d"):
            return _verify_pool(netlist, projection, connectivity, index, pre_pop, population, pre_positions)
    except (KeyError, TypeError, ValueError) as exc:
        raise _Reject(f"malformed connectivity descriptor ({type(exc).__name__}: {exc})") from None
    raise _Reject(f"connectivity kind {kind!r} has no fast path")


def _layer_input(connectivity: dict, pre_pop: dict) -> np.ndarray:
    """The pre neuron (C order index) of every element of the layer's input tensor: pre_view applied."""
    index = np.arange(pre_pop["count"]).reshape(pre_pop["shape"])
    for step, argument in connectivity["pre_view"]:
        if step == "reshape":
            index = index.reshape(argument)
        elif step == "transpose" and sorted(argument) == list(range(index.ndim)):
            index = index.transpose(argument)
        else:
            raise _Reject(f"pre_view step {step!r} {argument!r}")
    if list(index.shape) != list(connectivity["input_shape"]):
        raise _Reject(f"pre_view gives {list(index.shape)}, input_shape is {connectivity['input_shape']}")
    return index


def _records(netlist, projection, pre_pop, population):
    """(pre index, post index, weight) of the projection's records, a chunk at a time, indices int32."""
    if max(pre_pop["count"], population["count"]) > np.iinfo(np.int32).max:
        raise _Reject("a population too large for 32-bit indices")
    records = netlist.projection_synapses(projection)
    for start in range(0, len(records), RECORD_CHUNK):
        part = records[start:start + RECORD_CHUNK]
        # uint32 differences: an id below the population wraps to at least 2^32 - first_id >= count.
        pre = part["pre"] - np.uint32(pre_pop["first_id"])
        post = part["post"] - np.uint32(population["first_id"])
        if len(pre) and (pre.max() >= pre_pop["count"] or post.max() >= population["count"]):
            raise _Reject("synapses outside the projection's populations")
        yield pre.view(np.int32), post.view(np.int32), np.asarray(part["weight"])


class _Table:
    """Compact weights rebuilt from records: each record names a slot and a (post, slot) key; keys must
    ascend (so no slot is written twice) and every record of a slot must carry the same weight."""

    def __init__(self, size: int):
        self.weights = np.full(size, np.nan, np.float32)
        self.last = -1
        self.records = 0

    def add(self, key: np.ndarray, slot: np.ndarray, weight: np.ndarray) -> None:
        if len(key) and (key[0] <= self.last or (np.diff(key) <= 0).any()):
            raise _Reject("synapses not in (post, slot) order: a slot may repeat")
        unseen = np.isnan(self.weights[slot])
        self.weights[slot[unseen]] = weight[unseen]
        if not np.array_equal(self.weights[slot], weight):
            raise _Reject("records of one slot carry different weights")
        self.last = int(key[-1]) if len(key) else self.last
        self.records += len(key)

    def compact(self) -> np.ndarray:
        """The weights, slots that no record names as 0."""
        return np.nan_to_num(self.weights, nan=0.0)

    def expect(self, expected: int) -> None:
        if self.records != expected:
            raise _Reject(f"{self.records} records, the descriptor's non-zero slots inside the input make "
                          f"{expected}")


def _inverse(index: np.ndarray) -> np.ndarray:
    """Layer-input position of every pre neuron (pre_view is a permutation)."""
    k_of_pre = np.empty(index.size, np.int32)
    k_of_pre[index.reshape(-1)] = np.arange(index.size)
    return k_of_pre


def _gather(index: np.ndarray, pre_positions: np.ndarray | None) -> np.ndarray | None:
    """Travelling positions of the (C, H, W) layer input in (H, W, C) order; None when it is a reshape."""
    travel = index if pre_positions is None else pre_positions[index]
    gather = travel.transpose(1, 2, 0).reshape(-1)
    return None if np.array_equal(gather, np.arange(gather.size)) else gather


def _dtype(population: dict):
    return COMPUTE_DTYPE if population["kind"] == "spiking" else np.float64


def _verify_dense(netlist, projection, index, pre_pop, population, pre_positions):
    n_in, n_out = index.size, population["count"]
    k_of_pre = _inverse(index)
    table = _Table(n_out * n_in)
    fan_out = np.zeros(pre_pop["count"], np.int64)
    for pre, post, weight in _records(netlist, projection, pre_pop, population):
        slot = post.astype(np.int64) * n_in + k_of_pre[pre]
        table.add(slot, slot, weight)
        fan_out += np.bincount(pre, minlength=pre_pop["count"])
    matrix = table.compact().reshape(n_out, n_in)[:, k_of_pre]        # (post, pre neuron)
    if pre_positions is not None:
        matrix = _to_travel(matrix, pre_positions)
    return (_Dense(np.ascontiguousarray(matrix.T, dtype=_dtype(population))),
            [_to_travel(fan_out.astype(np.float64), pre_positions)])


def _window_geometry(connectivity: dict, dilations) -> _Geometry:
    shapes = [tuple(int(d) for d in connectivity[k]) for k in ("input_shape", "output_shape")]
    kernel = tuple(int(d) for d in connectivity["kernel_shape"][-2:])
    strides = tuple(int(d) for d in connectivity["strides"])
    pads = [int(p) for p in connectivity["pads"]]
    dilations = tuple(int(d) for d in dilations)
    if any(len(s) != 3 for s in shapes) or len(kernel) != 2 or len(strides) != 2 or len(dilations) != 2 \
            or len(pads) != 4 or min(*kernel, *strides, *dilations) < 1 or min(pads) < 0:
        raise _Reject("window parameters out of range")
    return _Geometry(shapes[0], shapes[1], kernel, strides, dilations, pads[0], pads[1])


def _verify_conv(netlist, projection, connectivity, index, pre_pop, population, pre_positions):
    geometry = _window_geometry(connectivity, connectivity["dilations"])
    out_ch, in_per_group, kh, kw = (int(d) for d in connectivity["kernel_shape"])
    group = int(connectivity["group"])
    if group < 1 or out_ch % group or out_ch != geometry.out_shape[0] or in_per_group * group != geometry.in_shape[0]:
        raise _Reject("kernel_shape and group do not fit the input and output channels")
    per_position = in_per_group * kh * kw
    k_of_pre = _inverse(index)
    table = _Table(out_ch * per_position)
    fan_out = np.zeros(pre_pop["count"], np.int64)
    for pre, post, weight in _records(netlist, projection, pre_pop, population):
        ci, co, i, j, ok = geometry.offsets(k_of_pre[pre], post)
        local = ci if group == 1 else ci - (co // (out_ch // group)) * in_per_group
        if not (ok & (local >= 0) & (local < in_per_group)).all():
            raise _Reject("a synapse outside its output's window or group")
        within = (local * kh + i) * kw + j
        table.add(post.astype(np.int64) * per_position + within, co * per_position + within, weight)
        fan_out += np.bincount(pre, minlength=pre_pop["count"])
    kernel = table.compact().reshape(out_ch, in_per_group, kh, kw)
    rows, cols = geometry.inside()
    inside = rows.sum(axis=0)[:, None] * cols.sum(axis=0)[None, :]              # outputs per kernel offset
    table.expect(int(((kernel != 0) * inside).sum()))
    op = _Conv(geometry, _gather(index, pre_positions), kernel, group, _dtype(population))
    return op, [_to_travel(fan_out.astype(np.float64), pre_positions)]


def _verify_pool(netlist, projection, connectivity, index, pre_pop, population, pre_positions):
    kind = connectivity["kind"]
    geometry = _window_geometry(connectivity, (1, 1))
    channels, out_h, out_w = geometry.out_shape
    if channels != geometry.in_shape[0]:
        raise _Reject("pooling changes the channel count")
    if kind == "maxpool2d" and (pre_pop["kind"] not in ("spiking", "or") or population["kind"] != "or"
                                or not np.isfinite(netlist.thresholds(population)).all()):
        raise _Reject("max pooling of values that are not spikes into an OR population")
    kh, kw = geometry.kernel
    k_of_pre = _inverse(index)
    table = _Table(out_h * out_w)                                   # one weight per window position
    fan_out = np.zeros(pre_pop["count"], np.int64)
    for pre, post, weight in _records(netlist, projection, pre_pop, population):
        ci, co, i, j, ok = geometry.offsets(k_of_pre[pre], post)
        if not (ok & (ci == co)).all():
            raise _Reject("a synapse outside its output's window or channel")
        table.add(post.astype(np.int64) * (kh * kw) + i * kw + j, post % (out_h * out_w), weight)
        fan_out += np.bincount(pre, minlength=pre_pop["count"])
    weights = table.compact().reshape(out_h, out_w)
    if kind == "maxpool2d" and not (weights == 1.0).all():
        raise _Reject("max pooling synapses of weight other than 1")
    rows, cols = geometry.inside()
    cells = rows.sum(axis=1)[:, None] * cols.sum(axis=1)[None, :]               # input cells per window
    table.expect(int(channels * ((weights != 0) * cells).sum()))
    weight = None if kind == "maxpool2d" else weights.astype(np.float64)[:, :, None]
    return (_Pool(kind, geometry, _gather(index, pre_positions), weight),
            [_to_travel(fan_out.astype(np.float64), pre_positions)])


# ---------------------------------------------------------------- run


def simulate_netlist(netlist, x: np.ndarray, *, batch: int | None = None, steps: list[_Step] | None = None,
                     forced: dict[str, np.ndarray] | None = None, keep_outputs: bool = True,
                     keep_potentials: bool = False, workers: int | None = None) -> SimResult:
    """Run the netlist on a batch ``x`` shaped like the network input (or flat per sample).

    ``forced`` (population name -> (batch, ...) array): after computing such a
    population, the next ones read the given values instead, so a check can
    test each population from another implementation's input (a tie upstream
    then does not cascade). ``keep_outputs=False`` keeps only the output
    population's values; ``keep_potentials`` keeps every population's
    potentials. Chunks of ``batch`` samples run on ``workers`` threads
    (default: one per CPU).
    """
    header = netlist.header
    n_input = header["input"]["neurons"]
    x = np.asarray(x)
    if x.size != len(x) * n_input:
        raise InputError(f"input of shape {x.shape}: the netlist expects {n_input} values per sample "
                         f"(shape {header['input']['shape']})")
    flat = x.reshape(len(x), n_input)
    steps = compile_netlist(netlist) if steps is None else steps
    output_name = header["output"]["population"]
    run = _Run(steps, netlist.populations[0]["name"], len(flat), forced or {},
               {s.name for s in steps if keep_outputs or s.name == output_name}, keep_potentials)
    batch = batch or _chunk_size(steps)
    chunks = [(start, min(len(flat), start + batch)) for start in range(0, len(flat), batch)]
    workers = max(1, min(workers or os.cpu_count() or 1, len(chunks)))
    # The chunks are the parallelism (NumPy and BLAS release the GIL): BLAS threads on top of them
    # would oversubscribe the cores, and OpenBLAS' spinning threads then stall each other.
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        for totals in pool.map(lambda chunk: run.chunk(flat, *chunk), chunks):
            run.add(totals)
    outputs, potentials = {}, {}
    for step in steps:
        shape = (len(flat), *step.population["shape"])
        if step.name in run.outputs:
            outputs[step.name] = _to_neuron_order(run.outputs[step.name], step.positions, shape)
        if keep_potentials:
            potentials[step.name] = _to_neuron_order(run.potentials[step.name], step.positions,
                                                     shape).reshape(len(flat), -1)
    rates = {s.name: run.spikes[s.name] / max(1, len(flat) * s.population["count"])
             for s in steps if s.threshold is not None}
    final = outputs[output_name].reshape(len(flat), netlist.population(output_name)["count"])
    decode = header["output"]["decode"]
    if decode["kind"] == "nhot":
        classes = np.argmax(nhot_scores(final, decode["key"]), axis=1)
    else:
        classes = np.argmax(final, axis=1)
    return SimResult(outputs, potentials, classes, run.synops / max(1, len(flat)), rates, run.near)


def _synops(x: np.ndarray, fan_out: np.ndarray) -> float:
    """Synaptic events of a chunk: each non-zero pre value times its fan-out."""
    # Counting spikes as bytes, in the narrowest integers that hold the chunk's count, is many times
    # faster than count_nonzero along an axis.
    counts = np.add.reduce(x.view(np.uint8), axis=0, dtype=np.uint16 if len(x) < 1 << 16 else np.uint32) \
        if x.dtype == bool else np.count_nonzero(x, axis=0)
    return float(counts @ fan_out)


def _to_neuron_order(values: np.ndarray, positions: np.ndarray | None, shape) -> np.ndarray:
    """(batch, count) travelling values as (batch, *shape) in C order (a view when channels last)."""
    if positions is None:
        return values.reshape(shape)
    batch, channels, height, width = shape
    return values.reshape(batch, height, width, channels).transpose(0, 3, 1, 2)


def _chunk_size(steps: list[_Step]) -> int:
    """Samples per chunk: the largest population's float32 potentials stay near CHUNK_BYTES, 8 to 512
    (fewer samples: Python's per-step overhead dominates; more: the chunk leaves the core's cache)."""
    per_sample = 4 * max(step.population["count"] for step in steps)
    return int(min(512, max(8, CHUNK_BYTES // per_sample)))


class _Run:
    """Result arrays of one simulation, filled chunk by chunk (rows are disjoint: threads need no lock)."""

    def __init__(self, steps, input_name, samples, forced, kept, keep_potentials):
        self.steps, self.input_name, self.forced = steps, input_name, forced
        self.outputs = {s.name: np.empty((samples, s.population["count"]), bool if s.threshold is not None
                                         else np.float64) for s in steps if s.name in kept}
        self.potentials = {s.name: np.empty((samples, s.population["count"])) for s in steps} \
            if keep_potentials else {}
        self.synops = 0.0
        self.near = {s.name: 0 for s in steps if s.population["kind"] == "spiking"}
        self.spikes = {s.name: 0 for s in steps if s.threshold is not None}
        self.scratch = _Scratch()
        # Potentials within this of a spiking population's threshold are counted as ties.
        self.tolerance = {s.name: TIE_TOLERANCE * np.maximum(1.0, np.abs(s.threshold.astype(np.float64)))
                          for s in steps if s.population["kind"] == "spiking"}
        self.bands: dict = {}

    def chunk(self, flat: np.ndarray, start: int, end: int) -> tuple[float, dict, dict]:
        values = {self.input_name: np.asarray(flat[start:end], np.float64)}
        synops, near, spikes = 0.0, {}, {}
        for step in self.steps:
            inputs = [values[p["name"]] for p in step.pre]
            synops += sum(_synops(x, fan) for x, fan in zip(inputs, step.fan_out))
            potential = step.op.potential(*inputs, scratch=self.scratch)
            if step.bias is not None:
                potential = potential + step.bias
            exact = None
            if step.threshold is None:
                value = potential
            elif step.name in self.tolerance:
                value, exact, near[step.name] = self._spikes(step, inputs, potential)
            else:
                value = potential >= step.compare
            if step.threshold is not None:
                spikes[step.name] = int(np.count_nonzero(value))
            if step.name in self.outputs:
                self.outputs[step.name][start:end] = value
            if self.potentials:
                self.potentials[step.name][start:end] = potential
                if exact is not None:
                    self.potentials[step.name][start + exact[0], exact[1]] = exact[2]
            if step.name in self.forced:
                value = self._forced(step, start, end, value)
            values[step.name] = value
        return synops, near, spikes

    def _spikes(self, step: _Step, inputs: list[np.ndarray], potential: np.ndarray):
        """Spikes of a spiking population, its exact (float64) potentials near the threshold as
        (rows, columns, values) and how many lie within the tie tolerance.

        A float32 potential farther from the threshold than its error bound decides as the exact
        sum would; closer ones are recomputed in float64 from the same inputs.
        """
        bound = getattr(step.op, "bound", None)
        scale = 1.0
        if bound is not None and inputs[0].dtype != bool:
            scale = max(1.0, float(np.abs(inputs[0]).max(initial=0.0)))
        low, high = self._band(step, bound, scale, potential.dtype)
        # Outside [low, high], potential > high is the spike; inside, the exact sum decides below.
        value = potential > high
        near = np.flatnonzero(np.not_equal(potential >= low, value))
        if not len(near):
            return value, None, 0
        rows, cols = np.divmod(near, potential.shape[1])
        threshold = step.threshold[cols]
        exact = potential[rows, cols].astype(np.float64) if bound is None else step.op.exact(inputs[0], rows, cols)
        value[rows, cols] = exact >= threshold
        ties = int(np.count_nonzero(np.abs(exact - threshold) <= self.tolerance[step.name][cols]))
        return value, (rows, cols, exact), ties

    def _band(self, step: _Step, bound: np.ndarray | None, scale: float, dtype) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) in the potential's dtype, rounded outwards: the tie tolerance around the threshold,
        or the float32 error bound for inputs of magnitude <= scale where that is wider."""
        key = (step.name, scale)
        if key not in self.bands:
            half = self.tolerance[step.name] if bound is None else np.maximum(self.tolerance[step.name],
                                                                              bound * scale)
            threshold = step.threshold.astype(np.float64)
            band = (np.nextafter((threshold - half).astype(dtype), -np.inf),
                    np.nextafter((threshold + half).astype(dtype), np.inf))
            if scale != 1.0:
                return band          # real inputs above 1: per chunk, not worth keeping
            self.bands[key] = band
        return self.bands[key]

    def _forced(self, step: _Step, start: int, end: int, value: np.ndarray) -> np.ndarray:
        given = np.asarray(self.forced[step.name][start:end]).reshape(len(value), -1)
        if step.threshold is not None:
            if not np.isin(given, (0, 1)).all():
                raise InputError(f"forced values of population '{step.name}' are not spikes (0 or 1)")
            given = given != 0
        return _to_travel(given.astype(value.dtype), step.positions)

    def add(self, totals: tuple[float, dict, dict]) -> None:
        synops, near, spikes = totals
        self.synops += synops
        for name, count in near.items():
            self.near[name] += count
        for name, count in spikes.items():
            self.spikes[name] += count
