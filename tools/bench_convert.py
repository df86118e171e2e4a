"""Benchmark: time of load + passes + emit + equivalence checks (no data, no fine-tuning).

Netlist export (model.nir, explicit netlist and their checks) is left out unless
``--netlist`` is given: tools/bench_netlist.py measures it.

Models: the dense and conv fixtures and synthetic MLPs of 50, 100 and 200 hidden
layers (to show how the cost grows with graph size). Each model is converted
``--repeats`` times; the median wall time is reported per stage.

    python tools/bench_convert.py [--repeats 5] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from whetstone_onnx import api

MODELS = Path(__file__).resolve().parents[1] / "models"


def synthetic_mlp(hidden_layers: int, width: int = 64, inputs: int = 64, classes: int = 10, seed: int = 0):
    """A Gemm + Relu chain with He-initialised weights, as PyTorch would export it."""
    rng = np.random.default_rng(seed)
    nodes, initializers, value, fan_in = [], [], "input", inputs
    for i in range(hidden_layers + 1):
        out = classes if i == hidden_layers else width
        w = (rng.standard_normal((out, fan_in)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        initializers += [numpy_helper.from_array(w, f"fc{i}.weight"),
                         numpy_helper.from_array(np.zeros(out, np.float32), f"fc{i}.bias")]
        nodes.append(helper.make_node("Gemm", [value, f"fc{i}.weight", f"fc{i}.bias"], [f"h{i}"],
                                      name=f"/fc{i}/Gemm", transB=1))
        value, fan_in = f"h{i}", out
        if i < hidden_layers:
            nodes.append(helper.make_node("Relu", [value], [f"r{i}"], name=f"/relu{i}/Relu"))
            value = f"r{i}"
    nodes[-1].output[0] = "logits"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                             ["batch", inputs])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
                              initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])


def measure(model, repeats: int, netlist: bool) -> dict:
    totals, stages = [], {}
    for _ in range(repeats):
        start = time.perf_counter()
        result = api.convert(model, netlist=netlist)
        totals.append(time.perf_counter() - start)
        for stage, seconds in result.report["timings_s"].items():
            stages.setdefault(stage, []).append(seconds)
    return {"total_s": statistics.median(totals), "passed": result.passed,
            "layers": len(result.spiking_network.layers),
            "stages_s": {k: round(statistics.median(v), 4) for k, v in stages.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--netlist", action="store_true", help="include the netlist export and checks")
    args = parser.parse_args()
    cases = {name: MODELS / f"{name}.onnx" for name in
             ("digits_dense", "mnist_dense", "digits_conv", "mnist_conv", "torchstyle_mnist_conv")}
    cases.update({f"mlp_{n}_layers": synthetic_mlp(n) for n in (50, 100, 200)})
    api.convert(cases["digits_dense"])   # warm-up: imports, onnxruntime initialisation
    results = {name: measure(model, args.repeats, args.netlist) for name, model in cases.items()}
    print(f"{'model':<24}{'layers':>7}{'total s':>10}   stages (median s)")
    for name, r in results.items():
        print(f"{name:<24}{r['layers']:>7}{r['total_s']:>10.3f}   {r['stages_s']}")
    ratio = results["mlp_200_layers"]["total_s"] / results["mlp_50_layers"]["total_s"]
    print(f"\ncost ratio 200 / 50 hidden layers: {ratio:.2f} (4.0 would be linear)")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "ratio_200_over_50": ratio}, indent=2))


if __name__ == "__main__":
    main()
