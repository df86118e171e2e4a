"""Benchmark (not a test): every exporter's default output, trained on digits and converted with
default options; the rows of the exporter table in docs/supported-models.md.

For each exporter and model kind of ``tests/exporters.py`` (PyTorch dynamo and
TorchScript, Keras 3 ``model.export``, tf2onnx ``from_function``, skl2onnx; an MLP
with batch norm and a conv net with batch norm and max pooling) the model is trained
on the digits training split (seeded, 15 epochs), exported, and converted through
``api.convert`` with ``data="digits"`` and otherwise default options, from a working
directory other than the model's. Reported: the exporter's version and opset,
whether the graph holds external data or a fixed batch, the float graph's largest
relative difference from the original, the accuracies (original, spiking) on the
360 held-out digits and the conversion time.

    python tools/bench_exporters.py [--exporters a,b] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from exporters import EXPORTERS  # noqa: E402

PACKAGES = {"torch_dynamo": "torch", "torch_torchscript": "torch", "keras": "keras", "tf2onnx": "tf2onnx",
            "skl2onnx": "skl2onnx"}


def graph_facts(path: Path) -> dict:
    import onnx

    proto = onnx.load(path, load_external_data=False)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    return {"opset": opset, "external_data": any(path.parent.glob(path.name + ".data")) or any(
                t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer),
            "fixed_batch": batch.dim_value if batch.HasField("dim_value") else None,
            "outputs": len(proto.graph.output), "zipmap": any(node.op_type == "ZipMap" for node in proto.graph.node),
            "ops": sorted({node.op_type for node in proto.graph.node})}


def run(exporter: str, kind: str, digits) -> dict:
    from whetstone_onnx import api
    from whetstone_onnx.errors import WhetstoneError

    build, _ = EXPORTERS[exporter]
    row = {"exporter": exporter, "version": version(PACKAGES[exporter]), "kind": kind}
    with tempfile.TemporaryDirectory(prefix="bench_exporters_") as work:
        folder = Path(work) / "models"
        folder.mkdir()
        path = build(folder, kind, (digits.x_train.reshape(-1, 8, 8), digits.y_train))
        row.update(graph_facts(path))
        cwd = os.getcwd()
        os.chdir(work)                      # not the model's folder
        try:
            start = time.perf_counter()
            result = api.convert(path, Path(work) / "out", data="digits", seed=0)
            row["wall_s"] = round(time.perf_counter() - start, 1)
        except WhetstoneError as exc:
            return {**row, "error": exc.message}
        finally:
            os.chdir(cwd)
    accuracy = result.accuracy
    return {**row, "float_relative_diff": result.report["equivalence"]["float"]["relative_diff"],
            "original": round(100 * accuracy["original"], 2), "spiking": round(100 * accuracy["spiking"], 2),
            "loss": round(100 * (accuracy["original"] - accuracy["spiking"]), 2), "passed": result.passed,
            "output": result.report["output_stage"]["written"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exporters", default=",".join(EXPORTERS),
                        help=f"comma-separated subset of {', '.join(EXPORTERS)}")
    parser.add_argument("--json", type=Path, help="write the rows here (after every model)")
    args = parser.parse_args()
    chosen = args.exporters.split(",")
    unknown = sorted(set(chosen) - set(EXPORTERS))
    if unknown:
        parser.error(f"unknown exporters: {', '.join(unknown)}")
    from whetstone_onnx.data import load_dataset

    digits = load_dataset("digits")
    rows = []
    print("| exporter | version | model | opset | as written | float max rel. diff | original | spiking | loss "
          "| convert s |\n|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for exporter in chosen:
        for kind in EXPORTERS[exporter][1]:
            row = run(exporter, kind, digits)
            rows.append(row)
            if args.json:
                args.json.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
            written = ", ".join(filter(None, [
                "external data" if row.get("external_data") else "",
                f"batch fixed at {row['fixed_batch']}" if row.get("fixed_batch") else "",
                f"{row['outputs']} outputs" if row.get("outputs", 1) > 1 else "", "ZipMap" if row.get("zipmap") else ""]))
            if "error" in row:
                print(f"| {exporter} | {row['version']} | {kind} | {row.get('opset', '')} | {written or '-'} "
                      f"| did not convert: {row['error']} |||||", flush=True)
                continue
            print(f"| {exporter} | {row['version']} | {kind} | {row['opset']} | {written or '-'} "
                  f"| {row['float_relative_diff']:.1e} | {row['original']:.2f} | {row['spiking']:.2f} "
                  f"| {row['loss']:+.2f} | {row['wall_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
