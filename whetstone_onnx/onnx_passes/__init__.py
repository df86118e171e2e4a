"""ONNX-level passes: each rewrites an onnx-ir model in one small way (pipeline.py lists them in order)."""
