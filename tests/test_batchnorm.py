"""Batch normalization that no linear layer absorbs in the ONNX passes: lifted as a
layer, built in Keras, written back, and folded exactly out of the step network."""
from __future__ import annotations

import keras
import nir
import numpy as np
import onnx
import pytest
from conftest import MODELS, graph_model
from onnx import helper

from whetstone_onnx import api, runtime
from whetstone_onnx.emit import to_onnx
from whetstone_onnx.errors import UnsupportedModelError
from whetstone_onnx.keras import BoundedRelu, FrozenBatchNormalization, SoftmaxDecode
from whetstone_onnx.keras.build import build_keras, write_back
from whetstone_onnx.lift import lift
from whetstone_onnx.load import load_model
from whetstone_onnx.netlist.nir_export import to_nir
from whetstone_onnx.network import Network
from whetstone_onnx.ops.activation import Activation, Sharpenable, Spike
from whetstone_onnx.ops.batchnorm import BatchNorm
from whetstone_onnx.ops.conv import Conv2d
from whetstone_onnx.spiking_onnx import nhot_key
from whetstone_onnx.ops.dense import Dense
from whetstone_onnx.ops.pool import AvgPool2d, MaxPool2d
from whetstone_onnx.ops.shape import Reshape
from whetstone_onnx.network_passes.activations import (activations_before_pooling, compensate_output_scale,
                                               replace_activations)
from whetstone_onnx.onnx_passes.pipeline import run_onnx_passes
from whetstone_onnx.network_passes.step_network import to_step_network

FIXTURE = MODELS / "digits_conv_postbn.onnx"
TIE = 1e-5          # relative to the largest |potential|: a float-rounding tie, as the checks count it


def bn_inits(rng, channels, prefix):
    return {f"{prefix}.gamma": rng.uniform(0.5, 2.0, channels).astype(np.float32),
            f"{prefix}.beta": rng.normal(size=channels).astype(np.float32),
            f"{prefix}.mean": rng.normal(size=channels).astype(np.float32),
            f"{prefix}.var": rng.uniform(0.1, 3.0, channels).astype(np.float32)}


def bn_node(x, y, prefix, epsilon=1e-3):
    return helper.make_node("BatchNormalization", [x, *(f"{prefix}.{p}" for p in ("gamma", "beta", "mean", "var"))],
                            [y], name=prefix, epsilon=epsilon)


