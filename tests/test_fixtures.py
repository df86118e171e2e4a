"""The committed test models in models/: valid, shaped as promised, and as accurate as
models/README.md says (re-measured with onnxruntime; TensorFlow is never imported)."""
from __future__ import annotations

import functools
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from whetstone_onnx.data import Dataset, fit_to_input, load_dataset

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
HAVE_MNIST = (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file()

# file -> (data set, normalize, minimum accuracy in percent; None = unsupported on purpose)
FIXTURES: dict[str, tuple[str, tuple[float, float] | None, float | None]] = {
    "digits_dense.onnx": ("digits", None, 95.0),
    "digits_conv.onnx": ("digits", None, 95.0),
    "digits_conv_postbn.onnx": ("digits", None, 95.0),
    "mnist_dense.onnx": ("mnist", None, 95.0),
    "mnist_conv.onnx": ("mnist", None, 97.5),
    "torchstyle_digits_conv.onnx": ("digits", (0.5, 0.5), 95.0),
    "torchstyle_mnist_conv.onnx": ("mnist", (0.5, 0.5), 97.5),
    # Pretrained on distorted copies of the split: it must beat what the split alone teaches.
    "torchstyle_mnist_conv_distorted.onnx": ("mnist", (0.5, 0.5), 99.0),
    "digits_autoencoder.onnx": ("digits", None, None),      # measured by its MSE (AUTOENCODERS)
    "digits_tanh.onnx": ("digits", None, None),
    "digits_lstm.onnx": ("digits", None, None),
}
# Not models: the sample zoo (models/zoo.toml) lists a deliberately unreadable file,
# written by tools/make_zoo_fixtures.py.
ZOO_FIXTURES = ["corrupt.onnx"]
KERAS = ["digits_dense.onnx", "digits_conv.onnx", "digits_conv_postbn.onnx", "mnist_dense.onnx", "mnist_conv.onnx"]
TORCHSTYLE = ["torchstyle_digits_conv.onnx", "torchstyle_mnist_conv.onnx", "torchstyle_mnist_conv_distorted.onnx"]
# Autoencoders (--task reconstruct): file -> the highest reconstruction MSE on the test split.
AUTOENCODERS = {"digits_autoencoder.onnx": 0.01}
SUPPORTED = [f for f, (_, _, low) in FIXTURES.items() if low is not None]
# onnxruntime may round differently on another CPU; a flipped prediction or two is fine.
ACCURACY_TOLERANCE = 0.3


@functools.lru_cache(maxsize=None)
def model(name: str) -> onnx.ModelProto:
    return onnx.load(str(MODELS / name))


@functools.lru_cache(maxsize=None)
def dataset(kind: str) -> Dataset:
    if kind == "mnist":
        if not HAVE_MNIST:
            pytest.skip(f"MNIST files not in {MNIST_DIR}")
        return load_dataset(f"mnist:{MNIST_DIR}")
    return load_dataset(kind)


@functools.lru_cache(maxsize=None)
def readme_rows() -> dict[str, list[str]]:
    """The models/README.md table, keyed by file name: [source, architecture, opset, data, accuracy]."""
    rows = {}
    for line in (MODELS / "README.md").read_text().splitlines():
        m = re.match(r"\|\s*`([^`]+\.onnx)`\s*\|(.*)\|\s*$", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    return rows


def graph_input(m: onnx.ModelProto) -> onnx.ValueInfoProto:
    initializers = {t.name for t in m.graph.initializer}
    (inp,) = [i for i in m.graph.input if i.name not in initializers]
    return inp


def ai_onnx_opset(m: onnx.ModelProto) -> int:
    return next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))


def ops(m: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in m.graph.node)


def test_models_dir_holds_exactly_the_fixtures() -> None:
    assert sorted(p.name for p in MODELS.glob("*.onnx")) == sorted([*FIXTURES, *ZOO_FIXTURES])
    assert sorted(readme_rows()) == sorted(FIXTURES)


