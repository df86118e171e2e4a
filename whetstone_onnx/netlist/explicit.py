"""The explicit neuron/synapse netlist of a step network (format version 1).

Every neuron and every synapse is written out, so a neuromorphic mapper (or the
reference simulator in ``whetstone_onnx.netlist.sim``) needs nothing but these files:

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

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..artifacts import file_sha256
from ..errors import InputError, UnsupportedModelError
from ..network import Network

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
class Population:
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
class Projection:
    name: str
    pre: list[str]
    post: Population
    chunks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]]   # (pre ids, post ids, weights)
    candidates: int                   # upper bound on its synapses
    max_abs_weight: float
    learned: bool                     # weights of a Dense / Conv layer (quantized with weight_bits)
    connectivity: dict | None         # the header's structure descriptor (docs/netlist-format.md)


@dataclass
class Plan:
    input_shape: tuple[int, ...]
    populations: list[Population]
    projections: list[Projection]
    decode: dict


@dataclass
class TensorState:
    """Where one tensor of the network stands in the netlist being planned."""

    ids: np.ndarray                   # the neuron id of every element, in the tensor's shape
    sources: list[Population]         # the populations those neurons belong to
    view: list[list] | None           # the reshapes / transposes since the one source (None: joined)
    layer: object | None = None       # a Dense / Conv deferred to the Add after it (``ids``: its input)


class NetlistPlanner:
    """What an op family's ``to_netlist`` works with while the network is planned as a netlist:
    the neuron ids of the current tensor (``ids``, in its shape), the populations they belong to
    (``sources``) and how the tensor is viewed from its one source (``view``: the reshapes /
    transposes since; None for a tensor joined from several populations)."""

    chunk_synapses = CHUNK_SYNAPSES    # candidate synapses an op family's chunk generator yields at most

    def __init__(self, network: Network):
        self.network = network
        self.populations: list[Population] = []
        self.projections: list[Projection] = []
        self.decode: dict = {"kind": "argmax"}
        self._names: set[str] = set()
        self._next_id = 0
        input_shape = tuple(int(d) for d in network.input_shape)
        self.sources = [self.add_population("input", "input", input_shape, None)]
        self.ids = np.arange(self.sources[0].count, dtype=np.int64).reshape(input_shape)
        self.view: list[list] | None = []
        self.deferred: TensorState | None = None
        self.absorbing: list[int] = []

    @property
    def source_kind(self) -> str:
        """The kind of the populations the current tensor's neurons belong to ("mixed" if several)."""
        kinds = {population.kind for population in self.sources}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def state(self) -> TensorState:
        return TensorState(self.ids, list(self.sources), None if self.view is None else list(self.view))

    def restore(self, state: TensorState) -> None:
        self.ids, self.sources = state.ids, list(state.sources)
        self.view = None if state.view is None else list(state.view)

    def defer(self, layer) -> None:
        """Leave ``layer`` (a Dense / Conv, whose input is the current tensor) to the layer after it."""
        self.deferred = dataclasses.replace(self.state(), layer=layer)

    def absorb(self, index: int) -> None:
        """The layer at ``index`` is part of the population being added (a Spike after its weights)."""
        self.absorbing.append(index)

    def join(self, states: list[TensorState], axis: int) -> None:
        """The current tensor becomes the concatenation of several tensors along ``axis``."""
        self.ids = np.concatenate([state.ids for state in states], axis=axis)
        self.sources = list(dict.fromkeys(population for state in states for population in state.sources))
        self.view = None

    def add_population(self, name: str, kind: str, shape, layer_index: int | None, threshold=None,
                       bias=None) -> Population:
        unique, k = name, 1
        while unique in self._names:
            unique, k = f"{name}_{k}", k + 1
        self._names.add(unique)
        layer_name = None if layer_index is None else self.network.layers[layer_index].name
        population = Population(unique, kind, tuple(int(d) for d in shape), self._next_id, layer_index, layer_name,
                                threshold, bias)
        self._next_id += population.count
        self.populations.append(population)
        return population

    def project(self, post: Population, chunks, candidates: int, max_abs_weight: float, learned: bool,
                connectivity: dict | None) -> None:
        """Add the projection from the current tensor into ``post``, which becomes the current tensor."""
        # Several projections into one population (an Add's) are told apart by their number.
        name = post.name if not any(p.post is post for p in self.projections) else \
            f"{post.name}/{sum(p.post is post for p in self.projections)}"
        self.projections.append(Projection(name, [p.name for p in self.sources], post, chunks, candidates,
                                           max_abs_weight, learned, connectivity))
        self.ids = np.arange(post.first_id, post.first_id + post.count, dtype=np.int64).reshape(post.shape)
        self.sources, self.view = [post], []

    def connectivity(self, kind: str, post: Population, **fields) -> dict | None:
        """A projection's structure descriptor: the layer's kind and parameters, and how its input tensor is
        viewed from the pre population (``pre_view``), so a reader can rebuild the compact weights; None
        for a tensor joined from several populations (the records alone describe it)."""
        if self.view is None:
            return None
        return {"kind": kind, "pre_view": [list(step) for step in self.view],
                "input_shape": [int(d) for d in self.ids.shape], "output_shape": list(post.shape), **fields}

    def reshape(self, shape: tuple[int, ...]) -> None:
        self.ids = self.ids.reshape(shape)
        if self.view is not None:
            # A reshape replaces a reshape before it: only the last target shape matters.
            self.view = self.view[:-1] if self.view and self.view[-1][0] == "reshape" else self.view
            self.view.append(["reshape", [int(d) for d in shape]])

    def transpose(self, perm: tuple[int, ...]) -> None:
        self.ids = self.ids.transpose(perm)
        if self.view is not None:
            self.view.append(["transpose", [int(d) for d in perm]])


