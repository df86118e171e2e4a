"""Train the generalisation suite in ``models/suite/`` and write it as ONNX files.

``python tools/make_suite.py`` trains and exports every model, then writes
``models/suite/suite.toml`` (a ``whetstone-onnx zoo`` manifest) and
``models/suite/README.md``; ``python tools/make_suite.py NAME ...`` rebuilds only
those models and re-measures the others as they are.

The suite is what the fine-tuning recipe is judged on, so the models are trained
the way independent users train small classifiers -- each with its own framework,
exporter, architecture, input normalisation and tutorial-style recipe -- and *not*
tuned to convert well. What they share is only what the converter needs: one
float32 input with a symbolic batch dimension, one output of class logits or
probabilities, and ops from the supported list (Relu, Clip / ReLU6, Sigmoid,
HardSigmoid, MaxPool, AveragePool, GlobalAveragePool, Conv, Gemm / MatMul,
BatchNormalization, Flatten / Reshape, Dropout).

Exporters:

- PyTorch: ``torch.onnx.export(..., dynamo=False, opset_version=13..17,
  dynamic_axes=...)``, the TorchScript exporter as most tutorials still call it. In
  eval mode it folds a BatchNorm2d that follows a Conv into the Conv; a batch norm
  after an activation, or a BatchNorm1d, stays a ``BatchNormalization`` node.
- Keras 3: ``model.export(path, format="onnx")`` (tf2onnx underneath), through
  ``keras_export`` of ``tools/make_fixtures.py``, the file kept as Keras wrote it.
- tf2onnx: ``tf2onnx.convert.from_function`` on a ``tf.function`` whose weights are
  ``tf.Variable`` s, trained with a hand-written ``tf.GradientTape`` loop.
- scikit-learn: an ``MLPClassifier`` whose weights are put into a PyTorch module
  (with a BatchNorm1d fitted on the hidden activations), exported by torch.

Everything is seeded (NumPy, torch, Keras / TensorFlow with deterministic kernels,
one thread each), so a rerun on the same software versions gives the same weights
(the Keras and tf2onnx files differ in generated node names; see
``models/README.md``). Only the training split is trained on; the accuracy in the
README is measured with onnxruntime on the test split after
``whetstone_onnx.data.fit_to_input``, exactly as the converter prepares data.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import contextlib
import io
import math
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from make_fixtures import check_conventions, keras_export, model_input_shape, onnx_logits  # noqa: E402
from make_fixtures import seed_everything as keras_seed_everything  # noqa: E402

from whetstone_onnx.data import Dataset, fit_to_input, load_dataset  # noqa: E402

SUITE = REPO / "models" / "suite"
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"
# Data specs as the manifest writes them: relative to models/suite/ (the zoo's manifest reader resolves them so).
MNIST_SPEC_MANIFEST = "mnist:../../../shared/data/mnist"
SEED = 0
MAX_BYTES = 1536 * 1024          # 1.5 MB per file

MNIST_STD = (0.1307, 0.3081)     # the torchvision MNIST example's Normalize
HALF = (0.5, 0.5)                # Normalize((0.5,), (0.5,)): pixels to [-1, 1]


@dataclass
class Model:
    """One suite model: how it is built and what the README says about it."""

    name: str
    data: str                                  # "digits" or "mnist"
    normalize: tuple[float, float] | None      # what the converter must apply ((x - m) / s)
    exporter: str                              # filled with versions at run time
    architecture: str
    recipe: str
    normalize_note: str
    build: Callable[["Datasets"], None]
    opset: int = 0
    accuracy: float = 0.0
    size: int = 0
    ops: Counter | None = None
    seconds: float = 0.0

    @property
    def path(self) -> Path:
        return SUITE / f"{self.name}.onnx"


@dataclass
class Datasets:
    digits: Dataset
    mnist: Dataset


# ---------------------------------------------------------------- versions and seeding


def versions() -> dict[str, str]:
    import keras
    import sklearn
    import tensorflow as tf
    import tf2onnx
    import torch

    return {"torch": torch.__version__.split("+")[0], "keras": keras.__version__, "tf": tf.__version__,
            "tf2onnx": tf2onnx.__version__, "sklearn": sklearn.__version__}


def limit_threads() -> None:
    import tensorflow as tf
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def torch_seed() -> torch.Generator:
    import random

    import torch

    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    return torch.Generator().manual_seed(SEED)


# ---------------------------------------------------------------- PyTorch helpers


def random_affine(x, generator, *, degrees: float = 0.0, shift: float = 0.0):
    """A batch version of torchvision's ``RandomAffine(degrees, translate=(shift, shift))``
    on [0, 1] images (N, 1, H, W), zero fill; one random transform per image."""
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(degrees)
    # affine_grid's coordinates span [-1, 1]: a shift of s of the image is 2 s there.
    t = (torch.rand(n, 2, generator=generator) * 2 - 1) * (2 * shift)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_shift(x, generator, *, pad: int):
    """torchvision's ``RandomCrop(H, padding=pad)``: shift each image by up to ``pad`` pixels."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


