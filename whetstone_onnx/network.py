"""The canonical network: the hub between every front end and every back end.

A ``Network`` is a sequential list of layers described *per sample* (no batch
axis, channels first), holding its weights as NumPy arrays. Front ends (the
ONNX lifter) produce one; passes rewrite it; back ends (ONNX emitter, NumPy
reference, later Keras and netlists) read it. Each layer class lives in the
``ops`` module of its op family, which knows everything about it.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import UnsupportedModelError
from .spiking_onnx import DOMAIN


def batchnorm_affine(gamma, beta, mean, var, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) in float64 with gamma (x - mean) / sqrt(var + epsilon) + beta = x * scale + shift:
    the one formula every batch-norm fold uses (ONNX passes, Keras builder and write-back, step network)."""
    gamma, beta, mean, var = (np.asarray(p, np.float64) for p in (gamma, beta, mean, var))
    scale = gamma / np.sqrt(var + epsilon)
    return scale, beta - mean * scale


class OnnxBuilder:
    """Collects nodes, initializers and custom ops while a network is emitted as ONNX."""

    def __init__(self, reserved: set[str] = frozenset()) -> None:
        """``reserved``: value names already taken (the graph the nodes will join)."""
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.custom_ops: set[str] = set()
        self._names: set[str] = set(reserved)   # values and initializers
        self._node_names: set[str] = set()

    def unique(self, name: str, taken: set[str] | None = None) -> str:
        taken = self._names if taken is None else taken
        candidate, k = name, 1
        while candidate in taken:
            candidate, k = f"{name}_{k}", k + 1
        taken.add(candidate)
        return candidate

    def constant(self, name: str, array: np.ndarray, dtype=np.float32) -> str:
        name = self.unique(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(array, dtype=dtype), name))
        return name

    def node(self, op_type: str, inputs: list[str], output: str, *, name: str, custom: bool = False,
             **attributes) -> str:
        """Add a node with one output named ``output`` (made unique); returns that name."""
        output = self.unique(output)
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=self.unique(name, self._node_names),
                                           domain=DOMAIN if custom else "", **attributes))
        if custom:
            self.custom_ops.add(op_type)
        return output


