"""Graph networks: residual (Add), Inception-style (Concat) and branching models through every
representation -- the Network's links and edits, the passes, Keras, spiking ONNX, NumPy, NIR
(re-read) and the explicit netlist."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import graph_model, run_cli
from exporters import GRAPH_KINDS, UNTANGLED_KINDS, torch_export, torch_graph_model
from onnx import helper

from whetstone_onnx import api
from whetstone_onnx.conversion import float_network, sharpenable_passes
from whetstone_onnx.errors import UnsupportedModelError
from whetstone_onnx.load import load_model
from whetstone_onnx.network import Network
from whetstone_onnx.network_passes.branches import untangle_branches
from whetstone_onnx.ops.activation import Sharpenable
from whetstone_onnx.ops.dense import Dense
from whetstone_onnx.ops.merge import Add
from whetstone_onnx.ops.shape import Reshape


def residual_mlp() -> Network:
    """x -> d1 -> r1 -> d2 -> add(d2, r1) -> r2 -> out: a residual block over vectors."""
    rng = np.random.default_rng(0)
    w = lambda o, i: rng.standard_normal((o, i)).astype(np.float32) * 0.5  # noqa: E731
    network = Network("x", (4,), "y", [
        Dense("d1", w(6, 4), np.zeros(6, np.float32)), Sharpenable("r1", "bounded_relu", 0.0),
        Dense("d2", w(6, 6), np.ones(6, np.float32)), Add("add", np.ones((2, 6), np.float32), 1),
        Sharpenable("r2", "bounded_relu", 0.0), Dense("out", w(3, 6), None)])
    network.links = {"add": ("d2", "r1")}
    return network


def test_links_record_only_what_is_not_the_layer_before_and_survive_edits():
    network = residual_mlp()
    assert network.sources(2) == ("r1",) and network.sources(3) == ("d2", "r1")
    assert network.consumers(1) == [2, 3] and network.follower(1) is None      # r1 feeds two layers
    assert network.follower(2) is None and network.only_reader(2) == 3        # the Add also reads r1
    assert network.follower(3) == 4 and network.producer(4) == 3
    before = network.forward(np.random.default_rng(1).standard_normal((5, 4)))
    # A reshape inserted after d2 and removed again, and a swap, keep the function and the links minimal.
    network.layers.insert(3, Reshape("flat", (6,)))
    network.links["add"] = ("flat", "r1")
    network.remove(3)
    assert network.links == {"add": ("d2", "r1")}
    network.layers.insert(5, Reshape("flat2", (6,)))       # after r2: r2 -> flat2 -> out
    network.swap_with_follower(4)                           # flat2 before r2: add -> flat2 -> r2
    assert [layer.name for layer in network.layers[3:6]] == ["add", "flat2", "r2"]
    assert network.links == {"add": ("d2", "r1")}
    np.testing.assert_allclose(network.forward(np.random.default_rng(1).standard_normal((5, 4))), before)


def test_the_walk_gives_each_merge_its_inputs_values():
    network = residual_mlp()
    x = np.random.default_rng(2).standard_normal((3, 4))
    outputs = network.forward(x, all_layers=True)
    np.testing.assert_allclose(outputs[3], outputs[2] + outputs[1])
    assert network.shapes()[3] == (6,) and network.macs() == 6 * 4 + 6 * 6 + 3 * 6


@pytest.fixture(scope="module")
def graph_models(tmp_path_factory):
    """The branching PyTorch models of tests/exporters.py, untrained (seeded), TorchScript exporter."""
    pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("graphs")
    return {kind: torch_export(folder, kind, dynamo=False) for kind in GRAPH_KINDS}


@pytest.mark.parametrize("kind", GRAPH_KINDS)
def test_branching_models_convert_and_every_representation_agrees(tmp_path, graph_models, kind):
    out = tmp_path / "out"
    result = api.convert(graph_models[kind], out, data="digits", finetune=False, accept_loss=True)
    report = result.report
    equivalence = report["equivalence"]
    assert report["passed"] and equivalence["float"]["relative_diff"] <= 1e-4
    assert equivalence["spiking"]["unexplained"] == 0
    assert equivalence["nir"]["passed"] and equivalence["netlist"]["passed"]
    kinds = [row["kind"] for row in report["layers"]]
    assert {"resnet": "add", "inception": "concat"}[kind] in kinds
    merges = [row for row in report["layers"] if row["kind"] in ("add", "concat")]
    assert all(len(row["inputs"]) >= 2 for row in merges)
    # The written files, re-read (model.nir by nir.read) and checked again from the folder.
    checked = api.check_outputs(out)
    assert checked.passed and {"spiking.onnx vs netlist", "spiking.onnx vs model.nir"} <= set(checked.comparisons)
    header = json.loads((out / "netlist.json").read_text())
    posts = [projection["post"] for projection in header["projections"]]
    assert len({projection["name"] for projection in header["projections"]}) == len(header["projections"])
    if kind == "resnet":      # the sums of the residual blocks: one population fed by two projections each
        assert sum(posts.count(post) == 2 for post in set(posts)) == 2
        identity = [p for p in header["projections"] if (p["connectivity"] or {}).get("kind") == "identity"]
        assert len(identity) == 1                         # the identity shortcut
    else:                     # the 1x1 conv over the concatenation reads three populations
        assert max(len(projection["pre"]) for projection in header["projections"]) == 3


def test_a_residual_mlp_converts_with_its_sum_over_vectors(tmp_path):
    torch = pytest.importorskip("torch")
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Sequential(nn.Linear(32, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 32))

        def forward(self, x):
            return torch.relu(x + self.inner(x))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), Block(), nn.Linear(32, 10)).eval()
    path = tmp_path / "residual_mlp.onnx"
    torch.onnx.export(model, (torch.zeros(1, 8, 8),), str(path), dynamo=False,
                      dynamic_axes={"input": {0: "batch"}}, input_names=["input"])
    result = api.convert(path, tmp_path / "out", data="digits", finetune=False, accept_loss=True)
    assert result.report["passed"] and result.report["equivalence"]["netlist"]["passed"]


def test_an_activation_after_a_concatenation_moves_onto_each_part(tmp_path):
    """relu(cat(a(x), b(x))) == cat(relu(a(x)), relu(b(x))): each part becomes a spiking population."""
    torch = pytest.importorskip("torch")
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 4, 1), nn.Conv2d(1, 4, 3, padding=1)
            self.head = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 16, 10))

        def forward(self, x):
            return self.head(torch.relu(torch.cat([self.a(x), self.b(x)], 1)))

    torch.manual_seed(0)
    path = tmp_path / "cat_relu.onnx"
    torch.onnx.export(Net().eval(), (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})
    result = api.convert(path, tmp_path / "out", data="digits", finetune=False, accept_loss=True)
    assert result.report["passed"] and result.report["passes"]["network"]["activations_before_pooling"] >= 1
    rows = {row["name"]: row for row in result.report["layers"]}
    assert rows["/Relu/0"]["inputs"] == ["/a/Conv"] and rows["/Relu/1"]["inputs"] == ["/b/Conv"]
    assert rows["/Concat"]["inputs"] == ["/Relu/0", "/Relu/1"]


def test_calibration_scales_are_taken_back_on_every_branch(graph_models):
    """With the 100th percentile every calibrated unit at sharpness 0 follows its ReLU on the calibration
    samples (up to the ramp's 1e-3 widening), so the sharpenable network computes the float one there,
    provided each scale is given back by every reader (a convolution, the Add's shortcut weight, the part
    of the channels after a Concat): a scale lost on one branch would be off by its factor, 2 to 20."""
    from whetstone_onnx.data import fit_to_input, load_dataset

    dataset = load_dataset("digits")
    for kind in GRAPH_KINDS:
        network, _, _ = float_network(load_model(graph_models[kind]))
        # Inputs 20 times as large make every scale large (the untrained units' outputs are small).
        x = 20 * fit_to_input(dataset.x_train[:200], network.input_shape, None, spec="digits")
        expected = network.forward(x)
        sharpenable = network.copy()
        _, calibration = sharpenable_passes(sharpenable, x, 100.0)
        assert calibration.scaled_layers >= 3
        assert np.abs(sharpenable.forward(x) - expected).max() <= 0.02 * np.abs(expected).max()
        if kind == "resnet":
            shortcut_weights = [layer.weights for layer in sharpenable.layers if isinstance(layer, Add)]
            assert any(np.any(weights != 1.0) for weights in shortcut_weights)


def test_inspect_shows_what_each_merge_reads(graph_models):
    completed = run_cli("inspect", str(graph_models["resnet"]))
    assert completed.returncode == 0, completed.stderr
    add_lines = [line for line in completed.stdout.splitlines() if " add " in line]
    assert len(add_lines) == 2 and all("(reads " in line and " + " in line for line in add_lines)


def test_a_sum_that_ends_the_network_is_refused_with_the_reason(tmp_path, rng):
    """y = W2 relu(W1 x) + relu(W1 x): no Dense layer ends the network to become its output stage."""
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], name="first", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="act"),
             helper.make_node("Gemm", ["r", "w2"], ["g"], name="second", transB=1),
             helper.make_node("Add", ["g", "r"], ["y"], name="sum")]
    weights = {"w1": rng.standard_normal((4, 3)).astype(np.float32),
               "w2": rng.standard_normal((4, 4)).astype(np.float32)}
    path = tmp_path / "model.onnx"
    path.write_bytes(graph_model(nodes, weights, [3], [4]).SerializeToString())
    completed = run_cli("inspect", str(path))
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert completed.stderr.strip() == (f"whetstone-onnx: error: {path}: the last layer must be a Dense (Gemm/MatMul) "
                                        "layer to become the output stage, found add")


def test_a_concatenation_along_another_axis_is_refused_with_the_reason(tmp_path):
    node = helper.make_node("Concat", ["x", "x"], ["y"], name="join", axis=2)
    path = tmp_path / "model.onnx"
    path.write_bytes(graph_model([node], {}, [1, 2, 2], [1, 4, 2]).SerializeToString())
    completed = run_cli("inspect", str(path))
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert "node 'join' (Concat): concatenates along axis 2: only the channel axis (1) is supported" \
        in completed.stderr
    with pytest.raises(UnsupportedModelError, match="only the channel axis"):
        float_network(load_model(path))


@pytest.mark.slow
def test_a_trained_residual_net_fine_tunes_and_keeps_its_spikes_equal(tmp_path):
    """Fine-tuning builds the residual net as a functional Keras model and writes it back."""
    pytest.importorskip("torch")
    from whetstone_onnx.data import load_dataset
    from whetstone_onnx.finetune import FinetuneOptions

    dataset = load_dataset("digits")
    path = torch_export(tmp_path, "resnet", (dataset.x_train, dataset.y_train), dynamo=False)
    result = api.convert(path, tmp_path / "out", data=dataset, finetune=FinetuneOptions(effort="quick"),
                         accept_loss=True, levels=1)
    report = result.report
    assert report["passed"] and report["finetune"]["keras_vs_spiking_onnx"]["agreement"] == 1.0
    assert result.accuracy["original"] >= 0.95 and result.accuracy["spiking"] >= 0.90


def test_an_add_that_reads_one_layer_twice_counts_it_twice(rng):
    """y = W2 relu(g + g), g = W1 x + b: the calibration scale and the bias reach both inputs."""
    from whetstone_onnx.network_passes.step_network import to_step_network

    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["g"], name="first", transB=1),
             helper.make_node("Add", ["g", "g"], ["s"], name="twice"),
             helper.make_node("Relu", ["s"], ["r"], name="act"),
             helper.make_node("Gemm", ["r", "w2"], ["y"], name="out", transB=1)]
    weights = {"w1": rng.standard_normal((6, 4)).astype(np.float32), "b1": rng.standard_normal(6).astype(np.float32),
               "w2": rng.standard_normal((3, 6)).astype(np.float32)}
    network, _, _ = float_network(load_model(graph_model(nodes, weights, [4], [3])))
    x = rng.standard_normal((200, 4)).astype(np.float32) * 5
    expected = network.forward(x)
    _, calibration = sharpenable_passes(network, x, 100.0)
    assert calibration.scaled_layers == 1
    assert np.abs(network.forward(x) - expected).max() <= 0.02 * np.abs(expected).max()
    for layer in network.layers:
        if isinstance(layer, Sharpenable):
            layer.sharpness = 1.0
    step = network.copy()
    to_step_network(step)
    np.testing.assert_array_equal(step.forward(x, all_layers=True)[2], network.forward(x, all_layers=True)[2])


def test_the_structure_index_follows_edits_in_place(rng):
    """Network._structure is rebuilt when layers or links change in place (passes edit them so), and
    only then: replacing a layer by one of the same name keeps it."""
    def dense(name):
        return Dense(name, rng.standard_normal((4, 4)).astype(np.float32), None)

    network = Network("x", (4,), "y", [dense("a"), dense("b"), dense("c")])
    assert [network.consumers(i) for i in (-1, 0, 1)] == [[0], [1], [2]]
    network.layers.insert(1, dense("n"))
    assert network.consumers(0) == [1] and network.consumers(1) == [2] and network.source_indices(3) == [2]
    network.links["c"] = ("a", "b")
    assert network.consumers(0) == [1, 3] and network.source_indices(3) == [0, 2]
    version = network.layers.version
    network.layers[2] = dense("b")                   # same name: same structure
    assert network.layers.version == version and network.consumers(2) == [3]
    network.layers[2] = dense("m")                   # renamed: "c" now reads a layer that is gone
    assert network.source_indices(3) == [0, -1]
    del network.links["c"]
    network.layers.pop(1)
    assert [network.consumers(i) for i in (-1, 0, 1)] == [[0], [1], [2]]
    assert network.copy().consumers(0) == [1]
    # A new links dict as large as the one it replaces (a freed one's id may come back): still rebuilt.
    for sources in (("x",), ("a",)):
        network.links = {"c": sources}
        assert network.source_indices(2) == [-1 if sources == ("x",) else 0]


@pytest.fixture(scope="module")
def untangled_models(tmp_path_factory):
    """The pre-activation ResNet, the DenseNet and the MobileNetV2 of tests/exporters.py, with seeded random batch-norm
    statistics and affines (untrained ones are nearly the identity), TorchScript exporter."""
    torch = pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("untangled")
    paths = {}
    for kind in UNTANGLED_KINDS:
        torch.manual_seed(0)
        model = torch_graph_model(kind)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.data.uniform_(0.5, 1.5)
                module.bias.data.uniform_(-0.3, 0.3)
        paths[kind] = folder / f"{kind}.onnx"
        torch.onnx.export(model.eval(), (torch.zeros(1, 1, 8, 8),), str(paths[kind]), dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    return paths


@pytest.mark.parametrize("kind", UNTANGLED_KINDS)
def test_branches_sharing_raw_tensors_are_untangled_exactly(untangled_models, kind, rng):
    """Pre-activation blocks (a sum read by the next block's batch norm and by the next sum, no
    activation after it), DenseNet layers (concatenations of raw convolution outputs, batch
    norm over them) and MobileNetV2's linear bottlenecks (a raw sum read by a 1x1 conv): after the pass every activation and every sum reads weighted sums of its own,
    and the network computes what onnxruntime computes on the original."""
    import onnxruntime as ort

    network, _, _ = float_network(load_model(untangled_models[kind]))
    x = rng.standard_normal((32, 1, 8, 8)).astype(np.float32)
    expected = ort.InferenceSession(str(untangled_models[kind])).run(None, {"x": x})[0]
    assert untangle_branches(network) >= 4
    np.testing.assert_allclose(network.forward(x), expected, atol=1e-5 * np.abs(expected).max())
    kinds = [layer.kind for layer in network.layers]
    assert "batchnorm" not in kinds
    for index, layer in enumerate(network.layers):
        if layer.kind in ("activation", "add"):
            for source in network.source_indices(index):
                if source >= 0 and network.layers[source].weighted_sum:
                    assert network.only_reader(source) == index, (layer.name, network.layers[source].name)
    if kind == "preact_resnet":      # the two identity shortcuts' chain: one sum of three projections
        assert max(len(network.sources(i)) for i, k in enumerate(kinds) if k == "add") == 3
    elif kind == "mobilenet_v2":     # the last 1x1 conv reads the chain of two raw sums: three projections
        assert max(len(network.sources(i)) for i, k in enumerate(kinds) if k == "add") == 3
        # the projections composed with the expansions after them: no convolution reads a raw one
        assert all(not network.layers[source].weighted_sum for i, k in enumerate(kinds) if k == "conv2d"
                   for source in network.source_indices(i) if source >= 0)
    else:                            # the nested concatenation: one of three parts
        assert max(len(network.sources(i)) for i, k in enumerate(kinds) if k == "concat") == 3
        # the transition's 1x1 conv and 2x2 average pooling: one 2x2 conv of stride 2
        assert any(layer.kind == "conv2d" and layer.weight.shape[2:] == (2, 2) and layer.strides == (2, 2)
                   for layer in network.layers)


@pytest.mark.parametrize("kind", UNTANGLED_KINDS)
def test_branches_sharing_raw_tensors_convert_and_every_representation_agrees(tmp_path, untangled_models, kind):
    out = tmp_path / "out"
    result = api.convert(untangled_models[kind], out, data="digits", finetune=False, accept_loss=True)
    report = result.report
    assert report["passed"] and report["equivalence"]["float"]["relative_diff"] <= 1e-4
    assert report["equivalence"]["spiking"]["unexplained"] == 0
    assert report["passes"]["network"]["untangle_branches"] >= 4
    checked = api.check_outputs(out)
    assert checked.passed and {"spiking.onnx vs netlist", "spiking.onnx vs model.nir"} <= set(checked.comparisons)
    if kind != "densenet":
        posts = [projection["post"] for projection in json.loads((out / "netlist.json").read_text())["projections"]]
        assert max(posts.count(post) for post in posts) == 3


@pytest.mark.parametrize("gamma_low", [0.5, -0.5])
def test_a_batch_norm_after_max_pooling_moves_above_it_only_when_its_scales_are_not_negative(tmp_path, rng,
                                                                                          gamma_low):
    """conv, max pooling, batch norm, ReLU: bn(maxpool(x)) == maxpool(bn(x)) when every scale is >= 0,
    and the batch norm then folds into the conv; with a negative scale they do not commute: refused."""
    torch = pytest.importorskip("torch")
    import onnxruntime as ort
    import torch.nn as nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.MaxPool2d(2), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Flatten(), nn.Linear(128, 10))
    model[2].running_mean.uniform_(-0.2, 0.2)
    model[2].running_var.uniform_(0.5, 2.0)
    model[2].weight.data.uniform_(gamma_low, 1.5)
    path = tmp_path / "pool_bn.onnx"
    torch.onnx.export(model.eval(), (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})
    network, _, _ = float_network(load_model(path))
    x = rng.standard_normal((16, 1, 8, 8)).astype(np.float32)
    expected = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    if gamma_low < 0:
        with pytest.raises(UnsupportedModelError, match="does not follow a Dense, Conv or Add layer"):
            sharpenable_passes(network, x, 95.0)
        return
    sharpenable_passes(network, x, 100.0)
    assert [layer.kind for layer in network.layers[:3]] == ["conv2d", "sharpenable", "maxpool2d"]
    assert "batchnorm" not in [layer.kind for layer in network.layers]
    untangled, _, _ = float_network(load_model(path))
    untangle_branches(untangled)
    np.testing.assert_allclose(untangled.forward(x), expected, atol=1e-5 * np.abs(expected).max())
