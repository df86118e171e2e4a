"""Graph passes. ``pipeline.py`` lists them in the order they run."""
