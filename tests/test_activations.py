"""Activations beyond Relu and Sigmoid: each lifts with an exact float form; Tanh becomes
a sharpened sigmoid exactly where the next linear layer takes tanh = 2 sigmoid(2x) - 1's
affine; the others (and Tanh where it cannot fold) are approximated by a bounded ReLU,
and inspect and the report say so."""
from __future__ import annotations

import json
from importlib.resources import files

import jsonschema
import numpy as np
import pytest
from conftest import MODELS, graph_model
from onnx import helper

from whetstone_onnx import api, runtime
from whetstone_onnx.emit import to_onnx
from whetstone_onnx.lift import lift
from whetstone_onnx.load import load_model
from whetstone_onnx.network import Network
from whetstone_onnx.ops.activation import Activation, Sharpenable
from whetstone_onnx.ops.dense import Dense
from whetstone_onnx.network_passes.activations import activations_before_pooling, replace_activations
from whetstone_onnx.network_passes.calibrate import DEFAULT_PERCENTILE, calibrate_scales
from whetstone_onnx.onnx_passes.pipeline import run_onnx_passes

FLOAT_TOLERANCE = 1e-4      # relative to the output scale, as the float check's
# (op type, attributes, slope shape for PRelu)
ACTIVATIONS = [("Tanh", {}, None), ("LeakyRelu", {}, None), ("LeakyRelu", {"alpha": 0.2}, None),
               ("PRelu", {}, (1,)), ("PRelu", {}, (16,)), ("Elu", {}, None), ("Elu", {"alpha": 0.5}, None),
               ("Selu", {}, None), ("Selu", {"alpha": 1.5, "gamma": 1.2}, None), ("Softplus", {}, None),
               ("HardSwish", {}, None), ("Mish", {}, None)]


def dense_model(rng, op_type: str, attributes: dict, slope_shape=None, hidden: int = 16):
    """64 inputs (the digits' 8 x 8) -> Gemm -> the activation -> Gemm -> 10 classes, at opset 18."""
    inits = {"W1": (0.3 * rng.normal(size=(hidden, 64))).astype(np.float32),
             "B1": rng.normal(size=hidden).astype(np.float32),
             "W2": rng.normal(size=(10, hidden)).astype(np.float32), "B2": rng.normal(size=10).astype(np.float32)}
    inputs = ["h"]
    if slope_shape is not None:
        inits["slope"] = rng.uniform(0.0, 0.3, slope_shape).astype(np.float32)
        inputs.append("slope")
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], name="fc1", transB=1),
             helper.make_node(op_type, inputs, ["a"], name="act", **attributes),
             helper.make_node("Gemm", ["a", "W2", "B2"], ["y"], name="fc2", transB=1)]
    return graph_model(nodes, inits, [64], [10], opset=18)


def float_network(model) -> Network:
    return lift(run_onnx_passes(load_model(model).model)[0])


def sharpenable_at_zero(model) -> Network:
    """The network as convert sharpens it, before calibration and the output stage."""
    network = float_network(model)
    activations_before_pooling(network)
    replace_activations(network)
    return network


def relative_difference(expected, actual) -> float:
    return float(np.abs(expected - actual).max() / np.abs(expected).max())


def report_errors(report: dict) -> list[str]:
    schema = json.loads((files("whetstone_onnx") / "schemas" / "report.schema.json").read_text())
    return [error.message for error in jsonschema.Draft202012Validator(schema).iter_errors(report)]


@pytest.mark.parametrize("op_type,attributes,slope_shape", ACTIVATIONS)
def test_activation_lifts_exactly_and_converts(rng, op_type, attributes, slope_shape):
    model = dense_model(rng, op_type, attributes, slope_shape)
    network = float_network(model)
    activation = network.layers[1]
    assert isinstance(activation, Activation) and activation.op_type == op_type
    x = rng.normal(size=(64, 64)).astype(np.float32)
    assert relative_difference(runtime.predict(model, x), network.forward(x)) <= 1e-5     # the NumPy reference
    result = api.convert(model, finetune=False, netlist=False)
    assert result.report["equivalence"]["float"]["relative_diff"] <= FLOAT_TOLERANCE and result.passed
    approximated = result.report["passes"]["approximated_activations"]
    assert [(entry["layer"], entry["op_type"]) for entry in approximated] == ([] if op_type == "Tanh"
                                                                               else [("act", op_type)])


