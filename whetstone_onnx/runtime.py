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
    """Every graph output of ``model`` on ``x``, by name, batch by batch."""
    sess = session(model)
    input_name = sess.get_inputs()[0].name
    names = [o.name for o in sess.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, len(x), batch):
        for name, value in zip(names, sess.run(names, {input_name: x[start:start + batch].astype(np.float32)})):
            parts[name].append(value)
    return {name: np.concatenate(values) for name, values in parts.items()}


def predict(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The model's first output on ``x``."""
    output = model.graph.output[0].name
    return run(model, x)[output]


def batch_function(model: onnx.ModelProto) -> Callable[[np.ndarray], np.ndarray]:
    """The model's first output as a function of one batch, on a session opened once."""
    sess = session(model)
    input_name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {input_name: x.astype(np.float32)})[0].reshape(len(x), -1)


def with_outputs(model: onnx.ModelProto, values: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the intermediate ``values`` (float tensors)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    for name in values:
        if name not in present:
            exposed.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return exposed
