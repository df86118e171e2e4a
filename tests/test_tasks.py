"""Beyond classifiers (issue 17): autoencoders (--task reconstruct) and regression models
(--task regress) become single-spike networks with a real-valued readout."""
from __future__ import annotations

import json

import nir
import numpy as np
import onnx
import pytest

from conftest import MODELS
from test_schemas import errors
from whetstone_onnx import api, runtime
from whetstone_onnx.cli import main
from whetstone_onnx.conversion import ConvertOptions, float_network
from whetstone_onnx.data import load_dataset
from whetstone_onnx.errors import DataError
from whetstone_onnx.finetune import FinetuneOptions
from whetstone_onnx.load import load_model
from whetstone_onnx.netlist.explicit import read_netlist
from whetstone_onnx.network_passes.levels import expand_levels
from whetstone_onnx.network_passes.output_stage import split_readout_tail
from whetstone_onnx.ops.activation import Activation, Sharpenable
from whetstone_onnx.ops.conv import Conv2d
from whetstone_onnx.ops.dense import Dense
from whetstone_onnx.ops.merge import Add
from whetstone_onnx.ops.pool import AvgPool2d, MaxPool2d
from whetstone_onnx.ops.shape import Reshape
from whetstone_onnx.network import Network
from whetstone_onnx.tasks import suggest_task

AUTOENCODER = MODELS / "digits_autoencoder.onnx"
TINY = FinetuneOptions(epochs=3, straight_through_epochs=2)


def centre_row(images: np.ndarray) -> np.ndarray:
    """The row of each 8 x 8 image's centre of mass, (N, 1)."""
    rows = images.reshape(len(images), 8, 8).astype(np.float64).sum(axis=2)
    return ((rows * np.arange(8)).sum(axis=1) / (rows.sum(axis=1) + 1e-9))[:, None].astype(np.float32)


