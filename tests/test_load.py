"""Loading what exporters write by default: weights in an external file next to the model
(read from the model's folder, whatever the working directory, and never from outside
it), and a batch dimension fixed at export time."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from conftest import graph_model, run_cli
from onnx import helper

from whetstone_onnx import api
from whetstone_onnx.errors import InputError

torch = pytest.importorskip("torch")


def small_torch_mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.BatchNorm1d(32),
                               torch.nn.ReLU(), torch.nn.Linear(32, 10)).eval()


@pytest.fixture(scope="module")
def dynamo_export(tmp_path_factory):
    """PyTorch 2.13's plain ``torch.onnx.export(model, (x,), path)``: the dynamo exporter, opset 18+,
    the weights in ``m.onnx.data``, the batch fixed at 1."""
    folder = tmp_path_factory.mktemp("dynamo")
    torch.onnx.export(small_torch_mlp(), (torch.randn(1, 1, 8, 8),), str(folder / "m.onnx"))
    return folder / "m.onnx"


def test_torch_default_export_converts_from_another_working_directory(dynamo_export, tmp_path):
    assert (dynamo_export.parent / "m.onnx.data").is_file()
    proto = onnx.load(dynamo_export, load_external_data=False)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1      # fixed batch of 1
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    completed = run_cli("convert", str(dynamo_export), "-o", str(tmp_path / "out"), "--data", "digits",
                        "--no-finetune", "--accept-loss", cwd=elsewhere)
    assert completed.returncode == 0, completed.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["passed"] and report["equivalence"]["float"]["relative_diff"] < 1e-4
    # the graphs written take any batch
    spiking = onnx.load(tmp_path / "out" / "spiking.onnx")
    assert spiking.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert run_cli("inspect", str(dynamo_export), cwd=elsewhere).returncode == 0


def test_a_fixed_batch_larger_than_one_converts(tmp_path):
    """The legacy exporter without dynamic_axes fixes the batch of the example input."""
    torch.onnx.export(small_torch_mlp(), (torch.randn(4, 1, 8, 8),), str(tmp_path / "m4.onnx"), dynamo=False)
    result = api.convert(tmp_path / "m4.onnx", data="digits", finetune=False, netlist=False, accept_loss=True)
    assert result.report["passed"]
    assert result.accuracy["float"] == result.accuracy["original"]     # 360 test images: 90 full batches of 4


def external_model(folder, location: str) -> onnx.ModelProto:
    """A one-MatMul model whose weight names ``location`` as its external file."""
    model = graph_model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                        {"w": np.ones((4, 2), np.float32)}, (4,), (2,))
    onnx.save(model, folder / "m.onnx", save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    model = onnx.load(folder / "m.onnx", load_external_data=False)
    model.graph.initializer[0].external_data[0].value = location
    onnx.save(model, folder / "m.onnx")
    return model


@pytest.mark.parametrize("location, message", [
    ("../secret.bin", "which is not a file inside the model's folder; refused"),
    ("/etc/passwd", "which is not a file inside the model's folder; refused"),
    ("link.bin", "a link leading out of the model's folder; refused"),
    ("only_in_cwd.bin", "not found in"),
])
def test_external_data_outside_the_model_folder_is_refused_and_nothing_is_read(tmp_path, location, message):
    folder, cwd = tmp_path / "model", tmp_path / "cwd"
    folder.mkdir()
    cwd.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(8, dtype=np.float32).tobytes())
    (cwd / "only_in_cwd.bin").write_bytes(secret.read_bytes())
    os.symlink(secret, folder / "link.bin")
    external_model(folder, location)
    completed = run_cli("convert", str(folder / "m.onnx"), "-o", str(tmp_path / "out"), cwd=cwd)
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and str(folder / "m.onnx") in lines[0] and message in lines[0], lines
    assert "tensor 'w' is stored in external file" in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_model_in_memory_reads_its_external_data_from_the_folder_given(tmp_path):
    model = external_model(tmp_path, "m.onnx.data")
    with pytest.raises(InputError, match="give the model as a path, or the folder that holds that file"):
        api.inspect(model)
    assert api.inspect(model, model_dir=tmp_path).layers
    assert api.inspect(model.SerializeToString(), model_dir=tmp_path).layers
    assert model.graph.initializer[0].external_data        # the caller's ModelProto is not modified


@pytest.fixture(scope="module")
def sklearn_mlp():
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier
    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    return MLPClassifier(hidden_layer_sizes=(32,), max_iter=60, random_state=0).fit(x, y), x[:1]


def test_skl2onnx_classifier_graph_converts_with_or_without_zipmap(sklearn_mlp, tmp_path):
    """skl2onnx's usual graph: a Cast of the float input to float, a label output from an ArgMax
    branch beside the probabilities; by default the probabilities go through a ZipMap, whose
    input tensor is then the class-score output."""
    skl2onnx = pytest.importorskip("skl2onnx")
    clf, sample = sklearn_mlp
    onnx.save(skl2onnx.to_onnx(clf, sample), tmp_path / "zipmap.onnx")
    completed = run_cli("convert", str(tmp_path / "zipmap.onnx"), "-o", str(tmp_path / "out"), "--data", "digits",
                        "--no-finetune", "--accept-loss", "--no-netlist")
    assert completed.returncode == 0, completed.stderr
    zipmap_report = json.loads((tmp_path / "out" / "report.json").read_text())
    zipmap = next(node for node in onnx.load(tmp_path / "zipmap.onnx").graph.node if node.op_type == "ZipMap")
    assert zipmap_report["passed"] and zipmap_report["model"]["output"]["name"] == zipmap.input[0]
    onnx.save(skl2onnx.to_onnx(clf, sample, options={"zipmap": False}), tmp_path / "m.onnx")
    result = api.convert(tmp_path / "m.onnx", data="digits", finetune=False, netlist=False, accept_loss=True)
    assert result.report["model"]["output"]["name"] == "probabilities" and result.report["passed"]
    assert result.accuracy["float"] == result.accuracy["original"] > 0.9
    with pytest.raises(InputError, match="output 'label' is not a float tensor of class scores"):
        api.inspect(tmp_path / "m.onnx", output_name="label")
    with pytest.raises(InputError, match=r"no output named 'nope' \(the outputs are 'label', 'probabilities'\)"):
        api.inspect(tmp_path / "m.onnx", output_name="nope")


def test_an_op_newer_than_the_pinned_opset_is_named_as_unsupported(tmp_path):
    """RMSNormalization (opset 23) has no opset-18 form (Gelu, opset 20, has: see test_activations)."""
    graph = helper.make_graph([helper.make_node("RMSNormalization", ["x", "scale"], ["y"], name="/norm/RMS")], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])],
                              initializer=[onnx.numpy_helper.from_array(np.ones(4, np.float32), "scale")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]), tmp_path / "rms.onnx")
    completed = run_cli("inspect", str(tmp_path / "rms.onnx"))
    assert completed.returncode == 2
    assert completed.stderr.strip() == (f"whetstone-onnx: error: {tmp_path / 'rms.onnx'}: unsupported ops: "
                                        "RMSNormalization ('/norm/RMS') (no opset-18 form to convert them to)")


def test_pytorch_unflatten_before_a_convolution_converts(tmp_path):
    """nn.Unflatten exports as a Reshape whose shape is computed with Shape, Slice, Mod and Add:
    once folded, its output shape is known and it lifts as a reshape."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Unflatten(1, (1, 8, 8)), torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(144, 10)).eval()
    torch.onnx.export(model, (torch.zeros(1, 64),), str(tmp_path / "m.onnx"), dynamo=False, input_names=["input"],
                      dynamic_axes={"input": {0: "batch"}})
    assert [row["kind"] for row in api.inspect(tmp_path / "m.onnx").layers][:2] == ["reshape", "conv2d"]
    result = api.convert(tmp_path / "m.onnx", data="digits", finetune=False, netlist=False, accept_loss=True)
    assert result.passed and result.report["equivalence"]["float"]["relative_diff"] < 1e-4


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_pytorch_zero_padding_folds_into_the_convolution_and_average_pooling(tmp_path):
    """nn.ZeroPad2d exports as a Pad whose pads PyTorch 2.13 computes with ConstantOfShape-20, which
    the version converter cannot take to opset 18 until those constants are folded; the Pad then
    folds into the Conv (or the AveragePool that counts padding) reading it."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.ZeroPad2d((1, 1, 2, 2)), torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(),
                                torch.nn.ZeroPad2d(1), torch.nn.Conv2d(4, 4, 3), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 10 * 8, 10)).eval()
    torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(tmp_path / "pad.onnx"), dynamo=False,
                      input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    assert "Pad" in {node.op_type for node in onnx.load(tmp_path / "pad.onnx").graph.node}
    result = api.convert(tmp_path / "pad.onnx", data="digits", finetune=False, accept_loss=True)
    assert result.report["passes"]["onnx"]["fold_zero_padding"] == 2 and result.passed
    assert [layer.pads for layer in result.spiking_network.layers if layer.kind == "conv2d"] == [
        (2, 1, 2, 1), (1, 1, 1, 1)]
    pooled = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.ZeroPad2d(1),
                                 torch.nn.AvgPool2d(2, count_include_pad=True), torch.nn.Flatten(),
                                 torch.nn.Linear(4 * 4 * 4, 10)).eval()
    torch.onnx.export(pooled, (torch.zeros(1, 1, 8, 8),), str(tmp_path / "pool.onnx"), dynamo=False,
                      input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    result = api.convert(tmp_path / "pool.onnx", data="digits", finetune=False, accept_loss=True, netlist=False)
    assert result.report["passes"]["onnx"]["fold_zero_padding"] == 1 and result.passed
    reflect = torch.nn.Sequential(torch.nn.ReflectionPad2d(1), torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(),
                                  torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 10)).eval()
    torch.onnx.export(reflect, (torch.zeros(1, 1, 8, 8),), str(tmp_path / "reflect.onnx"), dynamo=False)
    assert [op for op, _ in api.inspect(tmp_path / "reflect.onnx").unsupported] == ["Pad"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_network_without_a_nir_form_is_refused_before_any_training(tmp_path, monkeypatch):
    """Asymmetric zero padding folds into the Conv, which NIR cannot express: the conversion stops
    at the netlist_forms stage, before fine-tuning (which would otherwise run for minutes first)."""
    from whetstone_onnx import conversion
    from whetstone_onnx.errors import UnsupportedModelError

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.ZeroPad2d((1, 2, 0, 1)), torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 7 * 9, 10)).eval()
    torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(tmp_path / "m.onnx"), dynamo=False,
                      input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    stages = [name for name, _ in conversion.STAGES]
    assert stages.index("netlist_forms") < stages.index("finetune")

    def no_training(c):
        raise AssertionError("fine-tuning started")
    monkeypatch.setattr(conversion, "STAGES", [(name, no_training if name == "finetune" else stage)
                                               for name, stage in conversion.STAGES])
    with pytest.raises(UnsupportedModelError, match="NIR Conv2d has symmetric padding only"):
        api.convert(tmp_path / "m.onnx", tmp_path / "out", data="digits")
    assert not (tmp_path / "out" / "report.json").exists()
    monkeypatch.undo()
    result = api.convert(tmp_path / "m.onnx", data="digits", finetune=False, netlist=False, accept_loss=True)
    assert result.passed and "netlist_forms" not in result.report["timings_s"]
