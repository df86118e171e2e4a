"""Keeping TensorFlow's native log lines out of the command line's stderr.

TensorFlow's C++ core logs through absl straight to file descriptor 2, before and
outside Python's logging ("Could not find cuda drivers", "failed call to cuInit",
"NodeDef mentions attribute ..."): noise in a successful run's output, which no
environment variable silences. While ``native_logs_filtered`` is active, descriptor
2 is a pipe whose lines are passed on to the real stderr, except those.
"""
from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# absl's line prefix (severity, MMDD, time, thread) and the two lines TensorFlow writes without it.
NATIVE_LINE = re.compile(rb"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ |WARNING: All log messages before absl::"
                         rb"InitializeLog\(\) is called are written to STDERR|To enable the following instructions:)")
# A line that may still turn out to be one of those once its end arrives.
NATIVE_START = re.compile(rb"^(?:[IWEF]|WARNING: All|To enable)")

_terminal: bool | None = None      # whether stderr was a terminal before it was replaced by the pipe


def stderr_is_terminal() -> bool:
    """Whether what is written to stderr reaches a terminal (a progress bar can be drawn)."""
    return _terminal if _terminal is not None else sys.stderr.isatty()


@contextmanager
def native_logs_filtered() -> Iterator[None]:
    global _terminal
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    _terminal = os.isatty(2)
    os.dup2(write_end, 2)
    os.close(write_end)
    pump = threading.Thread(target=_pass_on, args=(read_end, real), daemon=True)
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)           # closes the pipe's last write end: the pump reads its end
        pump.join(timeout=5)
        os.close(real)
        _terminal = None


def _pass_on(read_end: int, real: int) -> None:
    """Copy the pipe to the real stderr, line by line, without the native log lines. Text that
    is not the start of such a line goes on at once (a progress bar redraws without a newline)."""
    pending = b""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if not NATIVE_LINE.match(line))
            if pending and not NATIVE_START.match(pending):
                kept, pending = kept + pending, b""
            _write_all(real, kept)
    if not NATIVE_LINE.match(pending):
        _write_all(real, pending)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]