def test_corrupt_fixture_is_the_truncated_dense_model() -> None:
    source = (MODELS / "digits_dense.onnx").read_bytes()
    assert (MODELS / "corrupt.onnx").read_bytes() == source[: len(source) // 2]


@pytest.mark.parametrize("name", list(FIXTURES))
def test_valid_and_conventional(name: str) -> None:
    m = model(name)
    onnx.checker.check_model(m, full_check=True)
    inp = graph_input(m)
    ttype = inp.type.tensor_type
    assert ttype.elem_type == TensorProto.FLOAT
    batch = ttype.shape.dim[0]
    assert batch.dim_param and not batch.HasField("dim_value"), "batch dimension must be symbolic"
    assert all(d.HasField("dim_value") for d in ttype.shape.dim[1:])
    assert (MODELS / name).stat().st_size < 2 * 1024 * 1024
    assert readme_rows()[name][2] == str(ai_onnx_opset(m))


@pytest.mark.parametrize("name", SUPPORTED)
def test_accuracy_matches_readme(name: str) -> None:
    kind, normalize, minimum = FIXTURES[name]
    ds = dataset(kind)
    m = model(name)
    shape = tuple(d.dim_value for d in graph_input(m).type.tensor_type.shape.dim[1:])
    x = fit_to_input(ds.x_test, shape, normalize, spec=ds.spec)
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert out.shape == (len(x), 10)
    accuracy = float(np.mean(out.argmax(axis=1) == ds.y_test) * 100)
    stated = readme_rows()[name][4]
    match = re.fullmatch(r"([\d.]+) %", stated)
    assert match, f"README accuracy cell {stated!r}"
    assert accuracy == pytest.approx(float(match.group(1)), abs=ACCURACY_TOLERANCE)
    assert accuracy >= minimum


@pytest.mark.parametrize("name", list(AUTOENCODERS))
def test_reconstruction_matches_readme(name: str) -> None:
    ds = dataset(FIXTURES[name][0])
    session = ort.InferenceSession(model(name).SerializeToString(), providers=["CPUExecutionProvider"])
    x = fit_to_input(ds.x_test, (64,), None, spec=ds.spec)
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert out.shape == (len(x), 8, 8, 1) and 0.0 <= out.min() and out.max() <= 1.0    # a sigmoid image, NHWC
    mse = float(np.mean((out - x.reshape(out.shape)) ** 2))
    stated = re.fullmatch(r"MSE ([\d.]+) \(reconstruction\)", readme_rows()[name][4])
    assert stated, readme_rows()[name][4]
    assert mse == pytest.approx(float(stated.group(1)), abs=1e-4) and mse <= AUTOENCODERS[name]


@pytest.mark.parametrize("name", KERAS)
def test_keras_export_shape(name: str) -> None:
    """What Keras' export writes, which the converter has to cope with."""
    m = model(name)
    counts = ops(m)
    assert ai_onnx_opset(m) == 15 and m.producer_name == "tf2onnx"
    assert counts["MatMul"] >= 1 and counts["Gemm"] == 0          # dense = MatMul + Add
    assert counts["Softmax"] == 1 and m.graph.node[-1].op_type == "Softmax"
    if "conv" in name:
        assert counts["Conv"] == 2 and counts["BatchNormalization"] == 0   # BN became Mul + Add
        assert counts["Transpose"] == 1 and counts["Mul"] >= 2
        rank = len(graph_input(m).type.tensor_type.shape.dim)
        assert rank == 4 and graph_input(m).type.tensor_type.shape.dim[3].dim_value == 1   # NHWC


@pytest.mark.parametrize("name", ["digits_conv.onnx", "mnist_conv.onnx"])
def test_keras_conv_has_dynamic_flatten(name: str) -> None:
    counts = ops(model(name))
    for op in ("Shape", "Gather", "Cast", "Slice", "Concat"):
        assert counts[op] >= 1, op


@pytest.mark.parametrize("name", TORCHSTYLE)
def test_torchstyle_graph_shape(name: str) -> None:
    m = model(name)
    assert ai_onnx_opset(m) == 11 and m.ir_version == 6
    inp = graph_input(m)
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    side = 8 if "digits" in name else 28
    assert inp.name == "input" and dims == ["batch", 1, side, side]
    assert [o.name for o in m.graph.output] == ["logits"]
    assert all(n.name.startswith("/") for n in m.graph.node)
    assert m.graph.node[0].name == "/conv1/Conv"
    counts = ops(m)
    assert counts["Softmax"] == 0 and counts["Gemm"] == 2 and counts["Conv"] == 2
    assert counts["BatchNormalization"] == (1 if "digits" in name else 2)
    producers = {o: n for n in m.graph.node for o in n.output}
    (reshape,) = [n for n in m.graph.node if n.op_type == "Reshape"]
    assert producers[reshape.input[1]].op_type == "Constant"
    for n in m.graph.node:
        if n.op_type == "Gemm":
            assert {a.name: a.i for a in n.attribute if a.name == "transB"} == {"transB": 1}
    # The BN statistics are real (trained), not the identity.
    weights = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    for key in ("bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"):
        assert not np.allclose(weights[key], 1.0) and not np.allclose(weights[key], 0.0), key
    bn = next(n for n in m.graph.node if n.op_type == "BatchNormalization")
    assert {a.name: a.f for a in bn.attribute}["epsilon"] == pytest.approx(1e-5)


@pytest.mark.parametrize("name, op, note", [("digits_tanh.onnx", "Tanh", "random weights"),
                                            ("digits_lstm.onnx", "LSTM", "unsupported")])
def test_random_weight_models(name: str, op: str, note: str) -> None:
    m = model(name)
    assert ops(m)[op] == 1 and ai_onnx_opset(m) == 13
    assert note in readme_rows()[name][4]
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    shape = [d.dim_value for d in graph_input(m).type.tensor_type.shape.dim[1:]]
    out = session.run(None, {"input": np.zeros((3, *shape), np.float32)})[0]
    assert out.shape == (3, 10)


def test_data_and_models_need_no_tensorflow() -> None:
    code = (
        "import sys, onnxruntime, whetstone_onnx.data as d; d.load_dataset('digits'); "
        "sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
