"""A generated corpus of bad inputs, one per class of defect a converter meets in other people's
pipelines: broken and hostile model files, unusable data, bad options and output folders.

``build(folder)`` writes every case into ``folder`` and returns ``{case: (argv, expected)}``:
the ``whetstone-onnx`` arguments that use it and the fragments the one error line must hold
(exit 2): the file or option, and the problem. ``python tests/bad_inputs.py FOLDER`` writes the corpus
for inspection. Everything is derived from the fixtures and seeded, so the corpus is the same
on every machine.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MODELS = Path(__file__).resolve().parents[1] / "models"
DENSE = MODELS / "digits_dense.onnx"


def _small(nodes, weights: dict, input_shape, output_shape, *, input_name="x") -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "bad", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT,
                                                                          ["N", *input_shape])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *output_shape])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def _digits_arrays() -> dict:
    from whetstone_onnx.data import load_dataset

    dataset = load_dataset("digits")
    return {"x_train": dataset.x_train, "y_train": dataset.y_train, "x_test": dataset.x_test,
            "y_test": dataset.y_test}


def build(folder: Path) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    folder.mkdir(parents=True, exist_ok=True)
    out = str(folder / "out")
    cases: dict[str, tuple[list[str], tuple[str, ...]]] = {}
    raw = DENSE.read_bytes()

    def model_case(name: str, data: bytes, expected: str, command: str = "convert") -> None:
        path = folder / name
        path.write_bytes(data)
        argv = [command, str(path)] + (["-o", out] if command == "convert" else [])
        cases[name] = (argv, (f"{path}: ", expected))

    # Model files: unreadable, structurally bad, hostile.
    model_case("truncated.onnx", raw[: len(raw) // 2], "not a readable ONNX model")
    model_case("random_bytes.onnx", np.random.default_rng(0).bytes(4096), "not a readable ONNX model")
    model_case("empty.onnx", b"", "not an ONNX model")
    bad_name = onnx.load_from_string(raw)
    bad_name.graph.node[0].name = "NODE_NAME_MARKER"            # then one byte of it made invalid UTF-8
    data = bad_name.SerializeToString().replace(b"NODE_NAME_MARKER", b"\xffODE_NAME_MARKER", 1)
    model_case("invalid_utf8_name.onnx", data, "")
    identity = _small([helper.make_node("Identity", ["x"], ["y"], name="id")], {}, [4], [4])
    model_case("identity_only.onnx", identity.SerializeToString(), "the graph computes nothing to convert")
    nan = onnx.load_from_string(raw)
    weight = next(t for t in nan.graph.initializer if numpy_helper.to_array(t).ndim == 2)
    values = numpy_helper.to_array(weight).copy()
    values[0, 0] = np.nan
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    model_case("nan_weights.onnx", nan.SerializeToString(), f"weight '{weight.name}' holds NaN or infinite values")
    huge = _small([helper.make_node("Conv", ["x", "k"], ["c"], name="conv"),
                   helper.make_node("Relu", ["c"], ["r"], name="relu"),
                   helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
                   helper.make_node("Flatten", ["p"], ["f"], name="flat"),
                   helper.make_node("Gemm", ["f", "w"], ["y"], name="g", transB=1)],
                  {"k": np.ones((2, 1, 1, 1), np.float32), "w": np.ones((2, 2), np.float32)}, [1, 10000, 10000], [2])
    model_case("huge_input.onnx", huge.SerializeToString(), "more than the limit of 16777216")
    outside = onnx.load_from_string(raw)
    tensor = outside.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../../../etc/passwd")
    model_case("external_outside.onnx", outside.SerializeToString(), "")
    one_class = _small([helper.make_node("Gemm", ["x", "w"], ["y"], name="g", transB=1)],
                       {"w": np.ones((1, 4), np.float32)}, [4], [1])
    model_case("one_class.onnx", one_class.SerializeToString(), "a classifier needs at least 2 classes")
    (folder / "a_folder.onnx").mkdir(exist_ok=True)
    cases["a_folder.onnx"] = (["convert", str(folder / "a_folder.onnx"), "-o", out],
                              (f"{folder / 'a_folder.onnx'}: is a folder, not a model file",))

    # Data files.
    def data_case(name: str, arrays: dict | None, expected: str, data: bytes | None = None) -> None:
        path = folder / name
        if arrays is not None:
            np.savez(path, **arrays)
        else:
            path.write_bytes(data)
        cases[name] = (["convert", str(DENSE), "-o", out, "--data", f"npz:{path}"], (str(path), expected))

    arrays = _digits_arrays()
    with_nan = {**arrays, "x_train": arrays["x_train"].copy()}
    with_nan["x_train"][0, 0, 0] = np.nan
    data_case("nan_data.npz", with_nan, "x_train holds 1 NaN or infinite values")
    data_case("no_samples.npz", {**arrays, "x_train": arrays["x_train"][:0], "y_train": arrays["y_train"][:0]},
              "x_train has no samples")
    label = {**arrays, "y_test": arrays["y_test"].copy()}
    label[("y_test")][0] = 42
    data_case("label_42.npz", label, "y_test holds label 42, but the model has 10 outputs")
    np.savez(folder / "good.npz", **arrays)
    good = (folder / "good.npz").read_bytes()
    corrupt = bytearray(good)
    corrupt[len(corrupt) // 2] ^= 0xFF                          # inside a member: a bad CRC or a bad array
    data_case("bad_crc.npz", None, "cannot be read as .npz", bytes(corrupt))
    data_case("truncated.npz", None, "cannot be read as .npz", good[: len(good) // 3])

    # Options and output folders.
    (folder / "a_file").write_text("not a folder")
    cases["output_is_a_file"] = (["convert", str(DENSE), "-o", str(folder / "a_file")],
                                 (f"{folder / 'a_file'}: exists and is not a folder",))
    cases["output_in_proc"] = (["convert", str(DENSE), "-o", "/proc/whetstone/out"],
                               ("/proc/whetstone/out: cannot write",))
    cases["negative_dt"] = (["convert", str(DENSE), "-o", out, "--nir-dt", "-1"],
                            ("--nir-dt -1.0: must be a positive time step",))
    cases["zero_weight_bits"] = (["convert", str(DENSE), "-o", out, "--weight-bits", "0"], ("--weight-bits 0",))
    return cases


if __name__ == "__main__":
    for name, (argv, expected) in build(Path(sys.argv[1])).items():
        print(f"{name:<24} whetstone-onnx {' '.join(argv)}    -> {' ... '.join(expected)}")
