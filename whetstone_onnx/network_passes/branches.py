"""Give every unit a weighted sum of its own where branches share tensors that are not yet
activated: pre-activation ResNets (the sum x + f(x) read by the next block's batch norm and by
the next sum, the stem convolution read by both), a batch norm after a sum, DenseNet-style
concatenations of convolution outputs, a batch norm over a concatenation.

In the spiking network a unit's potential is a weighted sum of spikes, compared with its
threshold; a raw (not activated) tensor exists only inside such sums. The rewrites below
keep the float function and end with every activation and every Add fed by Dense / Conv /
Add layers that only it reads (what replace_activations, the step network and the
netlists need):

- a weighted sum or a concatenation of raw tensors that several layers read is copied, one
  copy per reader (the copies then train apart, as the units they feed are distinct);
- a batch norm after a weighted sum that only it reads folds into that sum, and one after a
  max pooling of such a sum first moves above the pooling (when its scales are >= 0, the two commute);
- a batch norm that alone reads a concatenation becomes one batch norm per part;
- a concatenation that only another concatenation reads gives it its parts;
- an Add that only another Add reads dissolves into it, its inputs weighted by that Add's
  weight for it (so a chain of identity shortcuts becomes one sum with several projections);
- a pointwise layer (a Dense, or a 1x1 convolution without stride or padding) that alone reads
  a raw sum is composed with it: a Dense / Conv becomes one layer (the product of their
  weights), an Add becomes a sum of the pointwise layer applied to each of its inputs. That is
  MobileNetV2's linear bottleneck: the block's output, a 1x1 projection plus the shortcut with
  no activation after the sum, read by the next block's 1x1 expansion;
- average pooling (without padding) that alone reads a convolution is folded into it: the
  mean of K x K outputs of a convolution is one convolution with a larger kernel and the
  strides multiplied (DenseNet's transitions: conv 1x1, average pooling, then the next
  block's batch norm and ReLU on the raw pooled tensor).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..network import Network
from ..ops.batchnorm import BatchNorm
from ..ops.conv import Conv2d
from ..ops.dense import Dense
from ..ops.merge import Add, Concat
from ..ops.pool import AvgPool2d, MaxPool2d


def untangle_branches(network: Network) -> int:
    """Apply the rewrites above until none applies; return how many were made."""
    count = 0
    while any(rewrite(network) for rewrite in REWRITES):
        count += 1
    return count


def _is_raw(network: Network, index: int) -> bool:
    """Whether layer ``index`` outputs values that only exist inside a unit's weighted sum."""
    if index < 0:
        return False
    layer = network.layers[index]
    if layer.weighted_sum or isinstance(layer, BatchNorm):
        return True
    return isinstance(layer, Concat) and any(_is_raw(network, part) for part in network.source_indices(index))


def copy_shared_sums(network: Network) -> bool:
    """The first raw weighted sum or concatenation read by several layers: one copy per reader
    (a layer reading it twice keeps one copy)."""
    for index in range(len(network.layers) - 1):
        layer = network.layers[index]
        readers = list(dict.fromkeys(network.consumers(index)))
        if len(readers) < 2 or not (layer.weighted_sum or isinstance(layer, Concat)) or not _is_raw(network, index):
            continue
        for k, reader in enumerate([network.layers[i] for i in readers[1:]], 1):
            copy = dataclasses.replace(layer, name=network.unique_name(f"{layer.name}/copy{k}"))
            for field in ("weight", "bias", "weights"):
                if getattr(copy, field, None) is not None:
                    setattr(copy, field, getattr(copy, field).copy())
            network.insert(index + 1, copy, network.sources(index))
            position = network.index_of(reader)
            network.set_sources(position, tuple(copy.name if s == layer.name else s
                                                for s in network.sources(position)))
        return True
    return False


def fold_batchnorm_into_sum(network: Network) -> bool:
    """The first batch norm right after a weighted sum that only it reads: folded into the sum."""
    for index, layer in enumerate(network.layers):
        producer = network.producer(index) if isinstance(layer, BatchNorm) else None
        if producer is not None and network.layers[producer].weighted_sum:
            network.layers[producer].scale_outputs(*layer.affine())
            network.remove(index)
            return True
    return False


def raise_batchnorm_over_max_pooling(network: Network) -> bool:
    """The first batch norm with scales >= 0 after a max pooling that alone reads a weighted sum:
    moved above the pooling (bn(maxpool(x)) == maxpool(bn(x))), where it folds into the sum."""
    for index, layer in enumerate(network.layers):
        pool = network.producer(index) if isinstance(layer, BatchNorm) and np.all(layer.affine()[0] >= 0) else None
        if pool is None or not isinstance(network.layers[pool], MaxPool2d):
            continue
        producer = network.producer(pool)
        if producer is not None and network.layers[producer].weighted_sum:
            network.swap_with_follower(pool)
            return True
    return False


