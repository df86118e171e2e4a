"""Benchmark (not a test): MNIST MLPs with activations other than ReLU, converted with default options.

Issue 13's target: MNIST MLPs with Tanh, LeakyReLU, GELU and SiLU lose <= 1 point
of accuracy after fine-tuning with default options. For each activation the
script trains a PyTorch MLP 784-256-act-128-act-10 on MNIST images 0-7999 (Adam,
lr 1e-3, batch 64, 8 epochs, seeded), exports it with ``torch.onnx.export``
(TorchScript exporter, batch dimension symbolic) and converts it through
``api.convert`` with the data set and otherwise default options. Loss = original
- spiking, in points, on images 8000-9999. Tanh converts exactly; LeakyRelu, Elu
and the like are approximated by a bounded ReLU that fine-tuning trains on from
there (the "approximated" column); a model that does not convert (as of issue 13:
GELU, which torch writes as a Gelu node at its default opset 20, and SiLU, written
as x * Sigmoid(x)) gets its one-line error instead of figures.

    python tools/bench_activations.py [--activations a,b] [--seed N] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

MNIST = "mnist:" + str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist")
ACTIVATIONS = ("tanh", "leaky_relu", "elu", "gelu", "silu")
TARGET = 1.0          # issue 13: at most this many points lost
EPOCHS = 8
BATCH_SIZE = 64
LEARNING_RATE = 1e-3


def activation_layer(name: str):
    import torch.nn as nn

    return {"tanh": nn.Tanh, "leaky_relu": lambda: nn.LeakyReLU(0.01), "elu": nn.ELU,
            "gelu": nn.GELU, "silu": nn.SiLU}[name]()


def train_mlp(activation: str, dataset, seed: int):
    """The MLP 784-256-act-128-act-10, trained on the flattened training images."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), activation_layer(activation),
                          nn.Linear(256, 128), activation_layer(activation), nn.Linear(128, 10))
    x = torch.from_numpy(dataset.x_train.reshape(len(dataset.x_train), -1))
    y = torch.from_numpy(dataset.y_train)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    model.train()
    for _ in range(EPOCHS):
        for batch in torch.randperm(len(x)).split(BATCH_SIZE):
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return model.eval()


def export(model, path: Path) -> None:
    """The TorchScript exporter (dynamo=False), as most published models were written; its
    deprecation warning is silenced."""
    import torch

    example = torch.zeros(1, 784)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def run_activation(activation: str, dataset, seed: int) -> dict:
    """One activation's row; a model that does not convert gets its one-line error instead of figures."""
    from whetstone_onnx import api
    from whetstone_onnx.errors import WhetstoneError

    start = time.perf_counter()
    model = train_mlp(activation, dataset, seed)
    train_s = round(time.perf_counter() - start, 1)
    with tempfile.TemporaryDirectory(prefix="bench_activations_") as work:
        path = Path(work) / f"mlp_{activation}.onnx"
        export(model, path)
        start = time.perf_counter()
        try:
            result = api.convert(path, Path(work) / "out", data=dataset, seed=seed, netlist=False)
        except WhetstoneError as exc:
            return {"activation": activation, "train_s": train_s, "error": exc.message}
        wall = time.perf_counter() - start
    accuracy = result.accuracy
    return {"activation": activation, "original": round(100 * accuracy["original"], 2),
            "spiking": round(100 * accuracy["spiking"], 2),
            "loss": round(100 * (accuracy["original"] - accuracy["spiking"]), 2),
            "output": result.report["output_stage"]["written"],
            "approximated": result.report["passes"].get("approximated_activations"),
            "train_s": train_s, "wall_s": round(wall, 1)}


def approximated_text(approximated: list[dict] | None) -> str:
    """The approximated units counted by op type ("2 LeakyRelu"), or "-"."""
    counts = Counter(entry["op_type"] for entry in approximated or [])
    return ", ".join(f"{n} {op}" for op, n in counts.items()) or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--activations", default=",".join(ACTIVATIONS),
                        help=f"comma-separated subset of {', '.join(ACTIVATIONS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the rows here (after every activation)")
    args = parser.parse_args()
    activations = args.activations.split(",")
    unknown = sorted(set(activations) - set(ACTIVATIONS))
    if unknown:
        parser.error(f"unknown activations: {', '.join(unknown)}")
    from whetstone_onnx.data import load_dataset

    dataset = load_dataset(MNIST)
    rows = []
    print(f"{'activation':<12}{'original':>10}{'spiking':>9}{'loss':>7}{'output':>9}  {'approximated':<16}"
          f"{'train s':>8}{'time s':>8}", flush=True)
    for activation in activations:
        row = run_activation(activation, dataset, args.seed)
        rows.append(row)
        if args.json:
            args.json.write_text(json.dumps({"rows": rows, "seed": args.seed, "target_loss": TARGET}, indent=2) + "\n")
        if "error" in row:
            print(f"{activation:<12}did not convert: {row['error']}", flush=True)
            continue
        print(f"{activation:<12}{row['original']:>10.2f}{row['spiking']:>9.2f}{row['loss']:>+7.2f}{row['output']:>9}  "
              f"{approximated_text(row['approximated']):<16}{row['train_s']:>8.0f}{row['wall_s']:>8.0f}", flush=True)
    converted = [row for row in rows if "error" not in row]
    met = sum(row["loss"] <= TARGET for row in converted)
    print(f"{met} of {len(rows)} activations within {TARGET} point ({len(rows) - len(converted)} did not convert)")


if __name__ == "__main__":
    main()
