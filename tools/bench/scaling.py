"""How conversion time grows with the model: the ONNX passes, the network passes (calibrated on
random inputs, no data) and the emission of the sharpenable and spiking graphs, for MLPs of 10
to 1,000 layers and conv nets of 10^5 to 10^7 synapses; the growth exponent is the slope of
log(time) against log(size), fitted over the sizes."""
from __future__ import annotations

import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MLP_LAYERS = (10, 30, 100, 300, 1000)
QUICK_MLP_LAYERS = (10, 30, 100)
MLP_WIDTH = 32
# Conv nets: two 3x3 convolutions (padding 1) over a 28 x 28 image, 8 and C channels: 28 x 28 x 9 x 8 x C
# synapses in the second, about 10^5 to 10^7 for these C.
CONV_CHANNELS = (2, 8, 32, 128, 256)
QUICK_CONV_CHANNELS = (2, 8, 32)


def _model(nodes, initializers, input_shape, output_shape) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "scaling",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *input_shape])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *output_shape])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def mlp(layers: int, rng) -> onnx.ModelProto:
    nodes, weights, value = [], {}, "x"
    for i in range(layers):
        out = 10 if i == layers - 1 else MLP_WIDTH
        weights[f"w{i}"] = rng.standard_normal((out, MLP_WIDTH)) / np.sqrt(MLP_WIDTH)
        weights[f"b{i}"] = rng.standard_normal(out) * 0.1
        nodes.append(helper.make_node("Gemm", [value, f"w{i}", f"b{i}"], [f"g{i}"], transB=1))
        value = f"g{i}"
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [value], [f"r{i}"]))
            value = f"r{i}"
    nodes[-1].output[0] = "y"
    return _model(nodes, weights, (MLP_WIDTH,), (10,))


def conv_net(channels: int, rng) -> onnx.ModelProto:
    weights = {"w1": rng.standard_normal((8, 1, 3, 3)) / 3, "b1": np.zeros(8),
               "w2": rng.standard_normal((channels, 8, 3, 3)) / np.sqrt(72), "b2": np.zeros(channels),
               "w3": rng.standard_normal((10, channels * 49)) / np.sqrt(channels * 49), "b3": np.zeros(10),
               "shape": np.array([-1, channels * 49])}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[4, 4], strides=[4, 4]),
             helper.make_node("Reshape", ["p2", "shape"], ["f"]),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1)]
    model = _model(nodes, {k: v for k, v in weights.items() if k != "shape"}, (1, 28, 28), (10,))
    model.graph.initializer.append(numpy_helper.from_array(weights["shape"].astype(np.int64), "shape"))
    return model


def convert_seconds(model: onnx.ModelProto) -> float:
    """Seconds for the ONNX passes, the network passes up to the output stage, and the emission
    of the sharpenable and spiking graphs (no training, no netlists)."""
    from whetstone_onnx import conversion
    from whetstone_onnx.emit import pool_before_steps
    from whetstone_onnx.load import load_model
    from whetstone_onnx.network_passes.output_stage import make_output_stage

    start = time.perf_counter()
    loaded = load_model(model)
    network = conversion.float_network(loaded)[0]
    calibration = conversion.fitted_inputs(None, network, None, 0)[0][:64]
    calibrated = conversion.sharpenable_passes(network, calibration, 95.0)[1]
    make_output_stage(network, "nhot", calibrated.outputs)
    pool_before_steps(conversion.emit_trained(network, "scaling")[2])
    return time.perf_counter() - start


def exponent(sizes, seconds) -> float:
    return float(np.polyfit(np.log(np.asarray(sizes, float)), np.log(np.asarray(seconds, float)), 1)[0])


def rows(quick: bool) -> dict:
    rng = np.random.default_rng(0)
    mlp_rows = [{"layers": n, "seconds": convert_seconds(mlp(n, rng))}
                for n in (QUICK_MLP_LAYERS if quick else MLP_LAYERS)]
    conv_rows = [{"channels": c, "synapses": 28 * 28 * 9 * 8 * c + 28 * 28 * 9 * 8 + 10 * c * 49,
                  "seconds": convert_seconds(conv_net(c, rng))} for c in (QUICK_CONV_CHANNELS if quick else CONV_CHANNELS)]
    return {"mlp": mlp_rows, "mlp_exponent": exponent([r["layers"] for r in mlp_rows], [r["seconds"] for r in mlp_rows]),
            "conv": conv_rows,
            "conv_exponent": exponent([r["synapses"] for r in conv_rows], [r["seconds"] for r in conv_rows])}