def split_batchnorm_over_concat(network: Network) -> bool:
    """bn(concat(a, b, ...)) == concat(bn_a(a), bn_b(b), ...), each with its channels' statistics."""
    for index, layer in enumerate(network.layers):
        if not isinstance(layer, BatchNorm):
            continue
        (source,) = network.source_indices(index)
        if source < 0 or not isinstance(network.layers[source], Concat) or network.only_reader(source) != index:
            continue
        network.split_over_concat(index, lambda k, offset, width: dataclasses.replace(
            layer, name=network.unique_name(f"{layer.name}/{k}"),
            **{field: getattr(layer, field)[offset:offset + width].copy()
               for field in ("gamma", "beta", "mean", "var")}))
        return True
    return False


def flatten_concats(network: Network) -> bool:
    """The first concatenation that only another one reads: its parts go into that one."""
    for index, layer in enumerate(network.layers):
        reader = network.only_reader(index)
        if isinstance(layer, Concat) and reader is not None and isinstance(network.layers[reader], Concat):
            parts = network.sources(index)
            network.set_sources(reader, tuple(p for s in network.sources(reader)
                                              for p in (parts if s == layer.name else (s,))))
            _drop(network, index)
            return True
    return False


def dissolve_sums_into_sums(network: Network) -> bool:
    """The first Add that only another Add reads: its inputs join that Add's, weighted by the
    reader's weight for it, its bias into the reader's bias; an input read twice is read once
    with the weights added."""
    for index, layer in enumerate(network.layers):
        reader = network.only_reader(index)
        if not isinstance(layer, Add) or reader is None or not isinstance(network.layers[reader], Add):
            continue
        outer = network.layers[reader]
        terms: dict[str, np.ndarray] = {}
        bias = outer.bias_or_zero().astype(np.float64)
        for source, weights in zip(network.sources(reader), outer.weights.astype(np.float64)):
            if source != layer.name:
                terms[source] = terms.get(source, 0.0) + weights
                continue
            bias = bias + weights * layer.bias_or_zero().astype(np.float64)
            for inner, inner_weights in zip(network.sources(index), layer.weights.astype(np.float64)):
                terms[inner] = terms.get(inner, 0.0) + weights * inner_weights
        outer.weights = np.stack(list(terms.values())).astype(np.float32)
        outer.bias = bias.astype(np.float32) if outer.bias is not None or np.any(bias) else None
        network.set_sources(reader, tuple(terms))
        _drop(network, index)
        return True
    return False


def _pointwise(layer) -> bool:
    """Whether ``layer`` mixes channels only, the same way at every position: L(x) = W x + b per position."""
    return isinstance(layer, Dense) or (
        isinstance(layer, Conv2d) and layer.weight.shape[2:] == (1, 1) and layer.strides == (1, 1)
        and not any(layer.pads) and layer.group == 1)


def _dense_kernel(conv: Conv2d) -> np.ndarray:
    """A convolution's weight (out, in / group, kH, kW) as the ungrouped (out, in, kH, kW), float64."""
    out, per_group, height, width = conv.weight.shape
    kernel = np.zeros((out, per_group * conv.group, height, width))
    outputs = out // conv.group
    for g in range(conv.group):
        kernel[g * outputs:(g + 1) * outputs, g * per_group:(g + 1) * per_group] = conv.weight[g * outputs:
                                                                                              (g + 1) * outputs]
    return kernel


def compose_pointwise_layers(network: Network) -> bool:
    """The first pointwise layer that alone reads a raw weighted sum: composed with it."""
    for index, outer in enumerate(network.layers):
        producer = network.producer(index) if _pointwise(outer) else None
        if producer is None or not network.layers[producer].weighted_sum:
            continue
        inner = network.layers[producer]
        matrix = outer.weight.reshape(outer.weight.shape[:2]).astype(np.float64)      # (out, in)
        bias = outer.bias_or_zero().astype(np.float64)
        if isinstance(inner, Add):
            if matrix.shape[1] != inner.out_channels:
                continue                # a Dense reading a sum of images flattens it: not per channel
            _distribute_over_sum(network, index, producer, matrix, bias)
            return True
        if isinstance(inner, Dense) != isinstance(outer, Dense):
            continue                    # a Dense reading a convolution reads it through a flatten
        weight = matrix @ inner.weight.astype(np.float64) if isinstance(inner, Dense) else \
            np.einsum("oi,ijhw->ojhw", matrix, _dense_kernel(inner))
        composed_bias = matrix @ inner.bias_or_zero().astype(np.float64) + bias
        composed = dataclasses.replace(inner, name=outer.name, weight=weight.astype(np.float32),
                                       bias=composed_bias.astype(np.float32),
                                       **({"group": 1} if isinstance(inner, Conv2d) else {}))
        sources = network.sources(producer)
        network.layers[index] = composed
        network.set_sources(index, sources)
        _drop(network, producer)
        return True
    return False


