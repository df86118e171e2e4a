"""The rate-coded peer: Sinabs (``sinabs.from_torch.from_model``) on the same trained PyTorch
conv net that whetstone_onnx converts, on MNIST images 8000-9999.

The net: Conv 16 (3x3, pad 1) + ReLU + MaxPool 2, Conv 32 (3x3, pad 1) + ReLU + MaxPool 2,
Flatten, Linear 128 + ReLU, Linear 10, trained on images 0-7999 (Adam, lr 1e-3, batch 64,
seeded). Sinabs runs it with integrate-and-fire neurons (threshold 1, subtractive reset)
for T time steps on a constant-current input (the image at every step), single spikes
(at most one per neuron and step) or multi spikes (graded), with the weights as trained
("raw") or normalised on the training data (``sinabs.utils.normalize_weights``, 99th
percentile); the class is the argmax of the output layer summed over the steps.

Operations per inference, for both: the first layer's MACs (it reads the real-valued
image; a constant input is computed once) plus the synaptic events of every spike-driven
layer (each spike times its fan-out): Sinabs' own ``SNNAnalyzer`` counts them, the
explicit netlist's simulator counts whetstone_onnx's, the first layer's input events
taken out.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np

EPOCHS = 5
T_VALUES = (1, 4, 16, 64)
QUICK_T_VALUES = (1, 16)
BATCH = 100


def build():
    import torch.nn as nn

    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))


def train(x: np.ndarray, y: np.ndarray, epochs: int, seed: int = 0):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    model = build()
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(inputs)).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(inputs[batch]), labels[batch]).backward()
            optimizer.step()
    return model.eval()


def first_layer_macs(x_shape=(1, 28, 28)) -> int:
    return 16 * 9 * x_shape[1] * x_shape[2]          # Conv 1 -> 16, 3 x 3, same size


def sinabs_row(model, x_train: np.ndarray, x: np.ndarray, y: np.ndarray, steps: int, spikes: str,
               normalised: bool) -> dict:
    import sinabs.activation as activation
    import torch
    from sinabs.from_torch import from_model
    from sinabs.synopcounter import SNNAnalyzer
    from sinabs.utils import normalize_weights

    ann = copy.deepcopy(model)
    if normalised:
        normalize_weights(ann, torch.from_numpy(x_train[:500]), output_layers=["1", "4", "8"],
                          param_layers=["0", "3", "7", "9"], percentile=99)
    spike_fn = activation.SingleSpike if spikes == "single" else activation.MultiSpike
    snn = from_model(ann, input_shape=(1, 28, 28), spike_fn=spike_fn, num_timesteps=steps, batch_size=BATCH,
                     spike_threshold=1.0, min_v_mem=-1.0).spiking_model
    analyzer = SNNAnalyzer(snn)
    correct = 0
    start = time.perf_counter()
    with torch.no_grad():
        for first in range(0, len(x), BATCH):
            batch = torch.from_numpy(x[first:first + BATCH])
            for layer in snn.modules():
                if hasattr(layer, "reset_states"):
                    layer.reset_states()
            repeated = batch.unsqueeze(1).repeat(1, steps, 1, 1, 1).flatten(0, 1)     # (batch x T, C, H, W)
            out = snn(repeated).unflatten(0, (len(batch), steps)).sum(1)
            correct += int((out.argmax(1).numpy() == y[first:first + BATCH]).sum())
    wall = time.perf_counter() - start
    # Per inference (the batches' mean); spike-driven layers only: the first reads the image, its
    # MACs are counted once below.
    layers = analyzer.get_layer_statistics(average=True)["parameter"]
    events = sum(float(stats["synops"]) for name, stats in layers.items() if name != "0")
    return {"method": "sinabs", "T": steps, "spikes": spikes, "weights": "normalised" if normalised else "raw",
            "accuracy": 100.0 * correct / len(x), "ops": first_layer_macs() + events,
            "s_per_1000": 1000.0 * wall / len(x)}


def whetstone_row(result, out: Path, x: np.ndarray, y: np.ndarray, wall: float) -> dict:
    from whetstone_onnx.netlist.explicit import read_netlist
    from whetstone_onnx.netlist.sim import simulate_netlist

    netlist = read_netlist(out)
    inputs = netlist.header["input"]["neurons"]
    fan_out = np.zeros(inputs)
    for projection in netlist.projections:
        pre = netlist.projection_synapses(projection)["pre"].astype(np.int64)
        np.add.at(fan_out, pre[pre < inputs], 1)
    start = time.perf_counter()
    simulated = simulate_netlist(netlist, x)
    sim_wall = time.perf_counter() - start
    input_events = float(((x.reshape(len(x), -1) != 0) @ fan_out).mean())
    return {"method": "whetstone_onnx", "T": 1, "spikes": "single", "weights": "fine-tuned",
            "accuracy": 100.0 * float(np.mean(simulated.classes == y)),
            "ops": first_layer_macs() + simulated.synops - input_events,
            "s_per_1000": 1000.0 * sim_wall / len(x), "conversion_s": wall}
