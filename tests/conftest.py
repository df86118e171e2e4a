"""Shared test helpers: paths to fixtures and a small builder of hand-made ONNX graphs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"


def graph_model(nodes, initializers: dict[str, np.ndarray], input_shape, output_shape, *, opset=13,
                input_name="x", output_name="y") -> onnx.ModelProto:
    """A one-input, one-output float model with a symbolic batch dimension."""
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", *input_shape])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", *output_shape])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return model


def run_cli(*args: str, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """The command line in a fresh process (``cwd``: the working directory it runs in)."""
    return subprocess.run([sys.executable, "-m", "whetstone_onnx.cli", *args], capture_output=True, text=True,
                          cwd=cwd)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def mnist_dir():
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("../shared/data/mnist is not present")
    return MNIST_DIR
