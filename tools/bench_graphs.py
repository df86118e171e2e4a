"""Benchmark (not a test): branching MNIST nets -- residual, Inception-style, MobileNet-style --
converted with default options, and their written files checked again.

Issue 14's targets: a ResNet-style net (two residual blocks with batch norm, an identity
and a projection shortcut), an Inception-style net (three branches concatenated) and a
MobileNet-style (depthwise-separable) net, trained and exported with PyTorch the ordinary
way, convert with default options; ``check`` finds 0 unexplained differences across
onnxruntime, the NumPy reference, the explicit netlist and NIR on all 2000 held-out
images; loss <= 0.5 points (residual, concatenating), <= 1.0 (depthwise).

Each net is ``tests/exporters.torch_graph_model`` at MNIST size (a 16-channel conv stem
with max pooling; ``depthwise`` is tools/bench_activations.py's net), trained on images
0-7999 as tools/bench_activations.py trains (Adam, lr 1e-3, batch 64, 8 epochs, seeded),
exported with the TorchScript exporter and converted through ``api.convert`` (netlists
included). ``api.check_outputs`` then re-reads the written ``model.nir`` (``nir.read``)
and ``netlist.json`` and compares both with onnxruntime layer by layer on the held-out
images; the NumPy reference comparison is the conversion's own.

Also measured: the nets whose branches share tensors that are not yet activated
(``tests/exporters.UNTANGLED_KINDS``: pre-activation ResNet, DenseNet, MobileNetV2, each with
a stride-2 stem for MNIST-sized images).

    python tools/bench_graphs.py [--models resnet,inception,depthwise,preact_resnet,densenet,mobilenet_v2]
                                 [--seed N] [--json FILE] [--set NAME=VALUE] [--history]
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path[:0] = [str(TOOLS), str(TOOLS.parent / "tests")]
from bench_activations import MNIST, bench_arguments, build, export, train  # noqa: E402
from bench_suite import finetune_columns, finetune_overrides  # noqa: E402
from exporters import torch_graph_model  # noqa: E402

# Points lost at most: issue 14's targets; the nets whose branches share raw tensors
# (network_passes/branches.py) are held to the residual nets' 0.5.
TARGETS = {"resnet": 0.5, "inception": 0.5, "depthwise": 1.0, "preact_resnet": 0.5, "densenet": 0.5,
           "mobilenet_v2": 1.0}


def build_model(name: str):
    import torch.nn as nn

    if name == "depthwise":
        return build("depthwise")
    return nn.Sequential(nn.Unflatten(1, (1, 28, 28)), torch_graph_model(name, size=28, width=16, stem_pool=True))


def run_model(name: str, dataset, seed: int, overrides: list[str] = (), history: bool = False) -> dict:
    """One net's row (``overrides``: ``NAME=VALUE`` FinetuneOptions fields; ``history``: keep the
    fine-tuning history); a net that does not convert gets its one-line error instead of figures."""
    from whetstone_onnx import api
    from whetstone_onnx.errors import WhetstoneError

    start = time.perf_counter()
    model = train(lambda: build_model(name), dataset, seed)
    train_s = round(time.perf_counter() - start, 1)
    with tempfile.TemporaryDirectory(prefix="bench_graphs_") as work:
        path, out = Path(work) / f"{name}.onnx", Path(work) / "out"
        export(model, path)
        start = time.perf_counter()
        try:
            result = api.convert(path, out, data=dataset, seed=seed, accept_loss=True,
                                 finetune=api.FinetuneOptions(seed=seed, **finetune_overrides(overrides)))
        except WhetstoneError as exc:
            return {"model": name, "train_s": train_s, "error": exc.message}
        wall = time.perf_counter() - start
        checked = api.check_outputs(out, data=dataset)
    equivalence = result.report["equivalence"]
    unexplained = {"numpy": equivalence["spiking"]["unexplained"],
                   **{comparison: entry["unexplained"] for comparison, entry in checked.comparisons.items()}}
    accuracy = result.accuracy
    loss = round(100 * (accuracy["original"] - accuracy["spiking"]), 2)
    return {"model": name, "original": round(100 * accuracy["original"], 2),
            "spiking": round(100 * accuracy["spiking"], 2), "loss": loss, "target": TARGETS[name],
            "met": loss <= TARGETS[name], "samples": checked.samples, "unexplained": unexplained,
            "passed": result.report["passed"] and all(entry["passed"] for entry in checked.comparisons.values()),
            "output": result.report["output_stage"]["written"], "train_s": train_s, "wall_s": round(wall, 1),
            **finetune_columns(result.report, history)}


def main() -> None:
    args, names = bench_arguments(__doc__.splitlines()[0], TARGETS)
    from whetstone_onnx.data import load_dataset

    dataset = load_dataset(MNIST)
    rows = []
    print(f"{'model':<14}{'original':>9}{'spiking':>9}{'loss':>7}{'target':>7}  {'unexplained (samples)':<34}"
          f"{'train s':>8}{'time s':>8}", flush=True)
    for name in names:
        row = run_model(name, dataset, args.seed, args.set, args.history)
        rows.append(row)
        if args.json:
            args.json.write_text(json.dumps({"rows": rows, "seed": args.seed}, indent=2) + "\n")
        if "error" in row:
            print(f"{name:<14}did not convert: {row['error']}", flush=True)
            continue
        differences = ", ".join(f"{k.split()[-1]} {v}" for k, v in row["unexplained"].items())
        differences += f" ({row['samples']})"
        print(f"{name:<14}{row['original']:>9.2f}{row['spiking']:>9.2f}{row['loss']:>+7.2f}{row['target']:>7.1f}  "
              f"{differences:<34}{row['train_s']:>8.0f}{row['wall_s']:>8.0f}", flush=True)
    met = sum(row.get("met", False) for row in rows)
    print(f"{met} of {len(rows)} models within their target; "
          f"{sum(row.get('passed', False) for row in rows)} with every check passed")


if __name__ == "__main__":
    main()
