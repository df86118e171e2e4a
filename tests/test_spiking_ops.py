"""The custom op domain: each model-local function computes the documented formula."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from whetstone_onnx import runtime
from whetstone_onnx.ops.activation import Sharpenable
from whetstone_onnx.ops.decode import NHotDecode
from whetstone_onnx.spiking_onnx import nhot_key
from whetstone_onnx.spiking_onnx import DOMAIN, DOMAIN_VERSION, OP_TYPES, function_for


def single_op_model(op_type: str, x_shape, param: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node(op_type, ["X", "p"], ["Y"], domain=DOMAIN)], "op",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, x_shape if op_type != "NHotDecode" else [x_shape[0], None])],
        [numpy_helper.from_array(param.astype(np.float32), "p")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid(DOMAIN, DOMAIN_VERSION)],
                              functions=[function_for(op_type)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def whetstone_brelu(x, s):
    """The original Spiking_BRelu formula, written independently in float32."""
    if s == 1.0:
        return (x >= 0.5).astype(np.float32)
    width = np.float32(1.0) - np.float32(s)
    return np.clip((x - np.float32(0.5)) / (width + np.float32(1e-3)) + np.float32(0.5), 0, 1)


def test_every_op_is_a_checked_model_local_function():
    assert set(OP_TYPES) == {"BoundedRelu", "SharpSigmoid", "Spike", "NHotDecode"}
    for op in OP_TYPES:
        function = function_for(op)
        assert function.domain == DOMAIN and function.name == op


@pytest.mark.parametrize("sharpness", [0.0, 0.25, 0.5, 0.9, 0.999, 1.0])
def test_bounded_relu_matches_the_whetstone_formula_bit_for_bit(sharpness):
    x = np.concatenate([np.linspace(-1, 2, 301), [0.5, np.nextafter(0.5, 0), 0.25, 0.75]]).astype(np.float32)
    y = runtime.predict(single_op_model("BoundedRelu", [1, len(x)], np.array(sharpness)), x[None])[0]
    np.testing.assert_array_equal(y, whetstone_brelu(x, sharpness))
    np.testing.assert_array_equal(y, Sharpenable("u", "bounded_relu", sharpness).forward(x[None].astype(
        np.float64))[0].astype(np.float32))
    if sharpness == 0.5:  # the ramp runs from 0.25 to 0.75, centred on (0.5, 0.5)
        assert y[np.argmin(np.abs(x - 0.25))] == pytest.approx(0.0, abs=2e-3)
        assert y[np.argmin(np.abs(x - 0.75))] == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("sharpness", [0.0, 0.5, 1.0])
def test_sharp_sigmoid_matches_the_whetstone_formula(sharpness):
    x = np.linspace(-3, 3, 121).astype(np.float32)
    y = runtime.predict(single_op_model("SharpSigmoid", [1, len(x)], np.array(sharpness)), x[None])[0]
    if sharpness == 1.0:
        np.testing.assert_array_equal(y, (x >= 0).astype(np.float32))
    else:
        k = 4 * np.log(2 + np.sqrt(3)) / (1 - sharpness + 1e-3)
        np.testing.assert_allclose(y, 1 / (1 + np.exp(-np.clip(k * x, -40, 40))), atol=1e-6)


def test_spike_fires_on_greater_or_equal_with_per_neuron_thresholds():
    threshold = np.array([0.5, -1.0, 2.0], np.float32)
    x = np.array([[0.5, -1.0, 1.999], [np.nextafter(np.float32(0.5), np.float32(0)), -2.0, 3.0]], np.float32)
    y = runtime.predict(single_op_model("Spike", [2, 3], threshold), x)
    np.testing.assert_array_equal(y, [[1, 1, 0], [0, 0, 1]])


def test_nhot_decode_is_nearest_code_and_matches_reference():
    key = nhot_key(3, 12, seed=5)
    assert key.sum(axis=1).tolist() == [4, 4, 4] and key.sum(axis=0).max() == 1
    np.testing.assert_array_equal(key, nhot_key(3, 12, seed=5))
    assert not np.array_equal(key, nhot_key(3, 12, seed=6))
    spikes = np.stack([key[2], key[0], np.clip(key[1] + key[0] * (np.arange(12) % 4 == 0), 0, 1)]).astype(
        np.float32)
    probabilities = runtime.predict(single_op_model("NHotDecode", [3, 12], key), spikes)
    assert probabilities.argmax(1).tolist() == [2, 0, 1]
    np.testing.assert_allclose(probabilities, NHotDecode("d", key).forward(spikes.astype(np.float64)), atol=1e-6)


def test_spiking_onnx_pools_potentials_before_their_step(rng, tmp_path):
    """emit.pool_before_steps: a Spike with per-channel thresholds read only by a MaxPool is written after
    the pooling of its potentials (exact, and faster in onnxruntime); steps_before_pools restores the
    layer-by-layer form byte for byte, and both compute the same values; per-neuron thresholds stay."""
    from conftest import MODELS
    from whetstone_onnx import api
    from whetstone_onnx.emit import pool_before_steps, steps_before_pools, to_onnx

    result = api.convert(MODELS / "torchstyle_digits_conv.onnx", tmp_path, data="digits", normalize=(0.5, 0.5),
                         finetune=False)
    written = result.spiking_model
    assert result.report["passes"]["network"]["pool_before_steps"] == 1
    assert result.report["equivalence"]["pooling_order"] == {"samples": 360, "reordered": 1, "layers": [],
                                                              "unexplained": 0, "passed": True}
    kinds = [node.op_type for node in written.graph.node]
    assert kinds[:3] == ["Conv", "MaxPool", "Spike"]
    layered = to_onnx(result.spiking_network, graph_name="spiking", doc=written.graph.doc_string)
    assert steps_before_pools(written).SerializeToString() == layered.SerializeToString()
    assert pool_before_steps(layered)[0].SerializeToString() == written.SerializeToString()
    x = rng.random((50, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(runtime.predict(written, x), runtime.predict(layered, x))
    assert api.check_outputs(tmp_path).comparisons["spiking.onnx vs its layer form"]["passed"]
    # A threshold per neuron (C, H, W) differs between the positions a window pools: not moved.
    spike = next(layer for layer in result.spiking_network.layers if layer.kind == "spike")
    spike.threshold = np.broadcast_to(spike.threshold, (8, 8, 8)).copy()
    assert pool_before_steps(to_onnx(result.spiking_network, graph_name="spiking"))[1] == 0
