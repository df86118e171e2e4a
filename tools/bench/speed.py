"""Inference speed: onnxruntime throughput of ``spiking.onnx`` against the float original
(same session options, interleaved runs, the median of each), and the explicit netlist
simulator's throughput."""
from __future__ import annotations

import time

import numpy as np


def _session(model_bytes: bytes, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def throughputs(models: dict[str, bytes], x: np.ndarray, threads: int, rounds: int) -> dict[str, float]:
    """Images per second of each model on the batch ``x``: ``rounds`` interleaved rounds of runs lasting
    at least 0.2 s each, the median round."""
    sessions = {name: _session(model, threads) for name, model in models.items()}
    feeds = {name: {s.get_inputs()[0].name: x} for name, s in sessions.items()}
    for name, s in sessions.items():
        s.run(None, feeds[name])
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, s in sessions.items():
            runs, start = 0, time.perf_counter()
            while runs == 0 or time.perf_counter() - start < 0.2:
                s.run(None, feeds[name])
                runs += 1
            rates[name].append(runs * len(x) / (time.perf_counter() - start))
    return {name: float(np.median(values)) for name, values in rates.items()}


def onnx_rows(original: bytes, spiking: bytes, x: np.ndarray, rounds: int) -> list[dict]:
    rows = []
    for batch in (1, 256):
        for threads in (1, 2):
            rates = throughputs({"original": original, "spiking": spiking}, x[:batch], threads, rounds)
            rows.append({"batch": batch, "threads": threads, "original_per_s": rates["original"],
                         "spiking_per_s": rates["spiking"], "ratio": rates["spiking"] / rates["original"]})
    return rows


def simulator_row(out_dir, x: np.ndarray) -> dict:
    from whetstone_onnx.netlist.explicit import read_netlist
    from whetstone_onnx.netlist.sim import simulate_netlist
    from whetstone_onnx.netlist.sim_compile import compile_netlist

    netlist = read_netlist(out_dir)
    steps = compile_netlist(netlist)
    simulate_netlist(netlist, x[:100], steps=steps)
    start = time.perf_counter()
    simulate_netlist(netlist, x, steps=steps, keep_outputs=False)
    return {"images": len(x), "per_s": len(x) / (time.perf_counter() - start)}
