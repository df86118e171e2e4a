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


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_depthwise_separable_net_converts_through_every_representation_and_snntorch(tmp_path):
    """MobileNet's block (a depthwise 3x3 convolution, groups = channels, then a pointwise 1x1)
    and a grouped convolution: the spiking ONNX graph, the NumPy reference, NIR, the explicit
    netlist and the simulator agree, and snnTorch reproduces the spikes. NIR 1.0's Conv2d
    ignores its groups when it infers types, so model.nir holds the equal ungrouped kernels."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, groups=8), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 2, groups=4), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(16 * 3 * 3, 10)).eval()
    path = tmp_path / "dwsep.onnx"
    torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, input_names=["input"],
                      dynamic_axes={"input": {0: "batch"}})
    out = tmp_path / "out"
    result = api.convert(path, out, data="digits", finetune=False, accept_loss=True, output="readout")
    equivalence = result.report["equivalence"]
    assert result.passed and equivalence["nir"]["passed"] and equivalence["netlist"]["passed"]
    convs = [layer for layer in result.spiking_network.layers if layer.kind == "conv2d"]
    assert [conv.group for conv in convs] == [1, 8, 1, 4]

    graph = nir.read(out / "model.nir")
    kernels = [node.weight for node in graph.nodes.values() if isinstance(node, nir.Conv2d)]
    assert [kernel.shape[:2] for kernel in kernels] == [(8, 1), (8, 8), (16, 8), (16, 16)]
    np.testing.assert_array_equal(kernels[1][:, :, 1, 1] != 0, np.eye(8, dtype=bool) & (kernels[1][:, :, 1, 1] != 0))
    assert not np.any(kernels[3][:4, 4:]) and not np.any(kernels[3][4:8, :4])

    network = import_nir.import_from_nir(graph)
    x = fit_to_input(load_dataset("digits").x_test, result.spiking_network.input_shape, None, spec="digits")
    # snnTorch runs NIR's per-sample shapes unbatched (its Flatten starts at axis 0): one sample per call.
    with torch.no_grad():
        output = torch.stack([network(torch.tensor(sample))[0] for sample in x])
    # The written readout: the same scores as spiking.onnx's (float rounding aside).
    expected = runtime.predict(result.spiking_model, x)
    np.testing.assert_allclose(output.numpy().reshape(expected.shape), expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())


def test_snntorch_runs_an_autoencoders_readout(tmp_path):
    """--task reconstruct: the NIR graph ends in the readout's Affine; snnTorch computes its real
    values, and the host-side sigmoid and reshape the metadata name give spiking.onnx's output."""
    result = api.convert(MODELS / "digits_autoencoder.onnx", tmp_path, data="digits", task="reconstruct",
                         finetune=False, accept_loss=True)
    graph = nir.read(tmp_path / "model.nir")
    assert str(graph.metadata["readout_activation"]["op_type"]) == "Sigmoid"
    network = import_nir.import_from_nir(graph)
    x = fit_to_input(load_dataset("digits").x_test, (64,), None, spec="digits")
    with torch.no_grad():
        readout, _state = network(torch.tensor(x))
    values = torch.sigmoid(readout).numpy().reshape(len(x), *graph.metadata["output_reshape"])
    expected = runtime.predict(result.spiking_model, x)
    assert values.shape == expected.shape == (360, 8, 8, 1)
    np.testing.assert_allclose(values, expected, atol=1e-5)