def test_float_activation_emits_the_same_op_with_its_attributes_and_slope(rng):
    model = dense_model(rng, "PRelu", {}, (16,))
    emitted = to_onnx(float_network(model), graph_name="float")
    assert [node.op_type for node in emitted.graph.node] == ["Gemm", "PRelu", "Gemm"]
    selu = to_onnx(float_network(dense_model(rng, "Selu", {"alpha": 1.5, "gamma": 1.2})), graph_name="float")
    attributes = {a.name: a.f for a in selu.graph.node[1].attribute}
    assert attributes == pytest.approx({"alpha": 1.5, "gamma": 1.2})


def test_tanh_before_a_dense_layer_is_exact_at_sharpness_0(rng):
    model = dense_model(rng, "Tanh", {})
    network = sharpenable_at_zero(model)
    unit = network.layers[1]
    assert isinstance(unit, Sharpenable) and unit.function == "sharp_sigmoid" and not unit.approximation
    x = rng.normal(size=(200, 64)).astype(np.float32)
    expected = runtime.predict(model, x)
    assert relative_difference(expected, network.forward(x)) <= FLOAT_TOLERANCE
    assert relative_difference(expected, runtime.predict(to_onnx(network, graph_name="s"), x)) <= FLOAT_TOLERANCE


@pytest.mark.parametrize("pool", ["MaxPool", "AveragePool"])
def test_tanh_folds_through_pooling_and_flatten_into_unpadded_and_grouped_convolutions(rng, pool):
    inits = {"W1": rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "B1": rng.normal(size=4).astype(np.float32),
             "W2": rng.normal(size=(4, 2, 2, 2)).astype(np.float32), "B2": rng.normal(size=4).astype(np.float32),
             "W3": rng.normal(size=(5, 16)).astype(np.float32), "B3": rng.normal(size=5).astype(np.float32),
             "shape": np.array([-1, 16], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1"),
             helper.make_node("Tanh", ["c1"], ["t1"], name="tanh1"),
             helper.make_node(pool, ["t1"], ["p1"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "W2", "B2"], ["c2"], name="conv2", group=2),
             helper.make_node("Tanh", ["c2"], ["t2"], name="tanh2"),
             helper.make_node("Reshape", ["t2", "shape"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "W3", "B3"], ["y"], name="fc", transB=1)]
    model = graph_model(nodes, inits, [1, 8, 8], [5], opset=18)
    network = sharpenable_at_zero(model)
    units = [layer for layer in network.layers if isinstance(layer, Sharpenable)]
    assert [(u.function, u.approximation) for u in units] == [("sharp_sigmoid", "")] * 2
    x = rng.normal(size=(100, 1, 8, 8)).astype(np.float32)
    assert relative_difference(runtime.predict(model, x), network.forward(x)) <= FLOAT_TOLERANCE


def padded_conv_after_tanh_model(rng):
    inits = {"W1": rng.normal(size=(3, 1, 3, 3)).astype(np.float32), "B1": rng.normal(size=3).astype(np.float32),
             "W2": rng.normal(size=(2, 3, 3, 3)).astype(np.float32), "W3": rng.normal(size=(4, 32)).astype(np.float32),
             "slope": rng.uniform(0.0, 0.3, (2, 1, 1)).astype(np.float32), "shape": np.array([-1, 32], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1"),
             helper.make_node("Tanh", ["c1"], ["t1"], name="tanh1"),
             helper.make_node("Conv", ["t1", "W2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("PRelu", ["c2", "slope"], ["r2"], name="prelu2"),
             helper.make_node("Reshape", ["r2", "shape"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "W3"], ["y"], name="fc", transB=1)]
    return graph_model(nodes, inits, [1, 6, 6], [4], opset=18)


def test_tanh_before_a_padded_convolution_is_approximated_and_inspect_says_so(rng):
    info = api.inspect(padded_conv_after_tanh_model(rng))
    assert info.supported
    assert [(entry["layer"], entry["op_type"]) for entry in info.approximated] == [("tanh1", "Tanh"),
                                                                                 ("prelu2", "PRelu")]
    assert "zero-padded convolution" in info.approximated[0]["reason"]
    rows = {row["name"]: row for row in info.layers}
    assert rows["tanh1"]["op_type"] == "BoundedRelu" and "zero-padded" in rows["tanh1"]["approximated"]
    assert "approximated" in rows["prelu2"] and "approximated" not in rows["conv2"]
    assert info.to_dict()["approximated_activations"] == info.approximated


def test_report_and_summary_list_the_approximated_activations_and_netlists_agree(rng):
    result = api.convert(padded_conv_after_tanh_model(rng), finetune=False)
    report = result.report
    assert result.passed and report["equivalence"]["nir"]["passed"] and report["equivalence"]["netlist"]["passed"]
    assert [(entry["layer"], entry["op_type"]) for entry in report["passes"]["approximated_activations"]] == [
        ("tanh1", "Tanh"), ("prelu2", "PRelu")]
    agreement = 100 * report["equivalence"]["sharpenable"]["class_agreement"]
    assert f"approximated activations: 1 Tanh, 1 PRelu (at sharpness 0 the network predicts the original's " \
           f"class on {agreement:.1f} % of inputs" in result.summary()
    assert report_errors(json.loads(json.dumps(report))) == []


def test_the_tanh_fixture_once_unsupported_converts_exactly_and_its_summary_names_no_approximation():
    result = api.convert(MODELS / "digits_tanh.onnx", data="digits", finetune=False, netlist=False,
                         accept_loss=True, output="readout")
    assert result.passed
    assert result.report["passes"]["approximated_activations"] == []
    assert result.report["equivalence"]["sharpenable"]["class_agreement"] >= 0.99     # Tanh is exact
    assert "approximated" not in result.summary()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")     # the TorchScript exporter, as many tools still call it
def test_pytorch_mlp_with_tanh_leaky_relu_and_elu_converts(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 24),
                                torch.nn.LeakyReLU(0.1), torch.nn.Linear(24, 16), torch.nn.ELU(),
                                torch.nn.Linear(16, 10)).eval()
    path = tmp_path / "mlp.onnx"
    torch.onnx.export(model, (torch.zeros(1, 64),), str(path), dynamo=False, input_names=["input"],
                      dynamic_axes={"input": {0: "batch"}})
    result = api.convert(path, data="digits", finetune=False, netlist=False, accept_loss=True, output="readout")
    report = result.report
    assert result.passed and report["equivalence"]["float"]["relative_diff"] <= FLOAT_TOLERANCE
    assert [entry["op_type"] for entry in report["passes"]["approximated_activations"]] == ["LeakyRelu", "Elu"]
    functions = {layer.source: layer.function for layer in result.sharpenable_network.layers
                 if isinstance(layer, Sharpenable)}
    assert functions == {"Tanh": "sharp_sigmoid", "LeakyRelu": "bounded_relu", "Elu": "bounded_relu"}


def formula_model(rng, formula, hidden: int = 16):
    """64 inputs -> Gemm -> an activation written out as elementwise nodes -> Gemm -> 10 classes.
    ``formula(h, const)`` returns the nodes reading value "h" and writing value "a";
    ``const(value)`` names a scalar initializer."""
    inits = {"W1": (0.5 * rng.normal(size=(hidden, 64))).astype(np.float32),
             "B1": rng.normal(size=hidden).astype(np.float32),
             "W2": rng.normal(size=(10, hidden)).astype(np.float32), "B2": rng.normal(size=10).astype(np.float32)}

    def const(value: float) -> str:
        name = f"c{len(inits)}"
        inits[name] = np.array(value, np.float32)
        return name

    body = formula("h", const)
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], name="fc1", transB=1), *body,
             helper.make_node("Gemm", ["a", "W2", "B2"], ["y"], name="fc2", transB=1)]
    return graph_model(nodes, inits, [64], [10], opset=18)


