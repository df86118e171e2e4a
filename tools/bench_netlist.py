"""Benchmark: explicit netlist export and the reference simulator.

Nets: the step network of models/mnist_conv.onnx (``api.convert(..., finetune=False)``)
and a synthetic spiking conv net of > 10 million synapses built directly as a
``Network``. Each export runs in a fresh subprocess so its peak resident memory
(``ru_maxrss``) is its own; the baseline after imports and building the network is
reported beside it (peak = VmHWM of the child's own image). Then the reference simulator's throughput on the
written netlist (``whetstone_onnx.netlist.sim``: keeping only the output population, and keeping every population's
spikes) and the NIR simulator's on the network's NIR graph are compared with onnxruntime on the same step
network emitted as ONNX, all measured in this run (best of ``--repeat`` runs each), on all cores and, for
the reference simulator and onnxruntime, on one thread each; and SynOps (synaptic events actually
triggered) with the float model's MACs per inference.

    python tools/bench_netlist.py [--mnist DIR] [--samples N] [--repeat R] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from whetstone_onnx.network import Network  # noqa: E402
from whetstone_onnx.ops.activation import Spike  # noqa: E402
from whetstone_onnx.ops.conv import Conv2d  # noqa: E402
from whetstone_onnx.ops.dense import Dense  # noqa: E402
from whetstone_onnx.ops.pool import MaxPool2d  # noqa: E402
from whetstone_onnx.ops.shape import Reshape  # noqa: E402


def synthetic_conv_net(seed: int = 0) -> Network:
    """(3, 64, 64) -> conv 16 -> pool -> conv 32 -> conv 32 -> pool -> dense readout: about 16 M synapses."""
    rng = np.random.default_rng(seed)
    layers, shape = [], (3, 64, 64)

    def conv(name, out_ch):
        nonlocal shape
        fan_in = shape[0] * 9
        weight = (rng.standard_normal((out_ch, shape[0], 3, 3)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        layer = Conv2d(name, weight, None, (1, 1), (1, 1, 1, 1))
        shape = layer.output_shape(shape)
        # Thresholds near the potential's spread, so a fair share of neurons fire.
        layers.extend([layer, Spike(f"{name}_spike", np.full((out_ch, 1, 1), 0.6, np.float32))])

    def pool(name):
        nonlocal shape
        layer = MaxPool2d(name, (2, 2), (2, 2))
        shape = layer.output_shape(shape)
        layers.append(layer)

    conv("conv1", 16)
    pool("pool1")
    conv("conv2", 32)
    conv("conv3", 32)
    pool("pool2")
    flat = int(np.prod(shape))
    layers += [Reshape("flatten", (flat,)),
               Dense("readout", (rng.standard_normal((10, flat)) / np.sqrt(flat)).astype(np.float32), None)]
    return Network("input", (3, 64, 64), "output", layers, num_classes=10)


def _peak_rss_mib() -> float:
    """Peak resident memory of this process image: VmHWM (ru_maxrss would include the
    forking parent's peak, which Linux carries across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(network_pickle: str, out_dir: str) -> None:
    """Run one export and print its numbers as JSON (called in a subprocess)."""
    from whetstone_onnx.netlist.explicit import write_netlist
    if network_pickle == "synthetic":
        network = synthetic_conv_net()
    else:
        with open(network_pickle, "rb") as f:
            network = pickle.load(f)
    baseline = _peak_rss_mib()
    start = time.perf_counter()
    stats = write_netlist(network, Path(out_dir))
    seconds = time.perf_counter() - start
    peak = _peak_rss_mib()
    print(json.dumps({"export_s": seconds, "peak_rss_mib": peak, "baseline_rss_mib": baseline,
                      "stats": stats.to_dict()}))


def export_in_subprocess(network_pickle: str, out_dir: Path) -> dict:
    run = subprocess.run([sys.executable, __file__, "--child", network_pickle, str(out_dir)],
                         capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(run.stdout.strip().splitlines()[-1])


def _best_seconds(run, repeat: int) -> tuple[float, object]:
    """The fastest of ``repeat`` runs (other load on the machine only ever slows a run down) and its result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def _onnxruntime(model, threads: int | None):
    """A function running ``model`` on a batch like ``runtime.run`` (1024 samples per call), on ``threads``
    intra-op threads (None: onnxruntime's default, one per core)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: np.concatenate([session.run(None, {name: x[s:s + 1024].astype(np.float32)})[0]
                                     for s in range(0, len(x), 1024)])


def throughput(network: Network, out_dir: Path, x: np.ndarray, repeat: int) -> dict:
    """Images per second of the simulators and onnxruntime on all cores, and of the reference simulator
    and onnxruntime on one thread each (a ratio other load on the machine distorts less)."""
    from whetstone_onnx.emit import to_onnx
    from whetstone_onnx.netlist.explicit import read_netlist
    from whetstone_onnx.netlist.nir_export import to_nir
    from whetstone_onnx.netlist.nir_sim import simulate
    from whetstone_onnx.netlist.sim import compile_netlist, simulate_netlist
    netlist = read_netlist(out_dir)
    compile_s, steps = _best_seconds(lambda: compile_netlist(netlist), 1)
    model = to_onnx(network, graph_name="s")
    seconds = {}
    for threads in (None, 1):
        ort_run = _onnxruntime(model, threads)
        ort_run(x[:8])     # warm up the session
        seconds[threads] = (
            _best_seconds(lambda: simulate_netlist(netlist, x, steps=steps, keep_outputs=False, workers=threads),
                          repeat),
            _best_seconds(lambda: ort_run(x), repeat))
    (sim_s, simulated), (ort_s, onnx_out) = seconds[None]
    (sim_1_s, _), (ort_1_s, _) = seconds[1]
    sim_all_s, _ = _best_seconds(lambda: simulate_netlist(netlist, x, steps=steps), repeat)
    graph = to_nir(network)
    nir_s, _ = _best_seconds(lambda: simulate(graph, x), repeat)
    agree = float(np.mean(onnx_out.reshape(len(x), -1).argmax(1) == simulated.classes))
    model_macs = network.macs()
    return {"samples": len(x), "compile_s": compile_s, "fast_steps": sum(s.fallback is None for s in steps),
            "steps": len(steps), "sim_images_per_s": len(x) / sim_s, "sim_all_images_per_s": len(x) / sim_all_s,
            "nir_images_per_s": len(x) / nir_s, "onnxruntime_images_per_s": len(x) / ort_s,
            "sim_over_onnxruntime": ort_s / sim_s, "sim_1_thread_images_per_s": len(x) / sim_1_s,
            "onnxruntime_1_thread_images_per_s": len(x) / ort_1_s, "sim_over_onnxruntime_1_thread": ort_1_s / sim_1_s,
            "class_agreement_with_onnxruntime": agree,
            "synops": simulated.synops, "macs": model_macs, "synops_over_macs": simulated.synops / model_macs,
            "spike_rate": simulated.spike_rate}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--samples", type=int, default=2000, help="MNIST test images for the throughput")
    parser.add_argument("--synthetic-samples", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each simulator (the best counts)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0

    from whetstone_onnx import api
    from whetstone_onnx.data import fit_to_input, load_dataset
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dataset = load_dataset(f"mnist:{args.mnist}")
        converted = api.convert(ROOT / "models" / "mnist_conv.onnx", data=dataset, finetune=False)
        mnist_net = converted.spiking_network
        with open(tmp / "mnist.pkl", "wb") as f:
            pickle.dump(mnist_net, f)
        x = fit_to_input(dataset.x_test, mnist_net.input_shape, None, spec=dataset.spec)[:args.samples]
        for name, source, network, inputs in (
                ("mnist_conv", str(tmp / "mnist.pkl"), mnist_net, x),
                ("synthetic_conv", "synthetic", synthetic_conv_net(),
                 np.random.default_rng(1).random((args.synthetic_samples, 3, 64, 64)).astype(np.float32))):
            out = tmp / name
            export = export_in_subprocess(source, out)
            stats = export.pop("stats")
            results[name] = {**export, "neurons": stats["neurons"], "synapses": stats["synapses"],
                             "bytes": sum(stats["file_bytes"].values()), "max_fan_in": stats["max_fan_in"],
                             **throughput(network, out, inputs, args.repeat)}
            results[name]["fast_paths"] = f"{results[name]['fast_steps']} / {results[name]['steps']}"
    rows = [("export time (s)", "export_s", "{:.2f}"), ("neurons", "neurons", "{:,}"),
            ("synapses", "synapses", "{:,}"), ("files (MiB)", "bytes", None),
            ("peak RSS (MiB)", "peak_rss_mib", "{:.0f}"), ("  after imports+net (MiB)", "baseline_rss_mib", "{:.0f}"),
            ("sim compile (s)", "compile_s", "{:.2f}"), ("sim fast-path steps", "fast_paths", "{}"),
            ("sim images/s", "sim_images_per_s", "{:.1f}"),
            ("  keeping all spikes", "sim_all_images_per_s", "{:.1f}"),
            ("NIR sim images/s", "nir_images_per_s", "{:.1f}"),
            ("onnxruntime images/s", "onnxruntime_images_per_s", "{:.1f}"),
            ("sim / onnxruntime speed", "sim_over_onnxruntime", "{:.3f}"),
            ("1 thread: sim images/s", "sim_1_thread_images_per_s", "{:.1f}"),
            ("1 thread: onnxruntime", "onnxruntime_1_thread_images_per_s", "{:.1f}"),
            ("1 thread: sim / onnxruntime", "sim_over_onnxruntime_1_thread", "{:.3f}"),
            ("classes agree with ORT", "class_agreement_with_onnxruntime", "{:.4f}"),
            ("SynOps / inference", "synops", "{:,.0f}"), ("MACs / inference", "macs", "{:,}"),
            ("SynOps / MACs", "synops_over_macs", "{:.3f}")]
    names = list(results)
    print(f"{'':28}" + "".join(f"{n:>18}" for n in names))
    for label, key, fmt in rows:
        cells = [f"{results[n][key] / 2**20:.1f}" if fmt is None else fmt.format(results[n][key]) for n in names]
        print(f"{label:28}" + "".join(f"{c:>18}" for c in cells))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
