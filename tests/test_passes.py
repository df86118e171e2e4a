"""The ONNX-level passes: exact batch-norm folding in every linear form, scale/shift
folding, clean-up, and lifting framework exports to the canonical network."""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from conftest import MODELS, graph_model
from onnx import helper

from whetstone_onnx import api, runtime
from whetstone_onnx.emit import to_onnx
from whetstone_onnx.lift import lift
from whetstone_onnx.load import load_model
from whetstone_onnx.network_passes.output_stage import conv_head_to_dense
from whetstone_onnx.onnx_passes.pipeline import run_onnx_passes

BN_TOLERANCE = 1e-5   # max abs difference relative to the output scale


def canonical(model: onnx.ModelProto):
    """(float model emitted from the canonical network, pass counts, network)."""
    ir_model, counts = run_onnx_passes(load_model(model).model)
    network = lift(ir_model)
    return to_onnx(network, graph_name="float"), counts, network


def relative_difference(original, converted, x) -> float:
    expected = runtime.predict(original, x)
    actual = runtime.predict(converted, x)
    return float(np.abs(expected - actual).max() / np.abs(expected).max())


def batchnorm_params(rng, channels, prefix="bn"):
    return {f"{prefix}.gamma": rng.uniform(0.5, 2.0, channels).astype(np.float32),
            f"{prefix}.beta": rng.normal(size=channels).astype(np.float32),
            f"{prefix}.mean": rng.normal(size=channels).astype(np.float32),
            f"{prefix}.var": rng.uniform(0.1, 3.0, channels).astype(np.float32)}


def bn_node(x, y, prefix="bn", epsilon=1e-3):
    return helper.make_node("BatchNormalization", [x, f"{prefix}.gamma", f"{prefix}.beta", f"{prefix}.mean",
                                                   f"{prefix}.var"], [y], name=prefix, epsilon=epsilon)


@pytest.mark.parametrize("trans_a,trans_b,alpha,beta,bias_shape", [
    *itertools.product([0, 1], [0, 1], [1.0, 0.7], [1.0, 1.3], [(6,)]),
    (0, 1, 1.0, 1.0, (1, 6)), (0, 0, 1.0, 2.0, ()), (0, 1, 1.0, 1.0, None)])
def test_batchnorm_folds_exactly_into_every_gemm_form(rng, trans_a, trans_b, alpha, beta, bias_shape):
    weight = rng.normal(size=(6, 5) if trans_b else (5, 6)).astype(np.float32)
    inits = {"W": weight, **batchnorm_params(rng, 6)}
    gemm_inputs = ["xt" if trans_a else "x", "W"]
    if bias_shape is not None:
        inits["C"] = rng.normal(size=bias_shape).astype(np.float32)
        gemm_inputs.append("C")
    nodes = ([helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0], name="t")] if trans_a else []) + [
        helper.make_node("Gemm", gemm_inputs, ["g"], name="gemm", transA=trans_a, transB=trans_b,
                         alpha=alpha, beta=beta),
        bn_node("g", "y")]
    model = graph_model(nodes, inits, [5], [6])
    converted, counts, network = canonical(model)
    assert counts["fold_batchnorm"] == 1
    assert [layer.kind for layer in network.layers] == ["dense"]
    assert relative_difference(model, converted, rng.normal(size=(64, 5)).astype(np.float32)) <= BN_TOLERANCE


