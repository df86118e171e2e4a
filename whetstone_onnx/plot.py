"""The figures written next to report.json: training curves, and an autoencoder's reconstructions."""
from __future__ import annotations

import io

import numpy as np

# Images shown by reconstruction_plot.
RECONSTRUCTIONS_SHOWN = 8


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    return plt


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    # No timestamps in the metadata, so reruns write identical files.
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    _pyplot().close(figure)
    return buffer.getvalue()


def training_plot(history: list[dict]) -> bytes:
    """PNG bytes: the spiking network's score and the training score (top: accuracy, or the MSE of a
    regression network), sharpness per layer (bottom)."""
    plt = _pyplot()
    metric = "accuracy" if not history or "spiking_accuracy" in history[0] else "mse"
    scale = 100 if metric == "accuracy" else 1
    epochs = [row["epoch"] for row in history]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot(epochs, [scale * row[f"spiking_{metric}"] for row in history], marker="o", label="spiking (evaluation)")
    top.plot(epochs, [scale * row[f"train_{metric}"] for row in history], marker=".",
             label="current sharpness (train)")
    top.set_ylabel("accuracy (%)" if metric == "accuracy" else "mean squared error")
    if metric == "mse":
        top.set_yscale("log")
    top.legend(loc="lower right" if metric == "accuracy" else "upper right")
    top.grid(alpha=0.3)
    layers = len(history[0]["sharpness"]) if history else 0
    for i in range(layers):
        bottom.plot(epochs, [row["sharpness"][i] for row in history], marker=".", label=f"layer {i + 1}")
    bottom.set_ylabel("sharpness")
    bottom.set_xlabel("epoch")
    bottom.set_ylim(-0.05, 1.05)
    bottom.legend(loc="lower right", fontsize="small")
    bottom.grid(alpha=0.3)
    figure.tight_layout()
    return _png(figure)


def reconstruction_plot(rows: list[tuple[str, np.ndarray]]) -> bytes:
    """PNG bytes: one row of images per (label, (samples, ...) array), the first
    RECONSTRUCTIONS_SHOWN samples of each, as square grey images (one channel's, for (C, H, W))."""
    plt = _pyplot()
    count = min(RECONSTRUCTIONS_SHOWN, len(rows[0][1]))
    figure, axes = plt.subplots(len(rows), count, figsize=(1.2 * count, 1.3 * len(rows)), squeeze=False)
    low = min(float(images[:count].min()) for _, images in rows)
    high = max(float(images[:count].max()) for _, images in rows)
    for row, (label, images) in enumerate(rows):
        for column in range(count):
            image = images[column]
            image = np.take(image, 0, axis=int(np.argmin(image.shape))) if image.ndim == 3 else \
                image.reshape(int(np.sqrt(image.size)), -1)
            axis = axes[row, column]
            axis.imshow(image, cmap="gray", vmin=low, vmax=high)
            axis.set_xticks([])
            axis.set_yticks([])
        axes[row, 0].set_ylabel(label, fontsize="small")
    figure.tight_layout()
    return _png(figure)