def unfoldable_model(rng):
    """BN on the input and BN after a Relu, each before a zero-padded conv; then a dense classifier."""
    inits = {"W1": rng.normal(size=(4, 2, 3, 3)).astype(np.float32), "B1": rng.normal(size=4).astype(np.float32),
             "W2": rng.normal(size=(6, 4, 3, 3)).astype(np.float32), "B2": rng.normal(size=6).astype(np.float32),
             "W3": rng.normal(size=(10, 96)).astype(np.float32), "B3": rng.normal(size=10).astype(np.float32),
             "shape": np.array([-1, 96], np.int64), **bn_inits(rng, 2, "bn0"), **bn_inits(rng, 4, "bn1")}
    nodes = [bn_node("x", "n0", "bn0", epsilon=1e-5),
             helper.make_node("Conv", ["n0", "W1", "B1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             bn_node("r1", "n1", "bn1"),
             helper.make_node("Conv", ["n1", "W2", "B2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Reshape", ["r2", "shape"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "W3", "B3"], ["y"], name="fc", transB=1)]
    return graph_model(nodes, inits, [2, 8, 8], [10]), inits


def canonical_network(model: onnx.ModelProto) -> tuple[Network, dict[str, int]]:
    ir_model, counts = run_onnx_passes(load_model(model).model)
    return lift(ir_model), counts


def relative_difference(expected, actual) -> float:
    return float(np.abs(expected - actual).max() / np.abs(expected).max())


# ------------------------------------------------------------------ lifting and ONNX round trip

def test_unfoldable_batchnorms_are_lifted_with_their_parameters_and_round_trip(rng):
    model, inits = unfoldable_model(rng)
    network, counts = canonical_network(model)
    assert counts["fold_batchnorm"] == 0
    assert [layer.kind for layer in network.layers] == ["batchnorm", "conv2d", "activation", "batchnorm", "conv2d",
                                                        "activation", "reshape", "dense"]
    bn0, bn1 = (layer for layer in network.layers if isinstance(layer, BatchNorm))
    for bn, prefix, epsilon in ((bn0, "bn0", 1e-5), (bn1, "bn1", 1e-3)):
        for part in ("gamma", "beta", "mean", "var"):
            np.testing.assert_array_equal(getattr(bn, part), inits[f"{prefix}.{part}"])
        assert bn.epsilon == float(np.float32(epsilon)) and bn.describe()["channels"] == bn.channels
    emitted = to_onnx(network, graph_name="float")
    onnx.checker.check_model(emitted, full_check=True)
    assert sum(node.op_type == "BatchNormalization" for node in emitted.graph.node) == 2
    relifted, _ = canonical_network(emitted)
    for before, after in zip(network.layers, relifted.layers):
        if isinstance(before, BatchNorm):
            assert after.epsilon == before.epsilon
            for part in ("gamma", "beta", "mean", "var"):
                np.testing.assert_array_equal(getattr(before, part), getattr(after, part))
    x = rng.normal(size=(64, 2, 8, 8)).astype(np.float32)
    assert relative_difference(runtime.predict(model, x), runtime.predict(emitted, x)) <= 1e-6
    assert relative_difference(runtime.predict(model, x), network.forward(x)) <= 1e-6


def test_keras_style_mul_add_becomes_one_batchnorm_and_merges_into_a_batchnorm_before_it(rng):
    inits = {"W1": rng.normal(size=(3, 1, 3, 3)).astype(np.float32), "W2": rng.normal(size=(2, 3, 3, 3)).astype(
        np.float32), "s": rng.uniform(0.5, 2, (1, 3, 1, 1)).astype(np.float32),
        "t": rng.normal(size=(1, 3, 1, 1)).astype(np.float32), **bn_inits(rng, 3, "bn")}
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Mul", ["r1", "s"], ["m"], name="bn/mul"),
             helper.make_node("Add", ["m", "t"], ["a"], name="bn/add"),
             bn_node("a", "n", "bn"),
             helper.make_node("Sub", ["n", "t"], ["d"], name="shift"),
             helper.make_node("Conv", ["d", "W2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    model = graph_model(nodes, inits, [1, 6, 6], [2, 4, 4])
    network, counts = canonical_network(model)
    assert counts["batchnorm_from_scale_shift"] == 3
    assert [layer.kind for layer in network.layers] == ["conv2d", "activation", "batchnorm", "batchnorm", "conv2d"]
    plain = network.layers[2]
    np.testing.assert_array_equal(plain.gamma, inits["s"].reshape(-1))
    assert (plain.epsilon, plain.mean.tolist(), plain.var.tolist()) == (0.0, [0.0] * 3, [1.0] * 3)
    x = rng.normal(size=(32, 1, 6, 6)).astype(np.float32)
    assert relative_difference(runtime.predict(model, x), runtime.predict(to_onnx(network, graph_name="f"), x)) \
        <= 1e-6


def test_mul_add_before_a_keras_flatten_still_folds_into_the_dense_layer(rng):
    """Keras writes BN -> Transpose (to NHWC) -> flatten -> MatMul; the layout fold comes first."""
    inits = {"W1": rng.normal(size=(3, 1, 3, 3)).astype(np.float32), "s": rng.uniform(0.5, 2, (1, 3, 1, 1)).astype(
        np.float32), "t": rng.normal(size=(1, 3, 1, 1)).astype(np.float32),
        "shape": np.array([-1, 48], np.int64), "W2": rng.normal(size=(48, 5)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Mul", ["r1", "s"], ["m"], name="bn/mul"),
             helper.make_node("Add", ["m", "t"], ["a"], name="bn/add"),
             helper.make_node("Transpose", ["a"], ["nhwc"], name="to_nhwc", perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["nhwc", "shape"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "W2"], ["y"], name="fc")]
    model = graph_model(nodes, inits, [1, 4, 4], [5])
    network, counts = canonical_network(model)
    assert counts["fold_scale_shift"] == 2 and counts["batchnorm_from_scale_shift"] == 0
    assert "batchnorm" not in [layer.kind for layer in network.layers]
    x = rng.normal(size=(32, 1, 4, 4)).astype(np.float32)
    assert relative_difference(runtime.predict(model, x), network.forward(x)) <= 1e-5


# ------------------------------------------------------------------ folding into the step network

def sharpenable_network(rng) -> Network:
    """Every fold path: input BN -> padded conv; BN after a spiking layer -> strided, grouped, padded conv;
    BN before max pooling (moved below it) -> flatten -> dense; BN on features -> the readout."""
    def bn(name, channels, low=0.5):
        return BatchNorm(name, rng.uniform(low, 2.0, channels).astype(np.float32),
                         rng.normal(size=channels).astype(np.float32), rng.normal(size=channels).astype(np.float32),
                         rng.uniform(0.1, 3.0, channels).astype(np.float32), 1e-3)

    def weights(*shape):
        return (rng.normal(size=shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    layers = [bn("bn0", 2, low=-2.0),
              Conv2d("conv1", weights(4, 2, 3, 3), weights(4) + 0.5, pads=(1, 1, 1, 1)),
              Sharpenable("s1", "bounded_relu", 1.0),
              bn("bn1", 4, low=-2.0),
              Conv2d("conv2", weights(6, 2, 3, 3), weights(6), strides=(2, 2), pads=(1, 0, 2, 1), group=2),
              Sharpenable("s2", "bounded_relu", 1.0),
              bn("bn2", 6),
              MaxPool2d("pool", (2, 2), (2, 2)),
              Reshape("flatten", (24,)),
              Dense("fc1", weights(12, 24), weights(12)),
              Sharpenable("s3", "bounded_relu", 1.0),
              bn("bn3", 12, low=-2.0),
              Dense("readout", weights(10, 12), weights(10))]
    return Network("x", (2, 8, 8), "y", layers, num_classes=10)


def kept_step_network(network: Network) -> Network:
    """The step network with the batch norms kept: each unit a Spike at its threshold, biases in place."""
    kept = network.copy()
    kept.layers = [Spike(layer.name, np.float32(layer.threshold)) if isinstance(layer, Sharpenable) else layer
                   for layer in kept.layers]
    return kept


def outputs_by_name(network: Network, x: np.ndarray) -> dict[str, np.ndarray]:
    return dict(zip((layer.name for layer in network.layers), network.forward(x, all_layers=True)))


def test_folded_step_network_spikes_as_the_one_with_batchnorms_kept(rng):
    network = sharpenable_network(rng)
    x = rng.normal(size=(2000, 2, 8, 8))
    kept = kept_step_network(network)
    folded = network.copy()
    assert to_step_network(folded) == 3
    assert not [layer for layer in folded.layers if isinstance(layer, BatchNorm)]
    thresholds = {layer.name: layer.threshold.shape for layer in folded.layers if isinstance(layer, Spike)}
    assert thresholds == {"s1": (4, 8, 8), "s2": (6, 5, 4), "s3": (12,)}     # per neuron behind padded convs
    kept_out, folded_out = outputs_by_name(kept, x), outputs_by_name(folded, x)
    for name, potential in (("s1", "conv1"), ("s2", "conv2"), ("s3", "fc1")):
        mismatched = kept_out[name] != folded_out[name]
        # A mismatch is allowed only where the kept potential is a float-rounding tie with the threshold.
        distance = np.abs(kept_out[potential] - 0.5) / np.abs(kept_out[potential]).max()
        assert np.all(distance[mismatched] <= TIE), name
        assert mismatched.mean() <= 1e-4 and 0.05 < folded_out[name].mean() < 0.95, name
    same_input = np.all(kept_out["s3"] == folded_out["s3"], axis=1)
    assert relative_difference(kept_out["readout"][same_input], folded_out["readout"][same_input]) <= 1e-6


def test_batchnorm_that_cannot_fold_is_refused_before_training(rng):
    def network(*middle):
        return Network("x", (2, 6, 6), "y", [
            Conv2d("conv1", rng.normal(size=(3, 2, 3, 3)).astype(np.float32), None, pads=(1, 1, 1, 1)),
            Activation("relu1", "Relu"), *middle, Reshape("flatten", (27,)),
            Dense("fc", rng.normal(size=(4, 27)).astype(np.float32), None)])

    def batchnorm(gamma):
        ones = np.ones(3, np.float32)
        return BatchNorm("bn", np.asarray(gamma, np.float32), ones, ones, ones, 1e-3)

    negative = network(batchnorm([1.0, -1.0, 1.0]), MaxPool2d("pool", (2, 2), (2, 2)))
    activations_before_pooling(negative)
    with pytest.raises(UnsupportedModelError, match=r"batch norm 'bn' is followed by 'pool' \(maxpool2d\)"):
        replace_activations(negative)
    averaged = network(batchnorm([1.0, 2.0, 3.0]), AvgPool2d("pool", (2, 2), (2, 2)))
    with pytest.raises(UnsupportedModelError, match=r"batch norm 'bn' is followed by 'pool' \(avgpool2d\)"):
        replace_activations(averaged)
    positive = network(batchnorm([1.0, 0.0, 3.0]), MaxPool2d("pool", (2, 2), (2, 2)))
    assert activations_before_pooling(positive) == 1 and positive.layers[3].kind == "batchnorm"
    replace_activations(positive)


def test_compensation_of_an_activation_scale_reaches_a_batchnorm_through_pooling(rng):
    conv = Conv2d("conv", rng.normal(size=(3, 1, 3, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32))
    ones = np.ones(3, np.float32)
    bn = BatchNorm("bn", rng.uniform(0.5, 2, 3).astype(np.float32), ones, rng.uniform(0, 1, 3).astype(np.float32),
                   rng.uniform(0.5, 2, 3).astype(np.float32), 1e-3)
    network = Network("x", (1, 8, 8), "y", [conv, Activation("relu", "Relu"), MaxPool2d("pool", (2, 2), (2, 2)),
                                            AvgPool2d("avg", (1, 1), (1, 1)), bn])
    x = rng.normal(size=(16, 1, 8, 8))
    before = network.forward(x)
    conv.scale_outputs(1 / 3.7)
    compensate_output_scale(network, 1, 3.7)
    assert bn.epsilon == pytest.approx(1e-3 / 3.7 ** 2) and relative_difference(before, network.forward(x)) <= 1e-6


# ------------------------------------------------------------------ NIR and netlists

@pytest.mark.parametrize("profile", ["semantic", "portable", "cuba"])
def test_unfoldable_model_converts_with_per_neuron_thresholds_in_every_netlist(rng, profile):
    model, _ = unfoldable_model(rng)
    result = api.convert(model, finetune=False, nir_profile=profile)
    assert result.passed
    for name in ("float", "spiking", "nir", "netlist"):
        assert result.report["equivalence"][name]["passed"], name
    assert sum(result.report["equivalence"]["nir"]["layers"][i]["mismatches"] for i in range(3)) == 0
    assert not [layer for layer in result.spiking_network.layers if isinstance(layer, BatchNorm)]
    assert "BatchNormalization" not in {node.op_type for node in result.spiking_model.graph.node}
    spikes = [layer for layer in result.spiking_network.layers if isinstance(layer, Spike)]
    assert spikes[0].threshold.shape == (4, 8, 8)
    graph = to_nir(result.spiking_network, profile=profile)
    per_neuron = graph.metadata.get("per_neuron_thresholds", [])
    if profile == "semantic":
        assert not per_neuron and isinstance(graph.nodes[spikes[0].name], nir.Threshold)
    else:
        # A Conv2d bias has one value per channel: the position-dependent thresholds stay per neuron.
        assert per_neuron == [spikes[0].name, spikes[1].name]
        assert np.unique(graph.nodes[spikes[0].name].v_threshold).size > 1


def test_snntorch_refuses_per_neuron_lif_thresholds(rng, tmp_path):
    """What the portable profile's main consumer does with them (snnTorch 1.0): it asserts one
    threshold per layer, so such a file is exact NIR but not importable there."""
    pytest.importorskip("torch")
    import_nir = pytest.importorskip("snntorch.import_nir")
    model, _ = unfoldable_model(rng)
    api.convert(model, tmp_path, finetune=False)
    with pytest.raises(AssertionError, match="same for all neurons"):
        import_nir.import_from_nir(nir.read(tmp_path / "model.nir"))


# ------------------------------------------------------------------ Keras: builder, write-back, export


def flat_batchnorm_network(rng) -> Network:
    ones = np.ones(6, np.float32)
    return Network("x", (5,), "y", [
        Dense("fc1", rng.normal(size=(6, 5)).astype(np.float32), rng.normal(size=6).astype(np.float32)),
        Activation("relu", "Relu"),
        BatchNorm("bn", rng.uniform(0.5, 2, 6).astype(np.float32), rng.normal(size=6).astype(np.float32),
                  rng.normal(size=6).astype(np.float32), ones, 0.0),
        Dense("fc2", rng.normal(size=(3, 6)).astype(np.float32), None)])


def test_keras_builder_reproduces_onnxruntime_with_batchnorms(rng):
    model, _ = unfoldable_model(rng)
    for network, x in ((canonical_network(model)[0], rng.normal(size=(64, 2, 8, 8))),
                       (flat_batchnorm_network(rng), rng.normal(size=(64, 5)))):
        x = x.astype(np.float32)
        expected = runtime.predict(to_onnx(network, graph_name="f"), x)
        assert relative_difference(expected, build_keras(network).model.predict(x, verbose=0)) <= 1e-5


def test_write_back_takes_the_trained_batchnorm_and_training_keeps_its_statistics(rng):
    network = flat_batchnorm_network(rng)
    built = build_keras(network)
    (layer,) = [layer for layer in built.model.layers if isinstance(layer, FrozenBatchNormalization)]
    x = rng.normal(size=(256, 5)).astype(np.float32)
    # Training mode normalises with the moving statistics too, and leaves them as they were.
    np.testing.assert_allclose(built.model(x, training=True), built.model(x, training=False), atol=1e-6)
    statistics = [w.copy() for w in layer.get_weights()[2:]]
    built.model.compile(optimizer="sgd", loss="mse")
    built.model.fit(x, rng.normal(size=(256, 3)).astype(np.float32), epochs=1, verbose=0)
    trained = layer.get_weights()
    for before, after in zip(statistics, trained[2:]):
        np.testing.assert_array_equal(before, after)
    layer.set_weights([w * rng.uniform(0.8, 1.2, w.shape).astype(np.float32) for w in trained])
    write_back(network, built)
    bn = network.layers[2]
    for part, value in zip(("gamma", "beta", "mean", "var"), layer.get_weights()):
        np.testing.assert_array_equal(getattr(bn, part), value)
    expected = built.model.predict(x, verbose=0)
    assert relative_difference(expected, runtime.predict(to_onnx(network, graph_name="f"), x)) <= 1e-5


def test_keras_model_with_batchnorm_after_activations_exports_spiking(rng):
    L = keras.layers
    key = nhot_key(3, 6, seed=0)
    model = keras.Sequential([keras.Input((6, 6, 2)), L.BatchNormalization(), L.Conv2D(4, 3, padding="same"),
                              BoundedRelu(1.0), L.BatchNormalization(), L.Conv2D(5, 3, padding="same"),
                              BoundedRelu(1.0), L.Flatten(), L.Dense(6), BoundedRelu(1.0), SoftmaxDecode(key)])
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 2, w.shape).astype(np.float32) for w in layer.get_weights()])
    x = rng.uniform(0, 1, (200, 6, 6, 2)).astype(np.float32)
    result = api.export_keras(model)
    assert [layer.kind for layer in result.sharpenable_network.layers].count("batchnorm") == 2
    assert result.passed and not any(isinstance(layer, BatchNorm) for layer in result.spiking_network.layers)
    keras_classes = model.predict(x, verbose=0).argmax(1)
    assert np.mean(keras_classes == runtime.predict(result.spiking_model, x).argmax(1)) >= 0.99


# ------------------------------------------------------------------ the fixture end to end

@pytest.mark.parametrize("finetune", [False, api.FinetuneOptions(epochs=2, straight_through_epochs=0)],
                         ids=["no-finetune", "finetune-2-epochs"])
def test_fixture_with_batchnorm_after_relu_converts_end_to_end(finetune, tmp_path):
    # (One level: the level search, which a 2-epoch run would start, is tests/test_finetune.py's.)
    result = api.convert(FIXTURE, tmp_path, data="digits", finetune=finetune, levels=1)
    assert result.passed
    kinds = [layer.kind for layer in result.sharpenable_network.layers]
    assert kinds.count("batchnorm") == 1 and kinds.index("batchnorm") == kinds.index("conv2d") + 2
    equivalence = result.report["equivalence"]
    for name in ("float", "spiking", "nir", "netlist"):
        assert equivalence[name]["passed"], name
    assert result.accuracy["float"] == result.accuracy["original"] >= 0.95
    onnx.checker.check_model(onnx.load(tmp_path / "spiking.onnx"), full_check=True)
    if finetune:
        assert result.report["finetune"]["keras_vs_spiking_onnx"]["agreement"] == 1.0
