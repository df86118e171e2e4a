"""Pooling. Max pooling stays in spiking networks: on binary spikes it is a
logical OR of the window. Average pooling is linear: allowed, it feeds the
next layer fractional values (the next layer's weights see them as inputs)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedModelError
from ..network import Layer, OnnxBuilder
from .padding import window_cells
from .registry import LiftContext, lifts

REDUCE_LIMIT = 1 << 16      # input values pooled at a time by the NumPy reference (512 KiB of float64: measured best)


@dataclass(eq=False)
class Pool2d(Layer):
    name: str
    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)     # top, left, bottom, right
    ceil_mode: bool = False

    def _sizes(self, height: int, width: int) -> list[int]:
        sizes = []
        for size, before, after, k, s in ((height, self.pads[0], self.pads[2], self.kernel[0], self.strides[0]),
                                          (width, self.pads[1], self.pads[3], self.kernel[1], self.strides[1])):
            span = (size + before + after - k) / s
            out = (math.ceil(span) if self.ceil_mode else math.floor(span)) + 1
            if self.ceil_mode and (out - 1) * s >= size + before:
                out -= 1  # the last window would start in the end padding
            sizes.append(out)
        return sizes

    def output_shape(self, input_shape):
        return (input_shape[0], *self._sizes(*input_shape[1:]))

    def _padding(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) padding that makes every window whole.

        ceil_mode windows may run past the end padding: those cells are padded too.
        """
        out_h, out_w = self._sizes(height, width)
        top, left, bottom, right = self.pads
        extra_h = max((out_h - 1) * self.strides[0] + self.kernel[0] - (height + top + bottom), 0)
        extra_w = max((out_w - 1) * self.strides[1] + self.kernel[1] - (width + left + right), 0)
        return top, left, bottom + extra_h, right + extra_w

    def _reduce(self, x: np.ndarray, fill: float, reduce) -> np.ndarray:
        """Fold ``reduce`` (np.maximum, np.add) over the windows of x padded with ``fill``."""
        out_h, out_w = self._sizes(*x.shape[2:])
        padding = self._padding(*x.shape[2:])
        top, left, bottom, right = padding
        (kh, kw), (sh, sw) = self.kernel, self.strides
        result = np.empty((*x.shape[:2], out_h, out_w), x.dtype)
        # One strided slice per kernel offset, folded in place: far faster than reducing a window
        # view. A few samples at a time, so the running result stays in cache.
        step = max(1, REDUCE_LIMIT // max(1, math.prod(x.shape[1:])))
        for start in range(0, len(x), step):
            block, out = x[start:start + step], result[start:start + step]
            if any(padding):
                block = np.pad(block, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=fill)
            for i in range(kh):
                for j in range(kw):
                    part = block[:, :, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw]
                    if i == j == 0:
                        np.copyto(out, part)
                    else:
                        reduce(out, part, out=out)
        return result

    def _attributes(self) -> dict:
        return {"kernel_shape": list(self.kernel), "strides": list(self.strides), "pads": list(self.pads),
                "ceil_mode": int(self.ceil_mode)}

    def describe(self):
        return {**super().describe(), **self._attributes()}

    def to_netlist(self, planner, index: int) -> None:
        """A population fed by one synapse per window cell inside the input."""
        ids = planner.ids
        if ids.ndim != 3:
            raise UnsupportedModelError(f"layer '{self.name}' ({self.kind}): expects a (C, H, W) input, "
                                        f"got {ids.shape}")
        post = self.netlist_population(planner, index, tuple(self.output_shape(ids.shape)))
        channels, height, width = ids.shape
        _, out_h, out_w = post.shape
        (kh, kw), (sh, sw) = self.kernel, self.strides
        padding = self._padding(height, width)
        top, left, _, _ = padding
        in_rows, row_ok = window_cells(np.arange(out_h), sh, top, kh, 1, height)
        in_cols, col_ok = window_cells(np.arange(out_w), sw, left, kw, 1, width)
        inside = row_ok[:, None, :, None] & col_ok[None, :, None, :]                      # (out_h, out_w, kh, kw)
        weights = self.window_weights(height, width, out_h, out_w)                     # (out_h, out_w)
        if not inside.reshape(out_h * out_w, -1).any(axis=1).all():
            raise UnsupportedModelError(f"layer '{self.name}' ({self.kind}): a window lies wholly in the padding")
        per_channel = out_h * out_w * kh * kw

        def chunks():
            step = max(1, planner.chunk_synapses // per_channel)
            for c0 in range(0, channels, step):
                c1 = min(channels, c0 + step)
                shape = (c1 - c0, out_h, out_w, kh, kw)
                pre = ids[np.arange(c0, c1)[:, None, None, None, None], in_rows[None, :, None, :, None],
                          in_cols[None, None, :, None, :]]
                posts = post.first_id + np.arange(c0 * out_h * out_w, c1 * out_h * out_w, dtype=np.int64)
                mask = np.broadcast_to(inside[None], shape)
                posts = np.broadcast_to(posts.reshape(c1 - c0, out_h, out_w)[..., None, None], shape)
                yield pre[mask], posts[mask], np.broadcast_to(weights[None, :, :, None, None], shape)[mask]
        connectivity = planner.connectivity(self.kind, post, kernel_shape=[kh, kw], strides=[sh, sw],
                                            pads=[int(p) for p in padding], **self.netlist_fields())
        planner.project(post, chunks, channels * per_channel, float(weights.max()), False, connectivity)


@dataclass(eq=False)
class MaxPool2d(Pool2d):
    kind = "maxpool2d"
    commutes_with_activations = True
    scale_transparent = True

    def forward(self, x):
        return self._reduce(x, -np.inf, np.maximum)

    def to_nir(self, builder, input_shape) -> None:
        import nir
        padding = self._padding(*input_shape[1:])
        if (padding[0], padding[1]) != (padding[2], padding[3]):
            raise UnsupportedModelError(f"layer '{self.name}': NIR pooling has symmetric padding only")
        # On binary spikes, max = OR: a window sum (zero padding adds nothing) and a unit firing on a
        # sum >= 0.5, i.e. on any spike; half-way between the integer sums, so no float tie is possible.
        builder.add(f"{self.name}_sum", nir.SumPool2d(np.array(self.kernel), np.array(self.strides),
                                                      np.array(padding[:2])))
        builder.spiking_unit(self.name, np.float32(0.5), tuple(self.output_shape(input_shape)))

    def to_keras(self, builder) -> None:
        import keras
        from ..keras.layers import ConstantPad2D
        builder.to_channels_last(self.name)
        padding = self._padding(*builder.tensor.shape[1:3])
        if any(padding):
            builder.apply(ConstantPad2D(padding, -np.inf, name=builder.name(f"{self.name}_pad")))
        builder.apply(keras.layers.MaxPooling2D(self.kernel, self.strides, padding="valid",
                                                name=builder.name(self.name)))

    def emit(self, builder: OnnxBuilder, x: str) -> str:
        return builder.node("MaxPool", [x], self.name, name=self.name, **self._attributes())

    def netlist_population(self, planner, index: int, out_shape: tuple[int, ...]):
        """On binary spikes max pooling is an OR: a unit firing on any of its inputs."""
        if not {population.kind for population in planner.sources} <= {"spiking", "or"}:
            raise UnsupportedModelError(f"layer '{self.name}' (maxpool2d) pools {planner.source_kind} values: "
                                        "only max pooling of binary spikes (an OR) has a netlist form")
        return planner.add_population(self.name, "or", out_shape, index,
                                      threshold=np.ones(math.prod(out_shape), np.float32))

    def window_weights(self, height: int, width: int, out_h: int, out_w: int) -> np.ndarray:
        return np.ones((out_h, out_w), np.float32)

    def netlist_fields(self) -> dict:
        return {}


@dataclass(eq=False)
class AvgPool2d(Pool2d):
    count_include_pad: bool = False

    kind = "avgpool2d"
    scale_transparent = True

    def forward(self, x):
        return self._reduce(x, 0.0, np.add) / self.counts(*x.shape[2:])

    def counts(self, height: int, width: int) -> np.ndarray:
        """(out_h, out_w) float64: each window's divisor for a height x width input.

        The cells inside the input, plus the pads if counted. The explicit netlist's
        synapse weights are 1 / these, so they stay exactly forward's divisors.
        """
        ones = np.ones((1, 1, height, width))
        if self.count_include_pad:
            top, left, bottom, right = self.pads
            ones = np.pad(ones, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=1.0)
            counted = Pool2d(self.name, self.kernel, self.strides, (0, 0, 0, 0), self.ceil_mode)
            # Without pads that pool may keep a last ceil-mode window that starts in what was the
            # end padding, which the real one drops: keep its output's size.
            out_h, out_w = self.output_shape((1, height, width))[1:]
            return counted._reduce(ones, 0.0, np.add)[0, 0, :out_h, :out_w]
        return self._reduce(ones, 0.0, np.add)[0, 0]

    def netlist_population(self, planner, index: int, out_shape: tuple[int, ...]):
        return planner.add_population(self.name, "linear", out_shape, index)

    def window_weights(self, height: int, width: int, out_h: int, out_w: int) -> np.ndarray:
        return (1.0 / self.counts(height, width)).astype(np.float32)

    def netlist_fields(self) -> dict:
        return {"count_include_pad": bool(self.count_include_pad)}

    def to_nir(self, builder, input_shape) -> None:
        import nir
        if any(self.pads) or self.ceil_mode:
            raise UnsupportedModelError(f"layer '{self.name}': padded average pooling has no NIR form")
        builder.add(self.name, nir.AvgPool2d(np.array(self.kernel), np.array(self.strides), np.array([0, 0])))

    def to_keras(self, builder) -> None:
        import keras
        from ..keras.layers import AveragePoolExcludingPad
        builder.to_channels_last(self.name)
        padding = self._padding(*builder.tensor.shape[1:3])
        name = builder.name(self.name)
        if not any(padding):
            builder.apply(keras.layers.AveragePooling2D(self.kernel, self.strides, padding="valid", name=name))
        elif self.count_include_pad and padding == self.pads:
            top, left, bottom, right = padding
            builder.apply(keras.layers.ZeroPadding2D(((top, bottom), (left, right)), name=f"{name}_pad"))
            builder.apply(keras.layers.AveragePooling2D(self.kernel, self.strides, padding="valid", name=name))
        elif not self.count_include_pad:
            builder.apply(AveragePoolExcludingPad(self.kernel, self.strides, padding, name=name))
        else:
            raise UnsupportedModelError(f"layer '{self.name}': average pooling with count_include_pad and "
                                        "ceil_mode has no Keras form")

    def emit(self, builder: OnnxBuilder, x: str) -> str:
        return builder.node("AveragePool", [x], self.name, name=self.name,
                            count_include_pad=int(self.count_include_pad), **self._attributes())


def _pool_params(ctx: LiftContext) -> dict:
    kernel = ctx.ints("kernel_shape", [])
    if len(kernel) != 2:
        raise ctx.fail("only 2-D pooling is supported")
    strides = ctx.ints("strides", [1, 1])
    if any(d != 1 for d in ctx.ints("dilations", [1, 1])):
        raise ctx.fail("dilated pooling is not supported")
    if ctx.string("auto_pad", "NOTSET") not in ("NOTSET", "VALID") and ctx.int("ceil_mode", 0):
        raise ctx.fail("auto_pad together with ceil_mode is not supported")
    return {"name": ctx.node.name, "kernel": tuple(kernel), "strides": tuple(strides),
            "pads": tuple(ctx.explicit_pads(kernel, strides, [1, 1])), "ceil_mode": bool(ctx.int("ceil_mode", 0))}


@lifts("MaxPool")
def lift_max_pool(node, ctx: LiftContext) -> MaxPool2d:
    if len(node.outputs) > 1 and node.outputs[1].uses():
        raise ctx.fail("the Indices output is not supported")
    return MaxPool2d(**_pool_params(ctx))


@lifts("AveragePool")
def lift_average_pool(node, ctx: LiftContext) -> AvgPool2d:
    return AvgPool2d(**_pool_params(ctx), count_include_pad=bool(ctx.int("count_include_pad", 0)))


@lifts("GlobalAveragePool", "GlobalMaxPool")
def lift_global_pool(node, ctx: LiftContext) -> Pool2d:
    if len(ctx.input_shape) != 3:
        raise ctx.fail("only 2-D pooling is supported")
    window = tuple(ctx.input_shape[1:])
    pool_class = AvgPool2d if node.op_type == "GlobalAveragePool" else MaxPool2d
    return pool_class(node.name, window, window)
