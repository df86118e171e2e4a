"""A NumPy simulator of NIR graphs, one time step, for the nodes whetstone_onnx writes.

It reads only the NIR graph (as ``nir.read`` returns it), so agreeing with the
step network proves the file, not just the exporter. Potentials are computed
in float32, as a neuromorphic chip would; the Whetstone-to-NIR threshold rule
(nextafter) is exact for float32 potentials.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..ops.activation import Activation
from ..ops.conv import Conv2d
from ..ops.pool import AvgPool2d, Pool2d


def simulate(graph, x: np.ndarray, dt: float | None = None, *, forced: dict[str, np.ndarray] | None = None,
             potentials: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Every node's output on a batch ``x`` (one Euler step of ``dt`` from rest), by node name.

    ``dt`` defaults to the one whetstone_onnx recorded in the graph's metadata.
    ``forced`` (node name -> array): after computing such a node, continue from
    the given array instead, so a check can test each layer from another
    implementation's input (one tie then does not cascade). ``potentials``, if
    given, receives each spiking node's membrane potential.
    """
    import nir
    dt = np.float32(graph.metadata.get("dt", 1e-4) if dt is None else dt)
    incoming: dict[str, list[str]] = {}
    for source, target in graph.edges:
        incoming.setdefault(target, []).append(source)
    values: dict[str, np.ndarray] = {}
    read: dict[str, np.ndarray] = {}          # what the nodes after each node read (``forced`` or its value)
    for name in _topological_order(graph, incoming):
        node = graph.nodes[name]
        # A node's input is the sum of its incoming edges.
        parts = [read[source] for source in incoming.get(name, [])]
        h = np.asarray(x, np.float32) if not parts else parts[0] if len(parts) == 1 else \
            np.sum(np.stack(parts), axis=0, dtype=np.float32)
        if isinstance(node, nir.Input):
            if "input_transpose" in graph.metadata:     # data in the model's layout, see ops/shape.py
                h = h.transpose(0, *(p + 1 for p in graph.metadata["input_transpose"]["perm"]))
            h = h.reshape(len(h), *np.asarray(node.input_type["input"]).tolist())
        elif isinstance(node, nir.Output):
            h = _host_side(graph.metadata, h)
        elif isinstance(node, nir.Affine):
            h = h.reshape(len(h), -1) @ node.weight.astype(np.float32).T + node.bias.astype(np.float32)
        elif isinstance(node, nir.Conv2d):
            padding = tuple(np.broadcast_to(node.padding, (2,)).tolist())
            conv = Conv2d(name, node.weight.astype(np.float32), node.bias.astype(np.float32),
                          tuple(np.broadcast_to(node.stride, (2,)).tolist()), (*padding, *padding),
                          tuple(np.broadcast_to(node.dilation, (2,)).tolist()), int(node.groups))
            h = conv.forward(h).astype(np.float32)      # forward sums in float64 whatever comes in
        elif isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):
            padding = tuple(np.asarray(node.padding).tolist())
            pool_args = (name, tuple(np.asarray(node.kernel_size).tolist()), tuple(np.asarray(node.stride).tolist()),
                         (*padding, *padding))
            if isinstance(node, nir.SumPool2d):
                h = Pool2d(*pool_args)._reduce(h, 0.0, np.add)
            else:
                h = AvgPool2d(*pool_args, count_include_pad=True).forward(h.astype(np.float64)).astype(np.float32)
        elif isinstance(node, nir.Flatten):
            h = h.reshape(len(h), -1)
        elif isinstance(node, nir.Threshold):
            potential = h
            h = (potential > node.threshold).astype(np.float32)
        elif isinstance(node, nir.CubaLIF):
            # From rest: i = dt/tau_syn * w_in * x, then v = dt/tau_mem * (v_leak + r * i).
            current = dt / np.float32(node.tau_syn) * (np.float32(node.w_in) * h)
            potential = dt / np.float32(node.tau_mem) * (np.float32(node.v_leak) + np.float32(node.r) * current)
            h = (potential > node.v_threshold).astype(np.float32)
        elif isinstance(node, nir.LIF):
            # From rest: v = dt/tau * (v_leak + r * x).
            potential = dt / np.float32(node.tau) * (np.float32(node.v_leak) + np.float32(node.r) * h)
            h = (potential > node.v_threshold).astype(np.float32)
        else:
            raise InputError(f"NIR node '{name}' ({type(node).__name__}) is not simulated")
        if potentials is not None and isinstance(node, (nir.Threshold, nir.LIF, nir.CubaLIF)):
            potentials[name] = potential
        values[name] = read[name] = h
        if forced is not None and name in forced:
            read[name] = np.asarray(forced[name], np.float32).reshape(h.shape)
    return values


def _host_side(metadata: dict, values: np.ndarray) -> np.ndarray:
    """A regression readout's values as the model outputs them: through the activation and the
    reshape the metadata names (nir_export.py), both applied by the host."""
    if "readout_activation" in metadata:
        values = Activation.from_readout_function(metadata["readout_activation"]).forward(
            values.astype(np.float64)).astype(np.float32)
    if "output_reshape" in metadata:
        values = values.reshape(len(values), *metadata["output_reshape"])
    return values


def _topological_order(graph, incoming: dict[str, list[str]]) -> list[str]:
    """The nodes reachable from the input, each after every node feeding it."""
    outgoing: dict[str, list[str]] = {}
    for source, target in graph.edges:
        outgoing.setdefault(source, []).append(target)
    waiting = {name: len(sources) for name, sources in incoming.items()}
    order, ready = [], ["input"]
    while ready:
        name = ready.pop()
        order.append(name)
        for target in outgoing.get(name, []):
            waiting[target] -= 1
            if waiting[target] == 0:
                ready.append(target)
    if any(count > 0 for count in waiting.values()):
        raise InputError("the NIR graph has a cycle or nodes the input does not reach")
    return order
