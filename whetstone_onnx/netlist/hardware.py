"""Design-rule check of an explicit netlist against a neuromorphic chip's limits.

Presets, with the public sources their numbers come from (figures a mapper could
stretch, e.g. by splitting a neuron over several compartments, are taken as the
plain per-neuron limits). What no source states is marked as an assumption.

- ``LOIHI``: Intel Loihi. M. Davies et al., "Loihi: A Neuromorphic Manycore
  Processor with On-Chip Learning", IEEE Micro 38(1), 2018: 128 neuromorphic
  cores per chip, up to 1,024 compartments per core (131,072 per chip).
  Fan-in: 4,096 input axons per core (the NengoLoihi builder rejects more:
  "Input axons ... exceeded max (4096)"), so no neuron hears more than 4,096
  sources. Weights: a signed 8-bit mantissa (range
  -256..254 in steps of 2 with mixed signs, times 2^(6 + exponent) per synapse
  group; Lava-dl netx takes "standard 8 bit signed" weights): 2^8 levels. A
  core's synaptic memory (1 Mbit) also bounds synapses; not checked here.
- ``TRUENORTH``: IBM TrueNorth. P. A. Merolla et al., "A million spiking-neuron
  integrated circuit with a scalable communication network and interface",
  Science 345(6197), 2014 (and its supplementary text): 4,096 cores, each a
  crossbar of 256 axons x 256 neurons with binary synapses; a neuron weighs an
  axon by one of 4 signed integers chosen by the axon's type, so at most 4
  distinct weights per neuron (2 bits) and a fan-in of 256.
- ``SPINNAKER2``: SpiNNaker 2. H. A. Gonzalez et al., "SpiNNaker2: A Large-Scale
  Neuromorphic System for Event-Based and Asynchronous Machine Learning",
  arXiv:2401.04491 (2024): 152 ARM Cortex-M4F processing elements per chip;
  S. Hoeppner et al., "The SpiNNaker 2 Processing Element Architecture for
  Hybrid Digital Neuromorphic Computing", arXiv:2103.08392 (2021): 128 KB local
  SRAM per element. Neurons per core and fan-in are set by software,
  not silicon: 256 neurons per core is the SpiNNaker software's usual partition
  and 16-bit fixed-point weights its usual synapse format (assumptions, not
  chip limits); fan-in is left unlimited (bounded by memory).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .explicit import Netlist, NetlistStats


@dataclass(frozen=True)
class HardwareLimits:
    name: str
    max_fan_in: int | None          # synapses into one neuron; None: unlimited
    weight_bits: int | None         # distinct weight values representable: 2 ** weight_bits
    neurons_per_core: int
    max_cores: int | None = None    # per chip
    source: str = ""


LOIHI = HardwareLimits("Intel Loihi", max_fan_in=4096, weight_bits=8, neurons_per_core=1024, max_cores=128,
                       source="Davies et al., IEEE Micro 38(1), 2018; fan-in: NengoLoihi's 4,096 input axons "
                              "per core; weights: 8-bit signed mantissa")
TRUENORTH = HardwareLimits("IBM TrueNorth", max_fan_in=256, weight_bits=2, neurons_per_core=256, max_cores=4096,
                           source="Merolla et al., Science 345(6197), 2014")
SPINNAKER2 = HardwareLimits("SpiNNaker 2", max_fan_in=None, weight_bits=16, neurons_per_core=256, max_cores=152,
                            source="Gonzalez et al., arXiv:2401.04491, 2024 (152 cores); neurons per core and "
                                   "weight bits are software conventions")
PRESETS = {"loihi": LOIHI, "truenorth": TRUENORTH, "spinnaker2": SPINNAKER2}


def check_hardware(netlist_or_stats: Netlist | NetlistStats | dict, limits: HardwareLimits) -> dict:
    """Every design rule's limit, actual value and verdict; ``ok`` when all hold.

    Input neurons are external stimuli and take no core; every other population
    is placed on its own cores (ceil(count / neurons_per_core)).
    """
    if isinstance(netlist_or_stats, Netlist):
        stats = netlist_or_stats.stats
    elif isinstance(netlist_or_stats, dict):
        stats = NetlistStats.from_dict(netlist_or_stats)
    else:
        stats = netlist_or_stats
    populations = list(stats.neurons_per_population.items())[1:]      # the first is the input

    over: dict[str, int] = {}
    for name, histogram in stats.fan_in_histogram.items():
        count = sum(neurons for fan_in, neurons in histogram
                    if limits.max_fan_in is not None and fan_in > limits.max_fan_in)
        if count:
            over[name] = count
    fan_in = {"limit": limits.max_fan_in, "actual": stats.max_fan_in, "ok": not over,
              "neurons_over_limit": sum(over.values()), "violations": over}

    cores = {name: math.ceil(count / limits.neurons_per_core) for name, count in populations}
    needed = sum(cores.values())
    core_rule = {"limit": limits.max_cores, "actual": needed, "per_population": cores,
                 "neurons_per_core": limits.neurons_per_core,
                 "ok": limits.max_cores is None or needed <= limits.max_cores}

    levels = None if limits.weight_bits is None else 2 ** limits.weight_bits
    per_projection = {name: count for name, count in stats.distinct_weights_per_projection.items()
                      if levels is not None and count > levels}
    weights = {"limit_distinct_values": levels, "weight_bits": limits.weight_bits,
               "actual": stats.distinct_weights, "ok": not per_projection,
               "needs_quantization": bool(per_projection),
               "projections_over_limit": per_projection}
    if per_projection:
        weights["hint"] = f"write the netlist with weight_bits={limits.weight_bits} to quantize"

    rules = {"fan_in": fan_in, "cores": core_rule, "weights": weights}
    return {"hardware": asdict(limits), "rules": rules, "ok": all(rule["ok"] for rule in rules.values())}