class Layer:
    """Base of every layer: per-sample shapes, NumPy forward, ONNX emission."""

    kind: ClassVar[str] = "layer"
    # Traits the network passes read (set True by the families that have them):
    # only moves values around: a batch norm folds across it into the next linear layer
    rearranges: ClassVar[bool] = False
    # commutes with every non-decreasing elementwise activation: act(layer(x)) == layer(act(x))
    commutes_with_activations: ClassVar[bool] = False
    # positively homogeneous: layer(k x) == k layer(x) for k > 0, so a uniform scale passes through
    scale_transparent: ClassVar[bool] = False
    # reads several tensors (Add, Concat): ``output_shape``, ``forward`` and ``emit`` take one per input
    merges: ClassVar[bool] = False
    # outputs weighted sums plus a per-channel bias (Dense, Conv, Add): the potentials of the units
    # after it, which take its bias as their threshold (``bias_or_zero``, ``scale_outputs``)
    weighted_sum: ClassVar[bool] = False
    name: str

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return input_shape

    def forward(self, x: np.ndarray) -> np.ndarray:
        """NumPy reference on a batch (float64 in, float64 out), independent of onnxruntime."""
        raise NotImplementedError

    def emit(self, builder: OnnxBuilder, x: str) -> str:
        """Append this layer's ONNX nodes reading value ``x``; return its output value name."""
        raise NotImplementedError

    def describe(self) -> dict:
        """A row of the report's layer table."""
        return {"name": self.name, "kind": self.kind}

    def to_nir(self, builder, input_shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """Add this layer's NIR nodes through a ``netlist.nir_export.NirBuilder``."""
        raise UnsupportedModelError(f"layer '{self.name}' ({self.kind}) has no NIR form")

    def to_keras(self, builder) -> None:
        """Add this layer's Keras layers through a ``keras.build.KerasBuilder``."""
        raise UnsupportedModelError(f"layer '{self.name}' ({self.kind}) has no Keras form")

    def from_keras(self, keras_layer) -> None:
        """Take what training changed in the Keras layer ``to_keras`` made (nothing, by default)."""

    def macs(self, input_shape: tuple[int, ...]) -> int:
        """Multiply-accumulates per inference of the float layer (the weight layers have any)."""
        return 0

    def to_netlist(self, planner, index: int) -> None:
        """Add this layer (``index`` in the network) to an explicit netlist through a
        ``netlist.explicit.NetlistPlanner``, whose current tensor is the layer's input (a merging
        layer is given its inputs' planner states after ``index``)."""
        raise UnsupportedModelError(f"layer '{self.name}' ({self.kind}) has no explicit-netlist form")


class LinearLayer(Layer):
    """A layer with a weight (output axis first) and an optional bias: Dense, Conv2d."""

    weight: np.ndarray
    bias: np.ndarray | None
    weighted_sum = True

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    def bias_or_zero(self) -> np.ndarray:
        return self.bias if self.bias is not None else np.zeros(self.out_channels, np.float32)

    def scale_outputs(self, scale: np.ndarray | float, shift: np.ndarray | float = 0.0) -> None:
        """Compose the layer with y -> y * scale + shift (per output channel)."""
        scale = np.broadcast_to(np.asarray(scale, np.float64), (self.out_channels,))
        axes = (slice(None),) + (None,) * (self.weight.ndim - 1)
        self.weight = (self.weight.astype(np.float64) * scale[axes]).astype(np.float32)
        self.bias = (self.bias_or_zero().astype(np.float64) * scale + shift).astype(np.float32)

    def from_keras(self, keras_layer) -> None:
        """Take the trained weights of the Keras layer ``to_keras`` made."""
        raise NotImplementedError

    def to_netlist(self, planner, index: int) -> None:
        """A population fed by this layer's synapses: the Spike after it (whose thresholds take the
        bias, as ``to_step_network`` does), or for the last Dense a readout; it takes both layers.
        Before an Add, the layer is left for the Add to project (``NetlistPlanner.defer``)."""
        network = planner.network
        reader = network.only_reader(index)
        if reader is not None and network.layers[reader].merges and network.layers[reader].weighted_sum:
            planner.defer(self)           # an Add projects these synapses into its own population
            return
        position = network.follower(index)
        following = network.layers[position] if position is not None else None
        self.check_netlist_input(planner.ids.shape)
        out_shape = tuple(self.output_shape(planner.ids.shape))
        if following is not None and following.kind == "spike":
            threshold = np.broadcast_to(following.threshold.astype(np.float64), out_shape)
            if self.bias is not None:
                axes = (slice(None),) + (None,) * (len(out_shape) - 1)
                threshold = threshold - self.bias.astype(np.float64)[axes]
            post = planner.add_population(following.name, "spiking", out_shape, position,
                                          threshold=threshold.astype(np.float32).reshape(-1))
            planner.absorb(position)
        elif self.kind == "dense" and index == network.readout_index():
            post = planner.add_population(self.name, "readout", out_shape, index, bias=self.bias)
        else:
            what = "nothing" if index == len(network.layers) - 1 else \
                "several layers" if following is None else f"'{following.name}' ({following.kind})"
            raise UnsupportedModelError(f"layer '{self.name}' ({self.kind}) is followed by {what}: only a "
                                        "Spike (or, for the last Dense, nothing: a readout) can follow a "
                                        "weight layer in an explicit netlist")
        weight = self.weight.astype(np.float32)
        chunks, candidates, connectivity = self.netlist_synapses(planner, weight, post)
        planner.project(post, chunks, candidates, float(np.abs(weight).max()) if weight.size else 0.0, True,
                        connectivity)

    def check_netlist_input(self, shape: tuple[int, ...]) -> None:
        """``UnsupportedModelError`` when the tensor before the layer does not fit it."""

    def netlist_synapses(self, planner, weight: np.ndarray, post) -> tuple:
        """(a generator function of (pre ids, post ids, weights) chunks in post neuron order, an
        upper bound on the synapses, the projection's connectivity descriptor) from the planner's
        current tensor into ``post``."""
        raise NotImplementedError

    def scale_inputs(self, scale: float) -> None:
        """Compose the layer with x -> x * scale (a uniform input scale)."""
        self.weight = (self.weight.astype(np.float64) * scale).astype(np.float32)

    def absorbs_uniform_shift(self) -> bool:
        """Whether adding one constant to every input adds one constant per output channel."""
        return True

    def absorb_input_affine(self, scale: float, shift: float) -> None:
        """Compose the layer with x -> x * scale + shift (uniform): W (s x + t) + b = s W x + (b + t W 1)."""
        assert shift == 0.0 or self.absorbs_uniform_shift(), f"'{self.name}' cannot absorb a shift of its inputs"
        offset = shift * self.weight.astype(np.float64).reshape(self.out_channels, -1).sum(axis=1)
        self.scale_inputs(scale)
        self.bias = (self.bias_or_zero().astype(np.float64) + offset).astype(np.float32)

    def fold_input_affine(self, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
        """Compose the layer with x -> x * scale + shift (per-sample arrays of its input's shape).

        L(s x + t) = L_s(x) + L(t): the weights absorb the scale and the constant L(t), the
        bias-free layer applied to the shift, is returned (float64, broadcastable to the
        output) for the caller to place, in a bias or in the next layer's thresholds.
        """
        offset = dataclasses.replace(self, bias=None).forward(np.asarray(shift, np.float64)[None])[0]
        self.scale_input_elements(scale)
        return offset

    def scale_input_elements(self, scale: np.ndarray) -> None:
        """Compose the layer with x -> x * scale, one factor per input element."""
        raise NotImplementedError


class _Counted:
    """A mixin for the containers of a network's structure: counts the changes made to it."""

    version = 0

    @classmethod
    def counting(cls, methods: tuple[str, ...]):
        def wrap(name):
            method = getattr(cls.__mro__[2], name)

            def changed(self, *args, **kwargs):
                self.version += 1
                return method(self, *args, **kwargs)
            return changed
        for name in methods:
            setattr(cls, name, wrap(name))
        return cls


class _LayerList(_Counted, list):
    """``Network.layers``: passes edit it in place; its version tells the structure index (Network._structure).
    A layer replaced by one of the same name (an activation by its unit, a unit by its Spike) leaves
    the structure as it was."""

    def __setitem__(self, index, value):
        if isinstance(index, slice) or getattr(value, "name", None) != self[index].name:
            self.version += 1
        list.__setitem__(self, index, value)


class _LinkDict(_Counted, dict):
    """``Network.links``, counting its changes like _LayerList."""


_LayerList.counting(("__delitem__", "__iadd__", "__imul__", "append", "extend", "insert", "pop", "remove",
                     "clear", "sort", "reverse"))
_LinkDict.counting(("__setitem__", "__delitem__", "__ior__", "pop", "popitem", "clear", "update", "setdefault"))


@dataclass
class Network:
    """A per-sample network between one named input and one named output: its layers in a
    topological order, each reading the layer before it unless ``links`` says otherwise."""

    input_name: str
    input_shape: tuple[int, ...]          # per sample, as the model's input expects it
    output_name: str
    layers: list[Layer] = field(default_factory=list)
    num_classes: int | None = None
    # The output is real values read out of the last weight layer (tasks.py: reconstruct, regress),
    # not class scores: the netlists pass it on as values instead of decoding a class.
    regression: bool = False
    # The inputs of the layers that do not read just the layer before them (a graph network's
    # branches and merges): layer name -> the names of the layers, or of the network input, whose
    # outputs it reads, in order. A sequential network has none; the last layer is the output.
    links: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __setattr__(self, name: str, value) -> None:
        # The structure's containers count their changes (see _structure).
        if name == "layers" and not isinstance(value, _LayerList):
            value = _LayerList(value)
        elif name == "links" and not isinstance(value, _LinkDict):
            value = _LinkDict(value)
        super().__setattr__(name, value)

    def copy(self) -> "Network":
        return copy.deepcopy(self)

    # ------------------------------------------------------------ structure

    def sources(self, index: int) -> tuple[str, ...]:
        """The names of the values layer ``index`` reads (layer names, or the input's)."""
        name = self.layers[index].name
        if name in self.links:
            return self.links[name]
        return (self.layers[index - 1].name if index else self.input_name,)

    def source_indices(self, index: int) -> list[int]:
        """The indices of the layers layer ``index`` reads; -1 stands for the network input."""
        position = self._structure()[0]
        return [position.get(name, -1) for name in self.sources(index)]

    def consumers(self, index: int) -> list[int]:
        """The indices of the layers that read layer ``index`` (-1: the network input)."""
        name = self.layers[index].name if index >= 0 else self.input_name
        return [i for i in self._structure()[1].get(name, ()) if i > index]

    def _structure(self) -> tuple[dict[str, int], dict[str, list[int]]]:
        """(layer name -> index, value name -> the indices of the layers that read it, in order). Passes
        edit ``layers`` and ``links`` in place, so it is rebuilt whenever either changed since the last
        build (both count their changes: _LayerList, _LinkDict): one pass over the layers instead of
        one over every layer's inputs for each question a pass asks. (A layer renamed in place after it
        joined the network is not seen: only the lifter names layers, before.)"""
        # The containers themselves, not their ids: a new container may reuse a freed one's id and
        # start from the same count.
        key = (self.layers, self.layers.version, self.links, self.links.version)
        cached = self.__dict__.get("_structure_cache")
        if cached is None or cached[0][0] is not key[0] or cached[0][2] is not key[2] \
                or cached[0][1::2] != key[1::2]:
            position = {layer.name: i for i, layer in enumerate(self.layers)}
            readers: dict[str, list[int]] = {}
            for i in range(len(self.layers)):
                for name in self.sources(i):
                    readers.setdefault(name, []).append(i)
            cached = self.__dict__["_structure_cache"] = (key, position, readers)
        return cached[1], cached[2]

    def readout_index(self) -> int:
        """The index of the layer the output is read out of: the last one, or in a regression network
        the last before its readout tail (the output activation and reshapes the host applies)."""
        index = len(self.layers) - 1
        while self.regression and index > 0 and self.layers[index].kind in ("activation", "reshape"):
            index -= 1
        return index

    def only_reader(self, index: int) -> int | None:
        """The one layer that reads layer ``index``, if no other layer does (nor the output)."""
        if index == len(self.layers) - 1:
            return None
        readers = self.consumers(index)
        return readers[0] if len(readers) == 1 else None

    def follower(self, index: int) -> int | None:
        """The layer that alone reads layer ``index`` and reads nothing else, if there is one:
        the next link of a chain, across which passes may fold, move and merge layers."""
        reader = self.only_reader(index)
        return reader if reader is not None and len(self.sources(reader)) == 1 else None

    def producer(self, index: int) -> int | None:
        """The layer whose follower layer ``index`` is (the previous link of its chain), if any."""
        (source, *others) = self.source_indices(index)
        return source if not others and source >= 0 and self.follower(source) == index else None

    def walk(self, apply: Callable[[Layer, int, list], object], initial, *, keep_all: bool = False) -> list:
        """Call ``apply(layer, index, inputs)`` on every layer in order, ``inputs`` being the values
        ``apply`` returned for the layers it reads (``initial`` for the network input); return the
        last layer's value, or with ``keep_all`` every layer's (a value is dropped once read for
        the last time otherwise)."""
        last_read = {self.input_name: -1}
        for i in range(len(self.layers)):
            for name in self.sources(i):
                last_read[name] = i
        values, kept, value = {self.input_name: initial}, [], initial
        for i, layer in enumerate(self.layers):
            sources = self.sources(i)
            value = apply(layer, i, [values[name] for name in sources])
            if keep_all:
                kept.append(value)
            else:
                for name in sources:
                    if last_read[name] == i:
                        values.pop(name, None)
            values[layer.name] = value
        return kept if keep_all else [value]

    def remove(self, index: int) -> None:
        """Delete layer ``index`` (of one input): the layers that read it read its input instead."""
        (source,) = self.sources(index)
        inputs = self._all_inputs()
        removed = self.layers.pop(index).name
        del inputs[removed]
        self._set_inputs({name: tuple(source if s == removed else s for s in sources)
                          for name, sources in inputs.items()})

    def swap_with_follower(self, index: int) -> None:
        """Exchange layer ``index`` with its follower (which must exist): the follower takes its
        inputs, it reads the follower, and whatever read the follower reads it."""
        following = self.follower(index)
        assert following is not None, f"layer '{self.layers[index].name}' has no follower to swap with"
        inputs = self._all_inputs()
        first, second = self.layers[index].name, self.layers[following].name
        inputs = {name: tuple(first if s == second else s for s in sources) for name, sources in inputs.items()}
        inputs[second], inputs[first] = inputs[first], (second,)
        self.layers[index], self.layers[following] = self.layers[following], self.layers[index]
        self._set_inputs(inputs)

    def insert(self, index: int, layer: Layer, sources: tuple[str, ...]) -> None:
        """Put ``layer`` at position ``index``, reading ``sources``; every other layer keeps its inputs."""
        inputs = self._all_inputs()
        inputs[layer.name] = tuple(sources)
        self.layers.insert(index, layer)
        self._set_inputs(inputs)

    def set_sources(self, index: int, sources: tuple[str, ...]) -> None:
        """Layer ``index`` reads ``sources`` from now on."""
        inputs = self._all_inputs()
        inputs[self.layers[index].name] = tuple(sources)
        self._set_inputs(inputs)

    def split_over_concat(self, index: int, part_of: Callable[[int, int, int], Layer]) -> list[Layer]:
        """f(concat(a, b, ...)) == concat(f_a(a), f_b(b), ...) for a channel-wise layer f at ``index``
        reading a Concat that only it reads: ``part_of(k, first channel, channels)`` makes the copy
        for part k, inserted before the Concat; f is removed. Returns the copies."""
        layer, (position,) = self.layers[index], self.source_indices(index)
        concat, shapes = self.layers[position], self.shapes()
        copies, offset = [], 0
        for k, (part, part_index) in enumerate(zip(self.sources(position), self.source_indices(position))):
            width = (self.input_shape if part_index < 0 else shapes[part_index])[0]
            copy = part_of(k, offset, width)
            self.insert(self.index_of(concat), copy, (part,))
            copies.append(copy)
            offset += width
        self.set_sources(self.index_of(concat), tuple(copy.name for copy in copies))
        self.remove(self.index_of(layer))
        return copies

    def _all_inputs(self) -> dict[str, tuple[str, ...]]:
        return {layer.name: self.sources(i) for i, layer in enumerate(self.layers)}

    def _set_inputs(self, inputs: dict[str, tuple[str, ...]]) -> None:
        """Keep as links only the inputs that are not the layer before."""
        self.links = {}
        for i, layer in enumerate(self.layers):
            if inputs[layer.name] != self.sources(i):
                self.links[layer.name] = inputs[layer.name]

    # ------------------------------------------------------------ values

    def shapes(self) -> list[tuple[int, ...]]:
        """Per-sample output shape of every layer."""
        return self.walk(lambda layer, i, shapes: tuple(layer.output_shape(*shapes)), tuple(self.input_shape),
                         keep_all=True)

    def forward(self, x: np.ndarray, *, all_layers: bool = False, batch: int = 256):
        """NumPy reference forward; with ``all_layers``, every layer's output in order."""
        outputs: list[list[np.ndarray]] = [[] for _ in self.layers]
        for start in range(0, len(x), batch):
            h = np.asarray(x[start:start + batch], np.float64)
            values = self.walk(lambda layer, i, inputs: layer.forward(*inputs), h, keep_all=all_layers)
            for i, value in enumerate(values if all_layers else []):
                outputs[i].append(value)
            if not all_layers:
                outputs[-1].append(values[-1])
        if all_layers:
            return [np.concatenate(o) for o in outputs]
        return np.concatenate(outputs[-1])

    def macs(self) -> int:
        """Multiply-accumulates of the float model per inference (its Dense and Conv2d layers)."""
        shapes = [tuple(self.input_shape)] + self.shapes()
        return sum(layer.macs(shapes[self.source_indices(i)[0] + 1]) for i, layer in enumerate(self.layers))

    def unique_name(self, name: str) -> str:
        """``name``, with underscores added until no layer (nor the input) has it: links refer to
        layers by name."""
        taken = {layer.name for layer in self.layers} | {self.input_name}
        while name in taken:
            name += "_"
        return name

    def index_of(self, layer: Layer) -> int:
        return next(i for i, candidate in enumerate(self.layers) if candidate is layer)

    def neighbour(self, index: int, step: int, kinds: tuple[type, ...], *, through: Callable[[Layer], bool]):
        """The nearest layer of ``kinds`` from ``index`` along its chain (``step`` +1: followers,
        -1: producers), crossing only layers for which ``through`` holds; None if another layer
        or a branch is in the way."""
        i = self.follower(index) if step > 0 else self.producer(index)
        while i is not None:
            layer = self.layers[i]
            if isinstance(layer, kinds):
                return layer
            if not through(layer):
                return None
            i = self.follower(i) if step > 0 else self.producer(i)
        return None
