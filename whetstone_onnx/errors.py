"""Error types of whetstone_onnx.

Errors are raised deep inside with a one-line message; only ``cli.py`` turns
them into text on stderr and an exit code, so the API raises and the CLI exits.
"""
from __future__ import annotations


class WhetstoneError(Exception):
    """Base class: carries the process exit code the CLI should use."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InputError(WhetstoneError):
    """A file or argument the user gave cannot be used (missing, corrupt, malformed)."""


class UnsupportedModelError(WhetstoneError):
    """The model uses ops or op configurations the converter cannot turn into spikes."""

    @classmethod
    def for_ops(cls, source: str, nodes: list[tuple[str, str]], why: str = "") -> "UnsupportedModelError":
        """The one line naming the file and every unsupported op with its node (and why, if given)."""
        listed = ", ".join(f"{op} ('{name}')" for op, name in nodes)
        return cls(f"{source}: unsupported ops: {listed}" + (f" ({why})" if why else ""))


class DataError(WhetstoneError):
    """A ``--data`` spec or a ``--normalize`` value is wrong or does not fit the model."""


class CheckFailed(WhetstoneError):
    """An equivalence check found a difference that is not explained by a threshold tie."""

    exit_code = 1
