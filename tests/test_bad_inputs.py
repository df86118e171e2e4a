"""Every case of the generated bad-input corpus (tests/bad_inputs.py) gets exit 2 and one line
naming the file or option, no traceback, and no output folder."""
from __future__ import annotations

import pytest
from bad_inputs import build
from conftest import run_cli


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build(tmp_path_factory.mktemp("bad_inputs"))


CASES = ["truncated.onnx", "random_bytes.onnx", "empty.onnx", "invalid_utf8_name.onnx", "identity_only.onnx",
         "nan_weights.onnx", "huge_input.onnx", "external_outside.onnx", "one_class.onnx", "a_folder.onnx",
         "nan_data.npz", "no_samples.npz", "label_42.npz", "bad_crc.npz", "truncated.npz", "output_is_a_file",
         "output_in_proc", "negative_dt", "zero_weight_bits"]


def test_the_corpus_covers_every_case(corpus):
    assert sorted(corpus) == sorted(CASES)


# The fast tier runs one case of each kind; the full suite runs them all.
FAST = {"truncated.onnx", "nan_weights.onnx", "nan_data.npz", "bad_crc.npz", "output_is_a_file"}


@pytest.mark.parametrize("case", [pytest.param(case, marks=() if case in FAST else pytest.mark.slow)
                                  for case in CASES])
def test_each_bad_input_gets_one_line_and_exit_2(corpus, case):
    argv, expected = corpus[case]
    out = argv[argv.index("-o") + 1] if "-o" in argv else None
    completed = run_cli(*argv)
    lines = completed.stderr.strip().splitlines()
    assert completed.returncode == 2, completed.stderr
    assert len(lines) == 1 and lines[0].startswith("whetstone-onnx: error: "), lines
    assert all(fragment in lines[0] for fragment in expected), (lines[0], expected)
    assert "Traceback" not in completed.stderr
    if out is not None and case != "output_is_a_file":
        from pathlib import Path
        assert not Path(out).exists()
