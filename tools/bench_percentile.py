"""Benchmark: how the calibration percentile trades accuracy at sharpness 0
against spiking accuracy with no fine-tuning, on the fixture models.

    python tools/bench_percentile.py [--percentiles 99.9,99,95,90,80]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from whetstone_onnx import api

ROOT = Path(__file__).resolve().parents[1]
MNIST = f"mnist:{ROOT.parent / 'shared' / 'data' / 'mnist'}"
CASES = [("digits_dense", "digits", None), ("digits_conv", "digits", None), ("mnist_dense", MNIST, None),
         ("mnist_conv", MNIST, None), ("torchstyle_mnist_conv", MNIST, (0.5, 0.5))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--percentiles", default="99.9,99,95,90,80")
    args = parser.parse_args()
    percentiles = [float(p) for p in args.percentiles.split(",")]
    print(f"{'model':<24}{'output':<9}{'original':>9}" + "".join(f"{f'p{p:g} s0/spk':>16}" for p in percentiles))
    for name, data, normalize in CASES:
        for output in ("nhot", "readout"):
            cells, original = [], None
            for percentile in percentiles:
                accuracy = api.convert(ROOT / "models" / f"{name}.onnx", data=data, normalize=normalize,
                                       output=output, calibration_percentile=percentile).accuracy
                original = accuracy["original"]
                cells.append(f"{100 * accuracy['sharpenable']:6.1f}/{100 * accuracy['spiking']:5.1f}")
            print(f"{name:<24}{output:<9}{100 * original:>9.1f}" + "".join(f"{c:>16}" for c in cells))


if __name__ == "__main__":
    main()
