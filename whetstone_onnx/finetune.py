"""Fine-tuning through Keras: train while each layer is progressively sharpened.

The sharpenable Network is built as a Keras model (keras/build.py), trained
under a sharpener until every layer is a step, optionally trained a few more
epochs at full sharpness with a straight-through gradient, and its weights are
written back into the Network, from which the spiking artifacts are emitted.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.special import logsumexp, softmax

from .errors import InputError
from .native_logs import stderr_is_terminal
from .network import LinearLayer, Network
from .ops.activation import Sharpenable
from .ops.decode import NHotDecode
from .ops.dense import Dense

SHARPENERS = ("simple", "scheduled", "adaptive")
OPTIMIZERS = ("adam", "adadelta", "sgd", "rmsprop", "nadam")
BATCHNORM_LAYERS = ("none", "dense", "all")
# Smaller images (digits' 8 x 8) lose too much to a one-pixel shift.
MIN_SHIFTED_SIDE = 16
# Softens the original model's probabilities for distillation (T = 1 gave 96.0 vs 96.9 %
# for mnist_conv fine-tuned on 1000 images, weight 0.9).
DISTILLATION_TEMPERATURE = 4.0
# The step budget (see FinetuneOptions), counted on the training samples left after the
# validation hold-out. At the default effort it is close to the schedule the fixtures
# were tuned with on MNIST's 8000-image split (8 sharpening epochs after the warm-up for
# the conv nets' 4 spiking layers, 20 straight-through): on the 7200 images left, 9 and 23.
SHARPENING_STEPS_PER_LAYER = 250
STRAIGHT_THROUGH_STEPS = 2500
EFFORT_SCALE = {"quick": 0.4, "default": 1.0, "thorough": 2.5}
MIN_PATIENCE = 3
# Re-enabled batch norms are recalibrated on at most this many training samples.
RECALIBRATION_SAMPLES = 4000
# The validation split's own random stream (the shifted images draw from [seed, epoch]).
VALIDATION_STREAM = 0x7A11D


@dataclass
class FinetuneOptions:
    """Training recipe. The defaults were chosen with tools/bench_finetune.py and judged on the
    generalisation suite (tools/bench_suite.py) on 2 CPU cores.

    The budget is counted in optimizer steps, not epochs, so that a small data set
    (digits: 20 batches an epoch) trains as long as a large one (MNIST's 8000-image
    split: 125 batches): ``SHARPENING_STEPS_PER_LAYER`` steps per spiking layer while
    sharpening, then up to ``STRAIGHT_THROUGH_STEPS`` at full sharpness, both scaled by
    ``effort``. ``epochs`` / ``straight_through_epochs`` given explicitly win.

    Short sharpening, long straight-through phase: with the N-hot output, most of
    the accuracy comes back *after* every layer is a step (training the true
    forward pass), not while sharpening. Measured (spiking %, N-hot output):
    digits_dense 40+10 epochs 94.7, 20+20 96.1, 10+30 96.4 (before the
    thermometer code); mnist_dense 4+16 96.05 vs 12+0 90.7. Learning rate 1e-3
    beat 1e-4 on every fixture (these nets were trained on the same 8000 images:
    mnist_conv 4+8 97.45 vs 95.60, mnist_dense 96.05 vs 95.15, digits 94.7 vs
    93.1); cosine decay ends the run with small steps anyway.

    A share of the training data (``validation``) is held out; the spiking network
    is scored on it after every epoch, the best scoring one is the one kept, and the
    straight-through phase stops after ``patience`` epochs without improvement.
    """
    effort: str = "default"           # budget scale: quick, default or thorough (EFFORT_SCALE)
    epochs: int | None = None         # sharpening epochs (warm-up included); None: from the step budget
    sharpener: str = "simple"
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    warmup_epochs: int = 1            # epochs at sharpness 0 before sharpening starts
    # Epochs at full sharpness with a straight-through gradient; None: from the step budget.
    straight_through_epochs: int | None = None
    # Sharpness of the ramp whose gradient the straight-through phase uses
    # (digits_dense: 0.5 -> 94.7 %, 0.0 -> 93.1 %, 0.8 -> 95.8 vs 96.1 %).
    straight_through_sharpness: float = 0.5
    # Hidden layers that train with a re-enabled batch norm: "none", "dense" or "all"
    # (convolutions too). It sharpens with less loss (mnist_conv 96.0 vs 87.7 % after
    # sharpening). Measured with these defaults otherwise (spiking % on the held-out
    # split; runs vary by about 0.2 points):
    #                          none (15 STE epochs)   dense    all
    #   mnist_conv                    98.55           98.30   98.10 (98.30 with 15)
    #   torchstyle_mnist_conv         97.95           98.35   98.85 (98.45 with 15)
    # It normalises with batch statistics while sharpening, and with its moving
    # statistics, recalibrated on the training data, once every layer is a step: from
    # then on the model trained computes exactly the spiking network.
    batchnorm: str = "all"
    # N-hot output: the decode's logits are divided by this for the loss (see _training_model).
    code_temperature: float = 16.0
    # Image inputs: each training sample is shifted by up to this many pixels (a
    # fresh seeded draw per epoch), against over-fitting a small split. None: 1 for
    # images of at least MIN_SHIFTED_SIDE pixels a side, else 0. Measured (N-hot,
    # 10 units per class, temperature 8): mnist_conv 98.55 % with 1 pixel, 98.10 % with
    # 2, 97.95 % without (float 98.65 %).
    shift: int | None = None
    # Knowledge distillation: the weight, in the loss, of the original model's class
    # probabilities (at DISTILLATION_TEMPERATURE) on each training input, the labels
    # taking the rest. For fine-tuning data fewer than the model was trained on: with
    # weight 0.9, the MNIST conv nets (trained on 8000 images) fine-tuned on the first
    # 1000 reach 95.90 / 97.25 % instead of 95.50 / 95.15 % (mnist_conv / torchstyle,
    # spiking, N-hot), on 2000 97.20 / 97.10 instead of 97.80 / 96.15; on all 8000
    # it costs accuracy (97.75 / 98.50 instead of 98.65 / 98.75), hence off by default.
    distillation: float = 0.0
    # Share of the training data held out (stratified, seeded) to choose the network
    # kept; 0: none held out, the last epoch is kept.
    validation: float = 0.1
    # Straight-through epochs without a better validation score before training
    # stops; None: a quarter of the straight-through epochs, at least MIN_PATIENCE.
    patience: int | None = None

    def validate(self) -> None:
        if self.sharpener not in SHARPENERS:
            raise InputError(f"--sharpener {self.sharpener!r}: expected one of {', '.join(SHARPENERS)}")
        if self.batchnorm not in BATCHNORM_LAYERS:
            raise InputError(f"--batchnorm {self.batchnorm!r}: expected one of {', '.join(BATCHNORM_LAYERS)}")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"--optimizer {self.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
        if self.effort not in EFFORT_SCALE:
            raise InputError(f"--effort {self.effort!r}: expected one of {', '.join(EFFORT_SCALE)}")
        if self.batch_size < 1:
            raise InputError("--batch-size must be a positive integer")
        if self.epochs is not None and self.epochs <= self.warmup_epochs:
            raise InputError(f"--epochs {self.epochs}: needs more than the {self.warmup_epochs} warm-up epoch(s)")
        if self.straight_through_epochs is not None and self.straight_through_epochs < 0:
            raise InputError(f"--ste-epochs {self.straight_through_epochs}: must be >= 0")
        if self.patience is not None and self.patience < 1:
            raise InputError(f"--patience {self.patience}: must be positive")
        if not self.learning_rate > 0:
            raise InputError(f"--learning-rate {self.learning_rate}: must be positive")
        if not self.code_temperature > 0:
            raise InputError(f"code temperature {self.code_temperature}: must be positive")
        if self.shift is not None and self.shift < 0:
            raise InputError(f"--shift {self.shift}: must be >= 0")
        if not 0.0 <= self.distillation <= 1.0:
            raise InputError(f"--distill {self.distillation}: expected a weight from 0 to 1")
        if not 0.0 <= self.validation <= 0.5:
            raise InputError(f"--validation {self.validation}: expected a share of the training data from 0 to 0.5")

    def resolved(self, sample_shape: tuple[int, ...], train_samples: int, spiking_layers: int) -> FinetuneOptions:
        """These options with the shift decided for inputs of ``sample_shape`` and the epochs
        and patience decided from the step budget for ``train_samples`` (after the validation
        hold-out) and ``spiking_layers``."""
        image = len(sample_shape) == 3
        if self.shift is not None and self.shift and not image:
            raise InputError(f"--shift {self.shift}: needs image inputs (C, H, W), the model takes "
                             f"{tuple(sample_shape)}")
        shift = self.shift if self.shift is not None else \
            (1 if image and sorted(sample_shape)[1] >= MIN_SHIFTED_SIDE else 0)
        batches = max(1, math.ceil(train_samples / self.batch_size))
        scale = EFFORT_SCALE[self.effort]
        epochs = self.epochs if self.epochs is not None else \
            self.warmup_epochs + max(1, math.ceil(scale * SHARPENING_STEPS_PER_LAYER * spiking_layers / batches))
        straight = self.straight_through_epochs if self.straight_through_epochs is not None else \
            max(1, math.ceil(scale * STRAIGHT_THROUGH_STEPS / batches))
        patience = self.patience if self.patience is not None else max(MIN_PATIENCE, math.ceil(straight / 4))
        return replace(self, shift=shift, epochs=epochs, straight_through_epochs=straight, patience=patience)


@dataclass
class FinetuneResult:
    network: Network                   # the trained sharpenable network (sharpness as reached)
    history: list[dict] = field(default_factory=list)
    keras_spiking_predictions: np.ndarray | None = None   # Keras at sharpness 1 on the evaluation inputs
    reached_full_sharpness: bool = True
    options: FinetuneOptions | None = None   # as used (shift, epochs and patience decided)
    validation: dict | None = None     # samples held out, the epoch kept and its score; None without
    output: str = "nhot"               # the output stage written: "nhot" or "readout"


def validation_split(labels: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows): ``share`` of each class's rows, at least one of each class
    with two or more, drawn with ``seed``; sorted, so the rows keep the data's order."""
    rng = np.random.default_rng([seed, VALIDATION_STREAM])
    held = []
    if share > 0:
        for label in np.unique(labels):
            rows = np.flatnonzero(labels == label)
            if len(rows) >= 2:
                held.append(rng.permutation(rows)[:max(1, round(share * len(rows)))])
    held = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    return np.setdiff1d(np.arange(len(labels)), held), held


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


