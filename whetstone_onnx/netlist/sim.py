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

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from ..errors import InputError
from ..ops.activation import Activation
from ..spiking_onnx import nhot_scores
from .sim_compile import Step, compile_netlist
from .sim_ops import Scratch, to_travel

TIE_TOLERANCE = 1e-9
CHUNK_BYTES = 1 << 21           # float32 potentials of one batch chunk's largest population (measured best)


@dataclass
class SimResult:
    outputs: dict[str, np.ndarray]          # population -> (batch, *shape): spikes (bool), or real values (float64)
    potentials: dict[str, np.ndarray]       # with keep_potentials: population -> (batch, count) float64
    classes: np.ndarray | None              # (batch,) decoded class; None for real-valued outputs
    synops: float                           # synaptic events per inference (batch mean)
    spike_rate: dict[str, float]            # spiking / or population -> mean fraction firing
    near_threshold: dict[str, int] = field(default_factory=dict)   # population -> potentials within tolerance
    values: np.ndarray | None = None        # real-valued outputs (decode "values"), as the model outputs them


# ---------------------------------------------------------------- run


def simulate_netlist(netlist, x: np.ndarray, *, batch: int | None = None, steps: list[Step] | None = None,
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
    values = None
    if decode["kind"] == "values":
        classes, values = None, final.astype(np.float64)
        if "activation" in decode:
            values = Activation.from_readout_function(decode["activation"]).forward(values)
        values = values.reshape(len(flat), *decode["shape"])
    elif decode["kind"] == "nhot":
        classes = np.argmax(nhot_scores(final, decode["key"]), axis=1)
    else:
        classes = np.argmax(final, axis=1)
    return SimResult(outputs, potentials, classes, run.synops / max(1, len(flat)), rates, run.near, values)


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


def _chunk_size(steps: list[Step]) -> int:
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
        self.scratch = Scratch()
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

    def _spikes(self, step: Step, inputs: list[np.ndarray], potential: np.ndarray):
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

    def _band(self, step: Step, bound: np.ndarray | None, scale: float, dtype) -> tuple[np.ndarray, np.ndarray]:
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

    def _forced(self, step: Step, start: int, end: int, value: np.ndarray) -> np.ndarray:
        given = np.asarray(self.forced[step.name][start:end]).reshape(len(value), -1)
        if step.threshold is not None:
            if not np.isin(given, (0, 1)).all():
                raise InputError(f"forced values of population '{step.name}' are not spikes (0 or 1)")
            given = given != 0
        return to_travel(given.astype(value.dtype), step.positions)

    def add(self, totals: tuple[float, dict, dict]) -> None:
        synops, near, spikes = totals
        self.synops += synops
        for name, count in near.items():
            self.near[name] += count
        for name, count in spikes.items():
            self.spikes[name] += count
