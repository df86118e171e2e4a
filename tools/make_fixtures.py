"""Train the small classifiers in ``models/`` and write them as ONNX files.

Run from anywhere: ``python tools/make_fixtures.py`` regenerates every model and
``models/README.md``; ``python tools/make_fixtures.py NAME ...`` (file names without
``.onnx``) rebuilds only those and re-measures the others as they are. Everything is seeded (Python, NumPy and TensorFlow through
``keras.utils.set_random_seed``, deterministic TF kernels, oneDNN off) so a rerun
on the same software versions gives the same weights.

The models are the converter's test inputs, so each one is written the way a real
exporter writes it, not the way that would be easiest to convert:

- the Keras models go through ``model.export(format="onnx")`` (tf2onnx underneath)
  and are kept exactly as written: NHWC inputs, layout Transposes, a dynamic
  Shape/Gather/Concat/Reshape flatten, MatMul + Add for dense layers;
- the ``torchstyle_*`` models reproduce, node for node, the graph shape that
  ``torch.onnx.export`` (opset 11) writes for an NCHW conv net: Conv, a separate
  BatchNormalization, MaxPool, Reshape with a Constant shape, Gemm with
  transB=1. They are built with ``onnx.helper`` from the weights of an equivalent
  Keras model, so no torch install is needed; the script checks that
  onnxruntime reproduces the Keras model's logits;
- ``digits_lstm`` is a valid model the converter must refuse; ``digits_tanh`` (random
  weights) was the other one until Tanh became a sharpened sigmoid, and now shows that
  it converts exactly.

The float test accuracy in the README is measured with onnxruntime on the data
set's test split, prepared by ``whetstone_onnx.data.fit_to_input`` exactly as the
converter will prepare it, and ``tests/test_fixtures.py`` re-measures it.
"""
from __future__ import annotations

import os

# Before TensorFlow is imported: oneDNN's fused kernels reorder float sums, which
# makes weights differ between runs and machines; the log lines are noise here.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import contextlib
import io
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))   # run as a script from a checkout, installed or not

from whetstone_onnx.data import Dataset, fit_to_input, load_dataset  # noqa: E402

MODELS = REPO / "models"
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"
SEED = 0
TORCH_NORMALIZE = (0.5, 0.5)     # the torchstyle models expect (x - 0.5) / 0.5
MAX_BYTES = 2 * 1024 * 1024


@dataclass
class Fixture:
    """One written model and what the README says about it."""

    file: str
    source: str
    architecture: str
    data: str                    # data spec the accuracy is measured on
    normalize: tuple[float, float] | None
    supported: bool = True
    note: str = "unsupported on purpose"   # the accuracy cell of a fixture that is not measured
    task: str = "classify"       # reconstruct: an autoencoder, measured by its reconstruction MSE
    opset: int = 0
    accuracy: float | None = None  # percent, onnxruntime on the test split
    mse: float | None = None       # an autoencoder's, onnxruntime on the test split
    ops: Counter | None = None
    seconds: float = 0.0


# ---------------------------------------------------------------- helpers


def _tf():
    import keras
    import tensorflow as tf

    return keras, tf


def seed_everything() -> None:
    """Reset every random generator, so each model is independent of build order."""
    keras, tf = _tf()
    # A fresh session also restarts Keras' layer-name counters, so the tensor and
    # node names in an exported file do not depend on which models were built first.
    keras.backend.clear_session()
    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()


def keras_export(model, path: Path, *, dynamic_flatten: bool = False, attempts: int = 8) -> None:
    """Write ``model`` with Keras' own ``model.export(format="onnx")``.

    tf2onnx is not deterministic: the same trained model exports with different
    generated names (``unk__N``, ``const_fold_opt__N``) and, for a Flatten, in
    some processes with a constant Reshape shape and in others with the run-time
    Shape / Gather / Concat subgraph (PYTHONHASHSEED does not matter, and within
    one process the outcome sticks). With ``dynamic_flatten`` the model is saved
    and re-exported in fresh processes until the export has the run-time form, the
    harder one the converter must handle; the file is still exactly what Keras wrote.
    """
    _export_here(model, path)
    if not dynamic_flatten or _has_shape_op(path):
        return
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "model.keras"
        model.save(saved)
        for _ in range(attempts):
            subprocess.run([sys.executable, __file__, "--export", str(saved), str(path)], check=True)
            if _has_shape_op(path):
                return
    raise RuntimeError(f"{path.name}: {attempts + 1} exports wrote a constant flatten shape")


