"""onnxruntime, the judge: one place that opens sessions and runs batches."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3   # onnxruntime's warnings would mix into our stderr
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, x: np.ndarray, *, batch: int = 1024) -> dict[str, np.ndarray]:
    """Every graph output of ``model`` on ``x``, by name, batch by batch (in batches of the
    model's own size when its input fixes one, as exporters do by default)."""
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    run_batch = _batch_function(sess, names)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, len(x), batch):
        for name, value in zip(names, run_batch(x[start:start + batch])):
            parts[name].append(value)
    return {name: np.concatenate(values) for name, values in parts.items()}


def _batch_function(sess: ort.InferenceSession, names: list[str]) -> Callable[[np.ndarray], list[np.ndarray]]:
    """The outputs ``names`` of a batch of any size: a model whose input fixes the batch
    (1 or N) runs on chunks of that size, the last one padded with zeros and cut back."""
    spec = sess.get_inputs()[0]
    fixed = spec.shape[0] if spec.shape and isinstance(spec.shape[0], int) and spec.shape[0] > 0 else None

    def run_batch(x: np.ndarray) -> list[np.ndarray]:
        x = x.astype(np.float32)
        if fixed is None or len(x) == fixed:
            return sess.run(names, {spec.name: x})
        chunks = []
        for start in range(0, len(x), fixed):
            chunk = x[start:start + fixed]
            padded = np.concatenate([chunk, np.zeros((fixed - len(chunk),) + chunk.shape[1:], np.float32)])
            chunks.append([value[:len(chunk)] for value in sess.run(names, {spec.name: padded})])
        return [np.concatenate(values) for values in zip(*chunks)]

    return run_batch


def predict(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The model's first output on ``x``."""
    output = model.graph.output[0].name
    return run(model, x)[output]


def batch_function(model: onnx.ModelProto) -> Callable[[np.ndarray], np.ndarray]:
    """The model's first output as a function of one batch, on a session opened once."""
    sess = session(model)
    run_batch = _batch_function(sess, [sess.get_outputs()[0].name])
    return lambda x: run_batch(x)[0].reshape(len(x), -1)


def with_outputs(model: onnx.ModelProto, values: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the intermediate ``values`` (float tensors)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    for name in values:
        if name not in present:
            exposed.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return exposed