def torch_fit(model, x, y, *, optimizer, epochs: int, batch_size: int, generator, scheduler=None,
              step_scheduler_per_batch: bool = False, augment=None, normalize=None, label_smoothing: float = 0.0,
              shape: tuple[int, ...] | None = None) -> None:
    """The usual PyTorch loop: shuffle, (augment, normalise), forward, cross-entropy, step.

    ``x`` holds [0, 1] pixels; augmentation runs before normalisation, as a torchvision
    ``transforms.Compose([...augment..., ToTensor(), Normalize(m, s)])`` would."""
    import torch
    import torch.nn.functional as F

    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    if shape is not None:
        xt = xt.reshape(len(xt), *shape)
    yt = torch.from_numpy(np.asarray(y, np.int64))
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(xt), generator=generator)
        for start in range(0, len(xt), batch_size):
            idx = order[start:start + batch_size]
            xb, yb = xt[idx], yt[idx]
            if augment is not None:
                xb = augment(xb, generator)
            if normalize is not None:
                xb = (xb - normalize[0]) / normalize[1]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xb), yb, label_smoothing=label_smoothing)
            loss.backward()
            optimizer.step()
            if scheduler is not None and step_scheduler_per_batch:
                scheduler.step()
        if scheduler is not None and not step_scheduler_per_batch:
            scheduler.step()
    model.eval()


def torch_export(model, sample_shape: tuple[int, ...], path: Path, *, opset: int, x_check: np.ndarray,
                 output_name: str = "logits") -> None:
    """``torch.onnx.export`` (TorchScript exporter), batch dimension symbolic; then check
    that onnxruntime reproduces the eval-mode module on ``x_check`` (prepared input)."""
    import torch

    model.eval()
    example = torch.zeros(1, *sample_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                  # the exporter's deprecation notice
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=[output_name],
                          dynamic_axes={"input": {0: "batch"}, output_name: {0: "batch"}})
    with torch.no_grad():
        expected = model(torch.from_numpy(x_check)).numpy()
    got = onnx_logits(path, x_check)
    err = float(np.max(np.abs(got - expected)))
    assert err < 1e-3, f"{path.name}: onnxruntime differs from torch by {err}"


