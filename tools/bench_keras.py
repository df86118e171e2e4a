"""Benchmark of the Keras side on the MNIST split (train 0-7999, evaluate 8000-9999).

1. The classic Whetstone usage (issue 3's snippet, imports changed only), trained
   for 15 epochs, then exported with ``api.export_keras``: spiking accuracy. For
   comparison, the same model under the schedule it needs to end fully sharp (17
   epochs) and under the original library's README recipe (Adadelta at 4.0, batch
   128, SimpleSharpener(5, steps=5), 21 epochs; it trained on all 60,000 images);
   and the snippet's model exported with ``export_keras(..., finetune=True)``, which
   trains on from its weights as ``convert`` does (seeds 0, 1, 2).
2. Sharpening overhead: seconds per epoch of the same dense model as plain Keras
   (Dense + ReLU) and as Whetstone (Dense + BoundedRelu + SoftmaxDecode, sharpened
   per batch by SimpleSharpener); target ratio <= 1.2.

    python tools/bench_keras.py [--epochs 15]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import keras

from whetstone_onnx import api
from whetstone_onnx.data import load_dataset
from whetstone_onnx.keras import BoundedRelu, SimpleSharpener, Softmax_Decode, Spiking_BRelu, key_generator

MNIST = f"mnist:{Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'mnist'}"


class EpochTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)


def classic(x_train, y_train, epochs: int, optimizer="adam", batch_size: int = 32, steps: int = 4,
            seed: int = 0, finetune: bool = False) -> dict:
    from keras.layers import Dense
    from keras.models import Sequential
    keras.utils.set_random_seed(seed)
    key = key_generator(10, 100)
    model = Sequential([Dense(256, input_shape=(784,)), Spiking_BRelu(), Dense(64),
                        Spiking_BRelu(), Dense(100), Spiking_BRelu(), Softmax_Decode(key)])
    simple = SimpleSharpener(5, steps=steps, epochs=True)
    model.compile(loss="categorical_crossentropy", optimizer=optimizer, metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x_train, keras.utils.to_categorical(y_train, 10), epochs=epochs, batch_size=batch_size,
              callbacks=[simple], verbose=0)
    seconds = time.perf_counter() - start
    sharpness = simple.get_layer_sharpness()
    result = api.export_keras(model, data=MNIST, finetune=finetune)
    # Fine-tuned, spiking.onnx is the converter's further-trained model, checked against its own Keras model.
    agreement = (result.report["finetune"] if finetune else result.report["equivalence"])["keras_vs_spiking_onnx"]
    return {"epochs": epochs, "train_s": seconds, "sharpness_at_end": sharpness,
            "spiking_accuracy": result.accuracy["spiking"], "passed": result.passed,
            "keras_vs_spiking_onnx": agreement["agreement"]}


def overhead(x_train, y_train, epochs: int) -> dict:
    layers = keras.layers

    def dense_model(activation):
        return keras.Sequential([keras.Input((784,)), layers.Dense(256), activation(), layers.Dense(64),
                                 activation(), layers.Dense(40), activation()])

    times = {}
    for label in ("plain", "whetstone", "plain", "whetstone"):      # interleaved, to share the machine's noise
        keras.utils.set_random_seed(0)
        if label == "plain":
            model = dense_model(layers.ReLU)
            model.add(layers.Dense(10))
            model.add(layers.Softmax())
            callbacks = []
        else:
            model = dense_model(BoundedRelu)
            model.add(Softmax_Decode(key_generator(10, 40, overlapping=False)))
            callbacks = [SimpleSharpener(0, steps=len(x_train) // 64, epochs=False, stop_when_sharp=False)]
        timer = EpochTimer()
        model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
        model.fit(x_train, y_train, epochs=epochs, batch_size=64, callbacks=callbacks + [timer], verbose=0)
        times.setdefault(label, []).extend(timer.times[1:])            # the first epoch includes tracing
    plain, whetstone = statistics.median(times["plain"]), statistics.median(times["whetstone"])
    return {"plain_epoch_s": plain, "whetstone_epoch_s": whetstone, "ratio": whetstone / plain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    import tensorflow as tf
    tf.config.experimental.enable_op_determinism()    # as fine-tuning does: every run reproducible
    mnist = load_dataset(MNIST)
    x_train = mnist.x_train.reshape(len(mnist.x_train), 784)
    recipes = {"issue's snippet": {"epochs": args.epochs},
               **{f"issue's snippet, then export_keras(finetune=True), seed {seed}":
                  {"epochs": args.epochs, "finetune": True, "seed": seed} for seed in (0, 1, 2)},
               "snippet, fully sharp": {"epochs": 17},
               "original README recipe": {"epochs": 21, "batch_size": 128, "steps": 5, "optimizer":
                                          keras.optimizers.Adadelta(learning_rate=4.0, rho=0.95, epsilon=1e-8)}}
    for label, recipe in recipes.items():
        result = classic(x_train, mnist.y_train, **recipe)
        print(f"classic usage, {label}, {result['epochs']} epochs ({result['train_s']:.0f} s): sharpness at the end "
              f"{[round(v, 3) for v in result['sharpness_at_end']]}, spiking accuracy "
              f"{100 * result['spiking_accuracy']:.2f} %, Keras vs spiking.onnx "
              f"{100 * result['keras_vs_spiking_onnx']:.1f} %")
    cost = overhead(x_train, mnist.y_train, 6)
    print(f"sharpening overhead: plain {cost['plain_epoch_s']:.3f} s/epoch, whetstone {cost['whetstone_epoch_s']:.3f} "
          f"s/epoch, ratio {cost['ratio']:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
