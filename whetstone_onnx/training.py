"""The Keras side of fine-tuning (see ``finetune.py``): the loss, the stream of training
batches, the model that is trained (the spiking network's Keras form with its output
heads), the monitor that scores and checkpoints every epoch, and the recalibration of
re-enabled batch norms."""
from __future__ import annotations

import math
import sys
from collections.abc import Callable

import numpy as np
from scipy.special import logsumexp, softmax

from .native_logs import stderr_is_terminal

# Softens the original model's probabilities for distillation (T = 1 gave 96.0 vs 96.9 %
# for mnist_conv fine-tuned on 1000 images, weight 0.9).
DISTILLATION_TEMPERATURE = 4.0
# Re-enabled batch norms are recalibrated on at most this many training samples.
RECALIBRATION_SAMPLES = 4000


def validation_tolerance(accuracy: float, samples: int) -> float:
    """One standard error of an accuracy measured on ``samples`` held-out samples (binomial,
    with one success and one failure added so that 100 % still has a spread): epochs whose
    validation accuracies differ by less cannot be told apart."""
    shrunk = (accuracy * samples + 1) / (samples + 2)
    return math.sqrt(shrunk * (1 - shrunk) / samples)


def spread_rows(x: np.ndarray, count: int) -> np.ndarray:
    """At most ``count`` rows evenly spread over ``x``: statistics of data stored sorted by
    class (as users' npz files may be) then still see every class, where the first rows would not."""
    return x if len(x) <= count else x[np.linspace(0, len(x) - 1, count).astype(np.int64)]


def freeze_batchnorms(built, x: np.ndarray) -> None:
    """Recalibrate each re-enabled batch norm's moving statistics on the training inputs, as the
    network now computes them (every layer a step, the batch norms before it recalibrated), and
    have it normalise with them from now on, in training too: the model trained is then exactly
    the spiking network, where a batch norm on batch statistics would drift away from it."""
    import keras

    samples = spread_rows(x, RECALIBRATION_SAMPLES)
    for name in built.batchnorm_names.values():
        batchnorm = built.model.get_layer(name)
        upstream = keras.Model(built.model.inputs, batchnorm.input)     # called eagerly: predict would retrace
        inputs = np.concatenate([keras.ops.convert_to_numpy(upstream([samples[i:i + 1000]], training=False))
                                 for i in range(0, len(samples), 1000)])
        channels = batchnorm.axis % inputs.ndim
        axes = tuple(i for i in range(inputs.ndim) if i != channels)
        batchnorm.moving_mean.assign(inputs.mean(axis=axes))
        batchnorm.moving_variance.assign(inputs.var(axis=axes))
        batchnorm.frozen = True


def objective(options, regression: bool = False):
    """(loss, metric) for one output head: the labels' cross-entropy and the accuracy, or with
    distillation the loss of distillation_loss on (label, teacher probabilities...) rows; for
    real-valued targets the mean squared error."""
    import keras
    from keras import ops

    if regression:
        return keras.losses.MeanSquaredError(), keras.metrics.MeanSquaredError(name="mse")
    if not options.distillation:
        return (keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                keras.metrics.SparseCategoricalAccuracy(name="accuracy"))

    def accuracy(targets, logits):
        return ops.cast(ops.equal(ops.argmax(logits, -1), ops.cast(targets[:, 0], "int64")), "float32")

    return distillation_loss(options.distillation), keras.metrics.MeanMetricWrapper(accuracy, name="accuracy")


def distillation_loss(weight: float):
    """The loss for targets (label, teacher probabilities...) per row (see training_data)."""
    import keras
    from keras import ops

    def loss(targets, logits):
        labels = ops.cast(targets[:, 0], "int32")
        hard = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        soft = keras.losses.categorical_crossentropy(targets[:, 1:], logits, from_logits=True)
        return (1.0 - weight) * hard + weight * soft

    return loss