def n_batches(n: int, batch: int) -> int:
    return -(-n // batch)


# ---------------------------------------------------------------- PyTorch models


def torch_digits_mlp_sgd(ds: Datasets) -> None:
    import torch
    from torch import nn

    g = torch_seed()
    d = ds.digits
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    torch_fit(model, d.x_train, d.y_train, optimizer=opt, epochs=60, batch_size=32, generator=g, shape=(64,))
    torch_export(model, (64,), SUITE / "torch_digits_mlp_sgd.onnx", opset=13,
                 x_check=d.x_test.reshape(-1, 64).astype(np.float32))


def torch_digits_cnn_bn(ds: Datasets) -> None:
    import torch
    from torch import nn

    g = torch_seed()
    d = ds.digits

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(16)
            self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(32)
            self.pool = nn.MaxPool2d(2)
            self.dropout = nn.Dropout(0.25)
            self.fc = nn.Linear(32 * 2 * 2, 10)

        def forward(self, x):
            x = self.pool(torch.relu(self.bn1(self.conv1(x))))
            x = self.pool(torch.relu(self.bn2(self.conv2(x))))
            x = torch.flatten(x, 1)
            return self.fc(self.dropout(x))

    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch_fit(model, d.x_train, d.y_train, optimizer=opt, epochs=40, batch_size=64, generator=g,
              normalize=HALF, shape=(1, 8, 8))
    x_check = ((d.x_test[:, None] - HALF[0]) / HALF[1]).astype(np.float32)
    torch_export(model, (1, 8, 8), SUITE / "torch_digits_cnn_bn.onnx", opset=14, x_check=x_check)


def torch_digits_allconv_gap(ds: Datasets) -> None:
    import torch
    from torch import nn

    g = torch_seed()
    d = ds.digits

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    model = nn.Sequential(
        *block(1, 32), *block(32, 32), nn.AvgPool2d(2),
        *block(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )
    epochs = 30
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    torch_fit(model, d.x_train, d.y_train, optimizer=opt, scheduler=sched, epochs=epochs, batch_size=32,
              generator=g, shape=(1, 8, 8))
    torch_export(model, (1, 8, 8), SUITE / "torch_digits_allconv_gap.onnx", opset=15,
                 x_check=d.x_test[:, None].astype(np.float32))


def torch_digits_mlp_hardsigmoid(ds: Datasets) -> None:
    import torch
    from torch import nn

    g = torch_seed()
    d = ds.digits
    model = nn.Sequential(nn.Linear(64, 96), nn.Hardsigmoid(), nn.Linear(96, 10))
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    torch_fit(model, d.x_train, d.y_train, optimizer=opt, epochs=25, batch_size=16, generator=g,
              normalize=HALF, shape=(64,))
    x_check = ((d.x_test.reshape(-1, 64) - HALF[0]) / HALF[1]).astype(np.float32)
    torch_export(model, (64,), SUITE / "torch_digits_mlp_hardsigmoid.onnx", opset=17, x_check=x_check)


def torch_mnist_mlp_dropout(ds: Datasets) -> None:
    import torch
    from torch import nn

    g = torch_seed()
    m = ds.mnist
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(128, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    torch_fit(model, m.x_train, m.y_train, optimizer=opt, epochs=10, batch_size=64, generator=g,
              normalize=MNIST_STD, shape=(1, 28, 28))
    x_check = ((m.x_test[:, None] - MNIST_STD[0]) / MNIST_STD[1]).astype(np.float32)
    torch_export(model, (1, 28, 28), SUITE / "torch_mnist_mlp_dropout.onnx", opset=13, x_check=x_check)


def torch_mnist_cnn_bn_aug(ds: Datasets) -> None:
    """pytorch/examples' MNIST recipe (Adadelta lr 1.0, StepLR gamma 0.7, dropout),
    smaller, with batch norm and RandomAffine(10 degrees, 10 % shift) augmentation."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    g = torch_seed()
    m = ds.mnist

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(16)
            self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(32)
            self.dropout1 = nn.Dropout(0.25)
            self.fc1 = nn.Linear(32 * 7 * 7, 64)
            self.dropout2 = nn.Dropout(0.5)
            self.fc2 = nn.Linear(64, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
            x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
            x = self.dropout1(torch.flatten(x, 1))
            x = self.dropout2(F.relu(self.fc1(x)))
            return self.fc2(x)

    model = Net()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    torch_fit(model, m.x_train, m.y_train, optimizer=opt, scheduler=sched, epochs=6, batch_size=64, generator=g,
              augment=lambda x, gen: random_affine(x, gen, degrees=10, shift=0.1), normalize=MNIST_STD,
              shape=(1, 28, 28))
    x_check = ((m.x_test[:, None] - MNIST_STD[0]) / MNIST_STD[1]).astype(np.float32)
    torch_export(model, (1, 28, 28), SUITE / "torch_mnist_cnn_bn_aug.onnx", opset=17, x_check=x_check)


def torch_mnist_cnn_postbn_s2(ds: Datasets) -> None:
    """Conv -> ReLU -> BN ordering, downsampling by padded stride-2 convs (no pooling)."""
    import torch
    from torch import nn

    g = torch_seed()
    m = ds.mnist
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(16),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.BatchNorm2d(32),
        nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(), nn.BatchNorm2d(32),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
    )
    epochs = 5
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    torch_fit(model, m.x_train, m.y_train, optimizer=opt, scheduler=sched, epochs=epochs, batch_size=128,
              generator=g, normalize=HALF, shape=(1, 28, 28))
    x_check = ((m.x_test[:, None] - HALF[0]) / HALF[1]).astype(np.float32)
    torch_export(model, (1, 28, 28), SUITE / "torch_mnist_cnn_postbn_s2.onnx", opset=16, x_check=x_check)


def torch_mnist_allconv_gap_1x1(ds: Datasets) -> None:
    """All-convolutional: Conv-BN-ReLU blocks, average pooling, a global-average-pool
    head and a 1x1 conv classifier; AdamW + OneCycle, label smoothing, random shifts."""
    import torch
    from torch import nn

    g = torch_seed()
    m = ds.mnist

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    model = nn.Sequential(
        *block(1, 16), *block(16, 16), nn.AvgPool2d(2),
        *block(16, 32), nn.AvgPool2d(2),
        *block(32, 64),
        nn.AdaptiveAvgPool2d(1), nn.Conv2d(64, 10, 1), nn.Flatten(),
    )
    epochs, batch = 5, 128
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, epochs=epochs,
                                                steps_per_epoch=n_batches(len(m.x_train), batch))
    torch_fit(model, m.x_train, m.y_train, optimizer=opt, scheduler=sched, step_scheduler_per_batch=True,
              epochs=epochs, batch_size=batch, generator=g, label_smoothing=0.1,
              augment=lambda x, gen: random_shift(x, gen, pad=2), normalize=MNIST_STD, shape=(1, 28, 28))
    x_check = ((m.x_test[:, None] - MNIST_STD[0]) / MNIST_STD[1]).astype(np.float32)
    torch_export(model, (1, 28, 28), SUITE / "torch_mnist_allconv_gap_1x1.onnx", opset=15, x_check=x_check)


# ---------------------------------------------------------------- scikit-learn -> torch


def sklearn_digits_mlp48_bn(ds: Datasets) -> None:
    """scikit-learn's MLPClassifier (defaults: adam, lr 1e-3, batch 200, L2 1e-4), its
    weights moved into a torch module with a BatchNorm1d standardising the hidden layer
    (statistics fitted on the training activations, gamma 1, beta 0) and the output layer
    rescaled so the module computes exactly the classifier's predict_proba."""
    import torch
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from torch import nn

    torch_seed()
    d = ds.digits
    x_train = d.x_train.reshape(len(d.x_train), -1)
    x_test = d.x_test.reshape(len(d.x_test), -1).astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=(48,), activation="relu", max_iter=300, random_state=SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_train, d.y_train)

    w1, w2 = clf.coefs_
    b1, b2 = clf.intercepts_
    hidden = np.maximum(x_train @ w1 + b1, 0.0)
    mean, var = hidden.mean(axis=0), hidden.var(axis=0)
    eps = 1e-5
    scale = np.sqrt(var + eps)

    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.BatchNorm1d(48, eps=eps), nn.Linear(48, 10),
                          nn.Softmax(dim=1))
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(w1.T.astype(np.float32)))
        model[0].bias.copy_(torch.from_numpy(b1.astype(np.float32)))
        bn = model[2]
        bn.running_mean.copy_(torch.from_numpy(mean.astype(np.float32)))
        bn.running_var.copy_(torch.from_numpy(var.astype(np.float32)))
        # W2 (BN(h)) + b2' == W2_orig h + b2: fold the standardisation's inverse into the output layer.
        model[3].weight.copy_(torch.from_numpy((w2 * scale[:, None]).T.astype(np.float32)))
        model[3].bias.copy_(torch.from_numpy((b2 + mean @ w2).astype(np.float32)))
    path = SUITE / "sklearn_digits_mlp48_bn.onnx"
    torch_export(model, (64,), path, opset=15, x_check=x_test, output_name="probabilities")
    got = onnx_logits(path, x_test)
    err = float(np.max(np.abs(got - clf.predict_proba(x_test))))
    assert err < 1e-4, f"{path.name}: probabilities differ from scikit-learn's by {err}"


