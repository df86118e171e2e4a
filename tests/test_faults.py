"""SIGKILL at random moments: a conversion killed while it replaces an output folder leaves that
folder as it was or complete and new (``check`` passes on it either way), and the next
conversion into it succeeds and removes what the killed one left behind."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import MODELS, run_cli

from whetstone_onnx import api

KILLS = 3          # moments per run, drawn from a seeded generator over the conversion's duration


def convert_command(out) -> list[str]:
    return [sys.executable, "-m", "whetstone_onnx.cli", "convert", str(MODELS / "digits_dense.onnx"), "-o", str(out),
            "--data", "digits", "--no-finetune", "--accept-loss", "--force", "--quiet"]


@pytest.mark.slow
def test_a_killed_conversion_leaves_the_folder_old_or_new_never_broken(tmp_path):
    out = tmp_path / "out"
    start = time.monotonic()
    assert subprocess.run(convert_command(out), capture_output=True).returncode == 0
    duration = time.monotonic() - start
    for delay in np.random.default_rng(7).uniform(0.3, duration, KILLS):
        process = subprocess.Popen(convert_command(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        process.kill()
        process.wait()
        assert api.check_outputs(out).passed, f"killed after {delay:.2f} s"
    completed = subprocess.run(convert_command(out), capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert run_cli("check", str(out)).returncode == 0
    assert [p.name for p in tmp_path.iterdir()] == ["out"]       # no staging or replaced folder survives
