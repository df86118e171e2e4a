"""The explicit neuron/synapse netlist of a step network (format version 1).

Every neuron and every synapse is written out, so a neuromorphic mapper (or the
reference simulator in ``whetstone_onnx.sim``) needs nothing but these files:

  netlist.json          header: populations, projections, output decoding, stats
  netlist.neurons.bin   one (population u2, index u4, threshold f4) record per neuron, in id order
  netlist.synapses.bin  one (pre u4, post u4, weight f4) record per synapse, grouped per projection

Each projection's header entry also carries an optional ``connectivity``
descriptor (the dense / conv2d / pooling layer it expands, and how its input is
viewed from the pre population) from which a reader can rebuild the compact
weights; the records stay authoritative, and are written in (post neuron, slot
of the compact form) order.

The format is specified in docs/netlist-format.md. Synapses are generated and
appended per projection in bounded chunks (blocks of output channels or rows of
a convolution, blocks of rows of a dense weight), each vectorised with NumPy, so
memory stays bounded however many synapses a layer expands to. Every file is
written under a temporary name and moved into place with ``os.replace``; the
header goes last and records the size and sha256 of both record files.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import InputError, UnsupportedModelError
from ..network import Network
from ..ops.activation import Spike
from ..ops.conv import Conv2d
from ..ops.decode import NHotDecode
from ..ops.dense import Dense
from ..ops.padding import window_cells
from ..ops.pool import AvgPool2d, MaxPool2d, Pool2d
from ..ops.shape import Reshape, Transpose

FORMAT = "whetstone_onnx.netlist"
VERSION = 1
HEADER_FILE = "netlist.json"
NEURONS_FILE = "netlist.neurons.bin"
SYNAPSES_FILE = "netlist.synapses.bin"
NEURON_DTYPE = np.dtype([("population", "<u2"), ("index", "<u4"), ("threshold", "<f4")])
SYNAPSE_DTYPE = np.dtype([("pre", "<u4"), ("post", "<u4"), ("weight", "<f4")])
THRESHOLD_RULE = "a neuron fires when its potential >= threshold"
INPUT_ENCODING = ("real-valued: input neuron i carries the i-th value of the sample flattened in C order "
                  "(no spike); its synapses multiply that value by their weight")
POPULATION_KINDS = ("input", "spiking", "or", "linear", "readout")
# Candidate synapses (before dropping padding and zero weights) generated per chunk.
CHUNK_SYNAPSES = 1 << 21
_MAX_ID = np.iinfo(np.uint32).max


# ---------------------------------------------------------------- plan


@dataclass(eq=False)
class _Population:
    name: str
    kind: str
    shape: tuple[int, ...]
    first_id: int
    layer: int | None                 # index of the network layer whose output this population is
    layer_name: str | None
    threshold: np.ndarray | None      # (count,) float32 for spiking / or populations
    bias: np.ndarray | None = None    # (count,) for a readout with a bias

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    def header(self) -> dict:
        entry = {"name": self.name, "kind": self.kind, "shape": list(self.shape), "first_id": self.first_id,
                 "count": self.count, "layer": self.layer, "layer_name": self.layer_name}
        if self.bias is not None:
            entry["bias"] = [float(b) for b in self.bias.astype(np.float32)]
        return entry


@dataclass(eq=False)
class _Projection:
    name: str
    pre: list[str]
    post: _Population
    chunks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]]   # (pre ids, post ids, weights)
    candidates: int                   # upper bound on its synapses
    max_abs_weight: float
    learned: bool                     # weights of a Dense / Conv layer (quantized with weight_bits)
    connectivity: dict                # the header's structure descriptor (docs/netlist-format.md)


@dataclass
class _Plan:
    input_shape: tuple[int, ...]
    populations: list[_Population]
    projections: list[_Projection]
    decode: dict


def _plan(network: Network) -> _Plan:
    input_shape = tuple(int(d) for d in network.input_shape)
    populations: list[_Population] = []
    projections: list[_Projection] = []
    names: set[str] = set()
    next_id = 0

    def add_population(name, kind, shape, layer_index, threshold=None, bias=None) -> _Population:
        nonlocal next_id
        unique, k = name, 1
        while unique in names:
            unique, k = f"{name}_{k}", k + 1
        names.add(unique)
        layer_name = None if layer_index is None else network.layers[layer_index].name
        population = _Population(unique, kind, tuple(int(d) for d in shape), next_id, layer_index, layer_name,
                                 threshold, bias)
        next_id += population.count
        populations.append(population)
        return population

    current = add_population("input", "input", input_shape, None)
    ids = np.arange(current.count, dtype=np.int64).reshape(input_shape)
    source = current            # the population the current tensor's values come from
    view: list[list] = []       # the reshapes / transposes from source's shape to the current tensor
    decode: dict = {"kind": "argmax"}
    layers = network.layers
    i = 0
    while i < len(layers):
        layer = layers[i]
        following = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(layer, Reshape):
            if math.prod(layer.shape) != ids.size:
                raise UnsupportedModelError(f"layer '{layer.name}' (reshape): {ids.shape} cannot become {layer.shape}")
            ids = ids.reshape(layer.shape)
            # A reshape replaces a reshape before it: only the last target shape matters.
            view = view[:-1] if view and view[-1][0] == "reshape" else view
            view.append(["reshape", [int(d) for d in layer.shape]])
            i += 1
        elif isinstance(layer, Transpose):
            ids = ids.transpose(layer.perm)
            view.append(["transpose", [int(d) for d in layer.perm]])
            i += 1
        elif isinstance(layer, (Dense, Conv2d)):
            out_shape = tuple(layer.output_shape(ids.shape))
            if isinstance(layer, Conv2d) and ids.ndim != 3:
                raise UnsupportedModelError(f"layer '{layer.name}' (conv2d): expects a (C, H, W) input, "
                                            f"got {ids.shape}")
            if isinstance(layer, Dense) and layer.weight.shape[1] != ids.size:
                raise UnsupportedModelError(f"layer '{layer.name}' (dense): {layer.weight.shape[1]} inputs, "
                                            f"the tensor before it has {ids.size}")
            if isinstance(following, Spike):
                threshold = np.broadcast_to(following.threshold.astype(np.float64), out_shape)
                if layer.bias is not None:
                    # A bias is folded into the threshold, as to_step_network does.
                    axes = (slice(None),) + (None,) * (len(out_shape) - 1)
                    threshold = threshold - layer.bias.astype(np.float64)[axes]
                post = add_population(following.name, "spiking", out_shape, i + 1,
                                      threshold=threshold.astype(np.float32).reshape(-1))
                step = 2
            elif isinstance(layer, Dense) and following is None:
                post = add_population(layer.name, "readout", out_shape, i, bias=layer.bias)
                step = 1
            else:
                what = "nothing" if following is None else f"'{following.name}' ({following.kind})"
                raise UnsupportedModelError(f"layer '{layer.name}' ({layer.kind}) is followed by {what}: only a "
                                            "Spike (or, for the last Dense, nothing: a readout) can follow a "
                                            "weight layer in an explicit netlist")
            projections.append(_linear_projection(layer, source, ids, view, post))
            ids = np.arange(post.first_id, post.first_id + post.count, dtype=np.int64).reshape(out_shape)
            source, view = post, []
            i += step
        elif isinstance(layer, (MaxPool2d, AvgPool2d)):
            if ids.ndim != 3:
                raise UnsupportedModelError(f"layer '{layer.name}' ({layer.kind}): expects a (C, H, W) input, "
                                            f"got {ids.shape}")
            out_shape = tuple(layer.output_shape(ids.shape))
            if isinstance(layer, MaxPool2d):
                if source.kind not in ("spiking", "or"):
                    raise UnsupportedModelError(f"layer '{layer.name}' (maxpool2d) pools {source.kind} values: "
                                                "only max pooling of binary spikes (an OR) has a netlist form")
                post = add_population(layer.name, "or", out_shape, i,
                                      threshold=np.ones(math.prod(out_shape), np.float32))
            else:
                post = add_population(layer.name, "linear", out_shape, i)
            projections.append(_pool_projection(layer, source, ids, view, post))
            ids = np.arange(post.first_id, post.first_id + post.count, dtype=np.int64).reshape(out_shape)
            source, view = post, []
            i += 1
        elif isinstance(layer, NHotDecode):
            if following is not None or source.kind != "spiking" or layer.key.shape[1] != ids.size:
                raise UnsupportedModelError(f"layer '{layer.name}' (nhot_decode): must be the last layer and "
                                            "decode the spikes of a spiking layer as wide as its key")
            decode = {"kind": "nhot", "key": layer.key.astype(np.int64).tolist(),
                      "rule": "class = argmax over classes of (2 spikes - 1) . (2 key - 1), ties to the lowest"}
            i += 1
        else:
            raise UnsupportedModelError(f"layer '{layer.name}' ({layer.kind}) has no explicit-netlist form")
    if source.kind == "input":
        raise UnsupportedModelError("the network has no neuron layer to write as a netlist")
    if ids.size != source.count or not np.array_equal(np.sort(ids.reshape(-1)),
                                                      np.arange(source.first_id, source.first_id + source.count)):
        raise UnsupportedModelError("the network's output is not one whole population")
    if decode["kind"] == "argmax":
        decode["rule"] = ("class = argmax of the readout potentials" if source.kind == "readout"
                          else "class = argmax of the output population's values, ties to the lowest")
    decode = {"population": source.name, **decode}
    if next_id > _MAX_ID:
        raise UnsupportedModelError(f"the network has {next_id} neurons: more than 32-bit ids can address")
    if len(populations) > np.iinfo(np.uint16).max:
        raise UnsupportedModelError(f"{len(populations)} populations: more than the format's 16-bit index")
    return _Plan(input_shape, populations, projections, decode)


def _connectivity(kind: str, ids: np.ndarray, view: list[list], post: _Population, **fields) -> dict:
    """A projection's structure descriptor: the layer's kind and parameters, and how its input tensor is
    viewed from the pre population (``pre_view``), so a reader can rebuild the compact weights."""
    return {"kind": kind, "pre_view": [list(step) for step in view], "input_shape": [int(d) for d in ids.shape],
            "output_shape": list(post.shape), **fields}


def _linear_projection(layer, source: _Population, ids: np.ndarray, view: list[list],
                       post: _Population) -> _Projection:
    weight = layer.weight.astype(np.float32)
    max_abs = float(np.abs(weight).max()) if weight.size else 0.0
    if isinstance(layer, Dense):
        pre_ids = ids.reshape(-1)
        out = weight.shape[0]

        def chunks():
            rows = max(1, CHUNK_SYNAPSES // max(1, len(pre_ids)))
            for r0 in range(0, out, rows):
                r1 = min(out, r0 + rows)
                w = weight[r0:r1]
                mask = w != 0
                posts = np.broadcast_to((post.first_id + np.arange(r0, r1, dtype=np.int64))[:, None], w.shape)
                yield np.broadcast_to(pre_ids[None, :], w.shape)[mask], posts[mask], w[mask]
        return _Projection(post.name, [source.name], post, chunks, weight.size, max_abs, True,
                           _connectivity("dense", ids, view, post))
    connectivity = _connectivity("conv2d", ids, view, post, kernel_shape=list(weight.shape),
                                 strides=list(layer.strides), pads=list(layer.pads),
                                 dilations=list(layer.dilations), group=int(layer.group))
    return _Projection(post.name, [source.name], post, _conv_chunks(layer, weight, ids, post),
                       int(weight[0].size * post.count), max_abs, True, connectivity)


def _conv_chunks(layer: Conv2d, weight: np.ndarray, ids: np.ndarray, post: _Population):
    """Synapse chunks of a convolution: blocks of output channels (within one group) x output rows,
    in post neuron order, each neuron's synapses in (input channel, kernel row, kernel column) order."""
    out_ch, in_per_group, kh, kw = weight.shape
    _, height, width = ids.shape
    _, out_h, out_w = post.shape
    top, left, _, _ = layer.pads
    (sh, sw), (dh, dw) = layer.strides, layer.dilations
    per_group = out_ch // layer.group
    # Input coordinates of every (output row, kernel row) and (output column, kernel column).
    in_rows, row_ok = window_cells(np.arange(out_h), sh, top, kh, dh, height)          # (out_h, kh)
    in_cols, col_ok = window_cells(np.arange(out_w), sw, left, kw, dw, width)          # (out_w, kw)
    per_position = in_per_group * kh * kw

    def gather(in_channels, r0, r1):
        """(rows, out_w, in_per_group, kh, kw): the pre id and whether it lies inside the input."""
        pre = ids[in_channels[None, None, :, None, None], in_rows[r0:r1, None, None, :, None],
                  in_cols[None, :, None, None, :]]
        return pre, row_ok[r0:r1, None, None, :, None] & col_ok[None, :, None, None, :]

    def chunks():
        per_row = out_w * per_position
        rows = max(1, min(out_h, CHUNK_SYNAPSES // max(1, per_row)))
        channels = max(1, min(per_group, CHUNK_SYNAPSES // max(1, rows * per_row)))
        row_blocks = [(r0, min(out_h, r0 + rows)) for r0 in range(0, out_h, rows)]
        for g in range(layer.group):
            in_channels = np.arange(g * in_per_group, (g + 1) * in_per_group)
            # Channel blocks outside, row blocks inside: post ids ascend. One row block: gather it once.
            whole = gather(in_channels, 0, out_h) if len(row_blocks) == 1 else None
            for c0 in range(g * per_group, (g + 1) * per_group, channels):
                c1 = min((g + 1) * per_group, c0 + channels)
                for r0, r1 in row_blocks:
                    pre, inside = whole or gather(in_channels, r0, r1)
                    positions = (np.arange(r0, r1)[:, None] * out_w + np.arange(out_w)[None, :])  # (rows, out_w)
                    w = weight[c0:c1]                                       # (n, in_per_group, kh, kw)
                    shape = (c1 - c0, r1 - r0, out_w, in_per_group, kh, kw)
                    mask = inside[None] & (w != 0)[:, None, None]
                    posts = (post.first_id + np.arange(c0, c1, dtype=np.int64)[:, None, None] * (out_h * out_w)
                             + positions[None])                              # (n, rows, out_w)
                    yield (np.broadcast_to(pre[None], shape)[mask],
                           np.broadcast_to(posts[..., None, None, None], shape)[mask],
                           np.broadcast_to(w[:, None, None], shape)[mask])
    return chunks


def _pool_projection(layer: Pool2d, source: _Population, ids: np.ndarray, view: list[list],
                     post: _Population) -> _Projection:
    channels, height, width = ids.shape
    _, out_h, out_w = post.shape
    (kh, kw), (sh, sw) = layer.kernel, layer.strides
    padding = layer._padding(height, width)
    top, left, _, _ = padding
    in_rows, row_ok = window_cells(np.arange(out_h), sh, top, kh, 1, height)
    in_cols, col_ok = window_cells(np.arange(out_w), sw, left, kw, 1, width)
    inside = row_ok[:, None, :, None] & col_ok[None, :, None, :]                      # (out_h, out_w, kh, kw)
    if isinstance(layer, AvgPool2d):
        weights = (1.0 / layer.counts(height, width)).astype(np.float32)               # (out_h, out_w)
    else:
        weights = np.ones((out_h, out_w), np.float32)
    if not inside.reshape(out_h * out_w, -1).any(axis=1).all():
        raise UnsupportedModelError(f"layer '{layer.name}' ({layer.kind}): a window lies wholly in the padding")
    per_channel = out_h * out_w * kh * kw

    def chunks():
        step = max(1, CHUNK_SYNAPSES // per_channel)
        for c0 in range(0, channels, step):
            c1 = min(channels, c0 + step)
            shape = (c1 - c0, out_h, out_w, kh, kw)
            pre = ids[np.arange(c0, c1)[:, None, None, None, None], in_rows[None, :, None, :, None],
                      in_cols[None, None, :, None, :]]
            posts = post.first_id + np.arange(c0 * out_h * out_w, c1 * out_h * out_w, dtype=np.int64)
            mask = np.broadcast_to(inside[None], shape)
            yield (pre[mask], np.broadcast_to(posts.reshape(c1 - c0, out_h, out_w)[..., None, None], shape)[mask],
                   np.broadcast_to(weights[None, :, :, None, None], shape)[mask])
    connectivity = _connectivity(layer.kind, ids, view, post, kernel_shape=[kh, kw], strides=[sh, sw],
                                 pads=[int(p) for p in padding])
    if isinstance(layer, AvgPool2d):
        connectivity["count_include_pad"] = bool(layer.count_include_pad)
    return _Projection(post.name, [source.name], post, chunks, channels * per_channel, float(weights.max()), False,
                       connectivity)


# ---------------------------------------------------------------- stats


@dataclass
class NetlistStats:
    """Counts and distributions of a written netlist (also stored in the header's ``stats``)."""

    neurons: int = 0
    neurons_per_population: dict[str, int] = field(default_factory=dict)
    synapses: int = 0
    synapses_per_projection: dict[str, int] = field(default_factory=dict)
    max_fan_in: int = 0
    mean_fan_in: float = 0.0          # over neurons with at least one incoming synapse
    max_fan_out: int = 0
    mean_fan_out: float = 0.0         # over neurons with at least one outgoing synapse
    weight_min: float | None = None
    weight_max: float | None = None
    distinct_weights: int = 0
    distinct_weights_per_projection: dict[str, int] = field(default_factory=dict)
    fan_in_histogram: dict[str, list[list[int]]] = field(default_factory=dict)   # population -> [[fan_in, neurons]]
    file_bytes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "NetlistStats":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


# ---------------------------------------------------------------- writer


class _HashingWriter:
    """A file opened under a temporary name; hashes and counts what is written."""

    def __init__(self, final: Path):
        self.final = final
        self.temporary = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        self.file = open(self.temporary, "wb")
        self.sha = hashlib.sha256()
        self.bytes = 0

    def write(self, records: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(records)).cast("B")
        self.file.write(data)
        self.sha.update(data)
        self.bytes += len(data)

    def finish(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.temporary.unlink(missing_ok=True)


def write_netlist(network: Network, out_dir: Path | str, *, weight_bits: int | None = None) -> NetlistStats:
    """Write ``network`` (a step network) as an explicit netlist into ``out_dir``; return its stats.

    ``weight_bits``: quantize each Dense / Conv projection's weights symmetrically
    to that many bits (scale = max|w| / (2^(bits-1) - 1)), written de-quantized.
    Raises ``UnsupportedModelError`` naming the first layer without a netlist form.
    """
    if weight_bits is not None and (not isinstance(weight_bits, (int, np.integer)) or not 2 <= weight_bits <= 24):
        raise InputError(f"weight_bits {weight_bits!r}: must be an integer from 2 to 24")
    plan = _plan(network)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = sum(p.count for p in plan.populations)
    neurons = _HashingWriter(out_dir / NEURONS_FILE)
    synapses = _HashingWriter(out_dir / SYNAPSES_FILE)
    header_writer: Path | None = None
    try:
        for index, population in enumerate(plan.populations):
            records = np.empty(population.count, NEURON_DTYPE)
            records["population"] = index
            records["index"] = np.arange(population.count, dtype=np.uint32)
            records["threshold"] = np.nan if population.threshold is None else population.threshold
            neurons.write(records)
        neurons.finish()

        fan_in = np.zeros(total, np.int64)
        fan_out = np.zeros(total, np.int64)
        projection_headers, scales = [], {}
        per_projection, distinct_per_projection = {}, {}
        all_distinct: list[np.ndarray] = []
        weight_min, weight_max = np.inf, -np.inf
        offset = 0
        for projection in plan.projections:
            scale = None
            if weight_bits is not None and projection.learned and projection.max_abs_weight > 0:
                scale = projection.max_abs_weight / (2 ** (weight_bits - 1) - 1)
                scales[projection.name] = scale
            count, distinct = 0, np.empty(0, np.float32)
            lo = projection.post.first_id
            for pre, post, weight in projection.chunks():
                if scale is not None:
                    weight = (np.round(weight.astype(np.float64) / scale) * scale).astype(np.float32)
                    keep = weight != 0
                    pre, post, weight = pre[keep], post[keep], weight[keep]
                if not len(weight):
                    continue
                records = np.empty(len(weight), SYNAPSE_DTYPE)
                records["pre"], records["post"], records["weight"] = pre, post, weight
                synapses.write(records)
                count += len(weight)
                fan_in[lo:lo + projection.post.count] += np.bincount(post - lo, minlength=projection.post.count)
                counted = np.bincount(pre)
                fan_out[:len(counted)] += counted
                distinct = np.union1d(distinct, np.unique(weight))
            projection_headers.append({"name": projection.name, "pre": projection.pre, "post": projection.post.name,
                                       "synapse_offset": offset, "synapse_count": count,
                                       "weight_scale": scale, "connectivity": projection.connectivity})
            offset += count
            per_projection[projection.name] = count
            distinct_per_projection[projection.name] = int(len(distinct))
            if len(distinct):
                all_distinct.append(distinct)
                weight_min, weight_max = min(weight_min, float(distinct[0])), max(weight_max, float(distinct[-1]))
        synapses.finish()

        has_in, has_out = fan_in[fan_in > 0], fan_out[fan_out > 0]
        histogram = {}
        for population in plan.populations[1:]:
            values, counts = np.unique(fan_in[population.first_id:population.first_id + population.count],
                                       return_counts=True)
            histogram[population.name] = [[int(v), int(c)] for v, c in zip(values, counts)]
        stats = NetlistStats(
            neurons=total, neurons_per_population={p.name: p.count for p in plan.populations},
            synapses=offset, synapses_per_projection=per_projection,
            max_fan_in=int(has_in.max()) if len(has_in) else 0,
            mean_fan_in=float(has_in.mean()) if len(has_in) else 0.0,
            max_fan_out=int(has_out.max()) if len(has_out) else 0,
            mean_fan_out=float(has_out.mean()) if len(has_out) else 0.0,
            weight_min=None if offset == 0 else weight_min, weight_max=None if offset == 0 else weight_max,
            distinct_weights=int(len(np.unique(np.concatenate(all_distinct)))) if all_distinct else 0,
            distinct_weights_per_projection=distinct_per_projection, fan_in_histogram=histogram,
            file_bytes={NEURONS_FILE: neurons.bytes, SYNAPSES_FILE: synapses.bytes})
        header = {
            "format": FORMAT, "version": VERSION,
            "input": {"shape": list(plan.input_shape), "neurons": plan.populations[0].count,
                      "encoding": INPUT_ENCODING},
            "populations": [p.header() for p in plan.populations],
            "projections": projection_headers,
            "output": {"population": plan.decode["population"],
                       "decode": {k: v for k, v in plan.decode.items() if k != "population"}},
            "threshold_rule": THRESHOLD_RULE,
            "files": {"neurons": {"name": NEURONS_FILE, "records": total, "bytes": neurons.bytes,
                                  "sha256": neurons.sha.hexdigest()},
                      "synapses": {"name": SYNAPSES_FILE, "records": offset, "bytes": synapses.bytes,
                                   "sha256": synapses.sha.hexdigest()}},
            "dtypes": {"neurons": _dtype_header(NEURON_DTYPE), "synapses": _dtype_header(SYNAPSE_DTYPE)},
            "weight_quantization": None if weight_bits is None else {
                "bits": int(weight_bits), "rule": "per projection: w = round(w / scale) * scale, "
                "scale = max|w| / (2^(bits-1) - 1); weights written de-quantized; zeros dropped; pooling "
                "projections are not quantized", "scales": scales},
            "stats": stats.to_dict(),
        }
        text = json.dumps(header, indent=1, allow_nan=False)
        header_path = out_dir / HEADER_FILE
        header_writer = header_path.with_name(f".{HEADER_FILE}.tmp-{os.getpid()}")
        with open(header_writer, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(neurons.temporary, neurons.final)
        os.replace(synapses.temporary, synapses.final)
        os.replace(header_writer, header_path)
        stats.file_bytes[HEADER_FILE] = header_path.stat().st_size
        return stats
    finally:
        neurons.discard()
        synapses.discard()
        if header_writer is not None:
            header_writer.unlink(missing_ok=True)


def _dtype_header(dtype: np.dtype) -> list[list[str]]:
    return [[name, dtype.fields[name][0].str] for name in dtype.names]


# ---------------------------------------------------------------- reader


@dataclass(eq=False)
class Netlist:
    """A netlist as read back: the header and the record arrays (memory-mapped)."""

    path: Path
    header: dict
    neurons: np.ndarray       # NEURON_DTYPE records, one per neuron id
    synapses: np.ndarray      # SYNAPSE_DTYPE records

    @property
    def populations(self) -> list[dict]:
        return self.header["populations"]

    @property
    def projections(self) -> list[dict]:
        return self.header["projections"]

    @property
    def stats(self) -> NetlistStats:
        return NetlistStats.from_dict(self.header["stats"])

    def population(self, name: str) -> dict:
        for population in self.populations:
            if population["name"] == name:
                return population
        raise KeyError(name)

    def projection_synapses(self, projection: dict) -> np.ndarray:
        start = projection["synapse_offset"]
        return self.synapses[start:start + projection["synapse_count"]]

    def thresholds(self, population: dict) -> np.ndarray:
        start = population["first_id"]
        return np.asarray(self.neurons["threshold"][start:start + population["count"]])


def read_netlist(out_dir: Path | str, *, verify: bool = False) -> Netlist:
    """Read a netlist written by ``write_netlist``; ``InputError`` if a file is missing or corrupt.

    Sizes, dtypes and id ranges are always checked; ``verify`` also checks the sha256 of both record files.
    """
    out_dir = Path(out_dir)
    header_path = out_dir / HEADER_FILE
    if not header_path.is_file():
        raise InputError(f"{header_path}: netlist header not found")
    try:
        header = json.loads(header_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{header_path}: not a readable netlist header ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise InputError(f"{header_path}: not a {FORMAT} header")
    if header.get("version") != VERSION:
        raise InputError(f"{header_path}: netlist format version {header.get('version')!r} "
                         f"(this reader reads version {VERSION})")
    try:
        arrays = {}
        for key, dtype in (("neurons", NEURON_DTYPE), ("synapses", SYNAPSE_DTYPE)):
            entry = header["files"][key]
            if header["dtypes"][key] != _dtype_header(dtype):
                raise InputError(f"{header_path}: unexpected {key} record layout {header['dtypes'][key]}")
            path = out_dir / entry["name"]
            if not path.is_file():
                raise InputError(f"{path}: netlist {key} file not found")
            size = path.stat().st_size
            if size != entry["bytes"] or size != entry["records"] * dtype.itemsize:
                raise InputError(f"{path}: {size} bytes, the header expects {entry['records']} records "
                                 f"({entry['records'] * dtype.itemsize} bytes): truncated or corrupt")
            if verify and _sha256(path) != entry["sha256"]:
                raise InputError(f"{path}: sha256 differs from the header's: corrupt")
            arrays[key] = (np.memmap(path, dtype=dtype, mode="r") if entry["records"]
                           else np.zeros(0, dtype))
        total = sum(p["count"] for p in header["populations"])
        if total != header["files"]["neurons"]["records"]:
            raise InputError(f"{header_path}: populations hold {total} neurons, the neuron file "
                             f"{header['files']['neurons']['records']}")
        end = 0
        for projection in header["projections"]:
            if projection["synapse_offset"] != end:
                raise InputError(f"{header_path}: projection '{projection['name']}' does not follow the previous one")
            end += projection["synapse_count"]
        if end != header["files"]["synapses"]["records"]:
            raise InputError(f"{header_path}: projections hold {end} synapses, the synapse file "
                             f"{header['files']['synapses']['records']}")
    except (KeyError, TypeError) as exc:
        raise InputError(f"{header_path}: malformed netlist header (missing {exc})") from None
    return Netlist(out_dir, header, arrays["neurons"], arrays["synapses"])


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            sha.update(block)
    return sha.hexdigest()
