"""Zoo throughput: the sample zoo (models/zoo.toml, no fine-tuning) converted with the
local executor at --jobs 1 and 2, and on a Dask LocalCluster of 2 workers.

    python tools/bench_zoo.py [--manifest models/zoo.toml] [--repeats 1]

Prints models per minute (all models of the manifest, whatever their status, over
the batch's wall time: for Dask that includes starting the cluster) and the speed-up
over --jobs 1. Each model runs in its own process, so on N free cores --jobs N should
come close to N times the throughput of --jobs 1.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from whetstone_onnx import api

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = (("local", 1), ("local", 2), ("dask", 2))


def batch_seconds(manifest: Path, executor: str, jobs: int) -> tuple[float, int]:
    """(wall seconds, models) of one batch into a fresh output directory."""
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = api.convert_zoo(manifest, out, jobs=jobs, executor=executor)
        return time.perf_counter() - started, result.summary["total"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=ROOT / "models" / "zoo.toml")
    parser.add_argument("--repeats", type=int, default=1, help="batches per setting (the median is reported)")
    args = parser.parse_args()

    print(f"{args.manifest}, {os.cpu_count()} CPU cores")
    rows = []
    for executor, jobs in SETTINGS:
        runs = [batch_seconds(args.manifest, executor, jobs) for _ in range(args.repeats)]
        seconds, models = statistics.median(run[0] for run in runs), runs[0][1]
        rows.append((executor, jobs, models, seconds, 60 * models / seconds))
    baseline = rows[0][4]
    print(f"{'executor':<9} {'jobs':>4} {'models':>6} {'wall (s)':>9} {'models/min':>11} {'speed-up':>9}")
    for executor, jobs, models, seconds, per_minute in rows:
        print(f"{executor:<9} {jobs:>4} {models:>6} {seconds:>9.1f} {per_minute:>11.1f} {per_minute / baseline:>8.2f}x")


if __name__ == "__main__":
    main()
