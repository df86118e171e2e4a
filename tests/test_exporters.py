"""Every exporter's default output converts, from a working directory other than the model's:
PyTorch (dynamo and TorchScript), Keras 3 ``model.export``, tf2onnx ``from_function`` and
skl2onnx, each an MLP with batch norm and (where the exporter can) a conv net."""
from __future__ import annotations

import json

import pytest
from conftest import run_cli
from exporters import EXPORTERS

# The fast tier converts one model per exporter family that needs no TensorFlow tracing.
FAST = {("torch_torchscript", "mlp"), ("skl2onnx", "mlp")}
CASES = [pytest.param(exporter, kind, id=f"{exporter}-{kind}",
                      marks=() if (exporter, kind) in FAST else pytest.mark.slow)
         for exporter, (_, kinds) in EXPORTERS.items() for kind in kinds]


@pytest.mark.parametrize("exporter,kind", CASES)
def test_the_exporters_default_output_converts_from_another_folder(tmp_path, exporter, kind):
    pytest.importorskip({"torch_dynamo": "onnxscript", "torch_torchscript": "torch", "keras": "keras",
                         "tf2onnx": "tf2onnx", "skl2onnx": "skl2onnx"}[exporter])
    build, _ = EXPORTERS[exporter]
    models, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    models.mkdir()
    elsewhere.mkdir()
    path = build(models, kind)
    completed = run_cli("convert", str(path), "-o", str(tmp_path / "out"), "--data", "digits", "--no-finetune",
                        "--accept-loss", cwd=elsewhere)
    assert completed.returncode == 0, completed.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    equivalence = report["equivalence"]
    assert report["passed"] and equivalence["float"]["relative_diff"] <= 1e-4
    assert equivalence["nir"]["passed"] and equivalence["netlist"]["passed"]
