"""Neuromorphic netlists of a step network: NIR (nir_export.py) and its simulator."""
