"""2-D convolutions: ONNX Conv (NCHW, weight (out, in/groups, kH, kW))."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedModelError
from ..network import LinearLayer, OnnxBuilder
from .padding import window_cells
from .registry import LiftContext, lifts


COLUMN_LIMIT = 1 << 20      # values in one im2col block of the NumPy reference (8 MiB of float64: measured best)


@dataclass(eq=False)
class Conv2d(LinearLayer):
    name: str
    weight: np.ndarray                 # (out, in / group, kH, kW), float32
    bias: np.ndarray | None            # (out,) or None
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)   # top, left, bottom, right
    dilations: tuple[int, int] = (1, 1)
    group: int = 1

    kind = "conv2d"

    def output_shape(self, input_shape):
        _, height, width = input_shape
        top, left, bottom, right = self.pads
        sizes = []
        for size, before, after, k, s, d in ((height, top, bottom, self.weight.shape[2], self.strides[0],
                                              self.dilations[0]),
                                             (width, left, right, self.weight.shape[3], self.strides[1],
                                              self.dilations[1])):
            sizes.append((size + before + after - (k - 1) * d - 1) // s + 1)
        return (self.out_channels, *sizes)

    def forward(self, x):
        top, left, bottom, right = self.pads
        out_ch, in_per_group, kh, kw = self.weight.shape
        _, out_h, out_w = self.output_shape(x.shape[1:])
        (dh, dw), (sh, sw) = self.dilations, self.strides
        per_group = out_ch // self.group
        # im2col channels first: column (c, i, j) holds input channel c's strided window (i, j) of every
        # sample (whole rows copied), so weight (out, c * kh * kw) multiplies them as it is, in one BLAS
        # product per group and block of samples (few large products: BLAS threads synchronise per call).
        # The product (out, samples, positions) goes into NCHW by contiguous runs of positions. A few
        # samples at a time, so the columns stay under COLUMN_LIMIT values.
        chunk = max(1, COLUMN_LIMIT // (out_h * out_w * in_per_group * kh * kw))
        weight = self.weight.astype(np.float64).reshape(out_ch, -1)
        y = np.empty((len(x), out_ch, out_h * out_w))
        columns = np.empty((in_per_group, kh, kw, min(chunk, len(x)), out_h, out_w))
        for start in range(0, len(x), chunk):
            padded = np.pad(np.asarray(x[start:start + chunk], np.float64),
                            ((0, 0), (0, 0), (top, bottom), (left, right))).transpose(1, 0, 2, 3)
            cols = columns[:, :, :, :padded.shape[1]]
            for g in range(self.group):
                for i in range(kh):
                    for j in range(kw):
                        cols[:, i, j] = padded[g * in_per_group:(g + 1) * in_per_group, :,
                                               i * dh:i * dh + sh * (out_h - 1) + 1:sh,
                                               j * dw:j * dw + sw * (out_w - 1) + 1:sw]
                outs = slice(g * per_group, (g + 1) * per_group)
                product = weight[outs] @ cols.reshape(in_per_group * kh * kw, -1)
                y[start:start + chunk, outs] = product.reshape(per_group, -1, out_h * out_w).transpose(1, 0, 2)
        if self.bias is not None:
            y += self.bias.astype(np.float64)[None, :, None]
        return y.reshape(len(x), out_ch, out_h, out_w)

    def emit(self, builder: OnnxBuilder, x: str) -> str:
        inputs = [x, builder.constant(f"{self.name}.weight", self.weight)]
        if self.bias is not None:
            inputs.append(builder.constant(f"{self.name}.bias", self.bias))
        return builder.node("Conv", inputs, self.name, name=self.name, strides=list(self.strides),
                            pads=list(self.pads), dilations=list(self.dilations), group=self.group,
                            kernel_shape=list(self.weight.shape[2:]))

    def to_nir(self, builder, input_shape) -> None:
        import nir
        top, left, bottom, right = self.pads
        if (top, left) != (bottom, right):
            raise UnsupportedModelError(f"layer '{self.name}': NIR Conv2d has symmetric padding only, "
                                        f"pads are {list(self.pads)}")
        # NIR 1.0's Conv2d takes its input channels from weight.shape[1], whatever its groups,
        # so a grouped convolution's type never matches its input: it is written as the
        # ungrouped convolution it equals, whose kernel is zero across groups.
        builder.add(self.name, nir.Conv2d(input_shape=tuple(input_shape[1:]), weight=self.ungrouped_weight(),
                                          stride=tuple(self.strides), padding=(top, left),
                                          dilation=tuple(self.dilations), groups=1,
                                          bias=self.bias_or_zero()))

    def ungrouped_weight(self) -> np.ndarray:
        """The (out, in, kh, kw) kernel of the ungrouped convolution equal to this one."""
        if self.group == 1:
            return self.weight
        out_ch, in_per_group, kh, kw = self.weight.shape
        per_group = out_ch // self.group
        dense = np.zeros((out_ch, in_per_group * self.group, kh, kw), self.weight.dtype)
        for g in range(self.group):
            dense[g * per_group:(g + 1) * per_group, g * in_per_group:(g + 1) * in_per_group] = \
                self.weight[g * per_group:(g + 1) * per_group]
        return dense

    def to_keras(self, builder) -> None:
        import keras
        builder.to_channels_last(self.name)
        top, left, bottom, right = self.pads
        if any(self.pads):
            builder.apply(keras.layers.ZeroPadding2D(((top, bottom), (left, right)),
                                                     name=builder.name(f"{self.name}_pad")))
        bias = [self.bias] if self.bias is not None else []
        kernel, name = tuple(self.weight.shape[2:]), builder.name(self.name)
        if self.is_depthwise:
            # TensorFlow's grouped Conv2D trains ~15x slower on CPU than its depthwise kernel (measured on
            # 64 x 28 x 28 x 16 inputs, forward and backward: 314 vs 22 ms).
            layer = keras.layers.DepthwiseConv2D(kernel, strides=self.strides, padding="valid",
                                                 depth_multiplier=self.out_channels // self.group,
                                                 dilation_rate=self.dilations, use_bias=bool(bias), name=name)
            weights = [self._depthwise_kernel()] + bias
        else:
            layer = keras.layers.Conv2D(self.out_channels, kernel, strides=self.strides, padding="valid",
                                        dilation_rate=self.dilations, groups=self.group, use_bias=bool(bias),
                                        name=name)
            weights = [self.weight.transpose(2, 3, 1, 0)] + bias
        builder.apply(layer, owner=self, weights=weights)

    @property
    def is_depthwise(self) -> bool:
        """One input channel per group (MobileNet's depthwise convolution), strided or dilated but not
        both (what Keras' DepthwiseConv2D computes)."""
        return self.group > 1 and self.weight.shape[1] == 1 and (self.strides == (1, 1) or self.dilations == (1, 1))

    def _depthwise_kernel(self) -> np.ndarray:
        """Keras' (kh, kw, in, multiplier) layout: output channel o = i * multiplier + j reads input i."""
        out_ch, _, kh, kw = self.weight.shape
        return self.weight.reshape(self.group, out_ch // self.group, kh, kw).transpose(2, 3, 0, 1)

    def macs(self, input_shape) -> int:
        return int(np.prod(self.output_shape(input_shape)) * self.weight[0].size)

    def check_netlist_input(self, shape) -> None:
        if len(shape) != 3:
            raise UnsupportedModelError(f"layer '{self.name}' (conv2d): expects a (C, H, W) input, got {shape}")

    def netlist_synapses(self, planner, weight, post):
        """Blocks of output channels (within one group) x output rows, in post neuron order, each
        neuron's synapses in (input channel, kernel row, kernel column) order."""
        ids = planner.ids
        out_ch, in_per_group, kh, kw = weight.shape
        _, height, width = ids.shape
        _, out_h, out_w = post.shape
        top, left, _, _ = self.pads
        (sh, sw), (dh, dw) = self.strides, self.dilations
        per_group = out_ch // self.group
        # Input coordinates of every (output row, kernel row) and (output column, kernel column).
        in_rows, row_ok = window_cells(np.arange(out_h), sh, top, kh, dh, height)          # (out_h, kh)
        in_cols, col_ok = window_cells(np.arange(out_w), sw, left, kw, dw, width)          # (out_w, kw)
        per_position = in_per_group * kh * kw

        def gather(in_channels, r0, r1):
            """(rows, out_w, in_per_group, kh, kw): the pre id and whether it lies inside the input."""
            pre = ids[in_channels[None, None, :, None, None], in_rows[r0:r1, None, None, :, None],
                      in_cols[None, :, None, None, :]]
            return pre, row_ok[r0:r1, None, None, :, None] & col_ok[None, :, None, None, :]

        def chunks():
            per_row = out_w * per_position
            rows = max(1, min(out_h, planner.chunk_synapses // max(1, per_row)))
            channels = max(1, min(per_group, planner.chunk_synapses // max(1, rows * per_row)))
            row_blocks = [(r0, min(out_h, r0 + rows)) for r0 in range(0, out_h, rows)]
            for g in range(self.group):
                in_channels = np.arange(g * in_per_group, (g + 1) * in_per_group)
                # Channel blocks outside, row blocks inside: post ids ascend. One row block: gather it once.
                whole = gather(in_channels, 0, out_h) if len(row_blocks) == 1 else None
                for c0 in range(g * per_group, (g + 1) * per_group, channels):
                    c1 = min((g + 1) * per_group, c0 + channels)
                    for r0, r1 in row_blocks:
                        pre, inside = whole or gather(in_channels, r0, r1)
                        positions = (np.arange(r0, r1)[:, None] * out_w + np.arange(out_w)[None, :])  # (rows, out_w)
                        w = weight[c0:c1]                                       # (n, in_per_group, kh, kw)
                        shape = (c1 - c0, r1 - r0, out_w, in_per_group, kh, kw)
                        mask = inside[None] & (w != 0)[:, None, None]
                        posts = (post.first_id + np.arange(c0, c1, dtype=np.int64)[:, None, None] * (out_h * out_w)
                                 + positions[None])                              # (n, rows, out_w)
                        yield (np.broadcast_to(pre[None], shape)[mask],
                               np.broadcast_to(posts[..., None, None, None], shape)[mask],
                               np.broadcast_to(w[:, None, None], shape)[mask])
        connectivity = planner.connectivity("conv2d", post, kernel_shape=list(weight.shape),
                                            strides=list(self.strides), pads=list(self.pads),
                                            dilations=list(self.dilations), group=int(self.group))
        return chunks, int(weight[0].size * post.count), connectivity

    def absorbs_uniform_shift(self) -> bool:
        # Windows that overlap the zero padding see only part of the shift.
        return not any(self.pads)

    def fold_input_affine(self, scale, shift):
        offset = super().fold_input_affine(scale, shift)
        # Without zero padding every window sees the same shift per channel, so every position gets
        # the same offset; with it, windows that overlap the padding miss part of it.
        if not any(self.pads) and np.all(shift == shift[:, :1, :1]):
            return offset[:, :1, :1]
        return offset

    def scale_input_elements(self, scale) -> None:
        per_channel = scale[:, 0, 0]
        if not np.all(scale == per_channel[:, None, None]):
            raise UnsupportedModelError(f"layer '{self.name}': an input scale that varies within a channel "
                                        "cannot be folded into a convolution's shared weights")
        out_ch, in_per_group = self.weight.shape[:2]
        # Output channel o of group g reads input channels g * in_per_group ... (g + 1) * in_per_group - 1.
        groups = np.arange(out_ch) // (out_ch // self.group)
        factors = np.asarray(per_channel, np.float64).reshape(self.group, in_per_group)[groups]
        self.weight = (self.weight.astype(np.float64) * factors[:, :, None, None]).astype(np.float32)

    def from_keras(self, keras_layer) -> None:
        weights = keras_layer.get_weights()
        if self.is_depthwise:
            kh, kw, channels, multiplier = weights[0].shape
            weight = weights[0].transpose(2, 3, 0, 1).reshape(channels * multiplier, 1, kh, kw)
        else:
            weight = weights[0].transpose(3, 2, 0, 1)
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)
        if self.bias is not None:
            self.bias = weights[1].astype(np.float32)

    def describe(self):
        return {**super().describe(), "out_channels": self.out_channels,
                "kernel": list(self.weight.shape[2:]), "strides": list(self.strides), "pads": list(self.pads),
                "group": self.group, "parameters": int(self.weight.size + self.out_channels)}


@lifts("Conv")
def lift_conv(node, ctx: LiftContext) -> Conv2d:
    weight = ctx.constant(1, "weight").astype(np.float32)
    if weight.ndim != 4:
        raise ctx.fail(f"only 2-D convolutions are supported (weight of rank {weight.ndim})")
    bias = ctx.optional_constant(2)
    kernel = list(weight.shape[2:])
    strides, dilations = ctx.ints("strides", [1, 1]), ctx.ints("dilations", [1, 1])
    pads = ctx.explicit_pads(kernel, strides, dilations)
    return Conv2d(node.name, weight, None if bias is None else bias.astype(np.float32),
                  tuple(strides), tuple(pads), tuple(dilations), ctx.int("group", 1))