# ---------------------------------------------------------------- Keras 3 models


def keras_mnist_mlp48_dropout(ds: Datasets) -> None:
    """TensorFlow's beginner quickstart (Flatten, Dense relu, Dropout 0.2, logits; Adam;
    5 epochs at the default batch 32) with a 48-unit hidden layer."""
    import keras

    keras_seed_everything()
    m = ds.mnist
    model = keras.Sequential([
        keras.Input((28, 28)),
        keras.layers.Flatten(),
        keras.layers.Dense(48, activation="relu"),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(10),
    ])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(m.x_train, m.y_train, epochs=5, verbose=0)
    keras_export(model, SUITE / "keras_mnist_mlp48_dropout.onnx")


def keras_mnist_cnn_aug(ds: Datasets) -> None:
    """Keras' "simple MNIST convnet" example (no batch norm, Dropout 0.5, batch 128,
    Adam, 10 % of the training images held out for validation) with RandomRotation /
    RandomTranslation augmentation applied to the tf.data pipeline.

    The augmentation is not in the model: Keras 3.15's ``model.export(format="onnx")``
    of a model that holds these layers writes their training-time ops
    (StatelessRandomUniformV2, ImageProjectiveTransformV3) into the graph, which is
    then not a valid ONNX model."""
    import keras
    import tensorflow as tf

    keras_seed_everything()
    m = ds.mnist
    L = keras.layers
    augment = keras.Sequential([
        L.RandomRotation(0.03, fill_mode="constant", seed=SEED),          # +-0.03 turn ~ +-11 degrees
        L.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=SEED + 1),
    ])
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        L.Conv2D(32, 3, activation="relu"), L.MaxPooling2D(2),
        L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(2),
        L.Flatten(), L.Dropout(0.5),
        L.Dense(10, activation="softmax"),
    ])
    x, y = m.x_train[..., None], m.y_train
    split = int(len(x) * 0.9)                  # what validation_split=0.1 holds out: the last 10 %
    train = (tf.data.Dataset.from_tensor_slices((x[:split], y[:split]))
             .shuffle(split, seed=SEED).batch(128)
             .map(lambda images, labels: (augment(images, training=True), labels)))
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    model.fit(train, epochs=8, validation_data=(x[split:], y[split:]), verbose=0)
    keras_export(model, SUITE / "keras_mnist_cnn_aug.onnx")


