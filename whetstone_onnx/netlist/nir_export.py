"""NIR export of a step network (the community netlist standard, package ``nir``).

Profiles, chosen by what the consumer imports:
  * ``semantic``: Affine / Conv2d followed by Threshold, exact and stateless;
  * ``portable`` (default): memoryless LIF units (tau = dt, r = 1, v_leak = 0,
    v_reset = 0): one Euler step of dt sets v to the input current, which is what
    the NIRTorch-based importers (snnTorch, Norse) accept;
  * ``cuba``: CubaLIF units with tau_syn = tau_mem = dt, for lava-dl-style backends.

Every NIR spiking node fires on ``v > threshold`` while a Whetstone unit fires on
``v >= threshold``: thresholds are written as nextafter(threshold, -inf) in
float32, which is the same decision for float32 potentials; the metadata says so.
The LIF importers want one threshold per layer (snnTorch asserts it), so the
``portable`` and ``cuba`` profiles give the units of a layer with per-neuron
thresholds the threshold 1 and move the per-neuron part into the bias of the
Affine / Conv2d before it (bias = 1 - threshold); ``semantic`` keeps per-neuron
thresholds and zero biases. A Conv2d bias is one value per channel: thresholds
that vary with the position too (a batch norm folded into a zero-padded
convolution, network_passes/step_network.py) stay per-neuron v_threshold arrays, which NIR
allows but snnTorch's importer refuses; the metadata lists those nodes.
Max pooling has no NIR node: on binary spikes it is an OR of the window, written
as SumPool2d followed by a unit firing on a sum > 0.5 (exact). The N-hot key goes
into the graph metadata so a reader can decode the output spikes. A network that
starts with a layout change (a Keras image model's NHWC -> NCHW Transpose) has
none of its own in NIR: the metadata's ``input_transpose`` gives the axis order a
reader applies to inputs in the model's layout (ops/shape.py). A regression network's
output (network.regression) is its readout's real values: what the model computes after
the readout (an output activation, a reshape to an image) has no NIR node; the metadata's
``readout_activation`` and ``output_reshape`` say what the host applies.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import __version__
from ..errors import InputError, UnsupportedModelError
from ..network import Network

PROFILES = ("semantic", "portable", "cuba")
DEFAULT_DT = 1e-4
UNIFORM_THRESHOLD = np.float32(1.0)      # of every LIF / CubaLIF unit


@dataclass
class NirBuilder:
    """Collects NIR nodes in a chain while the op families add theirs."""

    profile: str
    dt: float
    nodes: dict = field(default_factory=dict)
    edges: list = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    last: str | list[str] = "input"              # the node(s) whose summed output is the current tensor
    input_shape: tuple[int, ...] | None = None     # the Input node's shape, when a layer reshapes the input
    host_side: str | None = None                   # the first layer the host applies to the output (after_output)
    in_readout_tail: bool = False                  # the layer being added follows a regression network's readout

    def add(self, name: str, node) -> str:
        if self.host_side is not None:
            raise UnsupportedModelError(f"layer '{name}': NIR has no node for '{self.host_side}', which only the "
                                        "end of the network may hold (the host applies it to the output)")
        name = self._unique(name.replace("/", "_").replace(".", "_"))
        self.nodes[name] = node
        self.edges += [(source, name) for source in ([self.last] if isinstance(self.last, str) else self.last)]
        self.last = name
        return name

    def after_output(self, layer: str, key: str, value) -> None:
        """A layer with no NIR node that the host applies to the output (a regression readout's
        activation or reshape), recorded as ``metadata[key]``; no node may follow it."""
        self.metadata[key] = value
        self.host_side = self.host_side or layer

    def channel_map(self, name: str, source: str | list[str], weight: np.ndarray, shape: tuple[int, ...]) -> str:
        """A node mapping the channels of the tensor ``source`` (per-sample ``shape``) by ``weight``
        (out channels, in channels): a 1x1 Conv2d for images, an Affine for vectors."""
        import nir
        self.last = source
        weight = np.asarray(weight, np.float32)
        bias = np.zeros(weight.shape[0], np.float32)
        if len(shape) == 3:
            return self.add(name, nir.Conv2d(input_shape=tuple(shape[1:]), weight=weight[:, :, None, None],
                                             stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, bias=bias))
        return self.add(name, nir.Affine(weight, bias))

    def spiking_unit(self, name: str, threshold: np.ndarray, shape: tuple[int, ...]) -> None:
        """A layer of units firing when their input >= ``threshold`` (broadcast to ``shape``)."""
        import nir
        threshold = np.broadcast_to(np.asarray(threshold, np.float32), shape).astype(np.float32)
        per_neuron = self.profile != "semantic" and np.unique(threshold).size > 1
        if per_neuron and self._move_threshold_into_bias(threshold):
            threshold, per_neuron = np.full(shape, UNIFORM_THRESHOLD, np.float32), False
        strict = np.nextafter(threshold, np.float32(-np.inf))
        ones, zeros = np.ones(shape, np.float32), np.zeros(shape, np.float32)
        tau = np.full(shape, self.dt, np.float32)
        if self.profile == "semantic":
            node = nir.Threshold(strict)
        elif self.profile == "portable":
            node = nir.LIF(tau=tau, r=ones, v_leak=zeros, v_threshold=strict, v_reset=zeros)
        else:
            node = nir.CubaLIF(tau_syn=tau, tau_mem=tau, r=ones, v_leak=zeros, v_threshold=strict,
                               v_reset=zeros, w_in=ones)
        node_name = self.add(name, node)
        # Which network layer each spiking node is, so checks can compare layer by layer.
        self.metadata.setdefault("spiking_layers", {})[node_name] = name
        if per_neuron:
            self.metadata.setdefault("per_neuron_thresholds", []).append(node_name)

    def _move_threshold_into_bias(self, threshold: np.ndarray) -> bool:
        """v >= t  <=>  v + (1 - t) >= 1: the preceding Affine / Conv2d takes 1 - t as its bias,
        where its bias can hold t (an Affine's per neuron, a Conv2d's per channel). Moved or not."""
        import nir
        candidates = [self.nodes.get(name) for name in ([self.last] if isinstance(self.last, str) else self.last)]
        previous = next((node for node in candidates if isinstance(node, (nir.Affine, nir.Conv2d))
                         and not np.any(node.bias)), None)
        if isinstance(previous, nir.Affine) and not np.any(previous.bias):
            previous.bias = (UNIFORM_THRESHOLD - threshold.reshape(-1)).astype(np.float32)
        elif isinstance(previous, nir.Conv2d) and not np.any(previous.bias) and \
                np.all(threshold == threshold[:, :1, :1]):
            previous.bias = (UNIFORM_THRESHOLD - threshold[:, 0, 0]).astype(np.float32)
        else:
            return False
        return True

    def _unique(self, name: str) -> str:
        candidate, k = name, 1
        while candidate in self.nodes or candidate in ("input", "output"):
            candidate, k = f"{name}_{k}", k + 1
        return candidate


def to_nir(network: Network, *, profile: str = "portable", dt: float = DEFAULT_DT):
    """The step network (Spike units, see network_passes/step_network.py) as a ``nir.NIRGraph``."""
    import nir
    if profile not in PROFILES:
        raise InputError(f"--nir-profile {profile!r}: expected one of {', '.join(PROFILES)}")
    builder = NirBuilder(profile, dt, metadata={
        "producer": f"whetstone_onnx {__version__}", "profile": profile, "dt": dt,
        "threshold_rule": "units fire on v > threshold; thresholds are nextafter(t, -inf) of the "
                          "Whetstone threshold t (fires on v >= t), equal decisions for float32 v",
        "threshold_placement": "per neuron" if profile == "semantic" else
                               f"uniform {float(UNIFORM_THRESHOLD)}; per-neuron part in the synaptic layer's bias, "
                               "except in the nodes listed in per_neuron_thresholds"})

    readout = network.readout_index() if network.regression else len(network.layers)

    def add(layer, index: int, inputs: list[tuple]) -> tuple:
        """``inputs``: (last node or nodes, NIR shape) of each tensor the layer reads."""
        builder.in_readout_tail = index > readout
        if layer.merges:
            shape = layer.to_nir(builder, inputs)
        else:
            builder.last, shape = inputs[0]
            # A layer returns its NIR output shape only when it differs from its own (the decode).
            shape = layer.to_nir(builder, shape) or layer.output_shape(shape)
        return builder.last, tuple(shape)

    if network.regression:
        builder.metadata["output"] = ("real values of the readout, then readout_activation and output_reshape "
                                      "where given, applied by the host")
    builder.last, shape = network.walk(add, ("input", tuple(network.input_shape)))[0]
    input_shape = builder.input_shape or network.input_shape
    nodes = {"input": nir.Input(input_type={"input": np.array(input_shape)}),
             **builder.nodes, "output": nir.Output(output_type={"output": np.array(shape)})}
    edges = builder.edges + [(source, "output") for source in
                             ([builder.last] if isinstance(builder.last, str) else builder.last)]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=builder.metadata)
