"""Classic Whetstone code runs on Keras 3 with only its imports changed, and the
model it trains exports to the same kind of spiking artifacts as a converted one."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

keras = pytest.importorskip("keras")

from conftest import MODELS  # noqa: E402
from whetstone_onnx import api  # noqa: E402
from whetstone_onnx.data import load_dataset  # noqa: E402
from whetstone_onnx.keras import BoundedRelu, SoftmaxDecode, key_generator  # noqa: E402


def test_classic_usage_trains_sharpens_and_exports(tmp_path):
    # The snippet, on digits (64 inputs) so the test stays fast.
    from keras.layers import Dense
    from keras.models import Sequential

    from whetstone_onnx.keras import SimpleSharpener, Softmax_Decode, Spiking_BRelu, key_generator

    keras.utils.set_random_seed(0)
    digits = load_dataset("digits")
    x_train = digits.x_train.reshape(len(digits.x_train), 64)
    y_train = keras.utils.to_categorical(digits.y_train, 10)

    key = key_generator(10, 100)
    model = Sequential([Dense(256, input_shape=(64,)), Spiking_BRelu(), Dense(64),
                        Spiking_BRelu(), Dense(100), Spiking_BRelu(), Softmax_Decode(key)])
    simple = SimpleSharpener(2, epochs=True)
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    history = model.fit(x_train, y_train, epochs=30, callbacks=[simple], verbose=0)

    assert len(history.history["loss"]) == 2 + 3 * 4           # stopped once every layer reached 1.0
    assert simple.get_layer_sharpness() == [1.0, 1.0, 1.0]

    result = api.export_keras(model, tmp_path, data="digits")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] and report["equivalence"]["spiking"]["unexplained"] == 0
    assert report["equivalence"]["keras_vs_spiking_onnx"]["agreement"] == 1.0
    assert result.accuracy["spiking"] == pytest.approx(result.accuracy["original"], abs=1e-9)
    assert result.accuracy["spiking"] >= 0.85
    spiking = onnx.load(tmp_path / "spiking.onnx")
    onnx.checker.check_model(spiking, full_check=True)
    assert [n.op_type for n in spiking.graph.node] == ["Gemm", "Spike"] * 3 + ["NHotDecode"]
    key_init = next(i for i in spiking.graph.initializer if i.name.endswith(".key"))
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(key_init), key)


def test_keras_conv_model_with_batchnorm_exports_with_layouts_handled(tmp_path):
    keras.utils.set_random_seed(1)
    layers = keras.layers
    model = keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(6, 3, padding="same"),
                              layers.BatchNormalization(), BoundedRelu(1.0), layers.MaxPooling2D(2),
                              layers.Conv2D(8, 3), BoundedRelu(1.0), layers.Flatten(), layers.Dense(40),
                              BoundedRelu(1.0), SoftmaxDecode(size=(10, 40))])
    model.layers[1].set_weights([np.random.default_rng(0).uniform(0.5, 1.5, 6).astype(np.float32),
                                 np.zeros(6, np.float32), np.full(6, 0.1, np.float32), np.full(6, 2.0, np.float32)])
    result = api.export_keras(model, data="digits")
    assert result.passed
    assert result.report["equivalence"]["keras_vs_spiking_onnx"]["agreement"] == 1.0
    assert result.accuracy["spiking"] == pytest.approx(result.accuracy["original"], abs=1e-9)


def _exported(model, path, input_shape):
    model(np.zeros((1, *input_shape), np.float32))
    model.export(str(path), format="onnx", verbose=False)
    return path


@pytest.mark.parametrize("sharpness", [0.0, 0.37, 1.0])
def test_keras_export_of_whetstone_layers_lifts_to_the_units_it_was_built_from(tmp_path, sharpness):
    # model.export writes each layer's formula with its sharpness frozen in (a Cast of a
    # GreaterOrEqual at 1, a clipped ramp or sigmoid below): the converter recognises them.
    from whetstone_onnx.keras import SharpSigmoid

    keras.utils.set_random_seed(2)
    key = key_generator(10, 40, overlapping=False)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32), BoundedRelu(sharpness),
                              keras.layers.Dense(24), SharpSigmoid(sharpness), keras.layers.Dense(40),
                              BoundedRelu(sharpness), SoftmaxDecode(key)])
    path = _exported(model, tmp_path / "whetstone.onnx", (64,))
    info = api.inspect(path)
    assert info.supported and not info.unsupported and all(op["supported"] for op in info.ops.values())
    result = api.convert(path, data="digits", finetune=False, netlist=False)
    units = [layer for layer in result.sharpenable_network.layers if layer.kind == "sharpenable"]
    assert [u.function for u in units] == ["bounded_relu", "sharp_sigmoid", "bounded_relu"]
    assert [u.sharpness for u in units] == pytest.approx([sharpness] * 3, abs=1e-6)
    np.testing.assert_array_equal(result.sharpenable_network.layers[-1].key, key)
    assert result.report["passes"]["onnx"]["recognise_whetstone_layers"] == 4
    assert result.report["equivalence"]["float"]["passed"]           # the rebuilt graph computes the export's function
    assert result.report["equivalence"]["float"]["class_agreement"] == 1.0
    assert result.passed


def test_a_sharpenable_graph_the_converter_wrote_converts_again_to_the_same_spiking_network(tmp_path):
    first = api.convert(MODELS / "digits_dense.onnx", tmp_path / "first", data="digits", levels=1,
                        finetune=api.FinetuneOptions(epochs=2, straight_through_epochs=1), netlist=False)
    again = api.convert(tmp_path / "first" / "sharpenable.onnx", tmp_path / "again", data="digits", finetune=False,
                        netlist=False)
    assert again.report["passes"]["network"]["calibrate_scales"] == 0          # already Whetstone units
    assert again.report["passes"]["network"]["make_output_stage"] == 0         # its own decode is kept
    for ours, theirs in zip(first.spiking_network.layers, again.spiking_network.layers):
        assert ours.kind == theirs.kind
        for part in ("weight", "bias", "threshold", "key"):
            if getattr(ours, part, None) is not None:
                np.testing.assert_array_equal(getattr(ours, part), getattr(theirs, part))
    assert again.accuracy["spiking"] == first.accuracy["spiking"]


def test_export_keras_can_fine_tune_further_and_leaves_the_keras_model_as_it_was(tmp_path):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32), BoundedRelu(0.5), keras.layers.Dense(40),
                              BoundedRelu(0.5), SoftmaxDecode(key_generator(10, 40, overlapping=False))])
    model(np.zeros((1, 64), np.float32))
    weights = [w.copy() for w in model.get_weights()]
    result = api.export_keras(model, tmp_path, data="digits", netlist=False,
                              finetune=api.FinetuneOptions(epochs=2, straight_through_epochs=1))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["finetune"]["performed"] and report["model"]["source"] == "keras"
    assert report["finetune"]["keras_vs_spiking_onnx"]["agreement"] == 1.0
    assert "keras_vs_spiking_onnx" not in report["equivalence"]      # spiking.onnx is no longer that model
    assert result.accuracy["spiking"] > result.accuracy["original"]
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)