def _export_here(model, path: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()):   # tf2onnx's chatter
        model.export(str(path), format="onnx", verbose=False)


def _has_shape_op(path: Path) -> bool:
    return any(n.op_type == "Shape" for n in onnx.load(str(path)).graph.node)


def _export_saved(saved: str, path: str) -> int:
    """Child process of ``keras_export``: load a saved model and export it once."""
    keras, _ = _tf()
    model = keras.models.load_model(saved)
    # Keras only exports a model that has been called; an inference call on zeros
    # changes no weight (BatchNormalization uses its moving statistics).
    model(np.zeros((1, *model.input_shape[1:]), np.float32))
    _export_here(model, Path(path))
    return 0


def model_input_shape(model: onnx.ModelProto) -> tuple[int, ...]:
    """Per-sample input shape of a one-input model (the batch dimension dropped)."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    assert len(inputs) == 1, [i.name for i in inputs]
    dims = inputs[0].type.tensor_type.shape.dim
    return tuple(int(d.dim_value) for d in dims[1:])


def check_conventions(path: Path) -> onnx.ModelProto:
    """The promises every fixture keeps: valid, float32 input, symbolic batch, small."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    (inp,) = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    ttype = inp.type.tensor_type
    assert ttype.elem_type == TensorProto.FLOAT, f"{path.name}: input is not float32"
    batch = ttype.shape.dim[0]
    assert batch.HasField("dim_param") and not batch.HasField("dim_value"), f"{path.name}: batch dimension is not symbolic"
    assert path.stat().st_size < MAX_BYTES, f"{path.name}: {path.stat().st_size} bytes"
    return model


def onnx_logits(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    return session.run(None, {name: x})[0]


def measure(fixture: Fixture) -> None:
    """Fill in opset, op counts and (for supported models) the onnxruntime accuracy."""
    path = MODELS / fixture.file
    model = check_conventions(path)
    fixture.opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    fixture.ops = Counter(n.op_type for n in model.graph.node)
    if fixture.supported:
        ds = load_dataset(fixture.data)
        x = fit_to_input(ds.x_test, model_input_shape(model), fixture.normalize, spec=fixture.data)
        if fixture.task == "reconstruct":
            reconstructed = onnx_logits(path, x)
            fixture.mse = float(np.mean((reconstructed - x.reshape(reconstructed.shape)) ** 2))
            return
        pred = onnx_logits(path, x).argmax(axis=1)
        fixture.accuracy = float(np.mean(pred == ds.y_test) * 100.0)


def flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1)


def nhwc(x: np.ndarray, normalize: tuple[float, float] | None = None) -> np.ndarray:
    """(N, H, W) images -> (N, H, W, 1), optionally normalised: what the Keras models train on."""
    out = x[..., None].astype(np.float32)
    if normalize is not None:
        out = (out - normalize[0]) / normalize[1]
    return out