def node(op_type, inputs, output, name=None):
    return helper.make_node(op_type, inputs, [output], name=name or f"/act/{op_type}_{output}")


# How exporters spell the activations opset 18 has no op for (and two that it has).
FORMULAS = {
    # PyTorch's TorchScript exporter: x * 0.5 * (1 + erf(x / sqrt 2)), as Div, Erf, Add, Mul, Mul
    "Gelu": lambda h, c: [node("Div", [h, c(np.sqrt(2.0))], "d"), node("Erf", ["d"], "e"),
                          node("Add", ["e", c(1.0)], "p"), node("Mul", [h, "p"], "m"),
                          node("Mul", ["m", c(0.5)], "a")],
    # tf2onnx: multiplies by 1/sqrt 2 and takes the half first
    "Gelu_tf": lambda h, c: [node("Mul", [h, c(1 / np.sqrt(2.0))], "d"), node("Erf", ["d"], "e"),
                             node("Add", [c(1.0), "e"], "p"), node("Mul", [c(0.5), h], "half"),
                             node("Mul", ["half", "p"], "a")],
    "GeluTanh": lambda h, c: [node("Pow", [h, c(3.0)], "cube"), node("Mul", [c(0.044715), "cube"], "k3"),
                              node("Add", [h, "k3"], "s"), node("Mul", ["s", c(np.sqrt(2 / np.pi))], "i"),
                              node("Tanh", ["i"], "t"), node("Add", ["t", c(1.0)], "p"),
                              node("Mul", [h, c(0.5)], "half"), node("Mul", ["half", "p"], "a")],
    "Silu": lambda h, c: [node("Sigmoid", [h], "s"), node("Mul", [h, "s"], "a")],
    "Mish": lambda h, c: [node("Softplus", [h], "sp"), node("Tanh", ["sp"], "t"), node("Mul", [h, "t"], "a")],
    "Sigmoid": lambda h, c: [node("Neg", [h], "n"), node("Exp", ["n"], "e"), node("Add", ["e", c(1.0)], "d"),
                             node("Reciprocal", ["d"], "a")],
}


