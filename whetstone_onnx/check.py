"""Equivalence checks between representations, judged by onnxruntime.

* float: the canonical float network (emitted to ONNX) against the original
  model, value by value within float32 tolerance;
* sharpenable: the sharpenable graph at its current sharpness against the
  original, as the rate at which they predict the same class;
* spiking: spiking.onnx against the NumPy reference of the step network,
  spike for spike, layer by layer. Each neuron group is checked from
  onnxruntime's spikes of the layer before, so one tie does not cascade.
  Mismatches whose potential lies within ``TIE_MARGIN`` (relative) of the
  threshold are float-summation-order ties and are counted as such; any other
  mismatch fails the check.

A regression network's real-valued output (its readout and what the host applies
after it) is compared within FLOAT_TOLERANCE of the output scale, in every check.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from . import runtime
from .emit import POOLED, steps_before_pools, to_onnx
from .network import Network
from .ops.activation import Spike

FLOAT_TOLERANCE = 1e-4       # relative to the output scale
TIE_MARGIN = 1e-5            # relative to the layer's largest |potential|


def normalise_output(logits: np.ndarray, normaliser: str | None) -> np.ndarray:
    """Apply the output normaliser that the passes removed, so outputs compare with the original's."""
    if normaliser is None:
        return logits
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return log_probabilities if normaliser == "LogSoftmax" else np.exp(log_probabilities)


@dataclass
class FloatCheck:
    samples: int
    max_abs_diff: float
    output_scale: float
    relative_diff: float
    class_agreement: float
    passed: bool


def check_float(original: onnx.ModelProto, float_model: onnx.ModelProto, normaliser: str | None,
                x: np.ndarray) -> FloatCheck:
    expected = runtime.predict(original, x).reshape(len(x), -1)
    actual = normalise_output(runtime.predict(float_model, x).reshape(len(x), -1), normaliser)
    diff = float(np.abs(expected - actual).max())
    scale = float(max(np.abs(expected).max(), 1e-12))
    agreement = float(np.mean(expected.argmax(1) == actual.argmax(1)))
    return FloatCheck(len(x), diff, scale, diff / scale, agreement, diff / scale <= FLOAT_TOLERANCE)


def class_agreement(original: onnx.ModelProto, other: onnx.ModelProto, x: np.ndarray) -> float:
    a = runtime.predict(original, x).reshape(len(x), -1).argmax(1)
    b = runtime.predict(other, x).reshape(len(x), -1).argmax(1)
    return float(np.mean(a == b))


@dataclass
class LayerSpikeCheck:
    layer: str
    neurons: int
    spike_rate: float
    mismatches: int
    ties: int                    # mismatches within the tie margin
    near_threshold: int          # potentials within the tie margin, mismatched or not
    max_potential_diff: float    # |onnxruntime - NumPy| of the potential

    @classmethod
    def from_masks(cls, layer: str, spikes: np.ndarray, mismatched: np.ndarray, near: np.ndarray,
                   max_potential_diff: float = 0.0) -> "LayerSpikeCheck":
        """The counts of one layer's (samples, ...) spikes, given which of them mismatch the other
        implementation's and which potentials lie within the tie margin of the threshold."""
        return cls(layer=layer, neurons=int(math.prod(spikes.shape[1:])), spike_rate=float(spikes.mean()),
                   mismatches=int(mismatched.sum()), ties=int((mismatched & near).sum()),
                   near_threshold=int(near.sum()), max_potential_diff=max_potential_diff)


def compare_values(expected: np.ndarray, actual: np.ndarray) -> dict:
    """Real-valued outputs against each other, within FLOAT_TOLERANCE of the expected ones' scale."""
    expected = np.asarray(expected, np.float64).reshape(len(expected), -1)
    actual = np.asarray(actual, np.float64).reshape(expected.shape)
    difference = float(np.abs(expected - actual).max()) if expected.size else 0.0
    relative = difference / max(float(np.abs(expected).max()) if expected.size else 0.0, 1e-12)
    return {"max_abs_diff": difference, "relative_diff": relative, "tolerance": FLOAT_TOLERANCE,
            "passed": relative <= FLOAT_TOLERANCE}


class _LayerTotals:
    """Totals of a layer-by-layer comparison; a mismatch is explained only when it is a tie.
    ``output``: the comparison of real-valued outputs (compare_values), None for spikes."""

    layers: list[LayerSpikeCheck]
    output: dict | None

    @property
    def unexplained(self) -> int:
        return sum(layer.mismatches - layer.ties for layer in self.layers)

    @property
    def passed(self) -> bool:
        return self.unexplained == 0 and (self.output is None or self.output["passed"])

    def to_dict(self) -> dict:
        return {**asdict(self), "unexplained": self.unexplained, "passed": self.passed}


