"""Fine-tuning that cannot end silently worse: the validation hold-out, checkpointing of the
best validated spiking network, the step budget, batch norm that cannot drift, and the
accuracy guard's exit code."""
from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from conftest import MODELS, run_cli
from test_schemas import errors

from whetstone_onnx import api
from whetstone_onnx.conversion import ConvertOptions
from whetstone_onnx.data import Dataset, load_dataset
from whetstone_onnx.finetune import SHARPENING_STEPS_PER_LAYER, STRAIGHT_THROUGH_STEPS, validation_split
from whetstone_onnx.training import validation_tolerance
from whetstone_onnx.report import accuracy_table


def test_validation_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(10), [50, 40, 30, 20, 10, 5, 3, 2, 1, 100])
    fit, held = validation_split(labels, 0.1, seed=0)
    assert sorted(np.concatenate([fit, held]).tolist()) == list(range(len(labels)))
    # a tenth of every class (rounded, at least one), none of a class with a single sample
    assert np.bincount(labels[held], minlength=10).tolist() == [5, 4, 3, 2, 1, 1, 1, 1, 0, 10]
    assert np.array_equal(held, validation_split(labels, 0.1, seed=0)[1])
    assert not np.array_equal(held, validation_split(labels, 0.1, seed=1)[1])
    assert len(validation_split(labels, 0.0, seed=0)[1]) == 0


def test_budget_is_counted_in_steps_whatever_the_data_size():
    default = api.FinetuneOptions()
    for samples, layers in ((1293, 3), (7200, 4), (54000, 4)):
        batches = math.ceil(samples / default.batch_size)
        resolved = default.resolved((64,), samples, layers)
        sharpening_steps = (resolved.epochs - resolved.warmup_epochs) * batches
        assert SHARPENING_STEPS_PER_LAYER * layers <= sharpening_steps < SHARPENING_STEPS_PER_LAYER * layers + batches
        assert STRAIGHT_THROUGH_STEPS <= resolved.straight_through_epochs * batches < STRAIGHT_THROUGH_STEPS + batches
        assert resolved.patience == max(3, math.ceil(resolved.straight_through_epochs / 4))
        assert resolved.weight_average_steps == STRAIGHT_THROUGH_STEPS // 5
        quick = api.FinetuneOptions(effort="quick").resolved((64,), samples, layers)
        thorough = api.FinetuneOptions(effort="thorough").resolved((64,), samples, layers)
        assert quick.straight_through_epochs <= resolved.straight_through_epochs <= thorough.straight_through_epochs
    # explicit epochs win over the budget
    explicit = api.FinetuneOptions(epochs=4, straight_through_epochs=2, patience=1).resolved((64,), 1293, 3)
    assert (explicit.epochs, explicit.straight_through_epochs, explicit.patience) == (4, 2, 1)
    assert explicit.weight_average_steps == round(0.2 * 2 * 21)     # a fifth of the phase's 2 x 21 steps
    assert api.FinetuneOptions(weight_average_steps=0).resolved((64,), 1293, 3).weight_average_steps == 0
    with pytest.raises(api.InputError, match="--effort 'fast': expected one of quick, default, thorough"):
        api.FinetuneOptions(effort="fast").validate()
    with pytest.raises(api.InputError, match="--validation 0.9"):
        api.FinetuneOptions(validation=0.9).validate()


