"""The JSON Schemas shipped in the package (draft 2020-12) describe what the converter writes."""
from __future__ import annotations

import copy
import json
from importlib.resources import files

import jsonschema
import pytest
from conftest import MODELS

from whetstone_onnx import api, zoo


def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((files("whetstone_onnx") / "schemas" / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(name: str, document: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(name).iter_errors(document)]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("report")
    api.convert(MODELS / "digits_dense.onnx", out, data="digits", finetune=False)
    return json.loads((out / "report.json").read_text())


def test_report_without_finetuning_validates(report):
    assert errors("report", report) == []


def test_report_with_finetuning_validates(tmp_path):
    options = api.FinetuneOptions(epochs=2, straight_through_epochs=0)
    api.convert(MODELS / "digits_dense.onnx", tmp_path, data="digits", finetune=options, levels=1)
    document = json.loads((tmp_path / "report.json").read_text())
    assert document["finetune"]["performed"] and errors("report", document) == []


def test_report_without_data_or_netlist_validates(tmp_path):
    result = api.convert(MODELS / "mnist_dense.onnx", tmp_path, netlist=False)
    assert result.report["accuracy"] is None and errors("report", result.report) == []


def test_export_keras_report_validates(tmp_path):
    keras = pytest.importorskip("keras")
    from whetstone_onnx.keras import BoundedRelu, SoftmaxDecode

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32), BoundedRelu(0.5),
                              keras.layers.Dense(40), BoundedRelu(1.0), SoftmaxDecode(size=(10, 40))])
    api.export_keras(model, tmp_path, data="digits")
    document = json.loads((tmp_path / "report.json").read_text())
    assert document["model"]["source"] == "keras" and "keras_vs_spiking_onnx" in document["equivalence"]
    assert errors("report", document) == []


@pytest.mark.parametrize("change,where", [
    (lambda r: r.pop("passed"), "'passed' is a required property"),
    (lambda r: r["equivalence"]["spiking"].update(passed="yes"), "equivalence/spiking/passed"),
    (lambda r: r["finetune"].pop("reason"), "'reason' is a required property"),
    (lambda r: r["artifacts"]["spiking.onnx"].update(sha256="abc"), "artifacts/spiking.onnx/sha256"),
])
def test_report_schema_rejects_what_breaks_the_contract(report, change, where):
    broken = copy.deepcopy(report)
    change(broken)
    assert any(where in error for error in errors("report", broken))


def test_zoo_summary_validates_for_every_status(tmp_path):
    manifest = tmp_path / "zoo.toml"
    manifest.write_text(f"""
        [defaults]
        finetune = false
        accept_loss = true
        [[model]]
        path = "{MODELS.as_posix()}/digits_dense.onnx"
        data = "digits"
        [[model]]
        path = "{MODELS.as_posix()}/digits_dense.onnx"
        name = "strict"
        data = "digits"
        accept_loss = false
        [[model]]
        path = "{MODELS.as_posix()}/digits_lstm.onnx"
        [[model]]
        path = "{MODELS.as_posix()}/corrupt.onnx"
        [[model]]
        path = "{MODELS.as_posix()}/mnist_dense.onnx"
        timeout = 0.2
    """)
    result = zoo.convert_zoo(manifest, tmp_path / "out", jobs=2)
    assert [record["status"] for record in result.models] == ["ok", "accuracy_loss", "unsupported", "failed",
                                                              "timeout"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary == result.summary and errors("summary", summary) == []
    broken = copy.deepcopy(summary)
    broken["models"][0]["status"] = "fine"
    broken["models"][1]["error"] = None          # every status but ok comes with its one-line error
    found = errors("summary", broken)
    assert any(e.startswith("models/0/status") for e in found) and any(e.startswith("models/1/error") for e in found)