@pytest.mark.parametrize("with_add", [True, False])
def test_batchnorm_folds_exactly_into_matmul(rng, with_add):
    inits = {"W": rng.normal(size=(5, 6)).astype(np.float32), "b": rng.normal(size=6).astype(np.float32),
             **batchnorm_params(rng, 6)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"], name="mm")]
    if with_add:
        nodes.append(helper.make_node("Add", ["m", "b"], ["a"], name="add"))
    nodes.append(bn_node("a" if with_add else "m", "y"))
    model = graph_model(nodes, inits, [5], [6])
    converted, counts, network = canonical(model)
    assert counts["fold_batchnorm"] == 1 and len(network.layers) == 1
    assert relative_difference(model, converted, rng.normal(size=(64, 5)).astype(np.float32)) <= BN_TOLERANCE


@pytest.mark.parametrize("with_bias", [True, False])
def test_batchnorm_folds_exactly_into_conv(rng, with_bias):
    inits = {"W": rng.normal(size=(4, 2, 3, 3)).astype(np.float32), "B": rng.normal(size=4).astype(np.float32),
             **batchnorm_params(rng, 4)}
    nodes = [helper.make_node("Conv", ["x", "W", "B"] if with_bias else ["x", "W"], ["c"], name="conv",
                              pads=[1, 1, 1, 1]),
             bn_node("c", "y", epsilon=1e-5)]
    model = graph_model(nodes, inits, [2, 6, 6], [4, 6, 6])
    converted, counts, _ = canonical(model)
    assert counts["fold_batchnorm"] == 1
    assert relative_difference(model, converted, rng.normal(size=(16, 2, 6, 6)).astype(np.float32)) <= BN_TOLERANCE


def test_batchnorm_after_activation_folds_forward_into_unpadded_conv_and_flattened_gemm(rng):
    inits = {"W1": rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "B1": rng.normal(size=4).astype(np.float32),
             "W2": rng.normal(size=(3, 4, 2, 2)).astype(np.float32), "B2": rng.normal(size=3).astype(np.float32),
             "W3": rng.normal(size=(5, 27)).astype(np.float32), "B3": rng.normal(size=5).astype(np.float32),
             "shape": np.array([-1, 27], np.int64), **batchnorm_params(rng, 4, "bn1"),
             **batchnorm_params(rng, 3, "bn2")}
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             bn_node("r1", "n1", "bn1"),
             helper.make_node("Conv", ["n1", "W2", "B2"], ["c2"], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             bn_node("r2", "n2", "bn2"),
             helper.make_node("Reshape", ["n2", "shape"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "W3", "B3"], ["y"], name="fc", transB=1)]
    model = graph_model(nodes, inits, [1, 4, 4], [5])
    converted, counts, network = canonical(model)
    assert counts["fold_batchnorm"] == 2
    assert "BatchNormalization" not in {n.op_type for n in converted.graph.node}
    assert relative_difference(model, converted, rng.normal(size=(32, 1, 4, 4)).astype(np.float32)) <= BN_TOLERANCE


def test_batchnorm_before_padded_conv_stays_a_layer(rng):
    """Zero padding would add zeros where the map puts its shift: the batch norm is lifted
    (tests/test_batchnorm.py folds it out of the step network)."""
    inits = {"W1": rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "W2": rng.normal(size=(2, 4, 3, 3)).astype(
        np.float32), **batchnorm_params(rng, 4)}
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             bn_node("r1", "n1"),
             helper.make_node("Conv", ["n1", "W2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    model = graph_model(nodes, inits, [1, 6, 6], [2, 4, 4])
    converted, counts, network = canonical(model)
    assert counts["fold_batchnorm"] == 0
    assert [layer.kind for layer in network.layers] == ["conv2d", "activation", "batchnorm", "conv2d"]
    assert relative_difference(model, converted, rng.normal(size=(16, 1, 6, 6)).astype(np.float32)) <= BN_TOLERANCE


def test_tf2onnx_style_mul_add_pairs_and_pass_throughs_fold(rng):
    inits = {"W": rng.normal(size=(5, 6)).astype(np.float32), "s": rng.uniform(0.5, 2, 6).astype(np.float32),
             "t": rng.normal(size=(1, 6)).astype(np.float32), "W2": rng.normal(size=(6, 3)).astype(np.float32),
             "half": np.array(0.5, np.float32)}
    nodes = [helper.make_node("Identity", ["x"], ["xi"], name="id"),
             helper.make_node("MatMul", ["xi", "W"], ["m"], name="mm"),
             helper.make_node("Mul", ["m", "s"], ["ms"], name="bn/mul"),
             helper.make_node("Add", ["ms", "t"], ["mt"], name="bn/add"),
             helper.make_node("Relu", ["mt"], ["r"], name="relu"),
             helper.make_node("Dropout", ["r"], ["d"], name="drop"),
             helper.make_node("Div", ["d", "half"], ["dd"], name="rescale"),
             helper.make_node("MatMul", ["dd", "W2"], ["y"], name="mm2")]
    model = graph_model(nodes, inits, [5], [3])
    converted, counts, network = canonical(model)
    assert counts["remove_pass_through"] == 2
    assert counts["fold_scale_shift"] == 3
    assert [layer.kind for layer in network.layers] == ["dense", "activation", "dense"]
    assert relative_difference(model, converted, rng.normal(size=(64, 5)).astype(np.float32)) <= 1e-5


def test_keras_dynamic_flatten_and_layout_transpose_are_folded(rng):
    """Keras' export: Reshape to NCHW, Conv, Transpose back to NHWC, Shape/Gather/Concat flatten."""
    model = onnx.load(MODELS / "mnist_conv.onnx")
    converted, counts, network = canonical(model)
    assert counts["fold_constants"] >= 5 and counts["fold_layout_transpose"] == 1
    assert counts["fold_scale_shift"] >= 2          # the dense layer's batch norm, written as Mul + Add
    kinds = [layer.kind for layer in network.layers]
    assert "transpose" not in kinds and kinds.count("conv2d") == 2 and kinds.count("dense") == 2
    x = rng.uniform(0, 1, size=(32, 28, 28, 1)).astype(np.float32)
    expected = runtime.predict(model, x)
    logits = runtime.predict(converted, x)
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    assert np.abs(expected - probabilities).max() <= 1e-5


def test_old_ir_model_listing_its_weights_as_inputs_before_the_data_converts_exactly(rng):
    """IR < 4: every initializer is also a graph input, here the channel scale first. The
    passes see one data input, so the scale folds into the conv and the layout transpose
    into the dense layer (rather than being moved onto the scale)."""
    inits = {"scale": rng.uniform(0.5, 2.0, (1, 3, 1, 1)).astype(np.float32),
             "W": rng.normal(size=(3, 2, 3, 3)).astype(np.float32), "shape": np.array([-1, 48], np.int64),
             "G": rng.normal(size=(48, 5)).astype(np.float32), "B": rng.normal(size=5).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
             helper.make_node("Mul", ["c", "scale"], ["m"], name="mul"),
             helper.make_node("Transpose", ["m"], ["t"], perm=[0, 2, 3, 1], name="nhwc"),
             helper.make_node("Reshape", ["t", "shape"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "G", "B"], ["y"], name="fc")]
    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
              for name, v in inits.items()]
    graph = helper.make_graph(nodes, "ir3", [*inputs, helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                                      ["N", 2, 6, 6])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 5])],
                              [onnx.numpy_helper.from_array(v, name) for name, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)], ir_version=3)
    onnx.checker.check_model(model)
    converted, counts, network = canonical(model)
    assert counts["move_transposes"] == 0 and counts["fold_layout_transpose"] == 1 and counts["fold_scale_shift"] == 1
    assert [layer.kind for layer in network.layers] == ["conv2d", "reshape", "dense"]
    assert len(model.graph.input) == 6                      # the caller's model is left as it was
    x = rng.normal(size=(16, 2, 6, 6)).astype(np.float32)
    assert relative_difference(model, converted, x) <= 1e-5


