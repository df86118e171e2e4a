"""Merges of branches: Add (residual connections) and Concat over channels (Inception-style
blocks), the layers that read several tensors (``Layer.merges``; see ``Network.links``).

An Add is a weighted sum, sum_k weights[k] * x_k (+ a bias), one weight per input and
channel: the ONNX Add it is lifted from has all weights 1, and passes scale them as they
scale a Dense / Conv layer's outputs (calibration, the bounds of Clip) or the inputs that
a scale came from. In the spiking network the unit after an Add is one population fed by
several projections: the synapses of each Dense / Conv that only the Add reads, and a
one-to-one projection (weight = the input's weight) from each spiking input, so residual
networks stay single-spike, single-step networks. A Concat moves no information: in a
netlist, the next projection reads the populations of every part.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedModelError
from ..network import Layer, OnnxBuilder
from .registry import LiftContext, lifts


def _per_channel(values: np.ndarray, ndim: int) -> np.ndarray:
    """(C,) values shaped to broadcast over a per-sample (C, ...) tensor of ``ndim`` axes."""
    return np.asarray(values).reshape((-1,) + (1,) * (ndim - 1))


@dataclass(eq=False)
class Add(Layer):
    name: str
    weights: np.ndarray             # (inputs, channels) float32
    rank: int                       # of the per-sample tensors, channels first
    bias: np.ndarray | None = None  # (channels,) float32, or None

    kind = "add"
    merges = weighted_sum = True

    @property
    def out_channels(self) -> int:
        return int(self.weights.shape[1])

    def bias_or_zero(self) -> np.ndarray:
        return self.bias if self.bias is not None else np.zeros(self.out_channels, np.float32)

    def scale_outputs(self, scale, shift=0.0) -> None:
        """Compose the sum with y -> y * scale + shift (per channel), as ``LinearLayer.scale_outputs``."""
        scale = np.broadcast_to(np.asarray(scale, np.float64), (self.out_channels,))
        self.weights = (self.weights.astype(np.float64) * scale).astype(np.float32)
        self.bias = (self.bias_or_zero().astype(np.float64) * scale + shift).astype(np.float32)

    def scale_input(self, position: int, factor) -> None:
        """Input ``position`` now comes divided by ``factor`` (scalar or per channel): take it back."""
        weights = self.weights.astype(np.float64)
        weights[position] *= np.broadcast_to(np.asarray(factor, np.float64), (self.out_channels,))
        self.weights = weights.astype(np.float32)

    def output_shape(self, *shapes):
        if len(set(map(tuple, shapes))) != 1:
            raise UnsupportedModelError(f"layer '{self.name}' (add) adds tensors of shapes {list(shapes)}: "
                                        "only equal shapes (no broadcasting) are supported")
        return tuple(shapes[0])

    def forward(self, *xs):
        total = sum(x * _per_channel(w.astype(np.float64), x.ndim - 1) for x, w in zip(xs, self.weights))
        return total if self.bias is None else total + _per_channel(self.bias.astype(np.float64), xs[0].ndim - 1)

    def emit(self, builder: OnnxBuilder, *values: str) -> str:
        terms = []
        for k, (value, weights) in enumerate(zip(values, self.weights)):
            if np.any(weights != 1.0):
                scale = builder.constant(f"{self.name}.weight{k}", _per_channel(weights, self.rank))
                value = builder.node("Mul", [value, scale], f"{self.name}/scaled{k}", name=f"{self.name}/scale{k}")
            terms.append(value)
        if self.bias is not None:
            terms.append(builder.constant(f"{self.name}.bias", _per_channel(self.bias, self.rank)))
        return builder.node("Sum", terms, self.name, name=self.name)

    def to_keras(self, builder, states) -> None:
        from ..keras.layers import WeightedSum
        tensors = builder.aligned(states, self.name)
        builder.tensor = WeightedSum(self.weights, self.bias, name=builder.name(self.name))(tensors)

    def to_nir(self, builder, inputs) -> tuple[int, ...]:
        """No node: each input's last node (scaled where its weight is not 1) feeds the next node,
        whose input is the sum of its incoming edges."""
        if self.bias is not None and np.any(self.bias):
            raise UnsupportedModelError(f"layer '{self.name}' (add) has a bias, which NIR cannot hold here")
        shape = self.output_shape(*(shape for _, shape in inputs))
        feeding = []
        for k, (last, _) in enumerate(inputs):
            if np.any(self.weights[k] != 1.0):
                last = [builder.channel_map(f"{self.name}_scale{k}", last, np.diag(self.weights[k]), shape)]
            feeding += last if isinstance(last, list) else [last]
        builder.last = feeding
        return shape

    def to_netlist(self, planner, index: int, states) -> None:
        """One spiking population (the Spike after the sum) fed by every input's projection."""
        network = planner.network
        following = network.follower(index)
        spike = network.layers[following] if following is not None else None
        if spike is None or spike.kind != "spike":
            raise UnsupportedModelError(f"layer '{self.name}' (add) is not followed by a Spike: only the sum "
                                        "of a spiking unit's inputs has an explicit-netlist form")
        shape = self.output_shape(*(state.ids.shape if state.layer is None else
                                    state.layer.output_shape(state.ids.shape) for state in states))
        threshold = np.broadcast_to(spike.threshold.astype(np.float64), shape) \
            - _per_channel(self.bias_or_zero().astype(np.float64), len(shape))
        for state, weights in zip(states, self.weights):
            if state.layer is not None and state.layer.bias is not None:
                threshold = threshold - _per_channel(weights * state.layer.bias.astype(np.float64), len(shape))
        post = planner.add_population(spike.name, "spiking", shape, following,
                                      threshold=threshold.astype(np.float32).reshape(-1))
        planner.absorb(following)
        for state, weights in zip(states, self.weights):
            planner.restore(state)
            if state.layer is not None:       # a Dense / Conv that only this sum reads
                linear = state.layer
                weight = (linear.weight.astype(np.float64)
                          * _per_channel(weights.astype(np.float64), linear.weight.ndim)).astype(np.float32)
                linear.check_netlist_input(planner.ids.shape)
                chunks, candidates, connectivity = linear.netlist_synapses(planner, weight, post)
                planner.project(post, chunks, candidates, float(np.abs(weight).max()) if weight.size else 0.0,
                                True, connectivity)
            else:
                self._identity_projection(planner, post, weights)

    def _identity_projection(self, planner, post, weights: np.ndarray) -> None:
        if planner.ids.shape != post.shape:
            raise UnsupportedModelError(f"layer '{self.name}' (add): an input of shape {planner.ids.shape} "
                                        f"does not match the sum's {post.shape}")
        pre = planner.ids.reshape(-1).copy()
        weight = np.broadcast_to(_per_channel(weights.astype(np.float32), len(post.shape)), post.shape).reshape(-1)

        def chunks():
            keep = weight != 0
            yield pre[keep], post.first_id + np.flatnonzero(keep).astype(np.int64), weight[keep].copy()
        planner.project(post, chunks, pre.size, float(np.abs(weight).max()) if weight.size else 0.0, False,
                        planner.connectivity("identity", post, weights=[float(w) for w in weights]))

    def describe(self):
        return {**super().describe(), "inputs": int(self.weights.shape[0])}