def training_data(x: np.ndarray, labels: np.ndarray, options,
                   teacher: Callable[[np.ndarray], np.ndarray] | None = None, heads: int = 1) -> dict:
    """``model.fit`` arguments: the arrays, or seeded batches of shifted images. The targets
    are the labels; with a teacher, rows of (label, the teacher's probabilities on the
    input as the model sees it, shifted or not); one copy per output head."""
    def targets_of(images, rows):
        if teacher is None:
            targets = labels[rows]
        else:
            probabilities = softmax(teacher(images).astype(np.float64) / DISTILLATION_TEMPERATURE, axis=1)
            targets = np.concatenate([labels[rows, None], probabilities], axis=1).astype(np.float32)
        return targets if heads == 1 else (targets,) * heads

    if options.shift == 0:
        return {"x": x, "y": targets_of(x, slice(None)), "batch_size": options.batch_size, "shuffle": True}
    import keras

    class ShiftedImages(keras.utils.PyDataset):
        """Shuffled batches; every image moved by a whole-pixel (dy, dx) in [-shift, shift],
        drawn anew each epoch from the seed. Uncovered pixels take the data's minimum,
        the background of digit-like images whatever their normalisation."""

        def __init__(self):
            super().__init__()
            self.epoch = 0
            self.fill = float(x.min())
            self._draw()

        def _draw(self):
            rng = np.random.default_rng([options.seed, self.epoch])
            self.order = rng.permutation(len(x))
            self.offsets = rng.integers(-options.shift, options.shift + 1, size=(len(x), 2))

        def __len__(self):
            return math.ceil(len(x) / options.batch_size)

        def __getitem__(self, index):
            rows = self.order[index * options.batch_size:(index + 1) * options.batch_size]
            images = shift_images(x[rows], self.offsets[rows], options.shift, self.fill)
            return images, targets_of(images, rows)

        def on_epoch_end(self):
            self.epoch += 1
            self._draw()

    return {"x": ShiftedImages()}


def shift_images(images: np.ndarray, offsets: np.ndarray, shift: int, fill: float) -> np.ndarray:
    """Each image moved by its (dy, dx) offset, uncovered pixels set to ``fill``.

    Images are (C, H, W) or, from Keras exports, (H, W, C): the channel axis is
    taken to be the smallest of the three.
    """
    channel_axis = 1 + int(np.argmin(images.shape[1:]))
    if channel_axis != 1:
        images = np.moveaxis(images, channel_axis, 1)
        return np.moveaxis(shift_images(images, offsets, shift, fill), 1, channel_axis)
    _, _, height, width = images.shape
    padded = np.pad(images, ((0, 0), (0, 0), (shift, shift), (shift, shift)), constant_values=fill)
    rows = np.arange(height)[None, :] + shift - offsets[:, :1]          # (batch, H)
    cols = np.arange(width)[None, :] + shift - offsets[:, 1:]           # (batch, W)
    batch = np.arange(len(images))[:, None, None, None]
    channels = np.arange(images.shape[1])[None, :, None, None]
    return padded[batch, channels, rows[:, None, :, None], cols[:, None, None, :]]


def training_model(model, temperature: float, readout_layer=None):
    """(the model trained on, the names of its outputs): it outputs logits, and an N-hot
    decode's logits are divided by ``temperature``; with ``readout_layer`` (see
    readout_head) its logits are a second output.

    The decode's logit for a class is 4 x (units of its code firing) + a constant
    once the code is binary, so its softmax saturates as soon as the right class
    leads by one unit and the loss stops pushing for a wider margin. Dividing by
    the temperature (16: a quarter logit per code unit, for the default 20 units per
    class) keeps that gradient alive. Measured: digits_dense 98.1 vs 97.8 % (4 units
    per class, temperature 4 vs 1); mnist_conv with 10 units 97.95 % at 8 vs 97.80 % at
    4, with 20 units 98.40 % at 16 vs 98.30 % at 8.
    The weights are shared with ``model``, whose decode stays unchanged.
    """
    import keras

    from .keras.layers import SoftmaxDecode

    decode = model.layers[-1]
    if not isinstance(decode, SoftmaxDecode):
        return model, ["readout"]      # a float readout already outputs logits
    signed_key = 2.0 * decode.key_array.T - 1.0

    def logits(code):
        return keras.ops.matmul(2.0 * code - 1.0, signed_key) / temperature

    outputs = [keras.layers.Lambda(logits, name="nhot")(decode.input)]
    if readout_layer is not None:
        outputs.append(readout_layer.output)
    return keras.Model(model.inputs, outputs, name="whetstone_training"), ["nhot", "readout"][:len(outputs)]


