"""Keras side of fine-tuning: layer formulas, sharpener schedules step by step,
builder exactness against onnxruntime, weight write-back exactness."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from conftest import MODELS

keras = pytest.importorskip("keras")

from whetstone_onnx import api, runtime  # noqa: E402
from whetstone_onnx.emit import to_onnx  # noqa: E402
from whetstone_onnx.keras import (AdaptiveSharpener, BoundedRelu, ScheduledSharpener, SharpSigmoid,  # noqa: E402
                                  SimpleSharpener, Softmax_Decode, SoftmaxDecode, Spiking_BRelu, key_generator)
from whetstone_onnx.keras.build import build_keras, write_back  # noqa: E402
from whetstone_onnx.ops.activation import Sharpenable  # noqa: E402
from whetstone_onnx.network_passes.step_network import to_step_network  # noqa: E402

FIXTURES = [("digits_dense.onnx", (64,), None), ("digits_conv.onnx", (8, 8, 1), None),
            ("digits_conv_postbn.onnx", (8, 8, 1), None), ("torchstyle_digits_conv.onnx", (1, 8, 8), (0.5, 0.5))]


def keras_output(layer, x, sharpness):
    layer.build(x.shape)
    layer.set_sharpness(sharpness)
    return keras.ops.convert_to_numpy(layer(x))


@pytest.mark.parametrize("sharpness", [0.0, 0.3, 0.5, 0.999, 1.0])
def test_bounded_relu_layer_is_the_onnx_op_bit_for_bit(sharpness):
    x = np.linspace(-1, 2, 257, dtype=np.float32)[None]
    expected = Sharpenable("u", "bounded_relu", sharpness).forward(x.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(keras_output(BoundedRelu(), x, sharpness), expected)


@pytest.mark.parametrize("sharpness", [0.0, 0.5, 1.0])
def test_sharp_sigmoid_layer_matches_the_formula(sharpness):
    x = np.linspace(-3, 3, 121, dtype=np.float32)[None]
    expected = Sharpenable("u", "sharp_sigmoid", sharpness).forward(x.astype(np.float64))
    np.testing.assert_allclose(keras_output(SharpSigmoid(), x, sharpness), expected, atol=1e-6)


def test_sharpness_and_key_are_not_trainable_and_aliases_are_the_classes():
    assert Spiking_BRelu is BoundedRelu and Softmax_Decode is SoftmaxDecode
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), BoundedRelu(),
                              SoftmaxDecode(key_generator(2, 8, overlapping=False))])
    trainable = {w.path for w in model.trainable_weights}
    assert all("sharpness" not in p and "key" not in p for p in trainable)
    assert len(model.non_trainable_weights) == 2


def test_key_generator_is_seeded_and_respects_overlap():
    disjoint = key_generator(10, 40, overlapping=False, seed=1)
    assert disjoint.sum(axis=1).tolist() == [4] * 10 and disjoint.sum(axis=0).max() == 1
    overlapping = key_generator(10, 100, sparsity=0.1, seed=2)
    assert overlapping.sum(axis=1).tolist() == [10] * 10
    assert len({tuple(row) for row in overlapping}) == 10
    np.testing.assert_array_equal(overlapping, key_generator(10, 100, sparsity=0.1, seed=2))
    assert not np.array_equal(overlapping, key_generator(10, 100, sparsity=0.1, seed=3))


def three_layer_model():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), BoundedRelu(), keras.layers.Dense(4),
                             BoundedRelu(), keras.layers.Dense(4), BoundedRelu()])


def run_epochs(sharpener, epochs, batches, losses=None):
    """Drive a sharpener's callbacks as fit() would; returns the sharpness after each epoch."""
    model = three_layer_model()
    sharpener.set_model(model)
    sharpener.set_params({"steps": batches, "epochs": epochs})
    sharpener.on_train_begin()
    seen = []
    for epoch in range(epochs):
        sharpener.on_epoch_begin(epoch)
        for batch in range(batches):
            sharpener.on_train_batch_begin(batch)
        sharpener.on_epoch_end(epoch, {"loss": losses[epoch] if losses else 1.0})
        seen.append([round(v, 4) for v in sharpener.get_layer_sharpness()])
        if getattr(model, "stop_training", False):
            break
    return seen


def test_simple_sharpener_per_epoch_bottom_up():
    seen = run_epochs(SimpleSharpener(start_epoch=1, steps=2), epochs=20, batches=3)
    assert seen == [[0, 0, 0], [0.5, 0, 0], [1, 0, 0], [1, 0.5, 0], [1, 1, 0], [1, 1, 0.5], [1, 1, 1]]


def test_simple_sharpener_per_batch_works():  # the original crashed with epochs=False
    seen = run_epochs(SimpleSharpener(start_epoch=0, steps=3, epochs=False), epochs=5, batches=3)
    assert seen == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]


