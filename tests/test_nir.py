"""NIR export: every profile round-trips through nir.read and simulates to the
step network's spikes."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import MODELS

nir = pytest.importorskip("nir")

from whetstone_onnx import api  # noqa: E402
from whetstone_onnx.data import fit_to_input, load_dataset  # noqa: E402
from whetstone_onnx.errors import InputError  # noqa: E402
from whetstone_onnx.netlist.nir_export import PROFILES, to_nir  # noqa: E402
from whetstone_onnx.netlist.nir_sim import simulate  # noqa: E402
from whetstone_onnx.ops.activation import Spike  # noqa: E402


@pytest.fixture(scope="module", params=[("digits_dense.onnx", None), ("torchstyle_digits_conv.onnx", (0.5, 0.5)),
                                        ("digits_conv.onnx", None)])
def converted(request):
    model, normalize = request.param
    result = api.convert(MODELS / model, data="digits", normalize=normalize, finetune=False)
    digits = load_dataset("digits")
    x = fit_to_input(digits.x_test, result.spiking_network.input_shape, normalize, spec="digits")
    return result.spiking_network, x


@pytest.mark.parametrize("profile", PROFILES)
def test_nir_file_round_trips_and_simulates_to_the_same_spikes(converted, profile, tmp_path):
    network, x = converted
    graph = to_nir(network, profile=profile)
    path = tmp_path / "model.nir"
    nir.write(path, graph)
    read = nir.read(path)
    assert set(read.nodes) == set(graph.nodes) and sorted(read.edges) == sorted(graph.edges)
    assert "input" in read.nodes and "output" in read.nodes
    kind = {"semantic": nir.Threshold, "portable": nir.LIF, "cuba": nir.CubaLIF}[profile]
    spiking_nodes = [name for name, node in read.nodes.items() if isinstance(node, kind)]
    assert spiking_nodes
    simulated = simulate(read, x)
    reference = network.forward(x, all_layers=True)
    by_name = {layer.name: reference[i] for i, layer in enumerate(network.layers) if isinstance(layer, Spike)}
    layers = read.metadata["spiking_layers"]
    for node, layer in layers.items():
        if layer in by_name:
            agreement = np.mean(simulated[node].reshape(len(x), -1) == by_name[layer].reshape(len(x), -1))
            assert agreement >= 0.9999, (node, agreement)   # float32 NIR vs float64 reference: rare ties only


def test_thresholds_are_strict_versions_of_the_whetstone_ones(converted):
    network, _ = converted
    graph = to_nir(network, profile="semantic")
    first_spike = next(layer for layer in network.layers if isinstance(layer, Spike))
    node = graph.nodes[next(n for n, layer in graph.metadata["spiking_layers"].items() if layer == first_spike.name)]
    expected = np.nextafter(np.broadcast_to(first_spike.threshold, node.threshold.shape).astype(np.float32),
                            np.float32(-np.inf))
    np.testing.assert_array_equal(node.threshold, expected)
    assert "nhot_key" in graph.metadata and graph.metadata["profile"] == "semantic"


def test_unknown_profile_is_an_input_error(converted):
    with pytest.raises(InputError, match="--nir-profile 'loihi'"):
        to_nir(converted[0], profile="loihi")