def _distribute_over_sum(network: Network, index: int, position: int, matrix: np.ndarray, bias: np.ndarray) -> None:
    """L(sum_k w_k x_k + c) = sum_k (L w_k)(x_k) + (L c + b) for the pointwise layer L at ``index``
    reading the Add at ``position``: L becomes an Add (of its name) of one copy of L per input."""
    outer, add = network.layers[index], network.layers[position]
    copies = []
    for k, (source, weights) in enumerate(zip(network.sources(position), add.weights.astype(np.float64))):
        scaled = matrix * weights[None, :]
        copy = dataclasses.replace(outer, name=network.unique_name(f"{outer.name}/{k}"), bias=None,
                                   weight=scaled.reshape(outer.weight.shape).astype(np.float32))
        network.insert(index, copy, (source,))
        index += 1
        copies.append(copy.name)
    offset = matrix @ add.bias_or_zero().astype(np.float64) + bias
    network.layers[index] = Add(outer.name, np.ones((len(copies), len(offset)), np.float32), add.rank,
                                offset.astype(np.float32) if np.any(offset) or outer.bias is not None else None)
    network.set_sources(index, tuple(copies))
    _drop(network, position)


def fold_average_pools_into_convs(network: Network) -> bool:
    """The first unpadded average pooling that alone reads a convolution: one convolution.

    pool[i] = 1/(A_h A_w) sum_{p < A} conv[i T + p] and conv[y] = sum_u W[u] x[y S + u D] (x
    zero-padded as the convolution pads it), so pool[i] = sum_o W'[o] x[i (T S) + o] with
    W'[o] = 1/(A_h A_w) sum over p S + u D = o of W[u]: a kernel of (A - 1) S + (K - 1) D + 1 cells
    per axis, strides T S, no dilation, the same padding and bias. Where the floors of the two
    output sizes would make the single convolution's output larger, nothing is folded."""
    shapes = None
    for index, pool in enumerate(network.layers):
        producer = network.producer(index) if isinstance(pool, AvgPool2d) and not any(pool.pads) \
            and not pool.ceil_mode else None
        if producer is None or not isinstance(network.layers[producer], Conv2d):
            continue
        conv = network.layers[producer]
        (height, width) = conv.weight.shape[2:]
        cells = [(pool.kernel[a] - 1) * conv.strides[a] + (k - 1) * conv.dilations[a] + 1
                 for a, k in enumerate((height, width))]
        weight = np.zeros(conv.weight.shape[:2] + tuple(cells))
        for p in range(pool.kernel[0]):
            for q in range(pool.kernel[1]):
                for u in range(height):
                    for v in range(width):
                        weight[:, :, p * conv.strides[0] + u * conv.dilations[0],
                               q * conv.strides[1] + v * conv.dilations[1]] += conv.weight[:, :, u, v]
        weight /= pool.kernel[0] * pool.kernel[1]
        folded = dataclasses.replace(conv, name=pool.name, weight=weight.astype(np.float32),
                                     strides=(pool.strides[0] * conv.strides[0], pool.strides[1] * conv.strides[1]),
                                     dilations=(1, 1), bias=None if conv.bias is None else conv.bias.copy())
        shapes = shapes or network.shapes()
        source = network.source_indices(producer)[0]
        if folded.output_shape(network.input_shape if source < 0 else shapes[source]) != shapes[index]:
            continue
        network.layers[index] = folded
        network.remove(producer)
        return True
    return False


def _drop(network: Network, index: int) -> None:
    """Remove layer ``index``, which nothing reads any more."""
    name = network.layers[index].name
    network.set_sources(index, (network.input_name,))
    network.remove(index)
    assert all(name not in network.sources(i) for i in range(len(network.layers))), name


REWRITES = (copy_shared_sums, fold_batchnorm_into_sum, raise_batchnorm_over_max_pooling, split_batchnorm_over_concat,
            flatten_concats, dissolve_sums_into_sums, compose_pointwise_layers, fold_average_pools_into_convs)

