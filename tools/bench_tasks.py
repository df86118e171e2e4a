"""Benchmark (not a test): models that are not classifiers, converted with default options.

Issue 17's targets:
  * ``mnist_autoencoder``: a PyTorch MNIST autoencoder 784-256-64-256-784 (ReLU, a
    sigmoid output, an ``Unflatten`` back to 1 x 28 x 28), trained on images 0-7999
    (Adam, lr 1e-3, batch 64, MSE, seeded), converted with ``--task reconstruct``: its
    spiking reconstruction MSE on images 8000-9999 at most 1.25 times the original's;
  * ``digits_regression``: a PyTorch MLP 64-64-32-3 predicting a digits image's mean
    intensity and centre of mass (row, column, in pixels), trained on the digits
    training split, converted with ``--task regress`` from an npz archive of those targets:
    its MSE is reported.
Each is exported with ``torch.onnx.export`` (TorchScript exporter, batch dimension
symbolic) and converted through ``api.convert`` with otherwise default options.

    python tools/bench_tasks.py [--models a,b] [--seed N] [--json FILE]
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_activations import MNIST, bench_arguments, export  # noqa: E402

MODELS = ("mnist_autoencoder", "digits_regression")
TARGET_RATIO = 1.25           # issue 17: spiking MSE / original MSE for the autoencoder
EPOCHS = {"mnist_autoencoder": 10, "digits_regression": 60}
BATCH_SIZE = 64
LEARNING_RATE = 1e-3


def build(name: str):
    import torch.nn as nn

    if name == "mnist_autoencoder":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU(),
                             nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 784), nn.Sigmoid(),
                             nn.Unflatten(1, (1, 28, 28)))
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 3))


def regression_targets(images: np.ndarray) -> np.ndarray:
    """(mean intensity, centre of mass row, centre of mass column) of each 8 x 8 image."""
    images = images.reshape(len(images), 8, 8).astype(np.float64)
    mass = images.sum(axis=(1, 2)) + 1e-9
    rows, columns = np.arange(8)[None, :, None], np.arange(8)[None, None, :]
    return np.stack([images.mean(axis=(1, 2)), (images * rows).sum(axis=(1, 2)) / mass,
                     (images * columns).sum(axis=(1, 2)) / mass], axis=1).astype(np.float32)


def train(name: str, x: np.ndarray, y: np.ndarray, seed: int):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    model = build(name)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    model.train()
    for _ in range(EPOCHS[name]):
        for batch in torch.randperm(len(inputs)).split(BATCH_SIZE):
            optimizer.zero_grad()
            F.mse_loss(model(inputs[batch]), targets[batch]).backward()
            optimizer.step()
    return model.eval()


def run_model(name: str, seed: int, work: Path) -> dict:
    from whetstone_onnx import api
    from whetstone_onnx.data import load_dataset
    from whetstone_onnx.errors import WhetstoneError

    if name == "mnist_autoencoder":
        dataset = load_dataset(MNIST)
        x = dataset.x_train.reshape(-1, 1, 28, 28)
        data, task, y, example = dataset, "reconstruct", x, (1, 1, 28, 28)
    else:
        digits = load_dataset("digits")
        archive = work / "digits_regression.npz"
        np.savez(archive, x_train=digits.x_train, y_train=regression_targets(digits.x_train),
                 x_test=digits.x_test, y_test=regression_targets(digits.x_test))
        x = digits.x_train.reshape(len(digits.x_train), -1)
        data, task, y, example = f"npz:{archive}", "regress", regression_targets(digits.x_train), (1, 64)
    start = time.perf_counter()
    model = train(name, x, y, seed)
    train_s = round(time.perf_counter() - start, 1)
    path = work / f"{name}.onnx"
    export(model, path, example)
    start = time.perf_counter()
    try:
        result = api.convert(path, work / f"{name}_out", data=data, task=task, seed=seed, accept_loss=True)
    except WhetstoneError as exc:
        return {"model": name, "train_s": train_s, "error": exc.message}
    metrics = result.report["metrics"]
    return {"model": name, "task": task, "passed": result.report["passed"],
            **{f"{graph}_mse": metrics[graph]["mse"] for graph in ("original", "sharpenable_start", "spiking")},
            **({"original_psnr_db": metrics["original"]["psnr_db"], "spiking_psnr_db": metrics["spiking"]["psnr_db"]}
               if "psnr_db" in metrics["original"] else {}),
            "netlist_mse": result.report["netlist"]["explicit"]["metrics"]["mse"],
            "ratio": metrics["spiking"]["mse"] / metrics["original"]["mse"],
            "train_s": train_s, "wall_s": round(time.perf_counter() - start, 1)}


def main() -> None:
    args, names = bench_arguments(__doc__.splitlines()[0], MODELS)
    rows = []
    print(f"{'model':<20}{'original MSE':>14}{'sharpness 0':>13}{'spiking MSE':>13}{'ratio':>8}{'time s':>8}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_tasks_") as work:
        for name in names:
            row = run_model(name, args.seed, Path(work))
            rows.append(row)
            if args.json:
                args.json.write_text(json.dumps({"rows": rows, "seed": args.seed, "target_ratio": TARGET_RATIO},
                                                indent=2) + "\n")
            if "error" in row:
                print(f"{name:<20}did not convert: {row['error']}", flush=True)
                continue
            print(f"{name:<20}{row['original_mse']:>14.5f}{row['sharpenable_start_mse']:>13.5f}"
                  f"{row['spiking_mse']:>13.5f}{row['ratio']:>8.2f}{row['wall_s']:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
