"""Bad input is refused before any work, the output folder is replaced whole or not at all, and
``check`` verifies every artifact report.json lists before it compares anything."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from conftest import MODELS, run_cli
from onnx import numpy_helper

from whetstone_onnx import api
from whetstone_onnx.artifacts import STAGING_MARK, OutputFolder, json_bytes
from whetstone_onnx.data import load_dataset
from whetstone_onnx.errors import CheckFailed, DataError, InputError

DENSE = MODELS / "digits_dense.onnx"


def digits_npz(tmp_path, name: str, change) -> str:
    """The digits data as an .npz file, with ``change(arrays)`` applied."""
    dataset = load_dataset("digits")
    arrays = {"x_train": dataset.x_train.copy(), "y_train": dataset.y_train.copy(),
              "x_test": dataset.x_test.copy(), "y_test": dataset.y_test.copy()}
    change(arrays)
    np.savez(tmp_path / name, **arrays)
    return f"npz:{tmp_path / name}"


@pytest.mark.parametrize("change,problem", [
    (lambda a: a["x_train"].__setitem__((0, 0, 0), np.nan), "x_train holds 1 NaN or infinite values"),
    (lambda a: a["x_test"].__setitem__((3, 1, 1), np.inf), "x_test holds 1 NaN or infinite values"),
    (lambda a: a["y_train"].__setitem__(0, 42), "y_train holds label 42, but the model has 10 outputs (labels 0 to 9)"),
    (lambda a: a.update(x_test=a["x_test"][:0], y_test=a["y_test"][:0]), "x_test has no samples"),
])
def test_unusable_data_is_refused_before_any_work_and_nothing_is_written(tmp_path, change, problem):
    spec = digits_npz(tmp_path, "data.npz", change)
    with pytest.raises(DataError) as raised:
        api.convert(DENSE, tmp_path / "out", data=spec, finetune=False)
    assert raised.value.message == f"--data {spec!r}: {problem}"
    assert not (tmp_path / "out").exists()


def test_a_model_with_nan_weights_is_refused_by_inspect_and_convert(tmp_path):
    model = onnx.load(DENSE)
    weight = next(t for t in model.graph.initializer if numpy_helper.to_array(t).ndim == 2)
    array = numpy_helper.to_array(weight).copy()
    array[0, 0] = np.nan
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    path = tmp_path / "nan.onnx"
    onnx.save(model, path)
    for command in (["inspect", str(path)], ["convert", str(path), "-o", str(tmp_path / "out")]):
        completed = run_cli(*command)
        assert completed.returncode == 2
        assert completed.stderr == f"whetstone-onnx: error: {path}: weight '{weight.name}' holds NaN or infinite " \
                                   "values\n"
    assert not (tmp_path / "out").exists()


def test_the_output_folder_is_checked_first(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    completed = run_cli("convert", str(DENSE), "-o", str(afile), "--data", "digits")
    assert completed.returncode == 2 and completed.stderr == f"whetstone-onnx: error: {afile}: exists and is not a folder\n"
    assert afile.read_text() == "mine"
    with pytest.raises(InputError, match="cannot write there"):
        OutputFolder("/proc/whetstone-cannot-be-here")
    with pytest.raises(InputError, match=r"--nir-dt -1.0: must be a positive time step"):
        api.convert(DENSE, tmp_path / "out", nir_dt=-1.0)


def test_a_rerun_replaces_the_folder_whole_or_refuses(tmp_path):
    out = tmp_path / "out"
    api.convert(DENSE, out, data="digits", finetune=False)
    (out / "notes.txt").write_text("left by the user")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(InputError, match=r"the folder exists and is not empty \(--force replaces it\)"):
        api.convert(DENSE, out, data="digits", finetune=False, netlist=False)
    assert sorted(p.name for p in out.iterdir()) == before
    # Replaced whole: no model.nir or netlist left from the first run, nor the user's file.
    api.convert_with_options(DENSE, out, data="digits",
                             options=api.ConvertOptions(finetune=False, netlist=False, force=True))
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "sharpenable.onnx", "spiking.onnx"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]       # no staging folder left
    # --force replaces a conversion's output, never a folder of other things.
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("years of work")
    with pytest.raises(InputError, match=r"not a whetstone-onnx output folder \(no report.json\), so --force"):
        api.convert_with_options(DENSE, other, options=api.ConvertOptions(netlist=False, force=True))
    assert (other / "thesis.tex").read_text() == "years of work"


def test_an_abandoned_staging_folder_is_removed_by_the_next_conversion(tmp_path):
    dead = 2 ** 22 + 12345          # above the default pid_max: no process has it
    abandoned = tmp_path / f".out{STAGING_MARK}{dead}-x1"
    abandoned.mkdir()
    (abandoned / "spiking.onnx").write_bytes(b"half")
    living = tmp_path / f".out{STAGING_MARK}{os.getpid()}-x2"        # a conversion still running
    living.mkdir()
    api.convert(DENSE, tmp_path / "out", netlist=False)
    assert not abandoned.exists() and living.exists()


def test_check_verifies_every_artifact_before_comparing(tmp_path):
    out = tmp_path / "out"
    api.convert(DENSE, out, data="digits", finetune=False)
    report = json.loads((out / "report.json").read_text())
    assert set(report["artifacts"]) == {"model.nir", "netlist.json", "netlist.neurons.bin", "netlist.synapses.bin",
                                        "sharpenable.onnx", "spiking.onnx"}
    assert api.check_outputs(out).passed
    spiking = bytearray((out / "spiking.onnx").read_bytes())
    spiking[-1] ^= 1                                       # one bit of the last initializer
    (out / "spiking.onnx").write_bytes(bytes(spiking))
    (out / "model.nir").unlink()
    completed = run_cli("check", str(out))
    assert completed.returncode == 1
    assert completed.stderr == (f"whetstone-onnx: error: {out}: model.nir is missing; spiking.onnx has changed since "
                                "the conversion (its sha256 is not report.json's)\n")
    with pytest.raises(CheckFailed):
        api.check_outputs(out)
    (out / "report.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="not a whetstone-onnx report"):
        api.check_outputs(out)
    (out / "report.json").unlink()
    completed = run_cli("check", str(out))
    assert completed.returncode == 2 and "report.json: not found" in completed.stderr


def test_reports_are_strict_json():
    assert json_bytes({"a": float("nan"), "b": [1.5, float("inf")]}) == b'{\n  "a": null,\n  "b": [\n    1.5,\n    null\n  ]\n}\n'


def small_graph(tmp_path, name: str, nodes, weights: dict, input_shape, output_shape) -> str:
    from conftest import graph_model

    path = tmp_path / name
    path.write_bytes(graph_model(nodes, weights, input_shape, output_shape).SerializeToString())
    return str(path)


def test_models_that_cannot_be_converted_get_one_line_each(tmp_path):
    from onnx import helper

    folder = tmp_path / "a_folder.onnx"
    folder.mkdir()
    identity = small_graph(tmp_path, "identity.onnx", [helper.make_node("Identity", ["x"], ["y"], name="id")], {},
                           [4], [4])
    one_class = small_graph(tmp_path, "one_class.onnx", [helper.make_node("Gemm", ["x", "w"], ["y"], name="g",
                                                                          transB=1)],
                            {"w": np.ones((1, 4), np.float32)}, [4], [1])
    huge = small_graph(tmp_path, "huge.onnx", [
        helper.make_node("Conv", ["x", "k"], ["c"], name="conv"), helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"), helper.make_node("Gemm", ["f", "w"], ["y"], name="g",
                                                                                  transB=1)],
        {"k": np.ones((2, 1, 1, 1), np.float32), "w": np.ones((2, 2), np.float32)}, [1, 10000, 10000], [2])
    expected = {
        str(folder): f"{folder}: is a folder, not a model file",
        identity: f"{identity}: the output 'y' is the input: the graph computes nothing to convert",
        one_class: f"{one_class}: the last layer 'g' has 1 output: a classifier needs at least 2 classes",
        huge: f"{huge}: the output of 'conv' has 200000000 values per sample [2, 10000, 10000], more than the limit "
              "of 16777216 (--max-elements raises it)",
    }
    for model, line in expected.items():
        completed = run_cli("convert", model, "-o", str(tmp_path / "out"))
        assert (completed.returncode, completed.stderr) == (2, f"whetstone-onnx: error: {line}\n")
        assert not (tmp_path / "out").exists()


def test_the_netlist_size_guard_stops_before_training(tmp_path):
    with pytest.raises(InputError, match=r"the explicit netlist would hold up to \d+ synapses, more than the limit "
                                         r"of 1000 \(--max-synapses raises it; --no-netlist skips it\)"):
        api.convert_with_options(DENSE, tmp_path / "out", data="digits",
                                 options=api.ConvertOptions(max_synapses=1000))


def test_a_netlist_header_cannot_name_files_outside_its_folder(tmp_path):
    from whetstone_onnx.netlist.explicit import read_netlist

    out = tmp_path / "out"
    api.convert(DENSE, out)
    header = json.loads((out / "netlist.json").read_text())
    header["files"]["synapses"]["name"] = "../../etc/passwd"
    (out / "netlist.json").write_text(json.dumps(header))
    with pytest.raises(InputError, match=r"the synapses file '../../etc/passwd' is not a file name of the netlist's "
                                         "own folder"):
        read_netlist(out)