def test_pytorch_opset11_graph_is_pinned_and_lifted():
    loaded = load_model(MODELS / "torchstyle_digits_conv.onnx")
    assert loaded.original_opset == 11
    converted, counts, network = canonical(onnx.load(MODELS / "torchstyle_digits_conv.onnx"))
    assert counts["fold_batchnorm"] == 1 and counts["lift_constants"] >= 1
    assert [layer.kind for layer in network.layers] == [
        "conv2d", "activation", "maxpool2d", "conv2d", "activation", "reshape", "dense", "activation", "dense"]
    onnx.checker.check_model(converted, full_check=True)


@pytest.mark.parametrize("op_type", ["AveragePool", "MaxPool"])
@pytest.mark.parametrize("size,kernel,stride,pad,ceil_mode,count_include_pad", [
    (5, 2, 2, 1, 1, 1),        # ceil mode's last window starts in the end padding: dropped
    (6, 3, 2, 1, 1, 1), (7, 3, 3, 1, 1, 0), (5, 2, 2, 1, 1, 0), (6, 3, 2, 1, 0, 1), (4, 2, 3, 1, 1, 1)])
def test_pooling_lifts_to_a_layer_that_computes_onnxruntimes_pooling(rng, op_type, size, kernel, stride, pad,
                                                                       ceil_mode, count_include_pad):
    extra = {"count_include_pad": count_include_pad} if op_type == "AveragePool" else {}
    node = helper.make_node(op_type, ["x"], ["y"], kernel_shape=[kernel] * 2, strides=[stride] * 2,
                            pads=[pad] * 4, ceil_mode=ceil_mode, **extra)
    model = graph_model([node], {}, (2, size, size), (2, "H", "W"))
    x = rng.normal(size=(3, 2, size, size)).astype(np.float32)
    _, _, network = canonical(model)
    np.testing.assert_allclose(network.forward(x.astype(np.float64)), runtime.predict(model, x), atol=1e-6)


def test_a_1x1_convolution_head_over_a_1x1_map_becomes_the_dense_output_stage(rng):
    """All-conv classifiers end in GlobalAveragePool, Conv 1x1, Flatten: the head is a Dense layer."""
    weights = {"w1": rng.standard_normal((6, 1, 3, 3)).astype(np.float32),
               "b1": rng.standard_normal(6).astype(np.float32),
               "head": rng.standard_normal((4, 6, 1, 1)).astype(np.float32),
               "head_b": rng.standard_normal(4).astype(np.float32),
               "shape": np.array([-1, 4], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("GlobalAveragePool", ["r1"], ["g"]),
             helper.make_node("Conv", ["g", "head", "head_b"], ["h"]),
             helper.make_node("Reshape", ["h", "shape"], ["y"])]
    model = graph_model(nodes, weights, [1, 6, 6], [4])
    network = lift(run_onnx_passes(load_model(model).model)[0])
    x = rng.standard_normal((64, 1, 6, 6)).astype(np.float32)
    before = network.forward(x)
    assert conv_head_to_dense(network) == 1
    assert [layer.kind for layer in network.layers][-2:] == ["reshape", "dense"]
    np.testing.assert_allclose(network.forward(x), before, rtol=1e-6, atol=1e-6)
    assert conv_head_to_dense(network) == 0
    result = api.convert(model, output="readout", finetune=False, netlist=False)
    assert result.report["passes"]["network"]["conv_head_to_dense"] == 1 and result.passed
    # inspect shows the head as a Dense, followed by the N-hot output stage built on it.
    assert [row["kind"] for row in api.inspect(model).layers][-4:] == ["reshape", "dense", "sharpenable",
                                                                      "nhot_decode"]
