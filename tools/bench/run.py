"""The benchmark: accuracy, a rate-coded peer, speed and scaling, written to BENCHMARKS.md.

    python tools/bench/run.py [--quick] [--out DIR] [--sections peer,speed,scaling,accuracy]

One command (about 25 minutes on 2 cores; ``--quick`` about 4) that measures and writes
``BENCHMARKS.md``, ``BENCHMARKS.json`` (every figure, the machine, the package versions and
the date) and ``BENCHMARKS.png`` (accuracy against operations per inference) into the
repository root (``--out``):

* peer (peer.py): a PyTorch MNIST conv net trained here, converted by whetstone_onnx
  (default options, one time step) and run by Sinabs at T = 1, 4, 16, 64 (``--quick``: 1 and
  16, on 500 images), single and multi spike, raw and normalised weights: accuracy,
  operations per inference, seconds per 1,000 images (on images 8000-8999). Needs the ``bench`` extra
  (``pip install -e ".[bench]"``); without Sinabs the section says so.
* speed (speed.py): onnxruntime throughput of that net's ``spiking.onnx`` against the
  original (batch 1 and 256, 1 and 2 threads, interleaved medians), the explicit netlist
  simulator's throughput, conversion time per stage, a fine-tuning epoch against a plain
  Keras epoch of the same float network.
* scaling (scaling.py): passes + emission time for MLPs of 10 to 1,000 layers and conv nets
  of 10^5 to 10^7 synapses, with the fitted growth exponents.
* accuracy (accuracy.py): the fixtures (``--quick``: digits_dense) with and without
  fine-tuning; the generalisation suite's last run (docs/suite.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from datetime import date
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import accuracy  # noqa: E402
import peer  # noqa: E402
import scaling  # noqa: E402
import speed  # noqa: E402

SECTIONS = ("peer", "speed", "scaling", "accuracy")
# Issue 16's targets.
THROUGHPUT_TARGET = 0.9          # spiking.onnx / original at batch 256
EXPONENT_TARGET = 1.1


def machine() -> dict:
    from whetstone_onnx.report import package_versions

    versions = package_versions()
    for name in ("torch", "sinabs"):
        try:
            from importlib import metadata
            versions[name] = metadata.version(name)
        except Exception:  # noqa: BLE001 (not installed)
            versions[name] = None
    return {"date": date.today().isoformat(), "platform": platform.platform(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "versions": versions}


def peer_and_speed(quick: bool, sections: set[str], work: Path) -> dict:
    """Train the peer net, convert it, and measure what the peer and speed sections ask for."""
    import torch

    from whetstone_onnx import api
    from whetstone_onnx.data import load_dataset

    sys.path.insert(0, str(ROOT / "tools"))
    from bench_activations import export

    dataset = load_dataset(accuracy.MNIST)
    x_train, x_test = dataset.x_train.reshape(-1, 1, 28, 28), dataset.x_test.reshape(-1, 1, 28, 28)
    # Sinabs runs every time step in PyTorch: 1,000 images keep the full run under 30 minutes.
    images = 500 if quick else 1000
    start = time.perf_counter()
    model = peer.train(x_train, dataset.y_train, 2 if quick else peer.EPOCHS)
    train_s = time.perf_counter() - start
    path = work / "mnist_cnn.onnx"
    export(model, path, (1, 1, 28, 28))
    with torch.no_grad():
        original_accuracy = 100.0 * float((model(torch.from_numpy(x_test)).argmax(1).numpy() == dataset.y_test).mean())
    start = time.perf_counter()
    finetune = api.FinetuneOptions(effort="quick" if quick else "default")
    result = api.convert(path, work / "out", data=accuracy.MNIST, finetune=finetune, accept_loss=True)
    convert_s = time.perf_counter() - start
    report = result.report
    out: dict = {"net": {"train_s": train_s, "original_accuracy": original_accuracy,
                         "spiking_accuracy": 100 * report["accuracy"]["spiking"],
                         "macs": report["netlist"]["macs_per_inference"], "convert_s": convert_s}}
    if "peer" in sections:
        rows = [peer.whetstone_row(result, work / "out", x_test[:images], dataset.y_test[:images], convert_s)]
        try:
            import sinabs  # noqa: F401
        except ImportError:
            out["peer"] = {"rows": rows, "skipped": "Sinabs is not installed (pip install -e \".[bench]\")"}
        else:
            for steps in peer.QUICK_T_VALUES if quick else peer.T_VALUES:
                for spikes in ("single", "multi"):
                    for normalised in (False, True):
                        rows.append(peer.sinabs_row(model, x_train, x_test[:images], dataset.y_test[:images],
                                                    steps, spikes, normalised))
                        print(f"  sinabs T={steps} {spikes} {'normalised' if normalised else 'raw'}: "
                              f"{rows[-1]['accuracy']:.2f} %", flush=True)
            out["peer"] = {"rows": rows, "images": images}
    if "speed" in sections:
        spiking = (work / "out" / "spiking.onnx").read_bytes()
        out["speed"] = {"onnxruntime": speed.onnx_rows(path.read_bytes(), spiking, x_test[:256], 3 if quick else 7),
                        "simulator": speed.simulator_row(work / "out", x_test[:images]),
                        "stages_s": report["timings_s"],
                        "epochs": finetune_epoch_seconds(path, x_train[:7200], dataset.y_train[:7200], report)}
    return out


def finetune_epoch_seconds(path: Path, x: np.ndarray, y: np.ndarray, report: dict) -> dict:
    """A fine-tuning epoch (the stage's time over the epochs it ran) against one epoch of plain Keras
    training of the same float network on as many samples, batch 64."""
    import keras

    from whetstone_onnx.conversion import float_network
    from whetstone_onnx.keras.build import build_keras
    from whetstone_onnx.load import load_model

    model = build_keras(float_network(load_model(path))[0]).model
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:640], y[:640], epochs=1, batch_size=64, verbose=0)          # tracing, not timed
    start = time.perf_counter()
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    epochs = len(report["finetune"]["history"])
    return {"finetune_epoch_s": report["timings_s"]["finetune"] / epochs, "plain_keras_epoch_s":
            time.perf_counter() - start, "finetune_epochs": epochs}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for (spikes, weights), marker in zip([("single", "raw"), ("single", "normalised"), ("multi", "raw"),
                                          ("multi", "normalised")], "os^v"):
        chosen = sorted((r for r in rows if r["method"] == "sinabs" and r["spikes"] == spikes
                         and r["weights"] == weights), key=lambda r: r["T"])
        if chosen:
            axis.plot([r["ops"] for r in chosen], [r["accuracy"] for r in chosen], marker=marker,
                      label=f"Sinabs, {spikes} spike, {weights} (T = {', '.join(str(r['T']) for r in chosen)})")
    ours = [r for r in rows if r["method"] == "whetstone_onnx"]
    axis.plot([r["ops"] for r in ours], [r["accuracy"] for r in ours], "k*", markersize=14,
              label="whetstone_onnx (T = 1)")
    axis.set_xscale("log")
    axis.set_xlabel("operations per inference (first-layer MACs + SynOps)")
    axis.set_ylabel("accuracy on MNIST images 8000- (%)")
    axis.set_ylim(bottom=max(0.0, min(r["accuracy"] for r in rows) - 5))
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small", loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(figure)


def markdown(results: dict, quick: bool) -> str:
    m = results["machine"]
    lines = ["# Benchmarks", "",
             f"Measured {m['date']} on {m['platform']} ({m['cpus']} CPUs) with `python tools/bench/run.py"
             f"{' --quick' if quick else ''}` (every figure also in `BENCHMARKS.json`). Versions: "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + ".", ""]
    net = results.get("net")
    if net:
        lines += ["The peer and speed sections use one PyTorch MNIST conv net trained here (Conv 16 + ReLU + "
                  "MaxPool, Conv 32 + ReLU + MaxPool, Dense 128 + ReLU, Dense 10; images 0-7999, "
                  f"{net['train_s']:.0f} s), scored on images 8000-9999: {net['original_accuracy']:.2f} % as "
                  f"trained, {net['spiking_accuracy']:.2f} % after whetstone_onnx's conversion "
                  f"({net['convert_s']:.0f} s, default options: fine-tuning trains on from the given weights), "
                  f"{net['macs']:,} MACs per inference.", ""]
    if "peer" in results:
        rows = results["peer"]["rows"]
        lines += ["## Against a rate-coded converter (Sinabs)", ""]
        if "skipped" in results["peer"]:
            lines += [f"Sinabs rows skipped: {results['peer']['skipped']}.", ""]
        lines += ["Operations per inference: the first layer's MACs (it reads the real-valued image once) plus "
                  "every synaptic event of the spike-driven layers (Sinabs' SNNAnalyzer; the explicit netlist "
                  "simulator for whetstone_onnx). Time: seconds per 1,000 images on this machine "
                  "(Sinabs: PyTorch, all time steps; whetstone_onnx: the NumPy netlist simulator). Accuracy on "
                  f"images 8000-{7999 + results['peer'].get('images', 1000)}.", "",
                  "| method | time steps | spikes | weights | accuracy % | operations / inference | vs float MACs "
                  "| s / 1,000 images |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['method']} | {r['T']} | {r['spikes']} | {r['weights']} | {r['accuracy']:.2f} | "
                         f"{r['ops']:,.0f} | {r['ops'] / net['macs']:.2f}x | {r['s_per_1000']:.2f} |")
        ours = next(r for r in rows if r["method"] == "whetstone_onnx")
        lines += [""] + peer_verdict(ours, [r for r in rows if r["method"] == "sinabs"]) + [
            "", "![accuracy against operations](BENCHMARKS.png)", ""]
    if "speed" in results:
        s = results["speed"]
        lines += ["## Speed", "", "onnxruntime (CPU, interleaved runs, medians), images per second:", "",
                  "| batch | threads | original | spiking.onnx | ratio |", "|---|---|---|---|---|"]
        for r in s["onnxruntime"]:
            lines.append(f"| {r['batch']} | {r['threads']} | {r['original_per_s']:,.0f} | {r['spiking_per_s']:,.0f} "
                         f"| {r['ratio']:.2f}x |")
        at_256 = [r["ratio"] for r in s["onnxruntime"] if r["batch"] == 256]
        lines += ["", f"Target: spiking.onnx >= {THROUGHPUT_TARGET}x the original at batch 256: "
                  f"{'met' if min(at_256) >= THROUGHPUT_TARGET else 'NOT met'} "
                  f"({', '.join(f'{v:.2f}x' for v in at_256)} with 1 and 2 threads). spiking.onnx pools the "
                  "potentials before each step (docs/spiking-ops.md), so the convolutions and poolings run in "
                  "onnxruntime's blocked layout as the original's do; the steps themselves (a compare and a cast) "
                  "run outside it, with a reorder out of it and back in per convolution layer, and gain less from a "
                  "second thread than the convolutions.", "",
                  f"Explicit netlist simulator: {s['simulator']['per_s']:,.0f} images per second "
                  f"({s['simulator']['images']} images).", "",
                  "Conversion time per stage (s): " + ", ".join(f"{k} {v:.1f}" for k, v in s["stages_s"].items())
                  + ".", "",
                  f"A fine-tuning epoch takes {s['epochs']['finetune_epoch_s']:.1f} s "
                  f"({s['epochs']['finetune_epochs']} epochs, scored on held-out and test data after each) against "
                  f"{s['epochs']['plain_keras_epoch_s']:.1f} s for a plain Keras epoch of the float network.", ""]
    if "scaling" in results:
        sc = results["scaling"]
        lines += ["## Scaling", "", "ONNX passes, network passes and emission (no training, no netlists):", "",
                  "| MLP layers | seconds |", "|---|---|"]
        lines += [f"| {r['layers']} | {r['seconds']:.3f} |" for r in sc["mlp"]]
        lines += ["", "| conv net synapses | seconds |", "|---|---|"]
        lines += [f"| {r['synapses']:,} | {r['seconds']:.3f} |" for r in sc["conv"]]
        lines += ["", f"Growth exponents (log-log fit): {sc['mlp_exponent']:.2f} in the layers, "
                  f"{sc['conv_exponent']:.2f} in the synapses; target <= {EXPONENT_TARGET}: "
                  f"{'met' if max(sc['mlp_exponent'], sc['conv_exponent']) <= EXPONENT_TARGET else 'NOT met'}.", ""]
    if "accuracy" in results:
        a = results["accuracy"]
        lines += ["## Accuracy", "", "The fixtures (`models/`), held-out splits (digits: 360 images; MNIST: "
                  "images 8000-9999), %:", "",
                  "| model | data | original | sharpness 0 | spiking, sharpened at once | spiking, fine-tuned | loss "
                  "| time s |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['data']} | {r['original']:.2f} | {r['sharpness_0']:.2f} | "
                  f"{r['spiking_at_once']:.2f} | {r['spiking']:.2f} | {r['loss']:+.2f} | {r['convert_s']:.0f} |"
                  for r in a["fixtures"]]
        suite = a.get("suite")
        if suite:
            lines += ["", f"The generalisation suite: {len(suite['rows'])} models trained and exported elsewhere "
                      "(`models/suite/`), from the last run of `tools/bench_suite.py` (`docs/suite.md`; about 70 "
                      "minutes, so not rerun here), fine-tuned with default options:", "",
                      "| model | data | original | sharpness 0 | spiking | loss |", "|---|---|---|---|---|---|"]
            lines += [f"| {r['model']} | {r['data']} | {r['original']:.2f} | {r['sharpness_0']:.2f} | "
                      f"{r['spiking']:.2f} | {r['loss']:+.2f} |" for r in suite["rows"]]
            lines += [""] + [f"- {name}: mean loss {v['mean_loss']:+.2f}, worst {v['worst_loss']:+.2f} points"
                             for name, v in suite["summary"].items() if isinstance(v, dict)] + [""]
    return "\n".join(lines) + "\n"


def peer_verdict(ours: dict, sinabs: list[dict]) -> list[str]:
    """The comparison issue 16 asks for, in words: the fewest operations at which Sinabs matches
    whetstone_onnx's accuracy, with binary and with graded spikes."""
    lines = []
    for spikes, want in (("single", 10.0), ("multi", 1.0)):
        runs = [r for r in sinabs if r["spikes"] == spikes]
        matching = [r for r in runs if r["accuracy"] >= ours["accuracy"]]
        if not matching and runs:
            best = max(runs, key=lambda r: (r["accuracy"], -r["ops"]))
            lines.append(f"- Sinabs with {spikes} spikes does not reach whetstone_onnx's {ours['accuracy']:.2f} % "
                         f"at any T measured; its best, {best['accuracy']:.2f} % (T = {best['T']}, {best['weights']} "
                         f"weights), takes {best['ops'] / ours['ops']:.1f}x whetstone_onnx's operations.")
            continue
        if not matching:
            continue
        best = min(matching, key=lambda r: r["ops"])
        ratio = best["ops"] / ours["ops"]
        goal = f">= {want:g}x" if spikes == "single" else "> 1x"
        met = ratio >= want if spikes == "single" else ratio > want
        lines.append(f"- Sinabs with {spikes} spikes first matches {ours['accuracy']:.2f} % at T = {best['T']} "
                     f"({best['weights']} weights, {best['accuracy']:.2f} %) with {ratio:.1f}x whetstone_onnx's "
                     f"operations (target {goal}: {'met' if met else 'NOT met'}).")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer models, images and repeats (about 4 minutes)")
    parser.add_argument("--out", type=Path, default=ROOT, help="where BENCHMARKS.md/.json/.png go (default: the "
                                                               "repository root)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"a subset of {', '.join(SECTIONS)}")
    parser.add_argument("--render", type=Path, metavar="JSON", help="measure nothing: write BENCHMARKS.md and "
                                                                     ".png from an earlier run's BENCHMARKS.json")
    args = parser.parse_args()
    if args.render:
        write(json.loads(args.render.read_text()), args.out)
        return 0
    sections = set(args.sections.split(","))
    if sections - set(SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(sections - set(SECTIONS)))}")
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    results: dict = {"machine": machine(), "quick": args.quick}
    with tempfile.TemporaryDirectory(prefix="bench_") as work:
        if sections & {"peer", "speed"}:
            print("peer net: training, converting, measuring", flush=True)
            results.update(peer_and_speed(args.quick, sections, Path(work)))
    if "scaling" in sections:
        print("scaling", flush=True)
        results["scaling"] = scaling.rows(args.quick)
    if "accuracy" in sections:
        print("accuracy: the fixtures", flush=True)
        results["accuracy"] = {"fixtures": accuracy.fixture_rows(args.quick), "suite": accuracy.suite_summary()}
    results["wall_s"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "BENCHMARKS.json").write_text(json.dumps(results, indent=2) + "\n")
    write(results, args.out)
    print(f"wrote {args.out / 'BENCHMARKS.md'} in {results['wall_s'] / 60:.1f} minutes")
    return 0


def write(results: dict, out: Path) -> None:
    """BENCHMARKS.md (and the plot) of one run's results."""
    out.mkdir(parents=True, exist_ok=True)
    if "peer" in results:
        plot(results["peer"]["rows"], out / "BENCHMARKS.png")
    (out / "BENCHMARKS.md").write_text(markdown(results, results["quick"])
                                       + f"\nThe whole run took {results['wall_s'] / 60:.1f} minutes.\n")


if __name__ == "__main__":
    sys.exit(main())