@dataclass
class SpikeCheck(_LayerTotals):
    samples: int
    tie_margin: float
    layers: list[LayerSpikeCheck] = field(default_factory=list)
    free_running_class_agreement: float = 1.0   # NumPy end to end vs onnxruntime end to end
    output: dict | None = None



def check_spiking(network: Network, x: np.ndarray) -> SpikeCheck:
    """spiking.onnx (emitted from ``network``) vs the NumPy reference of ``network``."""
    model = to_onnx(network, graph_name="spiking_check", expose_layers=True)
    outputs = runtime.run(model, x)
    names = [o.name for o in model.graph.output]
    ort_layers = [outputs[n] for n in names[1:]] + [outputs[names[0]]]
    result = SpikeCheck(len(x), TIE_MARGIN)
    readout = network.readout_index() if network.regression else len(network.layers)
    values: list[dict] = []                # the readout's and its tail's, each from onnxruntime's input

    def compare(layer, index: int, inputs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """``inputs``: (onnxruntime's, the reference's) value of each tensor the layer reads.
        A spike layer gets the reference's own potential; every other layer gets
        onnxruntime's inputs, so each neuron group is checked on its own."""
        ort_in, ref_in = [ort for ort, _ in inputs], [ref for _, ref in inputs]
        ort_out = ort_layers[index]
        ref_out = layer.forward(*(ref_in if isinstance(layer, Spike) else ort_in))
        if isinstance(layer, Spike):
            result.layers.append(_compare_spikes(layer, ort_in[0], ref_in[0], ort_out, ref_out))
        elif index >= readout:
            values.append(compare_values(ref_out, ort_out))
        return ort_out.astype(np.float64), ref_out

    _, last = network.walk(compare, (x.astype(np.float64), x.astype(np.float64)))[0]
    # With no spike mismatch anywhere, every layer's input was the same 0/1 values in both,
    # so the last reference output already is the free-running one; otherwise rerun it.
    reference = last if not any(layer.mismatches for layer in result.layers) else network.forward(x)
    if values:
        result.output = max(values, key=lambda comparison: comparison["relative_diff"])
    result.free_running_class_agreement = float(np.mean(
        reference.reshape(len(x), -1).argmax(1) == ort_layers[-1].reshape(len(x), -1).argmax(1)))
    return result


def _compare_spikes(layer: Spike, ort_potential, ref_potential, ort_spikes, ref_spikes) -> LayerSpikeCheck:
    threshold = layer.threshold.astype(np.float64)
    margin = TIE_MARGIN * max(1.0, float(np.abs(ort_potential).max()))
    # The two potentials differ by float rounding only: near one's threshold is near the other's.
    near = np.abs(ref_potential - threshold) <= 2 * margin
    return LayerSpikeCheck.from_masks(layer.name, ort_spikes, ort_spikes != ref_spikes, near,
                                      float(np.abs(ort_potential - ref_potential).max()))


@dataclass
class NetlistCheck(_LayerTotals):
    """spiking.onnx (onnxruntime) against a netlist (NIR graph or explicit netlist, simulated), layer by layer."""

    samples: int
    netlist: str            # "nir:<profile>" or "explicit"
    tie_margin: float
    layers: list[LayerSpikeCheck] = field(default_factory=list)
    differences: list[dict] = field(default_factory=list)   # the first 100 mismatches, with distances
    output: dict | None = None

    def add_layer(self, layer: str, ours: np.ndarray, expected: np.ndarray, distance: np.ndarray,
                  margin: float) -> None:
        """Compare one layer's (samples, neurons) spikes; mismatches within ``margin`` of the threshold are ties."""
        mismatched = ours != expected
        self.layers.append(LayerSpikeCheck.from_masks(layer, ours, mismatched, distance <= margin))
        for sample, neuron in zip(*np.nonzero(mismatched)):
            if len(self.differences) < 100:
                self.differences.append({"layer": layer, "sample": int(sample), "neuron": int(neuron),
                                         "distance_to_threshold": float(distance[sample, neuron])})


def _layer_outputs(spiking_model: onnx.ModelProto, x: np.ndarray, layer_of: dict[str, str]) -> dict[str, np.ndarray]:
    """onnxruntime's (samples, values) output of layers of ``spiking_model`` on ``x``, from one run.

    ``layer_of`` maps each wanted key to a layer (node) name; the result is keyed like it.
    """
    spiking_model = steps_before_pools(spiking_model)       # the Spike before each pooling (emit.py)
    value_of = {node.name: node.output[0] for node in spiking_model.graph.node}
    outputs = runtime.run(runtime.with_outputs(spiking_model, [value_of[layer] for layer in layer_of.values()]), x)
    return {key: outputs[value_of[layer]].reshape(len(x), -1) for key, layer in layer_of.items()}


def check_pooling_order(spiking_model: onnx.ModelProto, x: np.ndarray) -> dict | None:
    """spiking.onnx as written, with max pooling before some steps (emit.pool_before_steps), against
    its layer-by-layer form, which the other checks read: the output and every Spike's value
    (the pooled spikes) the same, bit for bit. None when no pooling was moved."""
    reordered = sum(node.op_type == "MaxPool" and node.name.endswith(POOLED) for node in spiking_model.graph.node)
    if not reordered:
        return None
    values = [spiking_model.graph.output[0].name] + [node.output[0] for node in spiking_model.graph.node
                                                     if node.op_type == "Spike"]
    written = runtime.run(runtime.with_outputs(spiking_model, values), x)
    canonical = runtime.run(runtime.with_outputs(steps_before_pools(spiking_model), values), x)
    different = sum(int(np.count_nonzero(written[name] != canonical[name])) for name in values)
    return {"samples": len(x), "reordered": reordered, "layers": [], "unexplained": different,
            "passed": different == 0}


def check_nir(spiking_model: onnx.ModelProto, graph, x: np.ndarray) -> NetlistCheck:
    """Each NIR spiking node computed from onnxruntime's input to it, compared with onnxruntime's spikes."""
    from .netlist.nir_sim import simulate

    layer_of = graph.metadata["spiking_layers"]           # NIR node -> network layer name
    expected = _layer_outputs(spiking_model, x, layer_of)
    potentials: dict[str, np.ndarray] = {}
    simulated = simulate(graph, x, forced=expected, potentials=potentials)
    result = NetlistCheck(len(x), f"nir:{graph.metadata.get('profile')}", TIE_MARGIN)
    for node, layer in layer_of.items():
        ours = simulated[node].reshape(len(x), -1)
        potential = potentials[node].reshape(len(x), -1).astype(np.float64)
        nir_node = graph.nodes[node]
        strict = getattr(nir_node, "v_threshold", getattr(nir_node, "threshold", None))
        # Distances are to the Whetstone (>=) threshold the strict NIR one was made from.
        threshold = np.broadcast_to(np.nextafter(np.asarray(strict, np.float32), np.float32(np.inf)),
                                    potentials[node].shape[1:]).reshape(-1).astype(np.float64)
        margin = TIE_MARGIN * max(1.0, float(np.abs(potential).max()))
        result.add_layer(layer, ours, expected[node], np.abs(potential - threshold), margin)
    if "output" in graph.metadata:              # a regression network's real values (nir_export.py)
        result.output = compare_values(runtime.predict(spiking_model, x), simulated["output"])
    return result


def check_netlist(spiking_model: onnx.ModelProto, netlist, x: np.ndarray) -> NetlistCheck:
    """Each explicit-netlist population simulated from onnxruntime's input to it, against onnxruntime."""
    from .netlist.sim import TIE_TOLERANCE, simulate_netlist

    layers = {node.name for node in steps_before_pools(spiking_model).graph.node}
    compared = [p for p in netlist.populations if p["kind"] in ("spiking", "or") and p.get("layer_name") in layers]
    expected = _layer_outputs(spiking_model, x, {p["name"]: p["layer_name"] for p in compared})
    simulated = simulate_netlist(netlist, x, forced=expected, keep_potentials=True)
    result = NetlistCheck(len(x), "explicit", TIE_MARGIN)
    for population in compared:
        name = population["name"]
        ours = simulated.outputs[name].reshape(len(x), -1)
        potential = simulated.potentials[name].reshape(len(x), -1)
        threshold = netlist.thresholds(population).astype(np.float64)[None, :]
        margin = max(TIE_MARGIN * max(1.0, float(np.abs(potential).max())), TIE_TOLERANCE)
        result.add_layer(population["layer_name"], ours, expected[name], np.abs(potential - threshold), margin)
    if simulated.values is not None:
        result.output = compare_values(runtime.predict(spiking_model, x), simulated.values)
    return result