def compile_and_fit(model, x, y, *, epochs: int, batch_size: int = 32, logits: bool = False, decay: bool = True) -> None:
    keras, _ = _tf()
    # Cosine decay to zero for the conv/BN models: with a constant rate their test
    # accuracy jumps by 1-2 points from one epoch to the next, so the last epoch
    # would be a lottery. The small dense models do as well or better without it.
    steps = epochs * -(-len(x) // batch_size)
    rate = keras.optimizers.schedules.CosineDecay(1e-3, steps) if decay else 1e-3
    model.compile(
        optimizer=keras.optimizers.Adam(rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=logits),
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)


# ---------------------------------------------------------------- Keras-exported models


def keras_fixture(name: str, layers, x: np.ndarray, y: np.ndarray, *, epochs: int, decay: bool = True,
                  dynamic_flatten: bool = False) -> None:
    """Train a seeded Keras Sequential model of ``layers`` (a function of ``keras.layers``) and export it."""
    keras, _ = _tf()
    seed_everything()
    model = keras.Sequential(layers(keras.layers))
    compile_and_fit(model, x, y, epochs=epochs, decay=decay)
    keras_export(model, MODELS / name, dynamic_flatten=dynamic_flatten)


def digits_dense(ds: Dataset) -> None:
    # Wide enough for binary hidden units: 32-16 lost ~10 points once spiking.
    keras_fixture("digits_dense.onnx", lambda L: [
        L.Input((64,)), L.Dense(128, activation="relu"), L.Dense(64, activation="relu"),
        L.Dense(10, activation="softmax")], flat(ds.x_train), ds.y_train, epochs=40, decay=False)


def digits_conv(ds: Dataset) -> None:
    keras_fixture("digits_conv.onnx", lambda L: [
        L.Input((8, 8, 1)),
        L.Conv2D(8, 3, padding="same"), L.BatchNormalization(), L.ReLU(), L.MaxPooling2D(2),
        L.Conv2D(16, 3, padding="valid"), L.BatchNormalization(), L.ReLU(),
        L.Flatten(),
        L.Dense(10, activation="softmax"),
    ], nhwc(ds.x_train), ds.y_train, epochs=40, dynamic_flatten=True)


def digits_conv_postbn(ds: Dataset) -> None:
    # Batch norm after the activation, as many Keras models have it: the first one feeds a
    # zero-padded conv, so no linear layer can absorb it; the second folds into the dense layer.
    keras_fixture("digits_conv_postbn.onnx", lambda L: [
        L.Input((8, 8, 1)),
        L.Conv2D(8, 3, padding="same", activation="relu"), L.BatchNormalization(),
        L.Conv2D(16, 3, padding="same", activation="relu"), L.MaxPooling2D(2), L.BatchNormalization(),
        L.Flatten(),
        L.Dense(10, activation="softmax"),
    ], nhwc(ds.x_train), ds.y_train, epochs=30)


def digits_autoencoder(ds: Dataset) -> None:
    """A dense autoencoder 64-48-24-48-64 with a sigmoid output reshaped back to the 8 x 8 x 1
    image (mean squared error, the input its own target): the ``--task reconstruct`` fixture."""
    keras, _ = _tf()
    seed_everything()
    L = keras.layers
    model = keras.Sequential([L.Input((64,)), L.Dense(48, activation="relu"), L.Dense(24, activation="relu"),
                              L.Dense(48, activation="relu"), L.Dense(64, activation="sigmoid"), L.Reshape((8, 8, 1))])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    x = flat(ds.x_train)
    model.fit(x, x.reshape(-1, 8, 8, 1), epochs=150, batch_size=32, shuffle=True, verbose=0)
    keras_export(model, MODELS / "digits_autoencoder.onnx")


def mnist_dense(ds: Dataset) -> None:
    keras_fixture("mnist_dense.onnx", lambda L: [
        L.Input((784,)), L.Dense(256, activation="relu"), L.Dense(64, activation="relu"),
        L.Dense(10, activation="softmax")], flat(ds.x_train), ds.y_train, epochs=10, decay=False)


def mnist_conv(ds: Dataset) -> None:
    keras_fixture("mnist_conv.onnx", lambda L: [
        L.Input((28, 28, 1)),
        L.Conv2D(16, 3, padding="same"), L.BatchNormalization(), L.ReLU(), L.MaxPooling2D(2),
        L.Conv2D(32, 3, padding="same"), L.BatchNormalization(), L.ReLU(), L.MaxPooling2D(2),
        L.Flatten(),
        L.Dense(64), L.BatchNormalization(), L.ReLU(),
        L.Dense(10, activation="softmax"),
    ], nhwc(ds.x_train), ds.y_train, epochs=8, dynamic_flatten=True)


# ---------------------------------------------------------------- PyTorch-shaped models


def conv_weight(kernel: np.ndarray) -> np.ndarray:
    """Keras Conv2D kernel (kH, kW, I, O) -> ONNX Conv W (O, I, kH, kW)."""
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32)


