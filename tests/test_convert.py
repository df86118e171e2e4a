"""End-to-end conversion through the API on fixture models exported by frameworks."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import MODELS, graph_model
from onnx import helper

from whetstone_onnx import api, runtime
from whetstone_onnx.emit import to_onnx
from whetstone_onnx.errors import DataError, UnsupportedModelError
from whetstone_onnx.ops.activation import Spike


@pytest.fixture(scope="module")
def digits_dense(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits_dense")
    return api.convert(MODELS / "digits_dense.onnx", out, data="digits", finetune=False), out


def test_dense_keras_export_converts_with_bit_exact_spikes(digits_dense):
    result, out = digits_dense
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "whetstone_onnx.report" and report["passed"]
    for name in ("sharpenable.onnx", "spiking.onnx"):
        onnx.checker.check_model(onnx.load(out / name), full_check=True)
    accuracy = report["accuracy"]
    assert accuracy["original"] >= 0.95
    assert accuracy["float"] == accuracy["original"]
    assert report["equivalence"]["float"]["relative_diff"] <= 1e-4
    assert report["equivalence"]["sharpenable"]["class_agreement"] >= 0.9
    assert accuracy["spiking"] > 0.10      # better than chance before any fine-tuning
    spikes = report["equivalence"]["spiking"]
    assert spikes["passed"] and spikes["unexplained"] == 0 and len(spikes["layers"]) == 3
    assert report["finetune"]["performed"] is False
    assert report["passes"]["onnx"]["canonicalise_linear"] == 3
    nir_check = report["equivalence"]["nir"]
    assert nir_check["passed"] and nir_check["netlist"] == "nir:portable" and len(nir_check["layers"]) == 3
    assert sum(layer["mismatches"] for layer in nir_check["layers"]) == 0
    assert (out / "model.nir").stat().st_mode & 0o044 == 0o044     # an ordinary, readable file
    netlist_check = report["equivalence"]["netlist"]
    assert netlist_check["passed"] and sum(layer["mismatches"] for layer in netlist_check["layers"]) == 0
    netlist = report["netlist"]
    assert netlist["explicit"]["stats"]["synapses"] > 0 and 0 < netlist["synops_per_mac"] < 1
    assert netlist["explicit"]["accuracy"] == report["accuracy"]["spiking"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]   # no staging or temporary files left
    assert report["passes"]["network"]["replace_activations"] == 2


def test_spiking_graph_has_binary_hidden_units_with_bias_folded_into_thresholds(digits_dense):
    result, out = digits_dense
    spiking = onnx.load(out / "spiking.onnx")
    assert {f.name for f in spiking.functions} == {"Spike", "NHotDecode"}
    assert sum(n.op_type == "Spike" for n in spiking.graph.node) == 3
    assert all(len(n.input) == 2 for n in spiking.graph.node if n.op_type == "Gemm")   # no bias
    hidden = runtime.run(to_onnx(result.spiking_network, graph_name="t", expose_layers=True),
                         np.random.default_rng(1).uniform(0, 1, (50, 64)).astype(np.float32))
    for layer in result.spiking_network.layers:
        if isinstance(layer, Spike):
            assert set(np.unique(hidden[layer.name])) <= {0.0, 1.0}
    sharpenable = onnx.load(out / "sharpenable.onnx")
    sharpness = [i for i in sharpenable.graph.initializer if i.name.endswith(".sharpness")]
    assert len(sharpness) == 3 and all(onnx.numpy_helper.to_array(s) == 0.0 for s in sharpness)


def test_reruns_are_byte_identical(digits_dense, tmp_path):
    _, out = digits_dense
    api.convert(MODELS / "digits_dense.onnx", tmp_path, data="digits", finetune=False)
    for name in ("sharpenable.onnx", "spiking.onnx"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()


@pytest.mark.parametrize("model,normalize", [("digits_conv.onnx", None),
                                             ("torchstyle_digits_conv.onnx", (0.5, 0.5))])
def test_conv_fixtures_convert_and_spikes_agree(model, normalize):
    result = api.convert(MODELS / model, data="digits", normalize=normalize, finetune=False)
    assert result.passed
    assert result.accuracy["float"] == result.accuracy["original"] >= 0.94
    assert result.report["equivalence"]["spiking"]["unexplained"] == 0
    assert result.report["equivalence"]["sharpenable"]["class_agreement"] >= 0.9


def test_readout_output_keeps_a_float_last_layer_and_key_width_is_honoured():
    readout = api.convert(MODELS / "digits_dense.onnx", data="digits", output="readout", finetune=False)
    assert readout.passed and readout.spiking_network.layers[-1].kind == "dense"
    assert sum(isinstance(layer, Spike) for layer in readout.spiking_network.layers) == 2
    wide = api.convert(MODELS / "digits_dense.onnx", data="digits", key_width=20, seed=3, finetune=False)
    assert wide.spiking_network.layers[-1].key.shape == (10, 20)


def test_mnist_dense_converts_on_the_shared_split(mnist_dir):
    result = api.convert(MODELS / "mnist_dense.onnx", data=f"mnist:{mnist_dir}", finetune=False)
    assert result.report["data"]["test_samples"] == 2000 and result.passed
    assert result.accuracy["original"] >= 0.94


def test_without_data_checks_run_on_random_inputs():
    result = api.convert(MODELS / "digits_dense.onnx")
    assert result.accuracy is None and result.passed
    assert result.report["calibration"]["source"] == "random"


def test_unsupported_ops_are_all_listed_before_any_work(tmp_path):
    with pytest.raises(UnsupportedModelError, match=r"unsupported ops: LSTM \('/lstm/LSTM'\)"):
        api.convert(MODELS / "digits_lstm.onnx", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    inspected = api.inspect(MODELS / "digits_lstm.onnx")
    assert not inspected.supported and [op for op, _ in inspected.unsupported] == ["LSTM"]


def test_the_output_normaliser_removed_is_named_even_behind_an_identity(rng):
    nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["logits"], name="fc", transB=1),
             helper.make_node("Softmax", ["logits"], ["p"], name="softmax", axis=-1),
             helper.make_node("Identity", ["p"], ["y"], name="out")]
    model = graph_model(nodes, {"W": rng.normal(size=(10, 64)).astype(np.float32),
                                "B": rng.normal(size=10).astype(np.float32)}, [64], [10])
    result = api.convert(model, netlist=False)
    assert result.report["model"]["output"]["removed_normaliser"] == "Softmax"
    assert result.report["equivalence"]["float"]["passed"]


def test_an_exported_step_whose_threshold_is_a_constant_node_is_recognised_by_inspect_and_convert(rng):
    # The exported form of a BoundedRelu at sharpness 1, with its 0.5 in a Constant node and
    # the nodes unnamed: recognised once the constants are lifted, as convert lifts them.
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], name="fc1", transB=1),
             helper.make_node("Constant", [], ["half"], value=onnx.numpy_helper.from_array(np.float32(0.5))),
             helper.make_node("GreaterOrEqual", ["h", "half"], ["fired"]),
             helper.make_node("Cast", ["fired"], ["spikes"], to=onnx.TensorProto.FLOAT),
             helper.make_node("Gemm", ["spikes", "W2", "B2"], ["y"], name="fc2", transB=1)]
    model = graph_model(nodes, {"W1": rng.normal(size=(16, 64)).astype(np.float32),
                                "B1": rng.normal(size=16).astype(np.float32),
                                "W2": rng.normal(size=(10, 16)).astype(np.float32),
                                "B2": rng.normal(size=10).astype(np.float32)}, [64], [10])
    info = api.inspect(model)
    assert info.supported and info.ops["GreaterOrEqual"] == {"count": 1, "supported": True}
    result = api.convert(model, finetune=False, netlist=False)
    assert result.report["passes"]["onnx"]["recognise_whetstone_layers"] == 1 and result.passed


def test_inspect_keys_ops_of_other_domains_by_domain_in_counts_and_refusals(tmp_path):
    sharpenable = api.convert(MODELS / "digits_dense.onnx", finetune=False, netlist=False).sharpenable_model
    info = api.inspect(sharpenable)
    assert info.supported and info.ops["org.whetstone.BoundedRelu"] == {"count": 3, "supported": True}
    sharpenable.graph.node[1].op_type = "Frobnicate"
    onnx.save(sharpenable, tmp_path / "unknown_op.onnx")
    info = api.inspect(tmp_path / "unknown_op.onnx")
    assert info.unsupported == [("org.whetstone.Frobnicate", sharpenable.graph.node[1].name)]
    assert info.ops["org.whetstone.Frobnicate"] == {"count": 1, "supported": False}


def test_data_that_does_not_fit_the_model_is_a_data_error():
    with pytest.raises(DataError, match=r"samples of shape \(8, 8\) do not fit the model input \(784,\)"):
        api.convert(MODELS / "mnist_dense.onnx", data="digits", finetune=False)


@pytest.mark.slow
@pytest.mark.parametrize("model,normalize", [("mnist_dense.onnx", None), ("mnist_conv.onnx", None),
                                             ("torchstyle_mnist_conv.onnx", (0.5, 0.5))])
def test_mnist_models_spike_identically_in_onnx_netlist_and_nir_on_all_held_out_images(mnist_dir, model, normalize):
    result = api.convert(MODELS / model, data=f"mnist:{mnist_dir}", normalize=normalize, finetune=False)
    equivalence = result.report["equivalence"]
    for name in ("spiking", "nir", "netlist"):
        assert equivalence[name]["samples"] == 2000
        assert equivalence[name]["passed"] and equivalence[name]["unexplained"] == 0, name
    assert result.report["netlist"]["explicit"]["accuracy"] == result.accuracy["spiking"]
