"""What a model is for: its task decides the targets, the output stage, the loss and the metrics.

* ``classify`` (default): integer class labels; an N-hot spiking code or a float readout
  (network_passes/output_stage.py); cross-entropy; accuracy.
* ``reconstruct``: the target is the input itself (an autoencoder); ``regress``: the
  targets are real values from the data (npz ``y_train`` / ``y_test`` as float arrays).
  The hidden layers spike as usual; the last weight layer is a real-valued readout, with
  the model's own output activation (a sigmoid, say) and output reshapes applied after
  it, on the host in the netlists (their metadata names them); fine-tuning minimises the
  mean squared error; the report gives MSE (and PSNR for reconstructions).
"""
from __future__ import annotations

import math

import numpy as np

from .errors import DataError

TASKS = ("classify", "reconstruct", "regress")
# The spiking network's MSE may be this many times the original's before convert fails
# (exit 1) unless the loss is accepted: the regression counterpart of --max-loss.
DEFAULT_MAX_ERROR_RATIO = 2.0


# Binary units per hidden unit (network_passes/levels.py) when --levels is not given:
# one bit each for a classifier; a real-valued output needs finer hidden values.
REGRESSION_LEVELS = 4


def default_levels(task: str) -> int:
    return REGRESSION_LEVELS if is_regression(task) else 1


def is_regression(task: str) -> bool:
    """Real-valued outputs compared with real-valued targets (reconstruct, regress)."""
    return task != "classify"


def suggest_task(input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> str:
    """``reconstruct`` for a model whose output has as many values as its input (an autoencoder),
    else ``classify``; a regression model cannot be told from a classifier by its graph."""
    return "reconstruct" if math.prod(input_shape) == math.prod(output_shape) and math.prod(output_shape) > 1 \
        else "classify"


def targets(task: str, labels: np.ndarray, inputs: np.ndarray, output_shape: tuple[int, ...], spec: str
            ) -> np.ndarray:
    """The training targets of one split: the labels (classify), the inputs as the model sees
    them (reconstruct) or the data's real values (regress), shaped like the model's output."""
    if task == "classify":
        return labels
    values = inputs if task == "reconstruct" else labels
    if values.size != len(values) * math.prod(output_shape):
        what = "its input" if task == "reconstruct" else "the data's targets"
        raise DataError(f"--data {spec!r}: --task {task}: the model outputs {list(output_shape)} per sample, but "
                        f"{what} hold {values.size // max(1, len(values))} values per sample")
    return values.reshape(len(values), *output_shape).astype(np.float32)


def regression_metrics(outputs: np.ndarray, target: np.ndarray, peak: float | None) -> dict[str, float]:
    """MSE of ``outputs`` against ``target``; with ``peak`` (the targets' range, for images) the
    PSNR in dB too."""
    mse = float(np.mean((outputs.reshape(target.shape).astype(np.float64) - target) ** 2))
    metrics = {"mse": mse}
    if peak is not None:
        metrics["psnr_db"] = float("inf") if mse == 0 else 10.0 * math.log10(peak ** 2 / mse)
    return metrics


def image_peak(task: str, target: np.ndarray) -> float | None:
    """The value range PSNR is measured against: the targets' for reconstructed images (rank 3
    or a square number of values), None for other outputs."""
    if task != "reconstruct":
        return None
    values = math.prod(target.shape[1:])
    if target.ndim - 1 != 3 and math.isqrt(values) ** 2 != values:
        return None
    return float(target.max() - target.min()) or 1.0


def error_guard(mse: dict[str, float], max_ratio: float, accepted: bool) -> dict:
    """The report's verdict on the error the spiking network adds to the original's."""
    ratio = mse["spiking"] / mse["original"] if mse["original"] > 0 else (1.0 if mse["spiking"] == 0 else math.inf)
    return {"mse_ratio": round(ratio, 6) if math.isfinite(ratio) else None, "max_mse_ratio": max_ratio,
            "passed": ratio <= max_ratio + 1e-12, "accepted": accepted}