def keras_digits_mlp_sigmoid_norm(ds: Datasets) -> None:
    """A classic sigmoid MLP that standardises each pixel inside the graph (a Lambda
    layer with the training set's per-pixel mean and std, StandardScaler-style: std 1
    where a pixel never varies), plain SGD with momentum, 100 epochs.

    Keras' own ``Normalization`` layer (adapted, or given mean and variance) cannot be
    used: Keras 3 keeps its statistics as constant tensors, which tf2onnx turns into
    two extra graph inputs *without values*, so the exported file needs three inputs."""
    import keras

    keras_seed_everything()
    d = ds.digits
    x_train = d.x_train.reshape(len(d.x_train), -1)
    mean = x_train.mean(axis=0).astype(np.float32)
    std = x_train.std(axis=0)
    std = np.where(std < 1e-6, 1.0, std).astype(np.float32)
    model = keras.Sequential([
        keras.Input((64,)), keras.layers.Lambda(lambda t: (t - mean) / std, name="standardize"),
        keras.layers.Dense(64, activation="sigmoid"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, d.y_train, epochs=100, batch_size=32, verbose=0)
    keras_export(model, SUITE / "keras_digits_mlp_sigmoid_norm.onnx")


# ---------------------------------------------------------------- tf2onnx from_function


def tf_mnist_mlp_relu6(ds: Datasets) -> None:
    """Low-level TensorFlow: tf.Variable weights, a tf.function forward pass with
    tf.nn.relu6, a GradientTape loop with hand-written momentum SGD; exported by
    tf2onnx.convert.from_function."""
    import tensorflow as tf
    import tf2onnx

    keras_seed_everything()
    m = ds.mnist
    init = tf.keras.initializers.GlorotUniform(seed=SEED)
    w1 = tf.Variable(init((784, 128)), name="w1")
    b1 = tf.Variable(tf.zeros(128), name="b1")
    w2 = tf.Variable(tf.keras.initializers.GlorotUniform(seed=SEED + 1)((128, 10)), name="w2")
    b2 = tf.Variable(tf.zeros(10), name="b2")
    params = [w1, b1, w2, b2]
    velocity = [tf.Variable(tf.zeros_like(p)) for p in params]
    signature = [tf.TensorSpec([None, 784], tf.float32, name="input")]

    def model(x):
        h = tf.nn.relu6(tf.matmul(x, w1) + b1)
        return tf.matmul(h, w2) + b2

    # The exported function is its own tf.function: one that has run under a GradientTape
    # also returns the intermediate tensors the backward pass needs, and tf2onnx would
    # write each of them as a graph output.
    @tf.function(input_signature=signature)
    def forward(x):
        return tf.identity(model(x), name="logits")

    lr, momentum = 0.05, 0.9

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=model(x)))
        for p, v, grad in zip(params, velocity, tape.gradient(loss, params)):
            v.assign(momentum * v - lr * grad)
            p.assign_add(v)
        return loss

    x = m.x_train.reshape(len(m.x_train), -1).astype(np.float32)
    y = m.y_train.astype(np.int32)
    rng = np.random.default_rng(SEED)
    for _ in range(8):
        order = rng.permutation(len(x))
        for start in range(0, len(x), 100):
            idx = order[start:start + 100]
            train_step(tf.constant(x[idx]), tf.constant(y[idx]))

    path = SUITE / "tf_mnist_mlp_relu6.onnx"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        tf2onnx.convert.from_function(forward, input_signature=signature, opset=13, output_path=str(path))
    x_test = m.x_test.reshape(len(m.x_test), -1).astype(np.float32)
    err = float(np.max(np.abs(onnx_logits(path, x_test) - forward(tf.constant(x_test)).numpy())))
    assert err < 1e-3, f"{path.name}: onnxruntime differs from TensorFlow by {err}"


