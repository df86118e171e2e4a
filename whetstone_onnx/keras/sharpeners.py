"""Sharpening callbacks: the original Whetstone schedules, fixed.

All sharpeners act on the model's ``Spiking`` layers in order (bottom-up by
default: one layer at a time, first layer first) and stop training once every
layer has reached sharpness 1. Differences from the original library:
``SimpleSharpener(epochs=False)`` works (it stepped per batch and crashed);
sharpness lives in non-trainable weights; every schedule is deterministic.

Per-batch sharpening runs in ``on_train_batch_begin`` and keeps the values in
Python: a batch-*end* hook would make Keras wait for every batch's logs (about
a third more time per epoch on a small dense model), and reading the variables
back would synchronise too.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager

import keras

from .layers import Spiking


def spiking_layers(model: keras.Model) -> list[Spiking]:
    return [layer for layer in model._flatten_layers(include_self=False) if isinstance(layer, Spiking)]


@contextmanager
def at_full_sharpness(layers: list[Spiking]):
    """Every layer at sharpness 1 inside the block (the spiking network), each back to its own value after."""
    saved = [layer.get_sharpness() for layer in layers]
    for layer in layers:
        layer.set_sharpness(1.0)
    try:
        yield
    finally:
        for layer, value in zip(layers, saved):
            layer.set_sharpness(value)


class Sharpener(keras.callbacks.Callback):
    """Base class. ``bottom_up``: one layer at a time from the first; else all layers together."""

    def __init__(self, bottom_up: bool = True, verbose: bool = False, stop_when_sharp: bool = True):
        super().__init__()
        self.bottom_up, self.verbose, self.stop_when_sharp = bottom_up, verbose, stop_when_sharp

    @property
    def layers(self) -> list[Spiking]:
        return spiking_layers(self.model)

    def on_train_begin(self, logs=None):
        self._layers = self.layers
        self._values = [layer.get_sharpness() for layer in self._layers]

    def get_layer_sharpness(self) -> list[float]:
        if not hasattr(self, "_values"):
            return [layer.get_sharpness() for layer in self.layers]
        return list(self._values)

    def set_layer_sharpness(self, values: list[float]) -> None:
        if not hasattr(self, "_values"):
            self.on_train_begin()
        for i, (layer, value) in enumerate(zip(self._layers, values)):
            value = min(max(float(value), 0.0), 1.0)
            if value != self._values[i]:       # assign only what changed
                layer.set_sharpness(value)
                self._values[i] = value

    def model_sharpness(self) -> float:
        values = self.get_layer_sharpness()
        return sum(values) / len(values) if values else 1.0

    def set_model_sharpness(self, value: float) -> None:
        """Bottom-up: int(v * L) layers at 1, the next at the remainder, the rest at 0."""
        value = min(max(value, 0.0), 1.0)
        count = len(self.layers)
        if not self.bottom_up:
            self.set_layer_sharpness([value] * count)
            return
        full = int(value * count + 1e-9)
        values = [1.0] * full + [value * count - full] + [0.0] * count
        self.set_layer_sharpness(values[:count])

    def fully_sharp(self) -> bool:
        return all(v >= 1.0 for v in self.get_layer_sharpness())

    def _stop_if_done(self) -> None:
        if self.stop_when_sharp and self.fully_sharp():
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        # The spiking model is the trained one with every layer a step: say so when
        # fit's epoch budget ran out first, as the original library did not.
        if self.stop_when_sharp and not self.fully_sharp():
            values = ", ".join(f"{v:.3g}" for v in self.get_layer_sharpness())
            warnings.warn(f"{type(self).__name__}: training ended before every spiking layer was sharp "
                          f"(sharpness [{values}]); the spiking model, every layer a step, will score lower "
                          f"than the trained one{self._budget_hint()}", stacklevel=2)

    def _budget_hint(self) -> str:
        return ": train for more epochs"

    def _log(self, message: str) -> None:
        if self.verbose:
            print(f"{type(self).__name__}: {message}")


class SimpleSharpener(Sharpener):
    """From ``start_epoch`` on, each step adds 1 / (steps * L) to the model's sharpness.

    ``epochs=True``: one step at the end of each epoch; ``epochs=False``: one
    step at the end of each batch. The last step sets exactly 1.0.
    """

    def __init__(self, start_epoch: int, steps: int = 4, epochs: bool = True, **kwargs):
        super().__init__(**kwargs)
        if steps < 1:
            raise ValueError("steps must be >= 1")
        self.start_epoch, self.steps, self.epochs = start_epoch, steps, epochs
        self.current_epoch = 0
        self.taken = 0

    def _step(self) -> None:
        if self.current_epoch < self.start_epoch or self.fully_sharp():
            return
        total = self.steps * len(self.layers)
        self.taken += 1
        self.set_model_sharpness(1.0 if self.taken >= total else self.taken / total)
        self._log(f"sharpness {self.get_layer_sharpness()}")

    def on_epoch_begin(self, epoch, logs=None):
        self.current_epoch = epoch

    def _budget_hint(self) -> str:
        steps = self.steps * len(self.layers)
        if self.epochs:
            return f": this schedule needs fit(epochs={self.start_epoch + steps}) or more"
        return f": this schedule needs {steps} batches after epoch {self.start_epoch}"

    def on_train_batch_begin(self, batch, logs=None):
        if not self.epochs:
            self._step()

    def on_epoch_end(self, epoch, logs=None):
        if self.epochs:
            self._step()
        self._stop_if_done()


class ScheduledSharpener(Sharpener):
    """Layer i sharpens linearly, batch by batch, from epoch ``schedule[i][0]`` to ``schedule[i][1]``.

    Without a schedule, ``gen_schedule(num_layers, start, duration, intermission)`` makes one.
    """

    def __init__(self, schedule: list[tuple[int, int]] | None = None, num_layers: int | None = None,
                 start: int | None = None, duration: int | None = None, intermission: int | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        if schedule is None:
            if None in (num_layers, start, duration, intermission):
                raise ValueError("give a schedule, or num_layers, start, duration and intermission")
            schedule = self.gen_schedule(num_layers, start, duration, intermission)
        if any(stop <= start for start, stop in schedule):
            raise ValueError(f"every (start_epoch, stop_epoch) needs stop > start: {schedule}")
        self.schedule = [tuple(window) for window in schedule]
        self.current_epoch = 0

    @staticmethod
    def gen_schedule(num_layers: int, start: int, duration: int, intermission: int) -> list[tuple[int, int]]:
        return [(start + i * (duration + intermission), start + i * (duration + intermission) + duration)
                for i in range(num_layers)]

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if len(self.schedule) != len(self.layers):
            raise ValueError(f"the schedule has {len(self.schedule)} windows for {len(self.layers)} spiking layers")

    def on_epoch_begin(self, epoch, logs=None):
        self.current_epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        # The value this batch's training ends at, set as it begins (see the module docstring).
        batches = self.params.get("steps") or 1
        now = self.current_epoch + (batch + 1) / batches
        self.set_layer_sharpness([min(max((now - start) / (stop - start), 0.0), 1.0)
                                  for start, stop in self.schedule])

    def on_epoch_end(self, epoch, logs=None):
        self._stop_if_done()


class AdaptiveSharpener(Sharpener):
    """Sharpens when the training loss has stopped improving, pauses when it degrades.

    After at least ``min_init_epochs`` epochs, once the loss has not improved by
    ``sig_decrease`` (relative) for ``patience`` epochs, sharpening starts: each
    batch adds ``rate / batches_per_epoch`` to the lowest unfinished layer
    (``cz_rate`` once that layer is past ``critical``; the first layer at
    ``first_layer_relative_rate`` times the rate). At most one layer finishes
    per epoch. If an epoch's loss is worse by ``sig_increase`` than the loss when
    sharpening (re)started, sharpening pauses until the loss settles again.
    """

    def __init__(self, min_init_epochs: int = 10, rate: float = 0.25, cz_rate: float = 0.126,
                 critical: float = 0.75, first_layer_relative_rate: float = 1.0, patience: int = 1,
                 sig_increase: float = 0.15, sig_decrease: float = 0.15, **kwargs):
        super().__init__(**kwargs)
        self.min_init_epochs, self.rate, self.cz_rate, self.critical = min_init_epochs, rate, cz_rate, critical
        self.first_layer_relative_rate, self.patience = first_layer_relative_rate, patience
        self.sig_increase, self.sig_decrease = sig_increase, sig_decrease
        self.sharpening = False
        self.best_loss = float("inf")
        self.reference_loss = float("inf")
        self.epochs_without_improvement = 0
        self.finished_this_epoch = False

    def on_epoch_begin(self, epoch, logs=None):
        self.finished_this_epoch = False

    def on_train_batch_begin(self, batch, logs=None):
        if not self.sharpening or self.finished_this_epoch:
            return
        values = self.get_layer_sharpness()
        index = next((i for i, v in enumerate(values) if v < 1.0), None)
        if index is None:
            return
        rate = self.cz_rate if values[index] >= self.critical else self.rate
        if index == 0:
            rate *= self.first_layer_relative_rate
        values[index] = min(values[index] + rate / (self.params.get("steps") or 1), 1.0)
        self.finished_this_epoch = values[index] >= 1.0
        self.set_layer_sharpness(values)

    def on_epoch_end(self, epoch, logs=None):
        loss = float((logs or {}).get("loss", float("inf")))
        improved = loss < self.best_loss * (1.0 - self.sig_decrease)
        self.best_loss = min(self.best_loss, loss)
        self.epochs_without_improvement = 0 if improved else self.epochs_without_improvement + 1
        if self.sharpening and loss > self.reference_loss * (1.0 + self.sig_increase):
            self.sharpening = False
            self._log(f"epoch {epoch}: loss {loss:.4f} degraded, pausing")
        elif not self.sharpening and epoch + 1 >= self.min_init_epochs \
                and self.epochs_without_improvement >= self.patience:
            self.sharpening, self.reference_loss = True, loss
            self._log(f"epoch {epoch}: loss {loss:.4f} settled, sharpening")
        self._stop_if_done()
