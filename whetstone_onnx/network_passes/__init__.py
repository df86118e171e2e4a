"""Network-level passes: each rewrites a Network (network.py) in one small way, on the way to the step network."""