def gemm_weight(kernel: np.ndarray, chw: tuple[int, int, int] | None = None) -> np.ndarray:
    """Keras Dense kernel (in, out) -> Gemm B (out, in) for transB=1.

    With ``chw``, the kernel follows a Flatten of a (H, W, C) tensor in Keras but
    of a (C, H, W) tensor in ONNX: its rows are put into C, H, W order.
    """
    if chw is not None:
        c, h, w = chw
        kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1)
    return np.ascontiguousarray(kernel.T, dtype=np.float32)


class TorchStyleGraph:
    """Builds a graph with the names and node order torch.onnx.export (opset 11) uses."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.counts: Counter = Counter()

    def param(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def node(self, module: str, op: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        # PyTorch names a node "/<module path>/<Op>" and adds _1, _2 ... when a
        # module (or a functional call at the top level) is used again.
        base = f"/{module}/{op}" if module else f"/{op}"
        k = self.counts[base]
        self.counts[base] += 1
        name = base if k == 0 else f"{base}_{k}"
        out = output or f"{name}_output_0"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def conv(self, module: str, x: str, layer, pad: int) -> str:
        kernel, bias = layer.get_weights()
        w = self.param(f"{module}.weight", conv_weight(kernel))
        b = self.param(f"{module}.bias", bias)
        kh, kw = kernel.shape[:2]
        return self.node(module, "Conv", [x, w, b], dilations=[1, 1], group=1, kernel_shape=[kh, kw],
                         pads=[pad] * 4, strides=[1, 1])

    def batchnorm(self, module: str, x: str, layer) -> str:
        gamma, beta, mean, var = layer.get_weights()
        names = [self.param(f"{module}.{n}", v) for n, v in
                 (("weight", gamma), ("bias", beta), ("running_mean", mean), ("running_var", var))]
        # torch's BatchNorm momentum 0.1 is ONNX momentum 0.9 (unused at inference).
        return self.node(module, "BatchNormalization", [x, *names], epsilon=float(layer.epsilon), momentum=0.9)

    def maxpool(self, module: str, x: str) -> str:
        return self.node(module, "MaxPool", [x], kernel_shape=[2, 2], pads=[0, 0, 0, 0], strides=[2, 2])

    def flatten(self, x: str, features: int) -> str:
        # x.view(-1, features) exports as a Constant shape feeding Reshape.
        shape = self.node("", "Constant", [], value=numpy_helper.from_array(np.array([-1, features], np.int64), "value"))
        return self.node("", "Reshape", [x, shape])

    def gemm(self, module: str, x: str, layer, chw=None, output: str | None = None) -> str:
        kernel, bias = layer.get_weights()
        w = self.param(f"{module}.weight", gemm_weight(kernel, chw))
        b = self.param(f"{module}.bias", bias)
        return self.node(module, "Gemm", [x, w, b], output=output, alpha=1.0, beta=1.0, transB=1)

    def model(self, graph_name: str, chw_in: tuple[int, int, int], classes: int) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, graph_name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *chw_in])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
            self.initializers,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=6,
            producer_name="whetstone_onnx tools/make_fixtures.py",
            doc_string="Graph in the shape torch.onnx.export (opset 11) writes; expects (x - 0.5) / 0.5 with x in [0, 1].",
        )
        return model


def torchstyle_digits_conv(ds: Dataset) -> None:
    keras, _ = _tf()
    L = keras.layers
    seed_everything()
    conv1, bn1, conv2 = L.Conv2D(8, 3, padding="same"), L.BatchNormalization(epsilon=1e-5), L.Conv2D(16, 3, padding="valid")
    fc1, fc2 = L.Dense(32), L.Dense(10)
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), conv1, bn1, L.ReLU(), L.MaxPooling2D(2), conv2, L.ReLU(), L.Flatten(), fc1, L.ReLU(), fc2]
    )
    x_train = nhwc(ds.x_train, TORCH_NORMALIZE)
    compile_and_fit(model, x_train, ds.y_train, epochs=40, logits=True)

    g = TorchStyleGraph()
    h = g.conv("conv1", "input", conv1, pad=1)
    h = g.batchnorm("bn1", h, bn1)
    h = g.node("relu", "Relu", [h])
    h = g.maxpool("pool", h)
    h = g.conv("conv2", h, conv2, pad=0)
    h = g.node("relu", "Relu", [h])
    h = g.flatten(h, 16 * 2 * 2)
    h = g.gemm("fc1", h, fc1, chw=(16, 2, 2))
    h = g.node("relu", "Relu", [h])
    g.gemm("fc2", h, fc2, output="logits")
    write_torchstyle(g.model("main_graph", (1, 8, 8), 10), MODELS / "torchstyle_digits_conv.onnx", model,
                     nhwc(ds.x_test, TORCH_NORMALIZE))


def torchstyle_mnist_conv(ds: Dataset, name: str = "torchstyle_mnist_conv", *, epochs: int = 6,
                          distort: bool = False) -> None:
    """``distort``: every epoch sees the training images randomly rotated (up to 10
    degrees), shifted (up to 2 pixels) and zoomed (up to 10 %), with dropout before each
    Gemm. This stands in for a model pretrained on more data than the split the
    converter fine-tunes on (MNIST's 60,000 training images are not on these machines):
    it scores higher on the held-out images than the split alone teaches."""
    keras, _ = _tf()
    L = keras.layers
    seed_everything()
    conv1, bn1 = L.Conv2D(16, 3, padding="same"), L.BatchNormalization(epsilon=1e-5)
    conv2, bn2 = L.Conv2D(32, 3, padding="same"), L.BatchNormalization(epsilon=1e-5)
    fc1, fc2 = L.Dense(128), L.Dense(10)
    background = -TORCH_NORMALIZE[0] / TORCH_NORMALIZE[1]
    distortions = [
        L.RandomRotation(10 / 360, fill_mode="constant", fill_value=background, seed=SEED),
        L.RandomTranslation(2 / 28, 2 / 28, fill_mode="constant", fill_value=background, seed=SEED + 1),
        L.RandomZoom(0.1, fill_mode="constant", fill_value=background, seed=SEED + 2),
    ] if distort else []    # active in training only

    def dropout():
        return [L.Dropout(0.25, seed=SEED)] if distort else []
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)), *distortions,
            conv1, bn1, L.ReLU(), L.MaxPooling2D(2),
            conv2, bn2, L.ReLU(), L.MaxPooling2D(2),
            L.Flatten(), *dropout(), fc1, L.ReLU(), *dropout(), fc2,
        ]
    )
    compile_and_fit(model, nhwc(ds.x_train, TORCH_NORMALIZE), ds.y_train, epochs=epochs, logits=True)

    g = TorchStyleGraph()
    h = g.conv("conv1", "input", conv1, pad=1)
    h = g.batchnorm("bn1", h, bn1)
    h = g.node("relu", "Relu", [h])
    h = g.maxpool("pool", h)
    h = g.conv("conv2", h, conv2, pad=1)
    h = g.batchnorm("bn2", h, bn2)
    h = g.node("relu", "Relu", [h])
    h = g.maxpool("pool", h)
    h = g.flatten(h, 32 * 7 * 7)
    h = g.gemm("fc1", h, fc1, chw=(32, 7, 7))
    h = g.node("relu", "Relu", [h])
    g.gemm("fc2", h, fc2, output="logits")
    write_torchstyle(g.model("main_graph", (1, 28, 28), 10), MODELS / f"{name}.onnx", model,
                     nhwc(ds.x_test, TORCH_NORMALIZE))


def write_torchstyle(onnx_model: onnx.ModelProto, path: Path, keras_model, x_nhwc: np.ndarray) -> None:
    """Save, then check that onnxruntime on NCHW input reproduces Keras on NHWC input."""
    onnx.checker.check_model(onnx_model, full_check=True)
    onnx.save(onnx_model, str(path))
    expected = keras_model.predict(x_nhwc, batch_size=256, verbose=0)
    got = onnx_logits(path, np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
    err = float(np.max(np.abs(got - expected)))
    assert err < 1e-3, f"{path.name}: ONNX logits differ from Keras by {err}"
    assert np.array_equal(got.argmax(1), expected.argmax(1)), f"{path.name}: ONNX and Keras predictions differ"


# ---------------------------------------------------------------- models with random weights


def digits_tanh() -> None:
    rng = np.random.default_rng(SEED)
    w1 = (rng.standard_normal((16, 64)) * 0.2).astype(np.float32)
    b1 = np.zeros(16, np.float32)
    w2 = (rng.standard_normal((10, 16)) * 0.3).astype(np.float32)
    b2 = np.zeros(10, np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["input", "fc1.weight", "fc1.bias"], ["h"], name="/fc1/Gemm", transB=1),
            helper.make_node("Tanh", ["h"], ["t"], name="/act/Tanh"),
            helper.make_node("Gemm", ["t", "fc2.weight", "fc2.bias"], ["logits"], name="/fc2/Gemm", transB=1),
        ],
        "digits_tanh",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(a, n) for n, a in
         (("fc1.weight", w1), ("fc1.bias", b1), ("fc2.weight", w2), ("fc2.bias", b2))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7,
                              producer_name="whetstone_onnx tools/make_fixtures.py",
                              doc_string="Unsupported on purpose: Tanh has no single-spike equivalent.")
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(MODELS / "digits_tanh.onnx"))


def digits_lstm() -> None:
    rng = np.random.default_rng(SEED)
    hidden, features = 16, 8
    w = (rng.standard_normal((1, 4 * hidden, features)) * 0.3).astype(np.float32)
    r = (rng.standard_normal((1, 4 * hidden, hidden)) * 0.3).astype(np.float32)
    b = np.zeros((1, 8 * hidden), np.float32)
    fc_w = (rng.standard_normal((10, hidden)) * 0.3).astype(np.float32)
    fc_b = np.zeros(10, np.float32)
    graph = helper.make_graph(
        [
            # The 8 image rows are the time steps; ONNX LSTM wants (seq, batch, features).
            helper.make_node("Transpose", ["input"], ["seq"], name="/Transpose", perm=[1, 0, 2]),
            helper.make_node("LSTM", ["seq", "lstm.W", "lstm.R", "lstm.B"], ["", "y_h"], name="/lstm/LSTM",
                             hidden_size=hidden, direction="forward"),
            helper.make_node("Squeeze", ["y_h", "squeeze_axes"], ["last"], name="/Squeeze"),
            helper.make_node("Gemm", ["last", "fc.weight", "fc.bias"], ["logits"], name="/fc/Gemm", transB=1),
        ],
        "digits_lstm",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [
            numpy_helper.from_array(w, "lstm.W"), numpy_helper.from_array(r, "lstm.R"),
            numpy_helper.from_array(b, "lstm.B"), numpy_helper.from_array(np.array([0], np.int64), "squeeze_axes"),
            numpy_helper.from_array(fc_w, "fc.weight"), numpy_helper.from_array(fc_b, "fc.bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7,
                              producer_name="whetstone_onnx tools/make_fixtures.py",
                              doc_string="Unsupported on purpose: a recurrent LSTM layer.")
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(MODELS / "digits_lstm.onnx"))
    onnx_logits(MODELS / "digits_lstm.onnx", np.zeros((2, 8, 8), np.float32))   # it must also run


# ---------------------------------------------------------------- README


def write_readme(fixtures: list[Fixture]) -> None:
    lines = [
        "# Test models",
        "",
        "Written by `python tools/make_fixtures.py` (seeded: reruns give the same weights; about",
        "5 minutes on 2 CPU cores). Do not edit these files by hand: change the script and rerun.",
        "",
        "Accuracy is the float model's top-1 accuracy measured with onnxruntime on the data",
        "set's test split (`digits`: 360 held-out samples; `mnist`: images 8000-9999 of the",
        "official t10k file, the models train on images 0-7999), with the input prepared by",
        "`whetstone_onnx.data.fit_to_input`. `tests/test_fixtures.py` re-measures it.",
        "The `torchstyle_*` models expect `--normalize 0.5,0.5`, i.e. (x - 0.5) / 0.5.",
        "",
        "| file | source / exporter | architecture | opset | data set | float test accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for f in fixtures:
        data = f.data.split(":")[0]
        if f.normalize is not None:
            data += f", normalize {f.normalize[0]:g},{f.normalize[1]:g}"
        acc = f"{f.accuracy:.2f} %" if f.accuracy is not None else \
            f"MSE {f.mse:.5f} (reconstruction)" if f.mse is not None else f"n/a ({f.note})"
        lines.append(f"| `{f.file}` | {f.source} | {f.architecture} | {f.opset} | {data} | {acc} |")
    lines += [
        "",
        "`zoo.toml` is the sample zoo of `whetstone-onnx zoo` (the tests and the README use it):",
        "six of the supported classifiers, `digits_lstm.onnx`, and `corrupt.onnx`, which is not a",
        "model at all: the first half of `digits_dense.onnx`'s bytes, written by",
        "`python tools/make_zoo_fixtures.py`, so that a batch shows a file that cannot be read.",
        "",
        "Notes on what the exporters wrote (Keras 3.15 / tf2onnx 1.17 at the time of writing):",
        "",
        "- Keras 3 `model.export(format=\"onnx\")` runs tf2onnx and writes opset 15 (plus an",
        "  `ai.onnx.ml` import), IR version 8, an input named `keras_tensor` (`input_layer`",
        "  when exported from a reloaded `.keras` file) with a batch dimension `unk__N`, and",
        "  an output named `Identity:0`.",
        "- Dense layers are MatMul + Add (never Gemm); the Softmax stays in the graph.",
        "- BatchNormalization is *not* folded into the Conv: it becomes a Mul and an Add with",
        "  (1, C, 1, 1) constants after the Conv (which keeps its own bias), or with (C,)",
        "  constants after a MatMul + Add (`mnist_conv`'s dense BN). After an activation",
        "  (`digits_conv_postbn`) it is the same Mul and Add, after the Relu or the MaxPool.",
        "- The NHWC input (C = 1) becomes NCHW through a Reshape, not a Transpose. Flatten is a",
        "  Transpose back to NHWC followed by a Reshape whose target shape is computed at run",
        "  time by a Shape / Gather / Cast / Slice / Concat / Cast subgraph (the Shape reads the",
        "  NCHW tensor before the Transpose). tf2onnx is not deterministic here: the same",
        "  trained model sometimes exports with a constant [-1, K] Reshape shape instead, so a",
        "  converter must accept both forms; the script re-exports until it gets the run-time",
        "  form. Generated names (`unk__N`, `const_fold_opt__N`) also change from run to run,",
        "  so the Keras files are not byte-identical across reruns (their weights are).",
        "- The `torchstyle_*` graphs are built with `onnx.helper` in the shape `torch.onnx.export`",
        "  writes at opset 11 (node names such as `/conv1/Conv`, a separate BatchNormalization,",
        "  Reshape fed by a Constant, Gemm with transB=1, no Softmax); the script checks that",
        "  onnxruntime reproduces the logits of the Keras model the weights come from.",
        "- `torchstyle_mnist_conv_distorted` stands in for a model pretrained on more data than",
        "  the split the converter fine-tunes on (MNIST's 60,000 training images are not on these",
        "  machines): 40 epochs of randomly rotated, shifted and zoomed copies of images 0-7999",
        "  make it score higher on images 8000-9999 than `torchstyle_mnist_conv`, which the split",
        "  alone taught.",
        "",
    ]
    (MODELS / "README.md").write_text("\n".join(lines))


# ---------------------------------------------------------------- main


def main(only: list[str]) -> int:
    start = time.perf_counter()
    MODELS.mkdir(exist_ok=True)
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        print(f"MNIST files not found in {MNIST_DIR}", file=sys.stderr)
        return 1
    digits = load_dataset("digits")
    mnist_spec = f"mnist:{MNIST_DIR}"
    mnist = load_dataset(mnist_spec)

    fixtures = [
        (Fixture("digits_dense.onnx", "Keras 3 `model.export(format=\"onnx\")`",
                 "Dense 64-128-64-10, relu, softmax", "digits", None), lambda: digits_dense(digits)),
        (Fixture("digits_conv.onnx", "Keras 3 `model.export(format=\"onnx\")`",
                 "NHWC 8x8x1: Conv 8 (same)+BN+ReLU+MaxPool 2, Conv 16 (valid)+BN+ReLU, Flatten, Dense 10 softmax",
                 "digits", None), lambda: digits_conv(digits)),
        (Fixture("digits_conv_postbn.onnx", "Keras 3 `model.export(format=\"onnx\")`",
                 "NHWC 8x8x1: Conv 8 (same)+ReLU+BN, Conv 16 (same)+ReLU+MaxPool 2+BN, Flatten, Dense 10 softmax",
                 "digits", None), lambda: digits_conv_postbn(digits)),
        (Fixture("digits_autoencoder.onnx", "Keras 3 `model.export(format=\"onnx\")`",
                 "autoencoder: Dense 64-48-24-48-64, relu, sigmoid output, Reshape to 8x8x1", "digits", None,
                 task="reconstruct"), lambda: digits_autoencoder(digits)),
        (Fixture("mnist_dense.onnx", "Keras 3 `model.export(format=\"onnx\")`",
                 "Dense 784-256-64-10, relu, softmax", mnist_spec, None), lambda: mnist_dense(mnist)),
        (Fixture("mnist_conv.onnx", "Keras 3 `model.export(format=\"onnx\")`",
                 "NHWC 28x28x1: [Conv 16+BN+ReLU+MaxPool 2], [Conv 32+BN+ReLU+MaxPool 2], Flatten, "
                 "Dense 64+BN+ReLU, Dense 10 softmax", mnist_spec, None), lambda: mnist_conv(mnist)),
        (Fixture("torchstyle_digits_conv.onnx", "`onnx.helper`, torch.onnx (opset 11) graph shape, Keras-trained weights",
                 "NCHW 1x8x8: Conv 8 (pad 1)+BatchNormalization+Relu+MaxPool 2, Conv 16 (no pad)+Relu, "
                 "Reshape [-1, 64], Gemm 32+Relu, Gemm 10 (logits)", "digits", TORCH_NORMALIZE),
         lambda: torchstyle_digits_conv(digits)),
        (Fixture("torchstyle_mnist_conv.onnx", "`onnx.helper`, torch.onnx (opset 11) graph shape, Keras-trained weights",
                 "NCHW 1x28x28: [Conv 16 (pad 1)+BN+Relu+MaxPool 2], [Conv 32 (pad 1)+BN+Relu+MaxPool 2], "
                 "Reshape [-1, 1568], Gemm 128+Relu, Gemm 10 (logits)", mnist_spec, TORCH_NORMALIZE),
         lambda: torchstyle_mnist_conv(mnist)),
        (Fixture("torchstyle_mnist_conv_distorted.onnx",
                 "as `torchstyle_mnist_conv`, trained 40 epochs on randomly distorted images (rotation, shift, zoom), with dropout",
                 "as `torchstyle_mnist_conv`", mnist_spec, TORCH_NORMALIZE),
         lambda: torchstyle_mnist_conv(mnist, "torchstyle_mnist_conv_distorted", epochs=40, distort=True)),
        (Fixture("digits_tanh.onnx", "`onnx.helper`, random weights (seed 0)",
                 "Gemm 64-16, Tanh, Gemm 16-10", "digits", None, supported=False,
                 note="random weights: Tanh converts exactly"), digits_tanh),
        (Fixture("digits_lstm.onnx", "`onnx.helper`, random weights (seed 0)",
                 "8x8 rows as a sequence: Transpose, LSTM 16, Squeeze (last hidden state), Gemm 16-10",
                 "digits", None, supported=False), digits_lstm),
    ]
    unknown = set(only) - {fixture.file.removesuffix(".onnx") for fixture, _ in fixtures}
    if unknown:
        print(f"no fixture named {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    done = []
    for fixture, build in fixtures:
        t0 = time.perf_counter()
        if not only or fixture.file.removesuffix(".onnx") in only:
            build()
        fixture.seconds = time.perf_counter() - t0
        measure(fixture)
        acc = f"{fixture.accuracy:.2f} %" if fixture.accuracy is not None else \
            f"MSE {fixture.mse:.5f}" if fixture.mse is not None else "unsupported"
        print(f"{fixture.file:30s} {acc:>12s}  opset {fixture.opset}  {fixture.seconds:5.1f} s  {dict(fixture.ops)}",
              flush=True)
        done.append(fixture)
    write_readme(done)
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--export":
        sys.exit(_export_saved(sys.argv[2], sys.argv[3]))
    sys.exit(main(sys.argv[1:]))