def finetune(network: Network, x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray,
             y_eval: np.ndarray, options: FinetuneOptions, *, progress: bool = False,
             teacher: Callable[[np.ndarray], np.ndarray] | None = None,
             readout: Dense | None = None) -> FinetuneResult:
    """Train ``network`` (sharpenable) on the training data while it is sharpened; ``teacher``
    gives the original model's logits for a batch of inputs (used with ``options.distillation``).

    Part of the training data is held out (``options.validation``) and the network
    written back is the one whose spiking form scored best on it; ``x_eval`` (the test
    split) is only scored for the history, never used to choose.

    ``readout``: for a network ending in an N-hot output stage (code Dense, Spike,
    NHotDecode), the float readout Dense that could replace that stage. Both output
    stages are then trained side by side on the same hidden layers (the sum of their
    losses), each scored on the held-out data after every epoch, and the one that
    scored best replaces the other (``FinetuneResult.output``)."""
    options.validate()
    if options.distillation and teacher is None:
        raise ValueError("distillation needs the original model as teacher")
    if readout is not None and (options.validation <= 0 or not isinstance(network.layers[-1], NHotDecode)):
        raise ValueError("choosing the output stage needs held-out data and an N-hot output stage")
    fit_rows, validation_rows = validation_split(y_train, options.validation, options.seed)
    x_fit, y_fit = x_train[fit_rows], y_train[fit_rows]
    spiking_count = sum(isinstance(layer, Sharpenable) for layer in network.layers)
    options = options.resolved(x_train.shape[1:], len(x_fit), spiking_count)
    import keras
    import tensorflow as tf

    from .keras.build import build_keras, write_back
    from .keras.sharpeners import AdaptiveSharpener, ScheduledSharpener, SimpleSharpener, spiking_layers

    keras.utils.set_random_seed(options.seed)
    tf.config.experimental.enable_op_determinism()
    trained = network.copy()
    built = build_keras(trained, batchnorm_stats=_batchnorm_stats(trained, x_fit, options.batchnorm))
    model = built.model
    layers = spiking_layers(model)
    batches = math.ceil(len(x_fit) / options.batch_size)
    sharpening_epochs = options.epochs - options.warmup_epochs
    if options.sharpener == "simple":
        sharpener = SimpleSharpener(options.warmup_epochs, steps=max(1, sharpening_epochs * batches // len(layers)),
                                    epochs=False)
    elif options.sharpener == "scheduled":
        per_layer = sharpening_epochs / len(layers)
        sharpener = ScheduledSharpener([(options.warmup_epochs + i * per_layer,
                                         options.warmup_epochs + (i + 1) * per_layer) for i in range(len(layers))])
    else:
        sharpener = AdaptiveSharpener(min_init_epochs=options.warmup_epochs, rate=len(layers) / sharpening_epochs,
                                      cz_rate=len(layers) / sharpening_epochs / 2, patience=1)
    readout_layer = None if readout is None else _readout_head(built, trained.layers[-3], readout)
    model, heads = _training_model(model, options.code_temperature, readout_layer)
    objectives = [_objective(options) for _ in heads]
    loss, metrics = [loss for loss, _ in objectives], [[metric] for _, metric in objectives]
    data = _training_data(x_fit, y_fit, options, teacher if options.distillation else None, len(heads))
    # Cosine decay over the whole run: sharpening ends with small steps, and the
    # straight-through epochs settle instead of oscillating between codes.
    total_steps = batches * (options.epochs + options.straight_through_epochs)
    schedule = keras.optimizers.schedules.CosineDecay(options.learning_rate, total_steps, alpha=0.01)
    optimizer = keras.optimizers.get({"class_name": options.optimizer, "config": {"learning_rate": schedule}})
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    monitor = _monitor(heads, layers, (x_train[validation_rows], y_train[validation_rows]),
                       (x_eval, y_eval), progress, options)
    budget = options.epochs * (3 if options.sharpener == "adaptive" else 1)
    model.fit(**data, epochs=budget, verbose=0, callbacks=[sharpener, monitor])
    reached = all(layer.get_sharpness() >= 1.0 for layer in layers)
    for layer in layers:
        layer.set_sharpness(1.0)
    if options.straight_through_epochs:
        for layer in layers:
            layer.straight_through = options.straight_through_sharpness
        _freeze_batchnorms(built, x_fit)
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics)   # retrace with the new gradient
        monitor.phase = "straight-through"
        model.fit(**data, epochs=options.straight_through_epochs, verbose=0, callbacks=[monitor])
        for layer in layers:
            layer.straight_through = None
    monitor.close()
    output = monitor.restore_best()
    for layer in layers:
        layer.set_sharpness(1.0)
    if output == "readout" and readout_layer is not None:
        # The readout replaces the code Dense, its Spike and the decode.
        trained.layers[-3:] = [readout]
        built.layer_names[id(readout)] = readout_layer.name
        built.model = keras.Model(built.model.inputs, readout_layer.output)
    write_back(trained, built)
    predictions = built.model.predict(x_eval, batch_size=1024, verbose=0).argmax(1)
    return FinetuneResult(trained, monitor.history, predictions, reached, options, monitor.summary(), output)


