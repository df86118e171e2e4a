"""Accuracy of the committed fixtures (models/): the original, the sharpenable network at
sharpness 0, the spiking network without fine-tuning (every layer sharpened at once) and with
the default fine-tuning, on each data set's held-out split (``--quick``: the first fixture only). The generalisation suite's figures
are read from docs/suite.json, which ``tools/bench_suite.py`` writes (about 70 minutes on 2 cores:
too long to rerun here)."""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MNIST = f"mnist:{ROOT.parent / 'shared' / 'data' / 'mnist'}"
# (file, data, normalize); the quick run takes the first. (mnist_conv, a Keras twin of
# torchstyle_mnist_conv, would add 4 minutes: the whole run stays under 30.)
FIXTURES = (("digits_dense.onnx", "digits", None), ("digits_conv.onnx", "digits", None),
            ("torchstyle_digits_conv.onnx", "digits", (0.5, 0.5)), ("mnist_dense.onnx", MNIST, None),
            ("torchstyle_mnist_conv.onnx", MNIST, (0.5, 0.5)))
QUICK_FIXTURES = 1


def fixture_rows(quick: bool) -> list[dict]:
    from whetstone_onnx import api

    rows = []
    for name, data, normalize in FIXTURES[:QUICK_FIXTURES] if quick else FIXTURES:
        with tempfile.TemporaryDirectory(prefix="bench_accuracy_") as work:
            at_once = api.convert(ROOT / "models" / name, data=data, normalize=normalize, finetune=False,
                                  netlist=False, accept_loss=True).report["accuracy"]
            start = time.perf_counter()
            tuned = api.convert(ROOT / "models" / name, Path(work) / "out", data=data, normalize=normalize,
                                accept_loss=True).report
        rows.append({"model": name.removesuffix(".onnx"), "data": "mnist" if data == MNIST else data,
                     "original": 100 * at_once["original"], "sharpness_0": 100 * at_once["sharpenable_start"],
                     "spiking_at_once": 100 * at_once["spiking"], "spiking": 100 * tuned["accuracy"]["spiking"],
                     "loss": 100 * (tuned["accuracy"]["original"] - tuned["accuracy"]["spiking"]),
                     "convert_s": time.perf_counter() - start, "timings_s": tuned["timings_s"]})
    return rows


def suite_summary() -> dict | None:
    path = ROOT / "docs" / "suite.json"
    return json.loads(path.read_text()) if path.is_file() else None
