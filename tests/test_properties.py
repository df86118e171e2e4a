"""Property-based tests (hypothesis) over random dense, conv and residual networks: the passes
keep the float function, the Keras build of the sharpenable network computes what its ONNX
form does in onnxruntime, every spiking
representation agrees (or reports a threshold tie), and seeded reruns write identical files.

The example counts are small and the search is derandomized, so the suite stays within its
time budget and CI sees the same examples every run."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import graph_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

from whetstone_onnx import api, runtime
from whetstone_onnx.conversion import float_network, sharpenable_passes
from whetstone_onnx.load import load_model
from whetstone_onnx.network_passes.calibrate import DEFAULT_PERCENTILE

SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
ACTIVATIONS = ("Relu", "Sigmoid", "Tanh", "LeakyRelu")


@st.composite
def dense_models(draw) -> onnx.ModelProto:
    """Gemm (+ optional batch norm) + activation layers, then a Gemm of 2-5 classes."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    widths = [draw(st.integers(2, 12))] + draw(st.lists(st.integers(2, 12), min_size=1, max_size=3))
    nodes, weights, value = [], {}, "x"
    for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
        weights[f"w{i}"] = rng.standard_normal((fan_out, fan_in)).astype(np.float32)
        weights[f"b{i}"] = rng.standard_normal(fan_out).astype(np.float32) * 0.5
        nodes.append(helper.make_node("Gemm", [value, f"w{i}", f"b{i}"], [f"g{i}"], name=f"gemm{i}", transB=1))
        value = f"g{i}"
        if draw(st.booleans()):
            for name, array in (("s", rng.uniform(0.5, 2.0, fan_out)), ("o", rng.standard_normal(fan_out)),
                                ("m", rng.standard_normal(fan_out)), ("v", rng.uniform(0.5, 2.0, fan_out))):
                weights[f"{name}{i}"] = array.astype(np.float32)
            nodes.append(helper.make_node("BatchNormalization", [value, f"s{i}", f"o{i}", f"m{i}", f"v{i}"],
                                          [f"n{i}"], name=f"bn{i}"))
            value = f"n{i}"
        nodes.append(helper.make_node(draw(st.sampled_from(ACTIVATIONS)), [value], [f"a{i}"], name=f"act{i}"))
        value = f"a{i}"
    classes = draw(st.integers(2, 5))
    weights["wo"] = rng.standard_normal((classes, widths[-1])).astype(np.float32)
    nodes.append(helper.make_node("Gemm", [value, "wo"], ["y"], name="out", transB=1))
    return graph_model(nodes, weights, [widths[0]], [classes])


@st.composite
def conv_models(draw) -> onnx.ModelProto:
    """Conv + Relu (+ max pooling), an optional residual block, then flatten and a Gemm."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    channels, size = draw(st.integers(1, 3)), draw(st.integers(4, 8))
    out_channels, kernel = draw(st.integers(1, 4)), draw(st.sampled_from([1, 3]))
    pad, stride = draw(st.sampled_from([0, kernel // 2])), draw(st.integers(1, 2))
    weights = {"k": rng.standard_normal((out_channels, channels, kernel, kernel)).astype(np.float32),
               "kb": rng.standard_normal(out_channels).astype(np.float32) * 0.3}
    nodes = [helper.make_node("Conv", ["x", "k", "kb"], ["c"], name="conv", pads=[pad] * 4, strides=[stride] * 2),
             helper.make_node("Relu", ["c"], ["r"], name="relu")]
    side = (size + 2 * pad - kernel) // stride + 1
    value = "r"
    if draw(st.booleans()):          # relu(conv2(relu(conv1(r))) + r): an identity shortcut
        for name in ("k1", "k2"):
            weights[name] = rng.standard_normal((out_channels, out_channels, 3, 3)).astype(np.float32) * 0.5
        nodes += [helper.make_node("Conv", ["r", "k1"], ["c1"], name="conv1", pads=[1] * 4),
                  helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
                  helper.make_node("Conv", ["r1", "k2"], ["c2"], name="conv2", pads=[1] * 4),
                  helper.make_node("Add", ["c2", "r"], ["s"], name="add"),
                  helper.make_node("Relu", ["s"], ["rs"], name="relu2")]
        value = "rs"
    if side >= 2 and draw(st.booleans()):
        nodes.append(helper.make_node("MaxPool", [value], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]))
        value, side = "p", side // 2
    classes = draw(st.integers(2, 4))
    weights["wo"] = rng.standard_normal((classes, out_channels * side * side)).astype(np.float32)
    nodes += [helper.make_node("Flatten", [value], ["f"], name="flatten"),
              helper.make_node("Gemm", ["f", "wo"], ["y"], name="out", transB=1)]
    return graph_model(nodes, weights, [channels, size, size], [classes])


def inputs_for(model: onnx.ModelProto, count: int = 64) -> np.ndarray:
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    return np.random.default_rng(1).uniform(-1, 2, (count, *shape)).astype(np.float32)


@settings(max_examples=25, **SETTINGS)
@given(st.one_of(dense_models(), conv_models()))
def test_the_passes_keep_the_float_function(model):
    network, _, _ = float_network(load_model(model))
    x = inputs_for(model)
    expected = runtime.run(model, x)["y"]
    np.testing.assert_allclose(network.forward(x), expected, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(expected).max()))


@pytest.mark.slow
@settings(max_examples=6, **SETTINGS)
@given(st.one_of(dense_models(), conv_models()))
def test_the_keras_build_computes_what_onnxruntime_does(model):
    """The sharpenable network (what fine-tuning trains), at sharpness 0: Keras against its ONNX form."""
    from whetstone_onnx.emit import to_onnx
    from whetstone_onnx.keras.build import build_keras

    network, _, _ = float_network(load_model(model))
    x = inputs_for(model)
    sharpenable_passes(network, x, DEFAULT_PERCENTILE)
    predicted = build_keras(network).model.predict(x, verbose=0)
    sharpenable = to_onnx(network, graph_name="sharpenable")
    expected = runtime.run(sharpenable, x)[sharpenable.graph.output[0].name]
    np.testing.assert_allclose(predicted, expected, rtol=1e-3, atol=1e-3 * max(1.0, np.abs(expected).max()))


@settings(max_examples=6, **SETTINGS)
@given(st.one_of(dense_models(), conv_models()))
def test_every_spiking_representation_agrees_and_reruns_are_identical(tmp_path_factory, model):
    first, second = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    result = api.convert(model, first / "out", seed=3)
    equivalence = result.report["equivalence"]
    assert result.report["passed"], equivalence
    for name in ("spiking", "nir", "netlist"):
        assert equivalence[name]["unexplained"] == 0
    api.convert(model, second / "out", seed=3)
    for name in ("sharpenable.onnx", "spiking.onnx", "netlist.neurons.bin", "netlist.synapses.bin"):
        assert (first / "out" / name).read_bytes() == (second / "out" / name).read_bytes(), name
