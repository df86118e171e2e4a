"""The training plot written next to report.json: accuracy and sharpness per epoch."""
from __future__ import annotations

import io


def training_plot(history: list[dict]) -> bytes:
    """PNG bytes: spiking accuracy and training accuracy (top), sharpness per layer (bottom)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot(epochs, [100 * row["spiking_accuracy"] for row in history], marker="o", label="spiking (evaluation)")
    top.plot(epochs, [100 * row["train_accuracy"] for row in history], marker=".", label="current sharpness (train)")
    top.set_ylabel("accuracy (%)")
    top.legend(loc="lower right")
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
    buffer = io.BytesIO()
    # No timestamps in the metadata, so reruns write identical files.
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()