@pytest.mark.parametrize("spelling", FORMULAS)
def test_an_activation_written_as_a_formula_is_recognised_by_what_it_computes(rng, spelling):
    model = formula_model(rng, FORMULAS[spelling])
    op_type = spelling.split("_")[0]
    network = float_network(model)
    assert [layer.kind for layer in network.layers] == ["dense", "activation", "dense"]
    assert network.layers[1].op_type == op_type and network.layers[1].name == "/act"
    x = rng.normal(size=(64, 64)).astype(np.float32)
    assert relative_difference(runtime.predict(model, x), network.forward(x)) <= 1e-5
    result = api.convert(model, finetune=False, netlist=False)
    assert result.report["equivalence"]["float"]["relative_diff"] <= FLOAT_TOLERANCE and result.passed
    assert result.report["passes"]["onnx"]["recognise_pointwise_activations"] == 1
    approximated = [entry["op_type"] for entry in result.report["passes"]["approximated_activations"]]
    assert approximated == ([] if op_type == "Sigmoid" else [op_type])
    assert api.inspect(model).approximated == result.report["passes"]["approximated_activations"]


def test_a_scaled_gelu_keeps_its_scale_and_a_clip_at_100_is_no_relu(rng):
    """The largest part of a chain that computes a known activation is recognised, not more
    (2 gelu(x): the Mul by 2 folds into the next layer); functions that agree with one only
    on part of the line are not (min(max(x, 0), 100) differs from Relu above 100)."""
    def scaled_gelu(h, c):
        *gelu, last = FORMULAS["Gelu"](h, c)
        return [*gelu, node("Mul", ["m", c(0.5)], "g"), node("Mul", ["g", c(2.0)], "a")]

    model = formula_model(rng, scaled_gelu)
    network = float_network(model)
    assert [layer.kind for layer in network.layers] == ["dense", "activation", "dense"]
    x = rng.normal(size=(64, 64)).astype(np.float32)
    assert relative_difference(runtime.predict(model, x), network.forward(x)) <= 1e-5
    clipped = formula_model(rng, lambda h, c: [node("Max", [h, c(0.0)], "r"), node("Min", ["r", c(100.0)], "a")])
    assert api.inspect(clipped).unsupported == [("Min", "/act/Min_a")]     # Max(x, 0) alone is a Relu


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_pytorch_gelu_gelu_tanh_and_silu_convert_from_either_exporter(tmp_path, dynamo):
    """The dynamo exporter writes nn.GELU as a Gelu node (opset 20), which loading writes
    out in opset-18 ops; the TorchScript one writes the formulas; both write SiLU as x sigmoid(x)."""
    torch = pytest.importorskip("torch")
    if dynamo:
        pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.GELU(), torch.nn.Linear(32, 24),
                                torch.nn.GELU(approximate="tanh"), torch.nn.Linear(24, 16), torch.nn.SiLU(),
                                torch.nn.Linear(16, 10)).eval()
    path = tmp_path / "mlp.onnx"
    torch.onnx.export(model, (torch.zeros(1, 64),), str(path), dynamo=dynamo)
    x = np.random.default_rng(0).normal(size=(32, 64)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    network = float_network(path)
    assert relative_difference(expected, network.forward(x)) <= 1e-5
    result = api.convert(path, finetune=False, netlist=False)
    assert result.passed and result.report["equivalence"]["float"]["relative_diff"] <= FLOAT_TOLERANCE
    assert [entry["op_type"] for entry in result.report["passes"]["approximated_activations"]] == [
        "Gelu", "GeluTanh", "Silu"]


def test_an_unknown_activation_kind_raises_instead_of_falling_through():
    with pytest.raises(ValueError, match="unknown op type 'Swish'"):
        Activation("act", "Swish")
    network = Network("x", (4,), "y", [Dense("fc", np.ones((4, 4), np.float32), None), Activation("act", "Relu")])
    network.layers[1].op_type = "Swish"          # what a family added without its replacement would be
    with pytest.raises(ValueError, match="no replacement is defined for Swish"):
        replace_activations(network)


@pytest.mark.parametrize("gain,calibrated", [(0.05, True), (3.0, False)])
def test_a_capped_relu_is_scaled_like_a_relu_only_when_its_inputs_seldom_reach_the_cap(rng, gain, calibrated):
    """ReLU6 (Clip(0, 6)) is exact as a bounded ReLU scaled by 1/6, whose step would fire at 3; when
    95 % of its positive inputs stay below 6, it is scaled by that percentile instead, as a ReLU is
    (and the next layer takes the scale back); inputs that mostly reach the cap keep the exact 1/6."""
    inits = {"W1": (gain * rng.normal(size=(16, 64))).astype(np.float32), "B1": np.zeros(16, np.float32),
             "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32),
             "W2": rng.normal(size=(10, 16)).astype(np.float32), "B2": rng.normal(size=10).astype(np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], name="fc1", transB=1),
             helper.make_node("Clip", ["h", "lo", "hi"], ["a"], name="act"),
             helper.make_node("Gemm", ["a", "W2", "B2"], ["y"], name="fc2", transB=1)]
    model = graph_model(nodes, inits, [64], [10], opset=18)
    network = sharpenable_at_zero(model)
    x = rng.uniform(0.0, 1.0, (400, 64))
    expected = runtime.predict(model, x.astype(np.float32))
    exact = np.abs(network.forward(x) - expected).max()      # (the bounded ReLU's epsilon)
    h = x @ inits["W1"].T.astype(np.float64)
    percentile = float(np.percentile(h[h > 0], DEFAULT_PERCENTILE))
    assert (percentile < 6.0) == calibrated
    calibration = calibrate_scales(network, x)
    assert calibration.scaled_layers == int(calibrated)
    scale = percentile if calibrated else 6.0
    np.testing.assert_allclose(network.layers[0].weight, inits["W1"] / scale, rtol=1e-5)
    # Only the inputs above the percentile change at sharpness 0 (a ReLU's calibration loses the same;
    # the cap itself is exact).
    kept = (h <= scale).all(axis=1) if calibrated else np.ones(len(x), bool)
    assert kept.sum() > 50 and np.abs(network.forward(x[kept]) - expected[kept]).max() <= exact
