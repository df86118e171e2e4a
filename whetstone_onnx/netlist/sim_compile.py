"""Compiling an explicit netlist for the simulator (see ``netlist/sim.py``): one step per
non-input population, a fast operator whose compact weights are rebuilt from the synapse
records and verified against them, or else the CSR matrix of the records."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..errors import InputError
from .sim_ops import (COMPUTE_DTYPE, ConvOp, DenseOp, Geometry, PoolOp, Reject, SparseOp, channels_last, to_travel,
                      travel_positions)

RECORD_CHUNK = 1 << 22          # synapse records verified at a time (bounds compile memory)


# ---------------------------------------------------------------- compile


@dataclass(eq=False)
class Step:
    population: dict
    pre: list[dict]                         # pre populations, by first id
    op: DenseOp | ConvOp | PoolOp | SparseOp
    fan_out: list[np.ndarray]               # per pre population: synapses per neuron, travelling order
    threshold: np.ndarray | None            # (count,) float32 as in the file, travelling order
    bias: np.ndarray | None
    positions: np.ndarray | None            # where this population's neurons travel
    fallback: str | None = None             # why the CSR path was taken

    def __post_init__(self):
        # What the operator's potentials are compared with (spike counts: an integer threshold).
        self.compare = self.op.threshold(self.threshold) if isinstance(self.op, PoolOp) and \
            self.threshold is not None else self.threshold

    @property
    def path(self) -> str:
        return self.op.kind

    @property
    def name(self) -> str:
        return self.population["name"]


def compile_netlist(netlist) -> list[Step]:
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
                raise Reject(f"{len(projections)} incoming projections from {len(pre)} populations")
            op, fan_out = _fast(netlist, projections[0], pre_pops[0], population, positions[pre[0]])
            fallback = None
        except Reject as reason:
            op, fan_out = _sparse(netlist, projections, pre_pops, population, [positions[n] for n in pre])
            fallback = str(reason)
        here = travel_positions(population, channels_last(population, op.kind))
        positions[population["name"]] = here
        threshold = None
        if population["kind"] in ("spiking", "or"):
            threshold = to_travel(np.asarray(netlist.thresholds(population), np.float32), here)
        bias = None
        if population.get("bias") is not None:
            bias = to_travel(np.asarray(population["bias"], np.float64), here)
        steps.append(Step(population, pre_pops, op, fan_out, threshold, bias, here, fallback))
    return steps


def _sparse(netlist, projections, pre_pops, population, positions) -> tuple[SparseOp, list[np.ndarray]]:
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
    per_pre = [to_travel(fan_out[a:b], p) for a, b, p in zip(columns_before[:-1], columns_before[1:], positions)]
    return SparseOp(matrix, positions), per_pre


# ---------------------------------------------------------------- descriptors, verified


def _fast(netlist, projection, pre_pop, population, pre_positions):
    """The fast operator of ``projection`` and the pre population's fan-out, or ``Reject``."""
    connectivity = projection.get("connectivity")
    if not connectivity:
        raise Reject("no connectivity descriptor")
    try:
        kind = connectivity["kind"]
        if list(connectivity["output_shape"]) != list(population["shape"]):
            raise Reject("output_shape is not the post population's shape")
        index = _layer_input(connectivity, pre_pop)
        if kind == "dense":
            return _verify_dense(netlist, projection, index, pre_pop, population, pre_positions)
        if kind == "conv2d":
            return _verify_conv(netlist, projection, connectivity, index, pre_pop, population, pre_positions)
        if kind in ("maxpool2d", "avgpool2d"):
            return _verify_pool(netlist, projection, connectivity, index, pre_pop, population, pre_positions)
    except (KeyError, TypeError, ValueError) as exc:
        raise Reject(f"malformed connectivity descriptor ({type(exc).__name__}: {exc})") from None
    raise Reject(f"connectivity kind {kind!r} has no fast path")


def _layer_input(connectivity: dict, pre_pop: dict) -> np.ndarray:
    """The pre neuron (C order index) of every element of the layer's input tensor: pre_view applied."""
    index = np.arange(pre_pop["count"]).reshape(pre_pop["shape"])
    for step, argument in connectivity["pre_view"]:
        if step == "reshape":
            index = index.reshape(argument)
        elif step == "transpose" and sorted(argument) == list(range(index.ndim)):
            index = index.transpose(argument)
        else:
            raise Reject(f"pre_view step {step!r} {argument!r}")
    if list(index.shape) != list(connectivity["input_shape"]):
        raise Reject(f"pre_view gives {list(index.shape)}, input_shape is {connectivity['input_shape']}")
    return index


