"""The CLI contract toolchains script against: exit codes, one-line errors, outputs."""
from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
from conftest import MODELS, run_cli

from whetstone_onnx.cli import main


def assert_one_line_error(completed: subprocess.CompletedProcess, code: int, text: str):
    assert completed.returncode == code, completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("whetstone-onnx: error: ") and text in lines[0], lines
    assert "Traceback" not in completed.stderr


def test_convert_writes_the_artifacts_and_prints_the_table(tmp_path):
    completed = run_cli("convert", str(MODELS / "digits_dense.onnx"), "-o", str(tmp_path), "--data", "digits",
                        "--no-finetune", "--accept-loss")
    assert completed.returncode == 0, completed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.nir", "netlist.json", "netlist.neurons.bin", "netlist.synapses.bin", "report.json",
        "sharpenable.onnx", "spiking.onnx"]
    assert "spiking" in completed.stdout and "original" in completed.stdout
    assert json.loads((tmp_path / "report.json").read_text())["finetune"]["performed"] is False
    assert "fine-tuning not performed: --no-finetune" in completed.stdout


def test_no_netlist_and_nir_profile_options(tmp_path):
    completed = run_cli("convert", str(MODELS / "digits_dense.onnx"), "-o", str(tmp_path / "a"), "--no-finetune",
                        "--no-netlist")
    assert completed.returncode == 0 and not (tmp_path / "a" / "model.nir").exists()
    assert not (tmp_path / "a" / "netlist.json").exists()
    completed = run_cli("convert", str(MODELS / "digits_dense.onnx"), "-o", str(tmp_path / "b"), "--no-finetune",
                        "--nir-profile", "semantic")
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["netlist"]["nir"]["profile"] == "semantic" and report["equivalence"]["nir"]["passed"]
    assert_one_line_error(run_cli("convert", str(MODELS / "digits_dense.onnx"), "-o", str(tmp_path / "c"),
                                  "--nir-profile", "loihi"), 2, "--nir-profile")


@pytest.mark.parametrize("model,listed", [("digits_lstm.onnx", "LSTM ('/lstm/LSTM')")])
def test_unsupported_models_exit_2_naming_file_op_and_node(tmp_path, model, listed):
    completed = run_cli("convert", str(MODELS / model), "-o", str(tmp_path / "out"))
    assert_one_line_error(completed, 2, f"{MODELS / model}: unsupported ops: {listed}")
    assert not (tmp_path / "out").exists()


def test_missing_and_corrupt_files_exit_2(tmp_path):
    assert_one_line_error(run_cli("convert", str(tmp_path / "none.onnx"), "-o", str(tmp_path / "o")), 2,
                          f"{tmp_path / 'none.onnx'}: file not found")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes((MODELS / "digits_dense.onnx").read_bytes()[:500])
    before = corrupt.read_bytes()
    assert_one_line_error(run_cli("inspect", str(corrupt)), 2, f"{corrupt}: not a readable ONNX model")
    assert corrupt.read_bytes() == before


@pytest.mark.parametrize("spec,text", [
    ("foo", "--data 'foo': unknown data spec (expected digits, mnist:DIR or npz:FILE)"),
    ("mnist:/nonexistent", "--data 'mnist:/nonexistent'"),
    ("npz:/nonexistent.npz", "--data 'npz:/nonexistent.npz'")])
def test_bad_data_specs_exit_2(tmp_path, spec, text):
    completed = run_cli("convert", str(MODELS / "digits_dense.onnx"), "-o", str(tmp_path / "o"), "--data", spec)
    assert_one_line_error(completed, 2, text)
    assert not (tmp_path / "o").exists()