# ---------------------------------------------------------------- the suite


def suite_models(v: dict[str, str]) -> list[Model]:
    torch_exp = f"PyTorch {v['torch']}, `torch.onnx.export(dynamo=False)`"
    keras_exp = f"Keras {v['keras']} (TF {v['tf']}), `model.export(format=\"onnx\")` (tf2onnx {v['tf2onnx']})"
    tf_exp = f"TensorFlow {v['tf']} `tf.function`, `tf2onnx.convert.from_function` ({v['tf2onnx']})"
    sk_exp = (f"scikit-learn {v['sklearn']} `MLPClassifier`, weights in PyTorch {v['torch']}, "
              "`torch.onnx.export(dynamo=False)`")
    raw, half, std = "[0,1] raw", "(x-0.5)/0.5", "(x-0.1307)/0.3081"
    return [
        Model("torch_digits_mlp_sgd", "digits", None, torch_exp,
              "(N,64): Linear 128, ReLU, Linear 64, ReLU, Linear 10 (logits)",
              "SGD lr 0.01 momentum 0.9, 60 epochs, batch 32, no dropout, no augmentation", raw,
              torch_digits_mlp_sgd),
        Model("torch_digits_cnn_bn", "digits", HALF, torch_exp,
              "(N,1,8,8): [Conv 16 (pad 1)+BN+ReLU+MaxPool 2], [Conv 32 (pad 1)+BN+ReLU+MaxPool 2], "
              "Flatten, Dropout 0.25, Linear 10 (BN folded into the Conv by the exporter)",
              "Adam lr 1e-3, 40 epochs, batch 64, dropout 0.25, no augmentation", half, torch_digits_cnn_bn),
        Model("torch_digits_allconv_gap", "digits", None, torch_exp,
              "(N,1,8,8): Conv 32+BN+ReLU, Conv 32+BN+ReLU, AvgPool 2, Conv 64+BN+ReLU, "
              "AdaptiveAvgPool2d(1) (GlobalAveragePool), Flatten, Linear 10",
              "AdamW lr 3e-3 wd 1e-2, cosine schedule, 30 epochs, batch 32, no dropout, no augmentation", raw,
              torch_digits_allconv_gap),
        Model("torch_digits_mlp_hardsigmoid", "digits", HALF, torch_exp,
              "(N,64): Linear 96, Hardsigmoid, Linear 10",
              "Adam lr 5e-3, 25 epochs, batch 16, no dropout, no augmentation", half, torch_digits_mlp_hardsigmoid),
        Model("sklearn_digits_mlp48_bn", "digits", None, sk_exp,
              "(N,64): Linear 48, ReLU, BatchNorm1d (fitted on the hidden activations), Linear 10, Softmax",
              "MLPClassifier defaults: Adam lr 1e-3, batch 200, L2 1e-4, up to 300 epochs; BN statistics from "
              "the training activations, output layer rescaled to keep predict_proba", raw,
              sklearn_digits_mlp48_bn),
        Model("keras_digits_mlp_sigmoid_norm", "digits", None, keras_exp,
              "(N,64): per-pixel standardisation in the graph (Lambda: Sub, Mul), Dense 64 sigmoid, Dense 10 softmax",
              "SGD lr 0.05 momentum 0.9, 100 epochs, batch 32, no dropout, no augmentation",
              "[0,1] raw in; per-pixel (x-mean)/std inside the graph", keras_digits_mlp_sigmoid_norm),
        Model("torch_mnist_mlp_dropout", "mnist", MNIST_STD, torch_exp,
              "(N,1,28,28): Flatten, Linear 256, ReLU, Dropout, Linear 128, ReLU, Dropout, Linear 10",
              "SGD lr 0.01 momentum 0.9, 10 epochs, batch 64, dropout 0.2, no augmentation", std,
              torch_mnist_mlp_dropout),
        Model("torch_mnist_cnn_bn_aug", "mnist", MNIST_STD, torch_exp,
              "(N,1,28,28): [Conv 16 (pad 1)+BN+ReLU+MaxPool 2], [Conv 32 (pad 1)+BN+ReLU+MaxPool 2], Flatten, "
              "Dropout, Linear 64, ReLU, Dropout, Linear 10 (BN folded into the Conv by the exporter)",
              "Adadelta lr 1.0, StepLR gamma 0.7, 6 epochs, batch 64, dropout 0.25/0.5, "
              "augmentation: random rotation +-10 deg and shift +-10 %", std, torch_mnist_cnn_bn_aug),
        Model("torch_mnist_cnn_postbn_s2", "mnist", HALF, torch_exp,
              "(N,1,28,28): Conv 16 (pad 1), ReLU, BN; Conv 32 (stride 2, pad 1), ReLU, BN; Conv 32 (stride 2, "
              "pad 1), ReLU, BN; Flatten, Linear 10 (BN after ReLU, before a padded stride-2 conv)",
              "SGD lr 0.05 momentum 0.9 Nesterov, wd 5e-4, cosine schedule, 5 epochs, batch 128, no dropout, "
              "no augmentation", half, torch_mnist_cnn_postbn_s2),
        Model("torch_mnist_allconv_gap_1x1", "mnist", MNIST_STD, torch_exp,
              "(N,1,28,28): Conv 16+BN+ReLU, Conv 16+BN+ReLU, AvgPool 2, Conv 32+BN+ReLU, AvgPool 2, "
              "Conv 64+BN+ReLU, AdaptiveAvgPool2d(1) (GlobalAveragePool), Conv 1x1 10, Flatten",
              "AdamW lr 2e-3 wd 1e-4, OneCycle max 5e-3, label smoothing 0.1, 5 epochs, batch 128, no dropout, "
              "augmentation: random shift +-2 px", std, torch_mnist_allconv_gap_1x1),
        Model("keras_mnist_mlp48_dropout", "mnist", None, keras_exp,
              "(N,28,28): Flatten, Dense 48 relu, Dropout 0.2, Dense 10 (logits)",
              "Adam lr 1e-3 (default), 5 epochs, batch 32 (default), dropout 0.2, no augmentation", raw,
              keras_mnist_mlp48_dropout),
        Model("keras_mnist_cnn_aug", "mnist", None, keras_exp,
              "(N,28,28,1): Conv 32 (valid) relu, MaxPool 2, "
              "Conv 64 (valid) relu, MaxPool 2, Flatten, Dropout 0.5, Dense 10 softmax; no batch norm",
              "Adam lr 1e-3, 8 epochs, batch 128, 10 % held out for validation (trains on 7200), dropout 0.5, "
              "augmentation in tf.data: rotation +-11 deg, shift +-10 %", raw, keras_mnist_cnn_aug),
        Model("tf_mnist_mlp_relu6", "mnist", None, tf_exp,
              "(N,784): MatMul 128 + bias, Relu6, MatMul 10 + bias (logits)",
              "hand-written momentum SGD lr 0.05 momentum 0.9, 8 epochs, batch 100, no dropout, no augmentation",
              raw, tf_mnist_mlp_relu6),
    ]