def _records(netlist, projection, pre_pop, population):
    """(pre index, post index, weight) of the projection's records, a chunk at a time, indices int32."""
    if max(pre_pop["count"], population["count"]) > np.iinfo(np.int32).max:
        raise Reject("a population too large for 32-bit indices")
    records = netlist.projection_synapses(projection)
    for start in range(0, len(records), RECORD_CHUNK):
        part = records[start:start + RECORD_CHUNK]
        # uint32 differences: an id below the population wraps to at least 2^32 - first_id >= count.
        pre = part["pre"] - np.uint32(pre_pop["first_id"])
        post = part["post"] - np.uint32(population["first_id"])
        if len(pre) and (pre.max() >= pre_pop["count"] or post.max() >= population["count"]):
            raise Reject("synapses outside the projection's populations")
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
            raise Reject("synapses not in (post, slot) order: a slot may repeat")
        unseen = np.isnan(self.weights[slot])
        self.weights[slot[unseen]] = weight[unseen]
        if not np.array_equal(self.weights[slot], weight):
            raise Reject("records of one slot carry different weights")
        self.last = int(key[-1]) if len(key) else self.last
        self.records += len(key)

    def compact(self) -> np.ndarray:
        """The weights, slots that no record names as 0."""
        return np.nan_to_num(self.weights, nan=0.0)

    def expect(self, expected: int) -> None:
        if self.records != expected:
            raise Reject(f"{self.records} records, the descriptor's non-zero slots inside the input make "
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
        matrix = to_travel(matrix, pre_positions)
    return (DenseOp(np.ascontiguousarray(matrix.T, dtype=_dtype(population))),
            [to_travel(fan_out.astype(np.float64), pre_positions)])


def _window_geometry(connectivity: dict, dilations) -> Geometry:
    shapes = [tuple(int(d) for d in connectivity[k]) for k in ("input_shape", "output_shape")]
    kernel = tuple(int(d) for d in connectivity["kernel_shape"][-2:])
    strides = tuple(int(d) for d in connectivity["strides"])
    pads = [int(p) for p in connectivity["pads"]]
    dilations = tuple(int(d) for d in dilations)
    if any(len(s) != 3 for s in shapes) or len(kernel) != 2 or len(strides) != 2 or len(dilations) != 2 \
            or len(pads) != 4 or min(*kernel, *strides, *dilations) < 1 or min(pads) < 0:
        raise Reject("window parameters out of range")
    return Geometry(shapes[0], shapes[1], kernel, strides, dilations, pads[0], pads[1])


def _verify_conv(netlist, projection, connectivity, index, pre_pop, population, pre_positions):
    geometry = _window_geometry(connectivity, connectivity["dilations"])
    out_ch, in_per_group, kh, kw = (int(d) for d in connectivity["kernel_shape"])
    group = int(connectivity["group"])
    if group < 1 or out_ch % group or out_ch != geometry.out_shape[0] or in_per_group * group != geometry.in_shape[0]:
        raise Reject("kernel_shape and group do not fit the input and output channels")
    per_position = in_per_group * kh * kw
    k_of_pre = _inverse(index)
    table = _Table(out_ch * per_position)
    fan_out = np.zeros(pre_pop["count"], np.int64)
    for pre, post, weight in _records(netlist, projection, pre_pop, population):
        ci, co, i, j, ok = geometry.offsets(k_of_pre[pre], post)
        local = ci if group == 1 else ci - (co // (out_ch // group)) * in_per_group
        if not (ok & (local >= 0) & (local < in_per_group)).all():
            raise Reject("a synapse outside its output's window or group")
        within = (local * kh + i) * kw + j
        table.add(post.astype(np.int64) * per_position + within, co * per_position + within, weight)
        fan_out += np.bincount(pre, minlength=pre_pop["count"])
    kernel = table.compact().reshape(out_ch, in_per_group, kh, kw)
    rows, cols = geometry.inside()
    inside = rows.sum(axis=0)[:, None] * cols.sum(axis=0)[None, :]              # outputs per kernel offset
    table.expect(int(((kernel != 0) * inside).sum()))
    op = ConvOp(geometry, _gather(index, pre_positions), kernel, group, _dtype(population))
    return op, [to_travel(fan_out.astype(np.float64), pre_positions)]


def _verify_pool(netlist, projection, connectivity, index, pre_pop, population, pre_positions):
    kind = connectivity["kind"]
    geometry = _window_geometry(connectivity, (1, 1))
    channels, out_h, out_w = geometry.out_shape
    if channels != geometry.in_shape[0]:
        raise Reject("pooling changes the channel count")
    if kind == "maxpool2d" and (pre_pop["kind"] not in ("spiking", "or") or population["kind"] != "or"
                                or not np.isfinite(netlist.thresholds(population)).all()):
        raise Reject("max pooling of values that are not spikes into an OR population")
    kh, kw = geometry.kernel
    k_of_pre = _inverse(index)
    table = _Table(out_h * out_w)                                   # one weight per window position
    fan_out = np.zeros(pre_pop["count"], np.int64)
    for pre, post, weight in _records(netlist, projection, pre_pop, population):
        ci, co, i, j, ok = geometry.offsets(k_of_pre[pre], post)
        if not (ok & (ci == co)).all():
            raise Reject("a synapse outside its output's window or channel")
        table.add(post.astype(np.int64) * (kh * kw) + i * kw + j, post % (out_h * out_w), weight)
        fan_out += np.bincount(pre, minlength=pre_pop["count"])
    weights = table.compact().reshape(out_h, out_w)
    if kind == "maxpool2d" and not (weights == 1.0).all():
        raise Reject("max pooling synapses of weight other than 1")
    rows, cols = geometry.inside()
    cells = rows.sum(axis=1)[:, None] * cols.sum(axis=1)[None, :]               # input cells per window
    table.expect(int(channels * ((weights != 0) * cells).sum()))
    weight = None if kind == "maxpool2d" else weights.astype(np.float64)[:, :, None]
    return (PoolOp(kind, geometry, _gather(index, pre_positions), weight),
            [to_travel(fan_out.astype(np.float64), pre_positions)])