def test_frozen_batchnorms_are_recalibrated_and_train_as_the_spiking_network_computes():
    from whetstone_onnx.finetune import _batchnorm_stats
    from whetstone_onnx.training import freeze_batchnorms
    from whetstone_onnx.keras.build import build_keras

    network = api.convert(MODELS / "digits_dense.onnx", data="digits", finetune=False, netlist=False,
                          accept_loss=True).sharpenable_network
    x = np.random.default_rng(0).uniform(0, 1, (300, 64)).astype(np.float32)
    # statistics of other inputs: the batch norms start out of step with the data trained on
    built = build_keras(network, batchnorm_stats=_batchnorm_stats(network, 3 * x))
    assert len(built.batchnorm_names) == 2
    training = built.model(x, training=True).numpy()
    assert not np.allclose(training, built.model(x, training=False).numpy(), atol=1e-3)
    freeze_batchnorms(built, x)
    for name in built.batchnorm_names.values():
        batchnorm = built.model.get_layer(name)
        import keras
        inputs = keras.Model(built.model.inputs, batchnorm.input)(x).numpy()
        np.testing.assert_allclose(batchnorm.moving_mean.numpy(), inputs.mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(batchnorm.moving_variance.numpy(), inputs.var(0), rtol=1e-4, atol=1e-5)
    # frozen: a training step normalises with the recalibrated statistics, as the spiking network does
    np.testing.assert_array_equal(built.model(x, training=True).numpy(), built.model(x, training=False).numpy())


def test_the_monitor_scores_the_moving_average_of_the_weights_and_training_goes_on_from_the_trained():
    """weight_average: before the monitor scores an epoch the model holds the exponential moving
    average of its per-step weights; after it, the weights as trained, from which training goes on."""
    import keras

    from whetstone_onnx.training import weight_average

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32)
    y = np.random.default_rng(1).standard_normal((40, 2)).astype(np.float32)
    seen: dict[str, list] = {"steps": [], "scored": [], "after": []}

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen["steps"].append([w.copy() for w in model.get_weights()])

        def on_epoch_end(self, epoch, logs=None):
            seen["scored"].append([w.copy() for w in model.get_weights()])

    class After(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen["after"].append([w.copy() for w in model.get_weights()])

    model.fit(x, y, batch_size=10, epochs=2, shuffle=False, verbose=0,
              callbacks=[Record()] + weight_average(model, 4, Record()) + [After()])
    seen["steps"] = seen["steps"][::2]            # Record ran twice per step: before and after SwapIn
    average = [np.asarray(w, np.float64) for w in seen["steps"][0]]
    for step, weights in enumerate(seen["steps"][1:], 2):
        average = [0.75 * a + 0.25 * w for a, w in zip(average, weights)]
        if step % 4 == 0:                         # an epoch's end: 4 batches of 10
            scored = seen["scored"][2 * (step // 4) - 1]
            for got, expected in zip(scored, average):
                np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
            for got, trained in zip(seen["after"][step // 4 - 1], weights):
                np.testing.assert_array_equal(got, trained)
    assert not np.allclose(seen["scored"][-1][0], seen["after"][-1][0])
    with pytest.raises(api.InputError, match="--weight-average -1: must be >= 0 steps"):
        api.FinetuneOptions(weight_average_steps=-1).validate()


@pytest.mark.slow
def test_checkpointing_keeps_the_best_validated_network_when_training_collapses(tmp_path):
    """The collapse case: a good spiking network, then training that destroys it (here a
    learning rate 50 times the default) while the run goes on. The network written is the
    best validated one, never the last."""
    good = api.convert(MODELS / "digits_dense.onnx", tmp_path / "good", data="digits", netlist=False, output="nhot",
                       finetune=api.FinetuneOptions(epochs=3, straight_through_epochs=3))
    assert good.accuracy["spiking"] > 0.85
    collapsed = api.convert(tmp_path / "good" / "sharpenable.onnx", data="digits", netlist=False,
                            accept_loss=True,
                            finetune=api.FinetuneOptions(epochs=2, straight_through_epochs=6, learning_rate=0.05,
                                                         weight_average_steps=0))
    report = collapsed.report["finetune"]
    history = report["history"]
    assert max(row["spiking_accuracy"] for row in history[1:]) < 0.2      # training collapsed to chance
    validation = report["validation"]
    # (epoch 0, the network as it came in, is a candidate too)
    assert validation["best_accuracy"] == max([validation["untrained_accuracy"]] +
                                              [row["validation_accuracy"] for row in history])
    assert validation["accuracy"] >= validation["best_accuracy"] - validation["tolerance"]
    # patience 3: three straight-through epochs without improvement, the rest left unrun
    assert validation["samples"] == 142 and validation["stopped_early"] and validation["epochs_run"] < 2 + 6
    assert validation["untrained_is_candidate"]                           # it came in spiking
    # The network kept is the one validated best: as it came in (epoch 0) or the first epoch.
    expected = good.accuracy["spiking"] if validation["kept_epoch"] == 0 else \
        history[validation["kept_epoch"] - 1]["spiking_accuracy"]
    assert validation["kept_epoch"] <= 1
    assert collapsed.accuracy["spiking"] == pytest.approx(expected, abs=1e-6)     # the history rounds to 6 places
    assert collapsed.report["finetune"]["keras_vs_spiking_onnx"]["agreement"] == 1.0
    assert collapsed.report["accuracy_guard"]["passed"] == (collapsed.report["accuracy_guard"]["loss_points"] <= 2)


@pytest.mark.slow
def test_a_float_networks_untrained_spiking_form_is_never_the_one_kept():
    """The held-out samples are ones the original was trained on, and the untrained spiking form,
    closest to the original, inherits its memory of them: a float network's epoch 0 is no
    candidate, even where training then scores below it (here a learning rate 50 times the
    default). A network that came in spiking keeps that candidate (the test above)."""
    from whetstone_onnx import runtime
    from whetstone_onnx.data import load_dataset

    digits = load_dataset("digits")
    held = validation_split(digits.y_train, 0.1, seed=0)[1]
    untrained = api.convert(MODELS / "digits_dense.onnx", data="digits", netlist=False, levels=2, finetune=False,
                            accept_loss=True)
    untrained_accuracy = np.mean(runtime.predict(untrained.spiking_model, digits.x_train[held].reshape(len(held), -1)).argmax(1)
                                 == digits.y_train[held])
    trained = api.convert(MODELS / "digits_dense.onnx", data="digits", netlist=False, levels=2, output="nhot",
                          accept_loss=True,
                          finetune=api.FinetuneOptions(epochs=2, straight_through_epochs=3, learning_rate=0.05,
                                                       weight_average_steps=0))
    validation = trained.report["finetune"]["validation"]
    assert validation["untrained_accuracy"] == pytest.approx(untrained_accuracy, abs=1.5 / len(held))
    assert not validation["untrained_is_candidate"]
    assert untrained_accuracy > 0.9 and validation["best_accuracy"] < untrained_accuracy - 0.1
    assert validation["kept_epoch"] >= 1
    assert trained.report["accuracy_guard"]["loss_points"] > 2      # and the guard says so


@pytest.mark.slow
def test_loss_guard_fails_the_conversion_unless_the_loss_is_accepted(tmp_path):
    # Sharpened at once, without fine-tuning, digits_dense loses about 5 points.
    strict = run_cli("convert", str(MODELS / "digits_dense.onnx"), "-o", str(tmp_path / "strict"), "--data", "digits",
                     "--no-finetune", "--no-netlist")
    assert strict.returncode == 1
    report = json.loads((tmp_path / "strict" / "report.json").read_text())
    guard = report["accuracy_guard"]
    assert guard["max_loss_points"] == 2.0 and not guard["passed"] and not guard["accepted"]
    assert guard["loss_points"] == pytest.approx(100 * (report["accuracy"]["original"] - report["accuracy"]["spiking"]),
                                                 abs=1e-3)
    assert strict.stderr.strip().splitlines() == [
        f"whetstone-onnx: error: {MODELS / 'digits_dense.onnx'}: the spiking network loses {guard['loss_points']:.2f} "
        f"points of accuracy, more than the 2 allowed (see {tmp_path / 'strict'}/report.json; --accept-loss keeps it)"]
    assert f"WARNING: the spiking network scores {100 * report['accuracy']['spiking']:.2f} %" in strict.stdout

    accepted = run_cli("convert", str(MODELS / "digits_dense.onnx"), "-o", str(tmp_path / "accepted"), "--data",
                       "digits", "--no-finetune", "--no-netlist", "--accept-loss")
    assert accepted.returncode == 0, accepted.stderr
    assert "allowed), accepted" in accepted.stdout
    loose = run_cli("convert", str(MODELS / "digits_dense.onnx"), "-o", str(tmp_path / "loose"), "--data",
                    "digits", "--no-finetune", "--no-netlist", "--max-loss", "20")
    assert loose.returncode == 0 and "WARNING" not in loose.stdout
    bad = run_cli("convert", str(MODELS / "digits_dense.onnx"), "-o", str(tmp_path / "bad"), "--max-loss", "-1")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "whetstone-onnx: error: --max-loss -1.0: expected 0 to 100 points"
    assert not (tmp_path / "bad").exists()


def test_validation_tolerance_is_one_standard_error_and_never_zero():
    assert validation_tolerance(0.98, 800) == pytest.approx(math.sqrt(0.98 * 0.02 / 800), rel=0.05)
    assert 0 < validation_tolerance(1.0, 142) < 1 / 142        # a perfect score still has a spread
    assert validation_tolerance(0.9, 10_000) < validation_tolerance(0.9, 100)


@pytest.mark.slow
def test_auto_output_trains_both_stages_and_writes_the_better_validated_one(tmp_path):
    result = api.convert(MODELS / "digits_dense.onnx", tmp_path / "auto", data="digits", accept_loss=True, levels=1,
                         finetune=api.FinetuneOptions(epochs=3, straight_through_epochs=2))
    report = result.report
    heads = report["finetune"]["validation"]["output"]
    chosen = heads["chosen"]
    assert report["options"]["output"] == "auto"
    assert report["output_stage"] == {"requested": "auto", "written": chosen, "chosen_on_validation": True}
    other = {"nhot": "readout", "readout": "nhot"}[chosen]
    assert heads[chosen]["best_accuracy"] >= heads[other]["best_accuracy"]
    assert all(set(row["heads"]) == {"nhot", "readout"} for row in report["finetune"]["history"])
    # the stage written is the one chosen: an N-hot decode in the spiking graph or none
    spiking = onnx.load(tmp_path / "auto" / "spiking.onnx")
    assert any(node.op_type == "NHotDecode" for node in spiking.graph.node) == (chosen == "nhot")
    assert report["finetune"]["keras_vs_spiking_onnx"]["agreement"] == 1.0
    assert report["passed"]
    assert f"output stage: {chosen}, chosen on the held-out samples" in accuracy_table(report)
    # explicit options win; without fine-tuning there is nothing to choose on
    nhot = api.convert(MODELS / "digits_dense.onnx", data="digits", netlist=False, output="nhot", accept_loss=True,
                       levels=1, finetune=api.FinetuneOptions(epochs=2, straight_through_epochs=1))
    assert "output" not in nhot.report["finetune"]["validation"]
    assert nhot.report["output_stage"] == {"requested": "nhot", "written": "nhot", "chosen_on_validation": False}
    fixed = api.convert(MODELS / "digits_dense.onnx", data="digits", netlist=False, finetune=False, accept_loss=True)
    assert fixed.report["output_stage"] == {"requested": "auto", "written": "nhot", "chosen_on_validation": False}


def test_the_first_levels_follow_the_samples_per_class(tmp_path):
    """A classifier fine-tuned on fewer than 500 training samples per class starts at two levels
    (one bit per unit loses what few samples cannot teach back); with more, or without fine-tuning,
    or for a network that came in spiking, one level; the report and the summary say why."""
    short = api.FinetuneOptions(epochs=2, straight_through_epochs=1)
    digits = load_dataset("digits")
    four_times = Dataset(spec="digits x4", x_train=np.tile(digits.x_train, (4, 1, 1)),
                         y_train=np.tile(digits.y_train, 4), x_test=digits.x_test, y_test=digits.y_test)
    plenty = api.convert(MODELS / "digits_dense.onnx", data=four_times, netlist=False, max_loss=100.0, finetune=short)
    assert plenty.report["levels"]["first"] == plenty.report["options"]["levels"] == 1
    assert plenty.report["levels"]["first_reason"] == "575 training samples per class"
    # (with plenty of samples, the search stops within --max-loss points of the original)
    assert [entry["levels"] for entry in plenty.report["levels"]["tried"]] == [1]
    assert plenty.report["levels"]["reason"] == "within --max-loss points of the original on the held-out samples"
    assert "levels:" not in accuracy_table(plenty.report)
    fixed = api.convert(MODELS / "digits_dense.onnx", data="digits", netlist=False, finetune=False, accept_loss=True)
    assert fixed.report["options"]["levels"] == 1 and fixed.report["levels"] is None
    api.convert(MODELS / "digits_dense.onnx", tmp_path, data="digits", netlist=False, levels=1, finetune=short,
                accept_loss=True)
    spiking_in = api.convert(tmp_path / "sharpenable.onnx", data="digits", netlist=False, accept_loss=True,
                             finetune=short)
    assert spiking_in.report["options"]["levels"] == spiking_in.report["levels"]["first"] == 1
    assert spiking_in.report["levels"]["first_reason"] == ("144 training samples per class, fewer than 500; "
                                                           "no hidden unit can take more levels")
    assert spiking_in.report["passes"]["network"]["expand_levels"] == 0


@pytest.mark.slow
def test_levels_are_raised_while_the_held_out_samples_show_a_loss_the_guard_would_refuse(tmp_path):
    """Without --levels, a classifier that scores below the original on the held-out training
    samples (more than --max-loss points; with few samples per class, at all) is sharpened and
    fine-tuned again with more binary units per hidden unit (digits, 144 training samples per
    class: 2 first, then 4); the network written is the best validated. (A short run trails the
    original, which was trained on those samples.)"""
    short = api.FinetuneOptions(epochs=2, straight_through_epochs=1)
    result = api.convert(MODELS / "digits_dense.onnx", tmp_path / "auto", data="digits", netlist=False,
                         accept_loss=True, finetune=short)
    report = result.report
    levels = report["levels"]
    tried = [entry["levels"] for entry in levels["tried"]]
    scores = [entry["validation_accuracy"] for entry in levels["tried"]]
    assert levels["first"] == 2 and levels["first_reason"] == "144 training samples per class, fewer than 500"
    assert tried in ([2], [2, 4]) and levels["original_validation_accuracy"] == 1.0
    assert levels["reason"] == ("every number of levels in the ladder was tried" if len(tried) == 2 else
                                "level with the original on the held-out samples (few samples per class)")
    chosen = max(k for k, score in zip(tried, scores) if score == max(scores))  # few samples: the most among equals
    assert levels["chosen"] == report["options"]["levels"] == chosen
    assert report["finetune"]["validation"]["accuracy"] == max(scores)
    hidden = next(layer for layer in report["layers"] if layer.get("role") == "spiking")
    assert hidden["output_shape"] == [128 * chosen]                   # digits_dense: 128 hidden units first
    assert report["passed"] and report["finetune"]["keras_vs_spiking_onnx"]["agreement"] == 1.0
    assert errors("report", json.loads((tmp_path / "auto" / "report.json").read_text())) == []
    table = accuracy_table(report)
    assert (f"levels: {chosen} binary units per hidden unit, chosen on the held-out samples" in table) == (len(tried) > 1)
    assert "144 training samples per class, fewer than 500" in table
    # An explicit --levels is never searched.
    explicit = api.convert(MODELS / "digits_dense.onnx", data="digits", netlist=False, levels=1, max_loss=0.0,
                           accept_loss=True, finetune=short)
    assert explicit.report["levels"] is None and explicit.report["options"]["levels"] == 1
    # Levels that the netlist limit would refuse are not tried: one level, as trained, stays.
    tight = api.convert_with_options(MODELS / "digits_dense.onnx", None, data="digits", options=ConvertOptions(
        output="readout", max_loss=0.0, accept_loss=True, max_synapses=30_000, finetune=short))
    assert tight.report["levels"]["first"] == 1 and "; 2 levels would not fit: " in tight.report["levels"]["first_reason"]
    assert tight.report["levels"]["reason"].startswith("2 levels would not fit: ")
    assert tight.report["levels"]["chosen"] == tight.report["options"]["levels"] == 1 and tight.passed