def measure(model: Model, ds: Datasets) -> None:
    path = model.path
    proto = check_conventions(path)
    model.size = path.stat().st_size
    assert model.size < MAX_BYTES, f"{path.name}: {model.size} bytes"
    outputs = [o.name for o in proto.graph.output]
    assert len(outputs) == 1, f"{path.name}: outputs {outputs}"
    model.opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    model.ops = Counter(n.op_type for n in proto.graph.node)
    data = ds.digits if model.data == "digits" else ds.mnist
    x = fit_to_input(data.x_test, model_input_shape(proto), model.normalize, spec=data.spec)
    pred = onnx_logits(path, x).argmax(axis=1)
    model.accuracy = float(np.mean(pred == data.y_test) * 100.0)


def write_manifest(models: list[Model]) -> None:
    lines = [
        "# The generalisation suite: small classifiers trained the way independent users train",
        "# them, written by `python tools/make_suite.py` (see README.md here). Paths and data",
        "# specs are relative to this file. No [defaults]: every model converts with the",
        "# default options (fine-tuning on).",
        "#",
        "#   whetstone-onnx zoo models/suite/suite.toml -o out/suite",
        "",
    ]
    for m in models:
        lines += ["[[model]]", f'path = "{m.name}.onnx"']
        lines.append(f'data = "{"digits" if m.data == "digits" else MNIST_SPEC_MANIFEST}"')
        if m.normalize is not None:
            lines.append(f"normalize = [{m.normalize[0]!r}, {m.normalize[1]!r}]")
        lines.append("")
    (SUITE / "suite.toml").write_text("\n".join(lines))


