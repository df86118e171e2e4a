"""Models written by the real exporters with their default settings, for the digits (8 x 8) data.

Each builder writes ``<folder>/<exporter>_<kind>.onnx`` and returns its path; ``kind`` is
"mlp" (a hidden layer with batch norm), "conv" (convolutions with batch norm, max
pooling, a dense head) or, for PyTorch, one of the branching ``GRAPH_KINDS`` (see
``torch_graph_model``). With ``data`` (x (N, 8, 8) in [0, 1], integer labels) the model
is trained first, briefly and seeded; without, it keeps its seeded initial weights.
Used by tests/test_exporters.py and by tools/bench_exporters.py, which measures what
the exporter table in docs/supported-models.md says.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

EPOCHS = 15


def torch_model(kind: str):
    import torch.nn as nn

    if kind in GRAPH_KINDS + UNTANGLED_KINDS:
        return torch_graph_model(kind)
    if kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.BatchNorm1d(48), nn.ReLU(), nn.Linear(48, 10))
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(16 * 2 * 2, 10))


def torch_graph_model(kind: str, *, size: int = 8, width: int = 8, stem_pool: bool = False, classes: int = 10):
    """A branching PyTorch model for ``size`` x ``size`` one-channel images, written the ordinary way:
    "resnet": a conv stem, a residual block with an identity shortcut and one with a strided 1x1
    projection shortcut (conv + batch norm on both branches), a dense head; "inception": a conv stem,
    1x1, 3x3 and 5x5 branches concatenated, a 1x1 conv over the concatenation, max pooling, a dense
    head; "preact_resnet": a raw conv stem, two pre-activation blocks with identity shortcuts and one
    with a projection, BN, ReLU, a dense head; "densenet": a raw conv stem, two DenseNet layers (each
    concatenates its input with a conv of it), a transition (BN, ReLU, 1x1 conv, average pooling),
    a third DenseNet layer, BN, ReLU, average pooling, a dense head; "mobilenet_v2":
    a conv stem, four inverted-residual blocks (three with the raw input added), a 1x1 conv, global
    average pooling, a dense head (ReLU6 throughout).
    ``stem_pool``: max pooling after the stem (a stride-2 stem for the last two), for MNIST-sized images."""
    import torch
    import torch.nn as nn

    def conv_bn(c_in, c_out, kernel=3, stride=1):
        return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(c_out))

    class Residual(nn.Module):
        def __init__(self, c_in, c_out, stride=1):
            super().__init__()
            self.body = nn.Sequential(conv_bn(c_in, c_out, 3, stride), nn.ReLU(), conv_bn(c_out, c_out))
            self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else conv_bn(c_in, c_out, 1, stride)

        def forward(self, x):
            return torch.relu(self.body(x) + self.shortcut(x))

    class Inception(nn.Module):
        def __init__(self, c_in, c_branch):
            super().__init__()
            self.branches = nn.ModuleList(nn.Sequential(nn.Conv2d(c_in, c_branch, k, padding=k // 2), nn.ReLU())
                                          for k in (1, 3, 5))

        def forward(self, x):
            return torch.cat([branch(x) for branch in self.branches], dim=1)

    class PreActivation(nn.Module):
        """He et al.'s pre-activation block: BN, ReLU, conv, BN, ReLU, conv, plus the raw input (a
        projection of the activated input where the shape changes); no activation after the sum."""

        def __init__(self, c_in, c_out, stride=1):
            super().__init__()
            self.first = nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU())
            self.body = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                                      nn.ReLU(), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False))
            self.projection = None if stride == 1 and c_in == c_out else nn.Conv2d(c_in, c_out, 1, stride,
                                                                                   bias=False)

        def forward(self, x):
            activated = self.first(x)
            return self.body(activated) + (x if self.projection is None else self.projection(activated))

    class DenseLayer(nn.Module):
        """DenseNet's layer: its input (raw convolution outputs) concatenated with BN, ReLU, conv of it."""

        def __init__(self, c_in, growth):
            super().__init__()
            self.body = nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(), nn.Conv2d(c_in, growth, 3, 1, 1, bias=False))

        def forward(self, x):
            return torch.cat([x, self.body(x)], 1)

    class InvertedResidual(nn.Module):
        """MobileNetV2's block: 1x1 expansion, depthwise 3x3, 1x1 linear projection (ReLU6 after the
        first two, batch norm after each); the raw input added where the shape allows, no activation after."""

        def __init__(self, c_in, c_out, stride, expansion):
            super().__init__()
            hidden = c_in * expansion
            layers = [] if expansion == 1 else [conv_bn(c_in, hidden, 1), nn.ReLU6()]
            self.body = nn.Sequential(*layers, nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                                      nn.BatchNorm2d(hidden), nn.ReLU6(), conv_bn(hidden, c_out, 1))
            self.residual = stride == 1 and c_in == c_out

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    side = size // 2 if stem_pool else size
    if kind == "mobilenet_v2":
        wide = 3 * width // 2
        return nn.Sequential(conv_bn(1, width, 3, 2 if stem_pool else 1), nn.ReLU6(),
                             InvertedResidual(width, width, 1, 1), InvertedResidual(width, wide, 2, 4),
                             InvertedResidual(wide, wide, 1, 4), InvertedResidual(wide, wide, 1, 4),
                             conv_bn(wide, 4 * width, 1), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4 * width, classes))
    if kind in UNTANGLED_KINDS:         # a raw stem convolution, strided for MNIST-sized images
        stem = [nn.Conv2d(1, width, 3, 2 if stem_pool else 1, 1, bias=False)]
        if kind == "preact_resnet":
            body = [PreActivation(width, width), PreActivation(width, width), PreActivation(width, 2 * width, 2)]
            channels = 2 * width
            side //= 2
        else:
            transition = [nn.BatchNorm2d(3 * width), nn.ReLU(), nn.Conv2d(3 * width, width, 1, bias=False),
                          nn.AvgPool2d(2)]
            body = [DenseLayer(width, width), DenseLayer(2 * width, width), *transition, DenseLayer(width, width)]
            channels, side = 2 * width, side // 4
        body += [nn.BatchNorm2d(channels), nn.ReLU(), nn.AvgPool2d(2) if kind == "densenet" else nn.Identity()]
        return nn.Sequential(*stem, *body, nn.Flatten(), nn.Linear(channels * side ** 2, classes))
    stem = [conv_bn(1, width), nn.ReLU()] + ([nn.MaxPool2d(2)] if stem_pool else [])
    if kind == "resnet":
        body = [Residual(width, width), Residual(width, 2 * width, 2)]
        features = 2 * width * (side // 2) ** 2
    elif kind == "inception":
        body = [Inception(width, width), nn.Conv2d(3 * width, 2 * width, 1), nn.ReLU(), nn.MaxPool2d(2)]
        features = 2 * width * (side // 2) ** 2
    else:
        raise ValueError(f"unknown graph model kind {kind!r}")
    return nn.Sequential(*stem, *body, nn.Flatten(), nn.Linear(features, classes))


GRAPH_KINDS = ("resnet", "inception")
# Branches that share raw tensors (network_passes/branches.py).
UNTANGLED_KINDS = ("preact_resnet", "densenet", "mobilenet_v2")


def torch_export(folder: Path, kind: str, data=None, *, dynamo: bool) -> Path:
    """``torch.onnx.export(model, (x,), path)`` as its documentation shows it: the dynamo exporter
    (opset 18+, weights in a .data file, the batch fixed at 1), or the TorchScript one (dynamo=False)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = torch_model(kind)
    if data is not None:
        x, y = torch.from_numpy(data[0][:, None].astype(np.float32)), torch.from_numpy(data[1].astype(np.int64))
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(EPOCHS):
            for batch in torch.randperm(len(x)).split(32):
                optimizer.zero_grad()
                F.cross_entropy(model(x[batch]), y[batch]).backward()
                optimizer.step()
    model.eval()
    path = folder / f"torch_{'dynamo' if dynamo else 'torchscript'}_{kind}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=dynamo)
    return path


def keras_model(kind: str, data=None):
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()     # the same weights in every process
    L = keras.layers
    if kind == "mlp":
        layers = [keras.Input((8, 8)), L.Flatten(), L.Dense(48), L.BatchNormalization(), L.ReLU(), L.Dense(10)]
    else:
        layers = [keras.Input((8, 8, 1)), L.Conv2D(8, 3, padding="same"), L.BatchNormalization(), L.ReLU(),
                  L.MaxPooling2D(), L.Conv2D(16, 3, padding="same"), L.BatchNormalization(), L.ReLU(),
                  L.MaxPooling2D(), L.Flatten(), L.Dense(10)]
    model = keras.Sequential(layers)
    if data is not None:
        x = data[0] if kind == "mlp" else data[0][..., None]
        model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, data[1], batch_size=32, epochs=EPOCHS, verbose=0)
    return model


def keras_export(folder: Path, kind: str, data=None) -> Path:
    """Keras 3's ``model.export(path, format="onnx")`` (tf2onnx underneath), channels last."""
    path = folder / f"keras_{kind}.onnx"
    model = keras_model(kind, data)
    model(np.zeros((1, *model.input_shape[1:]), np.float32))        # export traces a model that has run
    model.export(str(path), format="onnx", verbose=False)
    return path


def tf2onnx_export(folder: Path, kind: str, data=None) -> Path:
    """tf2onnx's ``convert.from_function`` on a ``tf.function`` holding the Keras model's weights as
    ``tf.Variable``s (its ``from_keras`` fails on Keras 3): batch norm written as
    ``tf.nn.batch_normalization``, convolutions as ``tf.nn.conv2d`` on NHWC tensors."""
    import tensorflow as tf
    import tf2onnx

    model = keras_model(kind, data)
    weights = [tf.Variable(w) for w in model.get_weights()]

    def batch_norm(h, gamma, beta, mean, var):
        return tf.nn.batch_normalization(h, mean, var, beta, gamma, 1e-3)

    if kind == "mlp":
        def forward(x):
            w1, b1, gamma, beta, mean, var, w2, b2 = weights
            h = tf.nn.relu(batch_norm(tf.reshape(x, (-1, 64)) @ w1 + b1, gamma, beta, mean, var))
            return h @ w2 + b2
        shape = (None, 8, 8)
    else:
        def forward(x):
            k1, c1, g1, be1, m1, v1, k2, c2, g2, be2, m2, v2, w, b = weights
            h = tf.nn.relu(batch_norm(tf.nn.conv2d(x, k1, 1, "SAME") + c1, g1, be1, m1, v1))
            h = tf.nn.max_pool2d(h, 2, 2, "VALID")
            h = tf.nn.relu(batch_norm(tf.nn.conv2d(h, k2, 1, "SAME") + c2, g2, be2, m2, v2))
            h = tf.nn.max_pool2d(h, 2, 2, "VALID")
            return tf.reshape(h, (-1, 64)) @ w + b
        shape = (None, 8, 8, 1)
    function = tf.function(forward, input_signature=[tf.TensorSpec(shape, tf.float32, name="input")])
    path = folder / f"tf2onnx_{kind}.onnx"
    tf2onnx.convert.from_function(function, input_signature=function.input_signature, output_path=str(path))
    return path


def skl2onnx_export(folder: Path, kind: str, data=None) -> Path:
    """skl2onnx's ``to_onnx`` of an MLPClassifier, as it writes it by default: a label output beside
    the probabilities, which go through a ZipMap. scikit-learn has no batch norm or convolution:
    "mlp" is its one hidden layer of 48."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    if data is None:          # scikit-learn cannot keep untrained weights: a short fit
        digits = load_digits()
        data = (digits.images[:300] / 16.0, digits.target[:300])
    x = data[0].reshape(len(data[0]), -1).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                  # ConvergenceWarning of the short fit
        classifier = MLPClassifier((48,), max_iter=200 if len(x) > 300 else 30, random_state=0).fit(x, data[1])
    path = folder / f"skl2onnx_{kind}.onnx"
    path.write_bytes(to_onnx(classifier, x[:1]).SerializeToString())
    return path


# exporter -> (builder, the kinds it can write)
EXPORTERS = {
    "torch_dynamo": (lambda folder, kind, data=None: torch_export(folder, kind, data, dynamo=True),
                     ("mlp", "conv", *GRAPH_KINDS)),
    "torch_torchscript": (lambda folder, kind, data=None: torch_export(folder, kind, data, dynamo=False),
                          ("mlp", "conv", *GRAPH_KINDS)),
    "keras": (keras_export, ("mlp", "conv")),
    "tf2onnx": (tf2onnx_export, ("mlp", "conv")),
    "skl2onnx": (skl2onnx_export, ("mlp",)),
}
