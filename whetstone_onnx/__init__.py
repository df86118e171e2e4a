"""whetstone_onnx: trained ONNX classifiers in, single-spike (Whetstone) spiking networks out."""
__version__ = "0.1.0"