def test_sharpener_warns_when_fit_ends_before_every_layer_is_sharp():
    sharpener = SimpleSharpener(start_epoch=1, steps=2)
    run_epochs(sharpener, epochs=4, batches=1)
    with pytest.warns(UserWarning, match=r"sharpness \[1, 0.5, 0\].*needs fit\(epochs=7\)"):
        sharpener.on_train_end()
    done = SimpleSharpener(start_epoch=0, steps=1)
    run_epochs(done, epochs=5, batches=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        done.on_train_end()


def test_simple_sharpener_uniform():
    seen = run_epochs(SimpleSharpener(start_epoch=0, steps=1, bottom_up=False), epochs=5, batches=1)
    assert seen == [[0.3333, 0.3333, 0.3333], [0.6667, 0.6667, 0.6667], [1, 1, 1]]


def test_scheduled_sharpener_follows_its_windows_per_batch():
    assert ScheduledSharpener.gen_schedule(3, 1, 2, 1) == [(1, 3), (4, 6), (7, 9)]
    sharpener = ScheduledSharpener([(0, 2), (1, 2), (2, 4)])
    seen = run_epochs(sharpener, epochs=10, batches=4)
    assert seen == [[0.5, 0, 0], [1, 1, 0], [1, 1, 0.5], [1, 1, 1]]
    with pytest.raises(ValueError, match="3 spiking layers"):
        run_epochs(ScheduledSharpener([(0, 1)]), epochs=1, batches=1)


def test_adaptive_sharpener_waits_for_a_plateau_then_one_layer_per_epoch_and_pauses_on_degradation():
    sharpener = AdaptiveSharpener(min_init_epochs=2, rate=0.5, cz_rate=0.25, critical=0.75, patience=1)
    losses = [1.0, 0.5, 0.49, 0.48, 0.48, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    seen = run_epochs(sharpener, epochs=len(losses), batches=2, losses=losses)
    # epoch 2 (loss 0.49, no 15 % gain) starts sharpening; each epoch adds 0.5 (0.25 past 0.75);
    # epoch 5's loss (0.9 > 0.48 * 1.15) pauses; the next plateau resumes.
    assert seen[:4] == [[0, 0, 0], [0, 0, 0], [0, 0, 0], [0.5, 0, 0]]
    assert seen[4] == [0.875, 0, 0] and seen[5] == [1.0, 0, 0]
    assert seen[6] == seen[5]                      # paused after the degradation
    assert seen[-1] == [1, 1, 1] and len(seen) < len(losses)


@pytest.mark.parametrize("model,input_shape,normalize", FIXTURES)
def test_keras_builder_reproduces_onnxruntime(model, input_shape, normalize):
    result = api.convert(MODELS / model, data="digits", normalize=normalize, finetune=False)
    x = np.random.default_rng(0).uniform(0, 1, (64, *input_shape)).astype(np.float32)
    for network, onnx_model in ((None, result.float_model), (result.sharpenable_network, result.sharpenable_model)):
        if network is None:
            from whetstone_onnx.lift import lift
            from whetstone_onnx.load import load_model
            from whetstone_onnx.onnx_passes.pipeline import run_onnx_passes
            network = lift(run_onnx_passes(load_model(MODELS / model).model)[0])
        keras_model = build_keras(network).model
        # float32 sums in another order (TensorFlow's and onnxruntime's kernels): ~1e-5 relative at most.
        np.testing.assert_allclose(keras_model.predict(x, verbose=0), runtime.predict(onnx_model, x), atol=1e-5,
                                   rtol=1e-4)


@pytest.mark.parametrize("model,input_shape,normalize", FIXTURES)
@pytest.mark.parametrize("batchnorm", [False, True])
def test_write_back_makes_spiking_onnx_reproduce_the_trained_keras_model(model, input_shape, normalize, batchnorm):
    result = api.convert(MODELS / model, data="digits", normalize=normalize, finetune=False)
    network = result.sharpenable_network.copy()
    x = np.random.default_rng(1).uniform(0, 1, (200, *input_shape)).astype(np.float32)
    stats = None
    if batchnorm:
        from whetstone_onnx.finetune import _batchnorm_stats
        stats = _batchnorm_stats(network, x)
    built = build_keras(network, batchnorm_stats=stats)
    rng = np.random.default_rng(2)
    for layer in built.model.layers:          # stand-in for training: perturb every weight
        weights = layer.get_weights()
        if weights and not isinstance(layer, (SoftmaxDecode, BoundedRelu)):
            layer.set_weights([w * rng.uniform(0.8, 1.2, w.shape).astype(np.float32) for w in weights])
        if isinstance(layer, BoundedRelu):
            layer.set_sharpness(1.0)
    write_back(network, built)
    assert all(layer.sharpness == 1.0 for layer in network.layers if isinstance(layer, Sharpenable))
    keras_predictions = built.model.predict(x, verbose=0)
    sharpenable = runtime.predict(to_onnx(network, graph_name="s"), x)
    step = network.copy()
    to_step_network(step)
    spiking = runtime.predict(to_onnx(step, graph_name="s"), x)
    assert np.mean(keras_predictions.argmax(1) == spiking.argmax(1)) == 1.0
    np.testing.assert_allclose(sharpenable, keras_predictions, atol=1e-5)


@pytest.mark.slow
def test_finetuning_end_to_end_is_reproducible_and_keras_agrees_with_spiking_onnx(tmp_path):
    options = api.FinetuneOptions(epochs=3, straight_through_epochs=1, seed=4, validation=0)
    first = api.convert(MODELS / "digits_dense.onnx", tmp_path / "a", data="digits", finetune=options)
    second = api.convert(MODELS / "digits_dense.onnx", tmp_path / "b", data="digits",
                         finetune=api.FinetuneOptions(epochs=3, straight_through_epochs=1, seed=4, validation=0))
    report = first.report["finetune"]
    assert report["performed"] and len(report["history"]) == 4
    assert [row["phase"] for row in report["history"]] == ["sharpening"] * 3 + ["straight-through"]
    assert report["history"][-1]["sharpness"] == [1.0, 1.0, 1.0]
    assert report["keras_vs_spiking_onnx"]["agreement"] == 1.0
    assert report["validation"] is None       # none held out: the last epoch is the one written
    assert first.accuracy["spiking"] == pytest.approx(report["history"][-1]["spiking_accuracy"], abs=1e-6)
    assert first.accuracy["spiking"] > 0.8
    for name in ("sharpenable.onnx", "spiking.onnx", "training.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert second.passed
    sharpness = [onnx.numpy_helper.to_array(i) for i in onnx.load(tmp_path / "a" / "sharpenable.onnx").graph.initializer
                 if i.name.endswith(".sharpness")]
    assert sharpness and all(value == 1.0 for value in sharpness)


@pytest.mark.parametrize("channels_last", [False, True])
def test_shifted_images_move_whole_pixels_in_either_layout(channels_last):
    from whetstone_onnx.training import shift_images
    images = np.arange(2 * 3 * 5 * 6, dtype=np.float32).reshape(2, 3, 5, 6)
    offsets = np.array([[0, 0], [1, -2]])
    given = images.transpose(0, 2, 3, 1) if channels_last else images
    shifted = shift_images(given, offsets, 2, -1.0)
    if channels_last:
        shifted = shifted.transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(shifted[0], images[0])
    np.testing.assert_array_equal(shifted[1, :, 1:, :4], images[1, :, :4, 2:])    # down 1, left 2
    assert (shifted[1, :, 0] == -1).all() and (shifted[1, :, :, 4:] == -1).all()


def test_shift_is_decided_by_image_size_and_refused_for_flat_inputs():
    options = api.FinetuneOptions()
    assert options.resolved((1, 28, 28), 7200, 4).shift == 1 and options.resolved((28, 28, 1), 7200, 4).shift == 1
    assert options.resolved((1, 8, 8), 1293, 3).shift == 0 and options.resolved((784,), 7200, 3).shift == 0
    with pytest.raises(api.InputError, match="--shift 1: needs image inputs"):
        api.FinetuneOptions(shift=1).resolved((784,), 7200, 3)


@pytest.mark.slow
def test_finetuning_with_shifted_images_is_reproducible():
    options = dict(epochs=2, straight_through_epochs=1, seed=2, shift=1)
    runs = [api.convert(MODELS / "digits_conv.onnx", data="digits", netlist=False, levels=1,
                        finetune=api.FinetuneOptions(**options)) for _ in range(2)]
    assert runs[0].report["finetune"]["history"] == runs[1].report["finetune"]["history"]
    assert runs[0].report["finetune"]["options"]["shift"] == 1


def test_shifted_batches_keep_each_image_with_its_label_and_redraw_per_epoch():
    from whetstone_onnx.training import training_data
    rng = np.random.default_rng(0)
    x = rng.random((100, 1, 20, 20)).astype(np.float32) + 1.0          # no pixel equals the fill (1.0 = min)
    labels = np.arange(100)
    batches = training_data(x, labels, api.FinetuneOptions(shift=2, batch_size=32, seed=5))["x"]
    seen = []
    for epoch in range(2):
        for index in range(len(batches)):
            images, rows = batches[index]
            for image, row in zip(images, rows):
                # The image's interior is its own source image, moved by at most 2 pixels.
                assert any(np.array_equal(image[:, 2:-2, 2:-2], x[row, :, 2 - dy:18 - dy, 2 - dx:18 - dx])
                           for dy in range(-2, 3) for dx in range(-2, 3))
        seen.append(batches.order.copy())
        batches.on_epoch_end()
    assert sorted(seen[0]) == list(range(100)) and not np.array_equal(seen[0], seen[1])


def test_distillation_targets_are_the_teachers_probabilities_on_the_shifted_images_the_model_sees():
    from whetstone_onnx.training import DISTILLATION_TEMPERATURE, training_data
    rng = np.random.default_rng(1)
    x = rng.random((40, 1, 20, 20)).astype(np.float32)
    labels = rng.integers(0, 3, 40)

    def teacher(images):          # any function of the exact pixels: three "logits" per image
        return np.stack([images[:, 0, :10].sum((1, 2)), images[:, 0, 10:].sum((1, 2)),
                         images[:, 0, :, :10].sum((1, 2))], axis=1)

    options = api.FinetuneOptions(shift=2, batch_size=16, seed=3, distillation=0.5)
    batches = training_data(x, labels, options, teacher)["x"]
    images, targets = batches[1]
    rows = batches.order[16:32]
    np.testing.assert_array_equal(targets[:, 0], labels[rows])
    logits = teacher(images) / DISTILLATION_TEMPERATURE
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(targets[:, 1:], expected / expected.sum(1, keepdims=True), rtol=1e-6)
    assert not np.allclose(teacher(images), teacher(x[rows]))      # the shifted images, not the stored ones
    unshifted = training_data(x, labels, api.FinetuneOptions(shift=0, distillation=0.5), teacher)
    assert unshifted["y"].shape == (40, 4) and np.allclose(unshifted["y"][:, 1:].sum(1), 1.0)


@pytest.mark.slow
def test_distillation_from_the_original_model_trains_reproducibly_and_is_reported(tmp_path):
    options = dict(epochs=2, straight_through_epochs=1, distillation=0.9)
    runs = [api.convert(MODELS / "digits_dense.onnx", data="digits", netlist=False, levels=1,
                        finetune=api.FinetuneOptions(**options)) for _ in range(2)]
    plain = api.convert(MODELS / "digits_dense.onnx", data="digits", netlist=False, levels=1,
                        finetune=api.FinetuneOptions(epochs=2, straight_through_epochs=1))
    history = runs[0].report["finetune"]["history"]
    assert history == runs[1].report["finetune"]["history"]
    assert [row["loss"] for row in history] != [row["loss"] for row in plain.report["finetune"]["history"]]
    assert runs[0].report["finetune"]["options"]["distillation"] == 0.9
    assert runs[0].report["finetune"]["keras_vs_spiking_onnx"]["agreement"] == 1.0 and runs[0].passed
    # Three epochs, the untrained form no candidate (a float network): far from chance, short of the default's 97 %.
    assert runs[0].accuracy["spiking"] >= 0.75
    with pytest.raises(api.InputError, match="--distill 1.5: expected a weight from 0 to 1"):
        api.convert(MODELS / "digits_dense.onnx", data="digits", finetune=api.FinetuneOptions(distillation=1.5))


@pytest.mark.parametrize("multiplier,strides,dilations,group,keras_class", [
    (1, (1, 1), (1, 1), 6, "DepthwiseConv2D"), (2, (2, 2), (1, 1), 6, "DepthwiseConv2D"),
    (1, (1, 1), (2, 2), 6, "DepthwiseConv2D"), (2, (1, 1), (1, 1), 3, "Conv2D")])
def test_depthwise_and_grouped_convolutions_build_and_write_back_exactly(multiplier, strides, dilations, group,
                                                                          keras_class):
    """A depthwise convolution (one input channel per group) trains as Keras' DepthwiseConv2D, which
    TensorFlow runs far faster on CPU than a grouped Conv2D; other groupings stay Conv2D."""
    from whetstone_onnx.network import Network
    from whetstone_onnx.ops.conv import Conv2d

    rng = np.random.default_rng(0)
    in_per_group = 6 // group
    conv = Conv2d("conv", rng.normal(size=(6 * multiplier, in_per_group, 3, 3)).astype(np.float32),
                  rng.normal(size=6 * multiplier).astype(np.float32), strides, (1, 1, 1, 1), dilations, group)
    network = Network("x", (6, 10, 10), "y", [conv])
    x = rng.normal(size=(8, 6, 10, 10)).astype(np.float32)
    built = build_keras(network)
    assert type(built.model.get_layer(built.layer_names[id(conv)])).__name__ == keras_class
    expected = runtime.predict(to_onnx(network, graph_name="g"), x)
    actual = built.model.predict(x, verbose=0).reshape(expected.shape)
    assert np.abs(actual - expected).max() <= 1e-5 * np.abs(expected).max()
    weight = conv.weight.copy()
    write_back(network, built)
    np.testing.assert_array_equal(conv.weight, weight)