def readout_head(built, code_dense, readout):
    """A Keras Dense computing ``readout`` from the input of the N-hot code layer ``code_dense``:
    the float output stage that could replace the code, trained beside it."""
    import keras

    code = built.model.get_layer(built.layer_names[id(code_dense)])
    taken = {layer.name for layer in built.model.layers}
    name = next(f"readout_head{i or ''}" for i in range(len(taken) + 1) if f"readout_head{i or ''}" not in taken)
    layer = keras.layers.Dense(readout.out_channels, use_bias=readout.bias is not None, name=name)
    layer(code.input)
    layer.set_weights([readout.weight.T] + ([readout.bias] if readout.bias is not None else []))
    return layer


def epoch_monitor(heads: list[str], layers, validation: tuple[np.ndarray, np.ndarray],
                  evaluation: tuple[np.ndarray, np.ndarray], progress: bool, options, regression: bool = False,
                  given_spikes: bool = False):
    """A Keras callback that scores the spiking network (every layer at sharpness 1) after
    each epoch on the validation and evaluation inputs, once per output head (``heads``: the
    training model's outputs), keeps the weights of each head's best validated epoch (the
    earliest among equals), stops the straight-through phase after ``options.patience``
    epochs in which no head improved on its own best of that phase, records the history
    (loss, sharpness per layer, both accuracies) and shows progress on stderr: a bar on a
    terminal, one line per epoch otherwise (logs and CI). ``regression``: the score is minus the
    mean squared error and the best epoch is kept (the latest among equals) (the metric is "mse" where it is
    "accuracy" for a classifier). ``given_spikes``: the network came in spiking (every layer a step
    already), and as it came in (epoch 0) it is a candidate too. Built here so that importing this
    module needs no Keras."""
    import keras

    from .keras.sharpeners import at_full_sharpness

    x_validation, y_validation = validation
    x_eval, y_eval = evaluation
    scored = np.concatenate([x_validation, x_eval])
    total_epochs = options.epochs + options.straight_through_epochs
    metric = "mse" if regression else "accuracy"
    sign = -1.0 if regression else 1.0           # the metric from a score's first value, and back

    def shown(value: float) -> str:
        return f"{value:.5f}" if regression else f"{100 * value:.2f} %"

    class Monitor(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.history: list[dict] = []
            self.phase = "sharpening"
            # Per head: (best validation score, epoch kept; 0: as given), the kept epoch's weights and score.
            self.best: dict[str, tuple[tuple[float, float], int]] = {}
            self.kept: dict[str, tuple[float, float]] = {}
            self.best_weights: dict[str, list[np.ndarray]] = {}
            self.phase_best: dict[str, tuple[float, float]] = {}   # each head's best in the straight-through phase
            self.stale = 0                                 # straight-through epochs no head improved
            self.stopped_early = False
            self.untrained: dict[str, tuple[float, float]] = {}   # per head: the score before training
            self.chosen: str | None = None
            self.bar = None
            if progress and stderr_is_terminal():
                from rich.console import Console
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
                self.bar = Progress(TextColumn("fine-tuning"), BarColumn(bar_width=20), MofNCompleteColumn(),
                                    TimeElapsedColumn(), TextColumn("{task.description}"),
                                    console=Console(file=sys.stderr, force_terminal=True), transient=False)
                self.task = self.bar.add_task("", total=total_epochs)
                self.bar.start()

        def score(self) -> dict[str, tuple[tuple[float, float] | None, float]]:
            """Per head, the spiking network's (every layer a step) validation score, (accuracy,
            minus the mean cross-entropy of the logits trained on: it ranks equally accurate
            epochs), and its accuracy on the evaluation inputs."""
            with at_full_sharpness(layers):
                outputs = self.model.predict(scored, batch_size=1024, verbose=0)
            scores = {}
            for head, logits in zip(heads, outputs if len(heads) > 1 else [outputs]):
                logits = logits.astype(np.float64)
                if regression:
                    errors = np.mean((logits.reshape(len(logits), -1)
                                      - np.concatenate([y_validation, y_eval]).reshape(len(logits), -1)) ** 2, axis=1)
                    scores[head] = ((-float(np.mean(errors[:len(y_validation)])),) if len(y_validation) else None,
                                    float(np.mean(errors[len(y_validation):])))
                    continue
                classes = logits.argmax(1)
                evaluation_accuracy = float(np.mean(classes[len(y_validation):] == y_eval))
                if not len(y_validation):
                    scores[head] = (None, evaluation_accuracy)
                    continue
                logits = logits[:len(y_validation)]
                cross_entropy = logsumexp(logits, axis=1) - logits[np.arange(len(logits)), y_validation]
                scores[head] = ((float(np.mean(classes[:len(y_validation)] == y_validation)),
                                 -float(np.mean(cross_entropy))), evaluation_accuracy)
            return scores

        def on_train_begin(self, logs=None):
            # The spiking form before training is scored (and reported) once. A network that
            # came in spiking (converted from a Whetstone model, or by this converter) may already
            # spike well, and training must not make it worse: for it, this is a candidate too. A
            # float network's untrained spiking form is not: the held-out samples are ones the
            # original was trained on, and the untrained form, closest to the original, inherits
            # its memory of them (torch_mnist_mlp_dropout with two levels: 98.9 % there
            # untrained, 96.7 % at best trained; kept untrained, 95.75 % on the test split, where
            # the network the levels search keeps without it, trained, scores 97.25 %).
            if self.history or self.untrained or not len(y_validation):
                return
            for head, (validation, _) in self.score().items():
                self.untrained[head] = validation
                if given_spikes:
                    self._keep_if_best(head, validation, 0)

        def on_epoch_end(self, epoch, logs=None):
            sharpness = [layer.get_sharpness() for layer in layers]
            scores = self.score()
            row = {"epoch": len(self.history) + 1, "phase": self.phase, "loss": round(float(logs["loss"]), 6),
                   "sharpness": [round(v, 6) for v in sharpness]}
            per_head = {}
            for head, (validation, evaluation_accuracy) in scores.items():
                # Keras names a model's metrics after its outputs when it has several.
                logged = metric if len(heads) == 1 else f"{self.model.output_names[heads.index(head)]}_{metric}"
                per_head[head] = {
                    f"train_{metric}": round(float(logs[logged]), 6),
                    f"validation_{metric}": None if validation is None else round(sign * validation[0], 6),
                    f"spiking_{metric}": round(evaluation_accuracy, 6)}
                if not regression:
                    per_head[head]["validation_loss"] = None if validation is None else round(-validation[1], 6)
            row.update(per_head[heads[0]])
            if len(heads) > 1:
                row["heads"] = per_head
            self.history.append(row)
            improved = [self._keep_if_best(head, validation, row["epoch"]) for head, (validation, _) in scores.items()]
            if self.phase == "straight-through" and len(y_validation):
                self.stale = 0 if any(improved) else self.stale + 1
                if self.stale >= options.patience:
                    self.model.stop_training = True
                    self.stopped_early = epoch + 1 < self.params["epochs"]
            status = f"loss {row['loss']:.4f}  sharpness [{' '.join(f'{v:.2f}' for v in sharpness)}]  " + "  ".join(
                ("" if len(heads) == 1 else f"{head}: ")
                + ("" if values[f"validation_{metric}"] is None else
                   f"validation {shown(values[f'validation_{metric}'])}  ")
                + f"spiking {'MSE' if regression else 'acc'} {shown(values[f'spiking_{metric}'])}"
                for head, values in per_head.items())
            if self.bar is not None:
                self.bar.update(self.task, advance=1, description=status)
            elif progress:
                print(f"fine-tuning epoch {row['epoch']}/{total_epochs} ({self.phase}): {status}", file=sys.stderr)

        def _keep_if_best(self, head: str, validation: tuple[float, float] | None, epoch: int) -> bool:
            """Keep ``head``'s weights if this epoch's validation score is its best so far, or if it
            holds: is at most one standard error below that best (validation_tolerance). Among
            epochs the held-out samples cannot tell apart, the latest has trained longest at the
            smallest learning rate (measured, torchstyle_mnist_conv: the strictly best epoch, 20
            of 33, scored 97.85 % on the test split, the later ones 98.15-98.65 %), while a
            collapse falls far below the best and is never kept. True when the epoch improves on the
            head's best of the straight-through phase: patience counts from that phase's own best
            (it starts below the sharpening phase's, the step forward pass being new)."""
            if validation is None:
                return False
            best = self.best.get(head)
            tolerance = 0.0 if regression or best is None else validation_tolerance(best[0][0], len(y_validation))
            if best is None or validation > best[0] or validation[0] >= best[0][0] - tolerance:
                self.best[head] = (max(validation, best[0]) if best else validation, epoch)
                self.best_weights[head] = [np.array(w) for w in self.model.get_weights()]
                self.kept[head] = validation
            if self.phase != "straight-through":
                return False
            if head not in self.phase_best or validation > self.phase_best[head]:
                self.phase_best[head] = validation
                return True
            return False

        def restore_best(self) -> str:
            """The kept weights back into the model (none held out: the last ones), and the head they
            are the best of: the better validated head, the readout among equally accurate ones (a
            saturated validation score cannot rank them; the readout keeps the class scores'
            margin, which a code of step units rounds away)."""
            if not self.best:
                self.chosen = heads[0]
                return self.chosen
            self.chosen = max(self.best, key=lambda head: (self.best[head][0][0], head == "readout"))
            self.model.set_weights(self.best_weights[self.chosen])
            for row in self.history:
                row.update(row.get("heads", {}).get(self.chosen, {}))
            return self.chosen

        def summary(self) -> dict | None:
            if not self.best:
                return None
            best, epoch = self.best[self.chosen]
            summary = {"samples": len(y_validation), "share": options.validation, "kept_epoch": epoch,
                       metric: round(sign * self.kept[self.chosen][0], 6), f"best_{metric}": round(sign * best[0], 6),
                       "tolerance": 0.0 if regression else round(validation_tolerance(best[0], len(y_validation)), 6),
                       "epochs_run": len(self.history), "stopped_early": self.stopped_early}
            if self.chosen in self.untrained:
                summary[f"untrained_{metric}"] = round(sign * self.untrained[self.chosen][0], 6)
                summary["untrained_is_candidate"] = given_spikes
            if len(heads) > 1:
                summary["output"] = {"chosen": self.chosen, **{
                    head: {"accuracy": round(self.kept[head][0], 6), "best_accuracy": round(best[0], 6),
                           "kept_epoch": epoch} for head, (best, epoch) in self.best.items()}}
            return summary

        def close(self):
            if self.bar is not None:
                self.bar.stop()

    return Monitor()


def weight_average(model, steps: int, monitor) -> list:
    """Callbacks around ``monitor`` (in this order): an exponential moving average of the trainable
    weights, with a time constant of ``steps`` optimizer steps, is swapped in before the monitor
    scores an epoch, so that what it scores and keeps is the average, and swapped out after it,
    so that training goes on from the weights as trained; when training ends the model holds
    the last average. Averaging the weights of the last few hundred steps smooths the step
    units' flips between codes near their thresholds that single steps of a small training
    set cause."""
    import keras

    decay = 1.0 - 1.0 / steps
    variables = model.trainable_variables
    state: dict[str, list[np.ndarray]] = {}

    class SwapIn(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            values = [np.asarray(variable.numpy(), np.float64) for variable in variables]
            state["average"] = values if "average" not in state else \
                [decay * average + (1.0 - decay) * value for average, value in zip(state["average"], values)]

        def on_epoch_end(self, epoch, logs=None):
            state["trained"] = [variable.numpy() for variable in variables]
            for variable, average in zip(variables, state["average"]):
                variable.assign(average.astype(np.float32))

    class SwapOut(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            for variable, trained in zip(variables, state["trained"]):
                variable.assign(trained)

        def on_train_end(self, logs=None):
            # The network written is one that was scored: without a hold-out (no checkpoint to
            # restore), the last average.
            for variable, average in zip(variables, state.get("average", [])):
                variable.assign(average.astype(np.float32))

    return [SwapIn(), monitor, SwapOut()]