@pytest.fixture(scope="module")
def regression(tmp_path_factory):
    """A scikit-learn MLPRegressor (64-32-1, ReLU) on digits predicting the centre of mass's row, exported
    by skl2onnx (which ends it with a Reshape to (-1, 1), right for one target only), and its npz data."""
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPRegressor

    folder = tmp_path_factory.mktemp("regression")
    digits = load_dataset("digits")
    x_train, x_test = (x.reshape(len(x), -1) for x in (digits.x_train, digits.x_test))
    y_train, y_test = centre_row(x_train), centre_row(x_test)
    model = MLPRegressor(hidden_layer_sizes=(32,), max_iter=300, random_state=0).fit(x_train, y_train[:, 0])
    path = folder / "regressor.onnx"
    path.write_bytes(to_onnx(model, x_train[:1]).SerializeToString())
    archive = folder / "targets.npz"
    np.savez(archive, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path, f"npz:{archive}"


def test_suggested_task_and_readout_tail() -> None:
    network = float_network(load_model(AUTOENCODER))[0]
    assert suggest_task(network.input_shape, network.shapes()[-1]) == "reconstruct"
    assert suggest_task((64,), (10,)) == "classify"
    tail = split_readout_tail(network)
    assert [layer.kind for layer in tail] == ["activation", "reshape"]
    assert isinstance(network.layers[-1], Dense)
    inspected = api.inspect(AUTOENCODER)
    assert (inspected.task, inspected.suggested_task) == ("reconstruct", "reconstruct")
    assert [row["kind"] for row in inspected.layers[-2:]] == ["activation", "reshape"]


def test_levels_are_exact_at_sharpness_zero(rng) -> None:
    network = Network("x", (6,), "y", [Dense("a", rng.standard_normal((5, 6)).astype(np.float32),
                                             rng.standard_normal(5).astype(np.float32)),
                                       Sharpenable("a/act", "bounded_relu"),
                                       Dense("b", rng.standard_normal((3, 5)).astype(np.float32), None)])
    x = rng.standard_normal((50, 6))
    before = network.forward(x)
    assert expand_levels(network, 4) == 1
    assert network.layers[0].weight.shape == (20, 6) and network.layers[2].weight.shape == (3, 20)
    np.testing.assert_allclose(network.forward(x), before, rtol=2e-3, atol=2e-3)   # the ramp's 1e-3 epsilon
    network.layers[1].sharpness = 1.0
    spikes = network.forward(x, all_layers=True)[1]
    # A thermometer code: copy j of a unit fires only if copy j - 1 does.
    copies = spikes.reshape(50, 5, 4)
    assert np.all(np.diff(copies, axis=2) <= 0)


def test_levels_of_convolution_channels_are_exact_across_pooling_and_a_flatten(rng) -> None:
    """A convolution's channel becomes K adjacent channels; max / average pooling act on each copy
    and a flattening Dense reads them channel-major: the same function at sharpness 0."""
    def weights(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    network = Network("x", (1, 8, 8), "y", [
        Conv2d("c1", weights(4, 1, 3, 3), weights(4), pads=(1, 1, 1, 1)), Sharpenable("a1", "bounded_relu"),
        MaxPool2d("p1", (2, 2), (2, 2)), Conv2d("c2", weights(6, 4, 3, 3), weights(6)),
        Sharpenable("a2", "bounded_relu"), AvgPool2d("p2", (2, 2), (1, 1), pads=(0, 0, 1, 1)),
        Reshape("flat", (24,)),
        Dense("d", weights(3, 24), weights(3))])
    x = rng.standard_normal((40, 1, 8, 8))
    before = network.forward(x)
    assert expand_levels(network, 3) == 2
    assert [tuple(shape) for shape in network.shapes()] == [(12, 8, 8), (12, 8, 8), (12, 4, 4), (18, 2, 2),
                                                             (18, 2, 2), (18, 2, 2), (72,), (3,)]
    np.testing.assert_allclose(network.forward(x), before, rtol=3e-3, atol=3e-3)   # the ramp's 1e-3 epsilon
    for layer in network.layers:
        if isinstance(layer, Sharpenable):
            layer.sharpness = 1.0
    spikes = network.forward(x, all_layers=True)[1].reshape(40, 4, 3, 8, 8)
    assert np.all(np.diff(spikes, axis=2) <= 0)          # a thermometer code per channel


def test_levels_of_a_depthwise_convolution_stay_in_their_group_and_every_reader_takes_them(rng) -> None:
    """MobileNet's depthwise units: each channel's K copies are K outputs of its own group, read
    here by two 1x1 convolutions (the composed projections of a linear bottleneck read by two
    layers); the units a grouped convolution reads are left alone (its groups would read other
    channels' copies)."""
    def weights(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    network = Network("x", (1, 6, 6), "y", [
        Conv2d("c1", weights(4, 1, 3, 3), weights(4), pads=(1, 1, 1, 1)), Sharpenable("a1", "bounded_relu"),
        Conv2d("dw", weights(4, 1, 3, 3), weights(4), pads=(1, 1, 1, 1), group=4), Sharpenable("a2", "bounded_relu"),
        Conv2d("r1", weights(5, 4, 1, 1), weights(5)), Conv2d("r2", weights(5, 4, 1, 1), None),
        Add("sum", np.ones((2, 5), np.float32), 3), Sharpenable("a3", "bounded_relu"), Reshape("flat", (180,)),
        Dense("d", weights(3, 180), weights(3))])
    network.links = {"r2": ("a2",), "sum": ("r1", "r2")}
    x = rng.standard_normal((40, 1, 6, 6))
    before = network.forward(x)
    assert expand_levels(network, 3) == 1                      # a2 only
    assert network.layers[2].weight.shape == (12, 1, 3, 3) and network.layers[2].group == 4
    assert network.layers[4].weight.shape == network.layers[5].weight.shape == (5, 12, 1, 1)
    assert network.layers[0].weight.shape == (4, 1, 3, 3)     # read by the grouped convolution
    np.testing.assert_allclose(network.forward(x), before, rtol=3e-3, atol=3e-3)


@pytest.mark.slow
def test_autoencoder_converts_and_checks(tmp_path) -> None:
    out = tmp_path / "out"
    result = api.convert(AUTOENCODER, out, data="digits", task="reconstruct", finetune=TINY, accept_loss=True)
    report = result.report
    assert report["passed"] and report["task"] == "reconstruct" and report["accuracy"] is None
    metrics = report["metrics"]
    assert metrics["float"]["mse"] == pytest.approx(metrics["original"]["mse"], rel=1e-4)
    assert metrics["spiking"]["psnr_db"] > 10
    assert report["netlist"]["explicit"]["metrics"]["mse"] == pytest.approx(metrics["spiking"]["mse"], rel=1e-4)
    for name in ("spiking", "nir", "netlist"):
        assert report["equivalence"][name]["output"]["passed"]
    assert report["error_guard"]["mse_ratio"] == pytest.approx(metrics["spiking"]["mse"] / metrics["original"]["mse"],
                                                               rel=1e-5)
    assert (out / "reconstructions.png").is_file() and (out / "training.png").is_file()
    assert errors("report", json.loads((out / "report.json").read_text())) == []
    history = report["finetune"]["history"]
    assert {"validation_mse", "spiking_mse", "train_mse"} <= set(history[0])
    # The output is the model's own: a sigmoid image of 8 x 8 x 1 (NHWC, as Keras wrote it).
    spiking = onnx.load(out / "spiking.onnx")
    x = load_dataset("digits").x_test[:5].reshape(5, -1)
    values = runtime.predict(spiking, x)
    assert values.shape == (5, 8, 8, 1) and values.min() >= 0 and values.max() <= 1
    decode = read_netlist(out).header["output"]["decode"]
    assert decode["kind"] == "values" and decode["activation"] == {"op_type": "Sigmoid"} and decode["shape"] == [8, 8, 1]
    graph = nir.read(out / "model.nir")
    assert graph.metadata["output_reshape"].tolist() == [8, 8, 1]
    assert "readout_activation" in graph.metadata
    checked = api.check_outputs(out)
    assert checked.passed and all(c["output"]["passed"] for c in checked.comparisons.values())


def test_levels_leave_sharpened_units_and_classifier_outputs_are_refused(rng, tmp_path, capsys) -> None:
    network = Network("x", (6,), "y", [Dense("a", rng.standard_normal((5, 6)).astype(np.float32), None),
                                       Sharpenable("a/act", "bounded_relu", sharpness=1.0),
                                       Dense("b", rng.standard_normal((3, 5)).astype(np.float32), None)])
    assert expand_levels(network, 4) == 0 and network.layers[0].weight.shape == (5, 6)
    # A Softmax output is a classifier's: --task regress would compare its logits with the targets.
    code = main(["convert", str(MODELS / "digits_dense.onnx"), "-o", str(tmp_path / "s"), "--task", "reconstruct"])
    assert code == 2 and "ends in a Softmax, a classifier's class probabilities" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_guard_and_misuse_exit_codes(tmp_path, capsys, regression) -> None:
    # Sharpened at once, the autoencoder's MSE is many times the original's: exit 1, named.
    code = main(["convert", str(AUTOENCODER), "-o", str(tmp_path / "a"), "--data", "digits", "--task", "reconstruct",
                 "--no-finetune", "--no-netlist", "-q"])
    captured = capsys.readouterr()
    assert code == 1
    assert "mean squared error is" in captured.err and "times the original's" in captured.err
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["error_guard"]["passed"] is False and report["metrics"]["spiking"]["mse"] > 0
    assert errors("report", report) == []
    # A classifier's 10 outputs cannot reconstruct its 64 inputs; digits has no real-valued targets.
    code = main(["convert", str(MODELS / "digits_dense.onnx"), "-o", str(tmp_path / "b"), "--data", "digits",
                 "--task", "reconstruct", "-q"])
    assert code == 2 and "--task reconstruct: the model outputs [10] per sample" in capsys.readouterr().err
    code = main(["convert", str(regression[0]), "-o", str(tmp_path / "c"), "--data", "digits", "--task", "regress"])
    assert code == 2 and "needs real-valued targets" in capsys.readouterr().err
    code = main(["convert", str(AUTOENCODER), "-o", str(tmp_path / "d"), "--task", "reconstruct", "--output", "nhot"])
    assert code == 2 and "--output nhot" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "bcd")


def test_regression_npz_targets(regression) -> None:
    path, data = regression
    dataset = load_dataset(data, real_targets=True)
    assert dataset.y_train.dtype == np.float32 and dataset.y_train.shape[1:] == (1,)
    with pytest.raises(DataError, match=r"got \(1437, 1\) \(real-valued targets: --task regress\)"):
        load_dataset(data)
    result = api.convert_with_options(path, None, data=data, options=ConvertOptions(
        task="regress", finetune=False, accept_loss=True))
    report = result.report
    assert report["passed"] and report["metrics"]["original"]["mse"] < 0.05
    assert "psnr_db" not in report["metrics"]["spiking"]
    # Levels: every hidden dense unit of the regressor became four binary units.
    assert report["passes"]["network"]["expand_levels"] == 1
    assert result.spiking_network.layers[0].weight.shape[0] == 4 * 32


@pytest.mark.slow
def test_regression_finetunes(regression) -> None:
    path, data = regression
    result = api.convert(path, data=data, task="regress", finetune=TINY, accept_loss=True)
    metrics = result.report["metrics"]
    assert result.passed
    assert metrics["spiking"]["mse"] < result.report["finetune"]["history"][0]["spiking_mse"] * 1.5
    # skl2onnx's Reshape to (-1, 1) stays after the readout, and no output activation comes before it.
    network = result.spiking_network
    assert isinstance(network.layers[network.readout_index()], Dense) and network.layers[-1].kind == "reshape"
    assert not any(isinstance(layer, Activation) for layer in network.layers)
