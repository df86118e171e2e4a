"""TensorFlow's native log lines are kept out of the command line's stderr; everything else
written there, a progress bar's partial lines included, goes through."""
from __future__ import annotations

import subprocess
import sys

SCRIPT = r'''
import os, sys
from whetstone_onnx.native_logs import native_logs_filtered
with native_logs_filtered():
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
    os.write(2, b"I0000 00:00:1796140072.241542   31286 cudart_stub.cc:31] Could not find cuda drivers\n")
    print("fine-tuning epoch 1/3: loss 0.2", file=sys.stderr, flush=True)
    os.write(2, b"E0000 00:00:1796136617.328403    7596 node_def_util.cc:682] NodeDef mentions attribute\n")
    os.write(2, b"To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow\n")
    print("Image of a digit", file=sys.stderr, flush=True)
    sys.stderr.write("\r[bar 50%]")
    sys.stderr.flush()
print("after", file=sys.stderr)
'''


def test_native_log_lines_are_dropped_and_the_rest_passes():
    completed = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True)
    assert completed.returncode == 0
    assert completed.stderr.decode() == "fine-tuning epoch 1/3: loss 0.2\nImage of a digit\n\r[bar 50%]after\n"