def write_readme(models: list[Model]) -> None:
    lines = [
        "# Generalisation suite",
        "",
        "Written by `python tools/make_suite.py` (seeded; about 4 minutes on 2 CPU cores, one",
        "thread per framework). Do not edit these files by hand: change the script and rerun",
        "(`python tools/make_suite.py NAME ...` rebuilds only those models).",
        "",
        "Each model is trained the way an independent user would train it -- a different",
        "framework, exporter, architecture, input normalisation and tutorial-style recipe --",
        "*not* tuned to convert well: the project's default conversion (fine-tuning on) is",
        "judged on them. `suite.toml` is the `whetstone-onnx zoo` manifest with each model's",
        "data set and normalisation.",
        "",
        "Only the training split is trained on (`digits`: scikit-learn's 1437 training samples;",
        "`mnist`: images 0-7999 of the official t10k file). *Float test accuracy* is the ONNX",
        "model's top-1 accuracy measured with onnxruntime on the test split (`digits`: 360",
        "samples; `mnist`: images 8000-9999), the input prepared by",
        "`whetstone_onnx.data.fit_to_input(x_test, input_shape, normalize, spec=...)` exactly as",
        "the converter prepares it. *Normalisation* is what `normalize` in the manifest applies",
        "to [0, 1] pixels.",
        "",
        "| model | framework / exporter | opset | architecture | training recipe | input normalisation | data | "
        "float test accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in models:
        data = "digits" if m.data == "digits" else "MNIST"
        lines.append(f"| `{m.name}` | {m.exporter} | {m.opset} | {m.architecture} | {m.recipe} | "
                     f"{m.normalize_note} | {data} | {m.accuracy:.2f} % |")
    lines += [
        "",
        "Notes:",
        "",
        "- PyTorch's TorchScript exporter (`dynamo=False`) folds a BatchNorm2d that follows a",
        "  Conv into the Conv in eval mode; a BatchNorm2d after a ReLU (`torch_mnist_cnn_postbn_s2`)",
        "  and a BatchNorm1d (`sklearn_digits_mlp48_bn`) stay `BatchNormalization` nodes.",
        "- The Keras files are kept exactly as `model.export(format=\"onnx\")` wrote them. tf2onnx",
        "  is not deterministic in generated names (and sometimes in the flatten's form), so the",
        "  Keras and `tf_*` files are not byte-identical across reruns, though their weights are;",
        "  the PyTorch and scikit-learn files are.",
        "- `keras_mnist_cnn_aug` augments in its tf.data pipeline: Keras 3's ONNX export of a",
        "  model holding RandomRotation / RandomTranslation layers writes their training-time ops",
        "  (StatelessRandomUniformV2, ImageProjectiveTransformV3) into the graph, an invalid model.",
        "- `keras_digits_mlp_sigmoid_norm` standardises with a Lambda layer: Keras 3 keeps a",
        "  `Normalization` layer's statistics as constant tensors, which the ONNX export turns into",
        "  two extra graph inputs without values.",
        "- `sklearn_digits_mlp48_bn` outputs the classifier's probabilities (Softmax); the script",
        "  checks that onnxruntime reproduces `predict_proba` within 1e-4.",
        "",
    ]
    (SUITE / "README.md").write_text("\n".join(lines))


def main(only: list[str]) -> int:
    start = time.perf_counter()
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        print(f"MNIST files not found in {MNIST_DIR}", file=sys.stderr)
        return 1
    limit_threads()
    SUITE.mkdir(parents=True, exist_ok=True)
    models = suite_models(versions())
    unknown = set(only) - {m.name for m in models}
    if unknown:
        print(f"no suite model named {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    ds = Datasets(load_dataset("digits"), load_dataset(f"mnist:{MNIST_DIR}"))
    for m in models:
        t0 = time.perf_counter()
        if not only or m.name in only:
            m.build(ds)
        m.seconds = time.perf_counter() - t0
        measure(m, ds)
        print(f"{m.name:32s} {m.accuracy:6.2f} %  opset {m.opset:2d}  {m.size / 1024:6.0f} KiB  "
              f"{m.seconds:6.1f} s  {dict(m.ops)}", flush=True)
    write_manifest(models)
    write_readme(models)
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