def plan_netlist(network: Network) -> Plan:
    """Each layer adds its populations and projections (``Layer.to_netlist``, in the op families)."""
    planner = NetlistPlanner(network)
    absorbed: dict[int, TensorState] = {}

    def plan(layer, index: int, states: list[TensorState]) -> TensorState:
        if index in absorbed:
            return absorbed[index]
        planner.deferred, planner.absorbing = None, []
        if layer.merges:
            layer.to_netlist(planner, index, states)
        else:
            planner.restore(states[0])
            layer.to_netlist(planner, index)
        state = planner.state()
        absorbed.update({k: state for k in planner.absorbing})
        return planner.deferred or state

    final = network.walk(plan, planner.state())[0]
    planner.restore(final)
    ids, decode = planner.ids, planner.decode
    if final.layer is not None or len(planner.sources) != 1:
        raise UnsupportedModelError("the network's output is not one whole population")
    source = planner.sources[0]
    if source.kind == "input":
        raise UnsupportedModelError("the network has no neuron layer to write as a netlist")
    if ids.size != source.count or not np.array_equal(np.sort(ids.reshape(-1)),
                                                      np.arange(source.first_id, source.first_id + source.count)):
        raise UnsupportedModelError("the network's output is not one whole population")
    if network.regression:
        decode = {**decode, "kind": "values", "shape": [int(d) for d in ids.shape]}
        decode["rule"] = "output = the readout population's values" + (
            ", through the activation named here" if "activation" in decode else "") + ", in this shape"
    elif decode["kind"] == "argmax":
        decode["rule"] = ("class = argmax of the readout potentials" if source.kind == "readout"
                          else "class = argmax of the output population's values, ties to the lowest")
    decode = {"population": source.name, **decode}
    total = sum(population.count for population in planner.populations)
    if total > _MAX_ID:
        raise UnsupportedModelError(f"the network has {total} neurons: more than 32-bit ids can address")
    if len(planner.populations) > np.iinfo(np.uint16).max:
        raise UnsupportedModelError(f"{len(planner.populations)} populations: more than the format's 16-bit index")
    return Plan(tuple(int(d) for d in network.input_shape), planner.populations, planner.projections, decode)


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
    plan = plan_netlist(network)
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
            if not isinstance(entry["name"], str) or Path(entry["name"]).name != entry["name"] \
                    or entry["name"] in ("", ".", ".."):
                raise InputError(f"{header_path}: the {key} file {entry['name']!r} is not a file name of the "
                                 "netlist's own folder")
            path = out_dir / entry["name"]
            if not path.is_file():
                raise InputError(f"{path}: netlist {key} file not found")
            size = path.stat().st_size
            if size != entry["bytes"] or size != entry["records"] * dtype.itemsize:
                raise InputError(f"{path}: {size} bytes, the header expects {entry['records']} records "
                                 f"({entry['records'] * dtype.itemsize} bytes): truncated or corrupt")
            if verify and file_sha256(path) != entry["sha256"]:
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