def _freeze_batchnorms(built, x: np.ndarray) -> None:
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


def _objective(options: FinetuneOptions):
    """(loss, accuracy metric) for one output head: the labels' cross-entropy, or with
    distillation the loss of _distillation_loss on (label, teacher probabilities...) rows."""
    import keras
    from keras import ops

    if not options.distillation:
        return (keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                keras.metrics.SparseCategoricalAccuracy(name="accuracy"))

    def accuracy(targets, logits):
        return ops.cast(ops.equal(ops.argmax(logits, -1), ops.cast(targets[:, 0], "int64")), "float32")

    return _distillation_loss(options.distillation), keras.metrics.MeanMetricWrapper(accuracy, name="accuracy")


def _distillation_loss(weight: float):
    """The loss for targets (label, teacher probabilities...) per row (see _training_data)."""
    import keras
    from keras import ops

    def loss(targets, logits):
        labels = ops.cast(targets[:, 0], "int32")
        hard = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        soft = keras.losses.categorical_crossentropy(targets[:, 1:], logits, from_logits=True)
        return (1.0 - weight) * hard + weight * soft

    return loss


def _training_data(x: np.ndarray, labels: np.ndarray, options: FinetuneOptions,
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
            images = _shift_images(x[rows], self.offsets[rows], options.shift, self.fill)
            return images, targets_of(images, rows)

        def on_epoch_end(self):
            self.epoch += 1
            self._draw()

    return {"x": ShiftedImages()}


def _shift_images(images: np.ndarray, offsets: np.ndarray, shift: int, fill: float) -> np.ndarray:
    """Each image moved by its (dy, dx) offset, uncovered pixels set to ``fill``.

    Images are (C, H, W) or, from Keras exports, (H, W, C): the channel axis is
    taken to be the smallest of the three.
    """
    channel_axis = 1 + int(np.argmin(images.shape[1:]))
    if channel_axis != 1:
        images = np.moveaxis(images, channel_axis, 1)
        return np.moveaxis(_shift_images(images, offsets, shift, fill), 1, channel_axis)
    _, _, height, width = images.shape
    padded = np.pad(images, ((0, 0), (0, 0), (shift, shift), (shift, shift)), constant_values=fill)
    rows = np.arange(height)[None, :] + shift - offsets[:, :1]          # (batch, H)
    cols = np.arange(width)[None, :] + shift - offsets[:, 1:]           # (batch, W)
    batch = np.arange(len(images))[:, None, None, None]
    channels = np.arange(images.shape[1])[None, :, None, None]
    return padded[batch, channels, rows[:, None, :, None], cols[:, None, None, :]]


def _training_model(model, temperature: float, readout_layer=None):
    """(the model trained on, the names of its outputs): it outputs logits, and an N-hot
    decode's logits are divided by ``temperature``; with ``readout_layer`` (see
    _readout_head) its logits are a second output.

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


def _readout_head(built, code_dense: Dense, readout: Dense):
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


def _batchnorm_stats(network: Network, x: np.ndarray, which: str = "all"
                     ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Mean and variance of the outputs (per channel) of each hidden linear layer that gets a
    re-enabled, identity-initialised batch norm: none, the Dense ones or all."""
    kinds = {"none": (), "dense": (Dense,), "all": (LinearLayer,)}[which]
    if not kinds:
        return {}
    outputs = network.forward(spread_rows(x, 2000), all_layers=True)
    stats = {}
    layers = network.layers
    for i, layer in enumerate(layers[:-1]):
        feeds_code = i + 2 < len(layers) and isinstance(layers[i + 2], NHotDecode)   # the output code layer
        following = network.follower(i)
        if isinstance(layer, kinds) and following is not None and isinstance(layers[following], Sharpenable) \
                and not feeds_code:
            out = outputs[i]
            axes = (0, 2, 3) if out.ndim == 4 else (0,)
            stats[id(layer)] = (out.mean(axis=axes), out.var(axis=axes))
    return stats


def _monitor(heads: list[str], layers, validation: tuple[np.ndarray, np.ndarray],
             evaluation: tuple[np.ndarray, np.ndarray], progress: bool, options: FinetuneOptions):
    """A Keras callback that scores the spiking network (every layer at sharpness 1) after
    each epoch on the validation and evaluation inputs, once per output head (``heads``: the
    training model's outputs), keeps the weights of each head's best validated epoch (the
    earliest among equals), stops the straight-through phase after ``options.patience``
    epochs in which no head improved on its own best of that phase, records the history
    (loss, sharpness per layer, both accuracies) and shows progress on stderr: a bar on a
    terminal, one line per epoch otherwise (logs and CI). Built here so that importing this
    module needs no Keras."""
    import keras

    from .keras.sharpeners import at_full_sharpness

    x_validation, y_validation = validation
    x_eval, y_eval = evaluation
    scored = np.concatenate([x_validation, x_eval])
    total_epochs = options.epochs + options.straight_through_epochs

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
            # The network as it comes in (epoch 0) is a candidate too: one converted from a
            # Whetstone model may already spike well, and training must not make it worse.
            if not self.history and not self.best and len(y_validation):
                for head, (validation, _) in self.score().items():
                    self._keep_if_best(head, validation, 0)

        def on_epoch_end(self, epoch, logs=None):
            sharpness = [layer.get_sharpness() for layer in layers]
            scores = self.score()
            row = {"epoch": len(self.history) + 1, "phase": self.phase, "loss": round(float(logs["loss"]), 6),
                   "sharpness": [round(v, 6) for v in sharpness]}
            per_head = {}
            for head, (validation, evaluation_accuracy) in scores.items():
                # Keras names a model's metrics after its outputs when it has several.
                metric = "accuracy" if len(heads) == 1 else f"{self.model.output_names[heads.index(head)]}_accuracy"
                per_head[head] = {
                    "train_accuracy": round(float(logs[metric]), 6),
                    "validation_accuracy": None if validation is None else round(validation[0], 6),
                    "validation_loss": None if validation is None else round(-validation[1], 6),
                    "spiking_accuracy": round(evaluation_accuracy, 6)}
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
                + ("" if values["validation_accuracy"] is None else
                   f"validation {100 * values['validation_accuracy']:.2f} %  ")
                + f"spiking acc {100 * values['spiking_accuracy']:.2f} %" for head, values in per_head.items())
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
            if best is None or validation > best[0] or \
                    validation[0] >= best[0][0] - validation_tolerance(best[0][0], len(y_validation)):
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
                       "accuracy": round(self.kept[self.chosen][0], 6), "best_accuracy": round(best[0], 6),
                       "tolerance": round(validation_tolerance(best[0], len(y_validation)), 6),
                       "epochs_run": len(self.history), "stopped_early": self.stopped_early}
            if len(heads) > 1:
                summary["output"] = {"chosen": self.chosen, **{
                    head: {"accuracy": round(self.kept[head][0], 6), "best_accuracy": round(best[0], 6),
                           "kept_epoch": epoch} for head, (best, epoch) in self.best.items()}}
            return summary

        def close(self):
            if self.bar is not None:
                self.bar.stop()

    return Monitor()
