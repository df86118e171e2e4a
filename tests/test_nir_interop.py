"""A real NIR consumer: snnTorch imports the portable model.nir and reproduces its spikes."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import MODELS

torch = pytest.importorskip("torch")
import_nir = pytest.importorskip("snntorch.import_nir")
nir = pytest.importorskip("nir")

from whetstone_onnx import api, runtime  # noqa: E402
from whetstone_onnx.data import fit_to_input, load_dataset  # noqa: E402
from whetstone_onnx.ops.activation import Spike  # noqa: E402


def test_snntorch_reproduces_the_output_spikes_of_the_dense_mnist_model(tmp_path, mnist_dir):
    spec = f"mnist:{mnist_dir}"
    result = api.convert(MODELS / "mnist_dense.onnx", tmp_path, data=spec, finetune=False)
    graph = nir.read(tmp_path / "model.nir")
    assert graph.metadata["profile"] == "portable"
    network = import_nir.import_from_nir(graph)
    mnist = load_dataset(spec)
    x = fit_to_input(mnist.x_test, result.spiking_network.input_shape, None, spec=spec)
    with torch.no_grad():
        output, _state = network(torch.tensor(x))
    spikes = output.numpy()

    layers = result.spiking_network.layers
    code = next(layer for layer in reversed(layers) if isinstance(layer, Spike))
    onnx_spikes = runtime.run(runtime.with_outputs(result.spiking_model, [code.name]), x)[code.name]
    assert spikes.shape == onnx_spikes.shape == (2000, 200)
    mismatched = spikes != onnx_spikes
    # Any difference must be a float tie: the potential within 1e-5 (relative) of the threshold.
    potential = result.spiking_network.forward(x, all_layers=True)[layers.index(code) - 1]
    distance = np.abs(potential - code.threshold.astype(np.float64))
    assert np.all(distance[mismatched] <= 1e-5 * np.abs(potential).max())
    assert mismatched.sum() <= 2
    decoded_onnx = runtime.predict(result.spiking_model, x).argmax(1)
    key = layers[-1].key
    decoded_snntorch = ((2 * spikes - 1) @ (2 * key - 1).T).argmax(1)
    assert np.mean(decoded_snntorch == decoded_onnx) >= 0.999