def test_bad_normalize_and_usage_exit_2(tmp_path, capsys):
    assert main(["convert", str(MODELS / "digits_dense.onnx"), "-o", str(tmp_path), "--normalize", "x"]) == 2
    assert main(["convert", str(MODELS / "digits_dense.onnx")]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["convert", str(MODELS / "digits_dense.onnx"), "-o", str(tmp_path), "--bogus"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 4 and all(line.startswith("whetstone-onnx: error: ") for line in errors)
    # the help hint names the parser that failed: the command's, or the program's
    assert errors[1].endswith("(see whetstone-onnx convert --help)")
    assert errors[3] == "whetstone-onnx: error: usage: unrecognized arguments: --bogus (see whetstone-onnx --help)"


def test_inspect_json_lists_ops_and_planned_spiking_layers():
    completed = run_cli("inspect", str(MODELS / "torchstyle_digits_conv.onnx"), "--json")
    assert completed.returncode == 0
    result = json.loads(completed.stdout)
    assert result["supported"] and result["opset"] == 11
    assert result["ops"]["BatchNormalization"] == {"count": 1, "supported": True}
    # as convert builds them without data: three hidden spiking layers and the N-hot output code
    assert [row["kind"] for row in result["layers"] if row.get("role") == "spiking"] == ["sharpenable"] * 4
    assert result["layers"][-1]["kind"] == "nhot_decode"


def test_inspect_refuses_what_convert_refuses_after_loading(tmp_path):
    from conftest import graph_model
    from onnx import helper
    import numpy as np
    import onnx
    model = graph_model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
                        {"w": np.ones((4, 3), np.float32)}, (4,), (3,))
    onnx.save(model, tmp_path / "relu_last.onnx")
    inspected, converted = (run_cli(command, str(tmp_path / "relu_last.onnx"), *extra)
                            for command, extra in (("inspect", ()), ("convert", ("-o", str(tmp_path / "out")))))
    assert inspected.returncode == converted.returncode == 2
    assert "the last layer must be a Dense" in inspected.stdout + inspected.stderr


def test_inspect_exits_2_on_unsupported_and_still_prints_the_op_table():
    completed = run_cli("inspect", str(MODELS / "digits_lstm.onnx"), "--json")
    assert completed.returncode == 2
    assert json.loads(completed.stdout)["ops"]["LSTM"] == {"count": 1, "supported": False}


def test_version():
    completed = run_cli("--version")
    assert completed.returncode == 0 and completed.stdout.startswith("whetstone-onnx ")


@pytest.mark.slow
def test_check_reruns_the_equivalence_and_fails_on_a_tampered_netlist(tmp_path):
    nir = pytest.importorskip("nir")
    assert run_cli("convert", str(MODELS / "digits_dense.onnx"), "-o", str(tmp_path), "--data", "digits",
                   "--no-finetune", "--accept-loss").returncode == 0
    completed = run_cli("check", str(tmp_path), "--json")
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert result["passed"] and result["data"] == "digits" and result["samples"] == 360
    assert result["comparisons"]["spiking.onnx vs model.nir"]["unexplained"] == 0
    assert result["comparisons"]["spiking.onnx vs netlist"]["unexplained"] == 0
    assert len(result["comparisons"]["spiking.onnx vs netlist"]["layers"]) == 3

    graph = nir.read(tmp_path / "model.nir")
    first_affine = next(node for node in graph.nodes.values() if isinstance(node, nir.Affine))
    first_affine.weight[:5] *= -1.0                       # a hardware mapper's bug, say
    nir.write(tmp_path / "model.nir", graph)
    completed = run_cli("check", str(tmp_path))            # the file is not the one the report lists
    assert completed.returncode == 1 and completed.stderr == \
        f"whetstone-onnx: error: {tmp_path}: model.nir has changed since the conversion (its sha256 is not " \
        "report.json's)\n"
    # A mapper that rewrote the report's hash too: the spike comparison still finds the change.
    report = json.loads((tmp_path / "report.json").read_text())
    report["artifacts"]["model.nir"]["sha256"] = hashlib.sha256((tmp_path / "model.nir").read_bytes()).hexdigest()
    (tmp_path / "report.json").write_text(json.dumps(report))
    completed = run_cli("check", str(tmp_path))
    assert completed.returncode == 1
    assert "DISAGREE" in completed.stdout and "from its threshold" in completed.stdout
    assert completed.stderr.strip().endswith("spikes differ beyond threshold ties")
    assert "spiking.onnx vs netlist      agree" in completed.stdout    # only the tampered file disagrees


def test_check_on_a_directory_without_outputs_exits_2(tmp_path):
    assert_one_line_error(run_cli("check", str(tmp_path)), 2, f"{tmp_path / 'report.json'}: not found (is {tmp_path} "
                          "a whetstone-onnx convert output?)")


def test_hardware_check_and_quantized_netlist(tmp_path):
    completed = run_cli("convert", str(MODELS / "digits_conv.onnx"), "-o", str(tmp_path), "--data", "digits",
                        "--no-finetune", "--accept-loss", "--hardware", "truenorth", "--weight-bits", "4")
    assert completed.returncode == 0, completed.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    hardware = report["netlist"]["hardware"]
    assert hardware["rules"]["fan_in"]["ok"] and not hardware["rules"]["weights"]["ok"]   # 4 bits > TrueNorth's
    assert report["netlist"]["explicit"]["weight_bits"] == 4
    assert max(report["netlist"]["explicit"]["stats"]["distinct_weights_per_projection"].values()) <= 16
    assert 0.5 < report["netlist"]["explicit"]["accuracy"] <= 1.0
    assert report["equivalence"]["netlist"] is None           # quantized: measured by accuracy instead


def test_fine_tuning_options_without_data_are_an_error(tmp_path):
    completed = run_cli("convert", str(MODELS / "digits_dense.onnx"), "-o", str(tmp_path / "out"), "--epochs", "3",
                        "--distill", "0.5")
    assert_one_line_error(completed, 2, "--epochs, --distill: fine-tuning options, but no --data was given")
    completed = run_cli("convert", str(MODELS / "digits_dense.onnx"), "-o", str(tmp_path / "out"), "--data", "digits",
                        "--no-finetune", "--effort", "quick")
    assert_one_line_error(completed, 2, "--effort: fine-tuning options, but --no-finetune was given")
    assert not (tmp_path / "out").exists()


def test_a_reader_that_leaves_early_gets_no_traceback():
    import sys
    process = subprocess.Popen([sys.executable, "-m", "whetstone_onnx.cli", "inspect", str(MODELS / "mnist_conv.onnx"),
                                "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    process.stdout.close()             # `| head -c 0`: gone before the first line is written
    stderr = process.stderr.read().decode()
    assert process.wait() == 0 and "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


@pytest.mark.parametrize("command, text", [("inspect", "spiking layers convert would build"),
                                           ("check", "without trusting its report"),
                                           ("convert", "written only after every check ran"),
                                           ("zoo", "each in its own process")])
def test_every_command_describes_itself(command, text):
    completed = run_cli(command, "--help")
    assert completed.returncode == 0 and text in " ".join(completed.stdout.split())


def test_an_error_found_deep_in_the_conversion_names_the_file(tmp_path):
    from conftest import graph_model
    from onnx import helper
    import numpy as np
    import onnx
    # supported ops throughout, but the last layer is no Dense: found by the output stage, after loading
    model = graph_model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
                        {"w": np.ones((4, 3), np.float32)}, (4,), (3,))
    onnx.save(model, tmp_path / "relu_last.onnx")
    completed = run_cli("convert", str(tmp_path / "relu_last.onnx"), "-o", str(tmp_path / "out"))
    assert_one_line_error(completed, 2, f"{tmp_path / 'relu_last.onnx'}: ")
