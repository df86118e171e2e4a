"""The reference simulator of an explicit netlist (``whetstone_onnx.netlist.explicit``).

It reads nothing but the netlist (header, neuron and synapse records), so agreeing
with the step network's NumPy forward proves the files, not just the exporter.
One time step per population, in header order: every projection is a
``scipy.sparse`` CSR matrix (post x pre) built from its synapse records, and
potentials are summed in float64 (weights are float32 in the file, exact in
float64). A spiking or OR neuron fires when its potential >= its threshold; a
linear or readout neuron passes its potential (plus the readout's bias) on.

Potentials within ``TIE_TOLERANCE`` (relative to max(1, |threshold|)) of a
threshold are counted per population in ``SimResult.near_threshold``: there a
different summation order (the step network's BLAS, a chip's integer adder)
may decide the other way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .errors import InputError
from .network import Network
from .ops.conv import Conv2d
from .ops.dense import Dense

TIE_TOLERANCE = 1e-9


@dataclass
class SimResult:
    outputs: dict[str, np.ndarray]          # population -> (batch, *shape): spikes 0/1, or real values
    potentials: dict[str, np.ndarray]       # population -> (batch, count) float64, every non-input population
    classes: np.ndarray                     # (batch,) decoded class
    synops: float                           # synaptic events per inference (batch mean)
    spike_rate: dict[str, float]            # spiking / or population -> mean fraction firing
    near_threshold: dict[str, int] = field(default_factory=dict)   # population -> potentials within tolerance


@dataclass(eq=False)
class _Step:
    population: dict
    pre: list[dict]                         # pre populations, by first id
    matrix: sp.csr_matrix                   # (post count, sum of pre counts) float64
    fan_out: np.ndarray                     # (sum of pre counts,) synapses per pre neuron
    threshold: np.ndarray | None
    bias: np.ndarray | None


def compile_netlist(netlist) -> list[_Step]:
    """One CSR matrix per non-input population (its incoming projections summed)."""
    populations = {p["name"]: p for p in netlist.populations}
    incoming: dict[str, list[dict]] = {}
    for projection in netlist.projections:
        incoming.setdefault(projection["post"], []).append(projection)
    steps = []
    for population in netlist.populations[1:]:
        projections = incoming.get(population["name"], [])
        pre = sorted({name for pr in projections for name in pr["pre"]}, key=lambda n: populations[n]["first_id"])
        if not pre:
            raise InputError(f"{netlist.path}: population '{population['name']}' has no incoming projection")
        pre_pops = [populations[n] for n in pre]
        # Map global pre ids to columns of the concatenated pre populations.
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
        threshold = None
        if population["kind"] in ("spiking", "or"):
            threshold = netlist.thresholds(population).astype(np.float64)
        bias = np.asarray(population["bias"], np.float64) if population.get("bias") is not None else None
        steps.append(_Step(population, pre_pops, matrix, fan_out, threshold, bias))
    return steps


def simulate_netlist(netlist, x: np.ndarray, *, batch: int = 512, steps: list[_Step] | None = None,
                     forced: dict[str, np.ndarray] | None = None) -> SimResult:
    """Run the netlist on a batch ``x`` shaped like the network input (or flat per sample).

    ``forced`` (population name -> (batch, ...) array): after computing such a
    population, the next ones read the given values instead, so a check can
    test each population from another implementation's input (a tie upstream
    then does not cascade).
    """
    header = netlist.header
    n_input = header["input"]["neurons"]
    x = np.asarray(x)
    if x.size != len(x) * n_input:
        raise InputError(f"input of shape {x.shape}: the netlist expects {n_input} values per sample "
                         f"(shape {header['input']['shape']})")
    flat = x.reshape(len(x), n_input)
    steps = compile_netlist(netlist) if steps is None else steps
    input_name = netlist.populations[0]["name"]
    parts: dict[str, list[np.ndarray]] = {s.population["name"]: [] for s in steps}
    potential_parts: dict[str, list[np.ndarray]] = {s.population["name"]: [] for s in steps}
    # OR neurons sum exact 0/1 spikes with weight 1: no rounding, so no ties to count there.
    near = {s.population["name"]: 0 for s in steps if s.population["kind"] == "spiking"}
    synops = 0.0
    band = {}      # (low, high) per spiking population: the potentials counted as ties
    for s in steps:
        if s.population["kind"] == "spiking":
            tolerance = TIE_TOLERANCE * np.maximum(1.0, np.abs(s.threshold))
            band[s.population["name"]] = ((s.threshold - tolerance)[:, None], (s.threshold + tolerance)[:, None])
    for start in range(0, len(flat), batch):
        # Neuron-major (neurons, batch) C-order arrays: CSR @ dense and per-neuron thresholds stay contiguous.
        values = {input_name: np.ascontiguousarray(np.asarray(flat[start:start + batch], np.float64).T)}
        for step in steps:
            name = step.population["name"]
            pre = values[step.pre[0]["name"]] if len(step.pre) == 1 else \
                np.concatenate([values[p["name"]] for p in step.pre], axis=0)
            synops += float(step.fan_out @ (pre != 0).astype(np.float64).sum(axis=1))
            potential = np.asarray(step.matrix @ pre)
            if step.bias is not None:
                potential += step.bias[:, None]
            if name in near:
                low, high = band[name]
                near[name] += int(np.count_nonzero((potential >= low) & (potential <= high)))
            if step.threshold is not None:
                value = (potential >= step.threshold[:, None]).astype(np.float64)
            else:
                value = potential
            parts[name].append(value.T)
            if forced is not None and name in forced:
                value = np.ascontiguousarray(
                    np.asarray(forced[name][start:start + batch], np.float64).reshape(value.shape[1], -1).T)
            values[name] = value
            potential_parts[name].append(potential.T)
    outputs, potentials, rates = {}, {}, {}
    for step in steps:
        name, population = step.population["name"], step.population
        potentials[name] = np.concatenate(potential_parts[name])
        outputs[name] = potentials[name] if step.threshold is None else np.concatenate(parts[name])
        outputs[name] = outputs[name].reshape(len(flat), *population["shape"])
        if step.threshold is not None:
            rates[name] = float(outputs[name].mean()) if outputs[name].size else 0.0
    output = header["output"]
    final = outputs[output["population"]].reshape(len(flat), -1)
    if output["decode"]["kind"] == "nhot":
        key = np.asarray(output["decode"]["key"], np.float64)
        classes = np.argmax((2.0 * final - 1.0) @ (2.0 * key - 1.0).T, axis=1)
    else:
        classes = np.argmax(final, axis=1)
    return SimResult(outputs, potentials, classes, synops / max(1, len(flat)), rates, near)


def macs(network: Network) -> int:
    """Multiply-accumulates of the float model per inference (Dense and Conv2d layers)."""
    total, shape = 0, tuple(network.input_shape)
    for layer in network.layers:
        out = layer.output_shape(shape)
        if isinstance(layer, Dense):
            total += int(layer.weight.shape[0] * layer.weight.shape[1])
        elif isinstance(layer, Conv2d):
            total += int(math.prod(out) * layer.weight[0].size)
        shape = out
    return total