@dataclass(eq=False)
class Concat(Layer):
    """Concatenation over the channel axis (axis 0 of every per-sample tensor)."""

    name: str

    kind = "concat"
    merges = True

    def output_shape(self, *shapes):
        rest = {tuple(shape[1:]) for shape in shapes}
        if len(rest) != 1:
            raise UnsupportedModelError(f"layer '{self.name}' (concat) joins tensors of shapes {list(shapes)}: "
                                        "all axes but the channels must agree")
        return (sum(shape[0] for shape in shapes), *rest.pop())

    def forward(self, *xs):
        return np.concatenate(xs, axis=1)

    def emit(self, builder: OnnxBuilder, *values: str) -> str:
        return builder.node("Concat", list(values), self.name, name=self.name, axis=1)

    def to_keras(self, builder, states) -> None:
        import keras
        tensors = builder.aligned(states, self.name)
        axis = -1 if builder.channels_last or len(tensors[0].shape) == 2 else 1
        builder.tensor = keras.layers.Concatenate(axis=axis, name=builder.name(self.name))(tensors)

    def to_nir(self, builder, inputs) -> tuple[int, ...]:
        """NIR has no concatenation: each part is embedded by a 1x1 map into its channels of the
        whole, and the next node sums the embeddings (exactly: each element gets one part's value)."""
        shape = self.output_shape(*(shape for _, shape in inputs))
        feeding, offset = [], 0
        for k, (last, part) in enumerate(inputs):
            embedding = np.zeros((shape[0], part[0]), np.float32)
            embedding[offset + np.arange(part[0]), np.arange(part[0])] = 1.0
            feeding.append(builder.channel_map(f"{self.name}_part{k}", last, embedding, part))
            offset += part[0]
        builder.last = feeding
        return shape

    def to_netlist(self, planner, index: int, states) -> None:
        """No neurons: the next projection reads every part's neurons."""
        if any(state.layer is not None for state in states):
            raise UnsupportedModelError(f"layer '{self.name}' (concat) joins the outputs of Dense / Conv layers "
                                        "directly: only spikes (or the input) can be joined in a netlist")
        planner.join(states, axis=0)


@lifts("Add", "Sum")
def lift_add(node, ctx: LiftContext) -> Add:
    if any(ctx.optional_constant(k) is not None for k in range(len(node.inputs))):
        raise ctx.fail("adds a constant to the data: only sums of the network's own tensors are merges")
    shapes = [ctx.sample_shape(value) for value in node.inputs]
    if len(set(shapes)) != 1:
        raise ctx.fail(f"adds tensors of shapes {shapes}: only equal shapes (no broadcasting) are supported")
    return Add(node.name, np.ones((len(node.inputs), shapes[0][0]), np.float32), len(shapes[0]))


@lifts("Concat")
def lift_concat(node, ctx: LiftContext) -> Concat:
    axis = ctx.int("axis", 1)
    rank = len(ctx.output_shape) + 1
    if axis % rank != 1:
        raise ctx.fail(f"concatenates along axis {axis}: only the channel axis (1) is supported")
    return Concat(node.name)

