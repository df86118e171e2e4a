"""Write models/corrupt.onnx: the first half of digits_dense.onnx's bytes.

The sample zoo (models/zoo.toml) lists it so that a batch run shows a model that
cannot even be read. Deterministic: rerunning writes the same bytes.
"""
from __future__ import annotations

from pathlib import Path

MODELS = Path(__file__).resolve().parents[1] / "models"


def main() -> None:
    source = (MODELS / "digits_dense.onnx").read_bytes()
    target = MODELS / "corrupt.onnx"
    target.write_bytes(source[: len(source) // 2])
    print(f"wrote {target} ({len(source) // 2} of {len(source)} bytes of digits_dense.onnx)")


if __name__ == "__main__":
    main()
