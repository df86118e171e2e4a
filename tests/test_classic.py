"""Classic Whetstone code runs on Keras 3 with only its imports changed, and the
model it trains exports to the same kind of spiking artifacts as a converted one."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

keras = pytest.importorskip("keras")

from whetstone_onnx import api  # noqa: E402
from whetstone_onnx.data import load_dataset  # noqa: E402


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
    assert result.accuracy["spiking"] == pytest.approx(result.accuracy["keras"], abs=1e-9)
    assert result.accuracy["spiking"] >= 0.85
    spiking = onnx.load(tmp_path / "spiking.onnx")
    onnx.checker.check_model(spiking, full_check=True)
    assert [n.op_type for n in spiking.graph.node] == ["Gemm", "Spike"] * 3 + ["NHotDecode"]
    key_init = next(i for i in spiking.graph.initializer if i.name.endswith(".key"))
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(key_init), key)


def test_keras_conv_model_with_batchnorm_exports_with_layouts_handled(tmp_path):
    from whetstone_onnx.keras import BoundedRelu, SoftmaxDecode

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
    assert result.accuracy["spiking"] == pytest.approx(result.accuracy["keras"], abs=1e-9)
