"""Every case of the generated bad-input corpus (tests/bad_inputs.py) gets exit 2 and one line
naming the file or option, no traceback, and no output folder. (Other tests run the installed
command in its own process; these call the same ``cli.main`` in this one, to stay fast.)"""
from __future__ import annotations

from pathlib import Path

import pytest
from bad_inputs import build

from whetstone_onnx import cli


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build(tmp_path_factory.mktemp("bad_inputs"))


CASES = ["truncated.onnx", "random_bytes.onnx", "empty.onnx", "invalid_utf8_name.onnx", "identity_only.onnx",
         "nan_weights.onnx", "huge_input.onnx", "external_outside.onnx", "one_class.onnx", "a_folder.onnx",
         "nan_data.npz", "no_samples.npz", "label_42.npz", "bad_crc.npz", "truncated.npz", "output_is_a_file",
         "output_in_proc", "negative_dt", "zero_weight_bits"]


def test_the_corpus_covers_every_case(corpus):
    assert sorted(corpus) == sorted(CASES)


@pytest.mark.parametrize("case", CASES)
def test_each_bad_input_gets_one_line_and_exit_2(corpus, case, capfd):
    """Run in this process (``cli.main``, what the console script calls): a traceback would fail the test."""
    argv, expected = corpus[case]
    out = argv[argv.index("-o") + 1] if "-o" in argv else None
    try:
        code = cli.main(argv)
    except SystemExit as exit_:            # argparse's usage errors
        code = exit_.code
    stderr = capfd.readouterr().err
    lines = [line for line in stderr.strip().splitlines() if line.startswith("whetstone-onnx")]
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("whetstone-onnx: error: "), lines
    assert all(fragment in lines[0] for fragment in expected), (lines[0], expected)
    if out is not None and case != "output_is_a_file":
        assert not Path(out).exists()
