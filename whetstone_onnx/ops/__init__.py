"""Op families: one module each, holding the layer class, its ONNX lifter, its
NumPy reference, its ONNX emitter (and, as they come, its Keras and netlist
forms). Importing this package registers every lifter."""
from . import activation, batchnorm, conv, decode, dense, merge, pool, shape  # noqa: F401  (registration)
from .registry import LIFTERS, RECOGNISERS, LiftContext, Recognised, lifter_for, lifts, recognises

__all__ = ["LIFTERS", "RECOGNISERS", "LiftContext", "Recognised", "lifter_for", "lifts", "recognises"]
