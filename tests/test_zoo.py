"""whetstone-onnx zoo: batch conversion of the sample zoo, statuses, resume, interruption,
timeouts, memory limits, fail-fast, the Dask executor and manifest errors."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MODELS

import whetstone_onnx
from whetstone_onnx import api, zoo
from whetstone_onnx.errors import InputError
from whetstone_onnx.zoo.batch import LOCK_FILE

SAMPLE_ZOO = MODELS / "zoo.toml"
EXPECTED_STATUS = {"digits_dense": "ok", "digits_conv": "ok", "torchstyle_digits_conv": "ok", "mnist_conv": "ok",
                   "mnist_dense": "ok", "torchstyle_mnist_conv": "ok", "digits_dense_strict": "accuracy_loss",
                   "digits_lstm": "unsupported", "corrupt": "failed"}


def zoo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "whetstone_onnx.cli", "zoo", *args]


def run_zoo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(zoo_command(*args), capture_output=True, text=True)


def comparable(summary: dict) -> list[dict]:
    """The records without what legitimately differs between runs: timings and the resume flag."""
    return [{k: v for k, v in record.items() if k not in ("timings_s", "resumed")} for record in summary["models"]]


def read_summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def model_directories(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))


def leftovers(out: Path) -> list[str]:
    """Hidden entries of OUT but the batch lock (an empty file the kernel unlocks with the process)."""
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".") and p.name != LOCK_FILE)


def write_manifest(directory: Path, text: str) -> Path:
    """A manifest in ``directory`` whose paths name the fixture models by absolute path."""
    path = directory / "zoo.toml"
    path.write_text(text.replace("MODELS", MODELS.as_posix()))
    return path


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """The sample zoo converted once, uninterrupted, as the reference: (out dir, process, summary)."""
    out = tmp_path_factory.mktemp("zoo") / "out"
    completed = run_zoo(str(SAMPLE_ZOO), "-o", str(out), "--jobs", "2")
    return out, completed, read_summary(out)


@pytest.mark.slow
def test_sample_zoo_reports_every_status(sample_run):
    out, completed, summary = sample_run
    assert completed.returncode == 1, completed.stderr
    statuses = {record["name"]: record["status"] for record in summary["models"]}
    assert statuses == EXPECTED_STATUS
    assert summary["counts"] == {"ok": 6, "unsupported": 1, "failed": 1, "accuracy_loss": 1, "timeout": 0,
                                 "crashed": 0, "out_of_memory": 0, "cancelled": 0}
    records = {record["name"]: record for record in summary["models"]}
    assert records["corrupt"]["error"].startswith("corrupt.onnx: not a readable ONNX model")
    assert records["digits_lstm"]["error"] == "digits_lstm.onnx: unsupported ops: LSTM ('/lstm/LSTM')"
    assert re.fullmatch(r"digits_dense.onnx: the spiking network loses \d+\.\d\d points of accuracy, more than "
                        r"the 2 allowed", records["digits_dense_strict"]["error"])
    for record in records.values():
        assert record["error"] is None or "\n" not in record["error"]
        assert record["resumed"] is False
    for name, status in EXPECTED_STATUS.items():
        directory = out / name
        assert (directory / "zoo.json").is_file()
        # A conversion that lost too much accuracy is written whole, for the user to look at.
        assert (directory / "report.json").is_file() == (status in ("ok", "accuracy_loss"))
    dense = records["digits_dense"]
    assert dense["passed"] and dense["accuracy"]["spiking"] > 0.8 and dense["netlist"]["neurons"] == 456
    assert records["mnist_conv"]["accuracy"] is None and records["mnist_conv"]["netlist"]["synapses"] > 10 ** 6
    report = json.loads((out / "torchstyle_digits_conv" / "report.json").read_text())
    assert report["options"]["normalize"] == [0.5, 0.5] and report["finetune"]["performed"] is False
    # Results on stdout and in files, diagnostics on stderr; nothing half-written left behind.
    assert "| digits_dense | ok |" in completed.stdout and "| digits_dense | ok |" in (out / "summary.md").read_text()
    assert completed.stderr.strip().splitlines()[-1] == \
        f"whetstone-onnx: error: 3 of 9 models did not convert, or lost more accuracy than allowed " \
        f"(see {out}/summary.md)"
    assert "zoo: [9/9]" in completed.stderr          # plain progress lines: stderr is not a terminal
    assert leftovers(out) == []


@pytest.mark.slow
def test_resume_redoes_nothing(sample_run):
    out, _, reference = sample_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if not p.name.startswith("summary.")}
    completed = run_zoo(str(SAMPLE_ZOO), "-o", str(out), "--jobs", "2", "--resume", "--quiet")
    assert completed.returncode == 1
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if not p.name.startswith("summary.")} == before
    summary = read_summary(out)
    assert all(record["resumed"] for record in summary["models"]) and summary["resumed"] == len(EXPECTED_STATUS)
    assert comparable(summary) == comparable(reference)
    assert "zoo:" not in completed.stderr                                  # --quiet: no progress


@pytest.mark.slow
@pytest.mark.parametrize("kill_signal", [signal.SIGKILL])
def test_an_interrupted_batch_resumes_to_the_same_summary(sample_run, tmp_path, kill_signal):
    out = tmp_path / "out"
    batch = subprocess.Popen(zoo_command(str(SAMPLE_ZOO), "-o", str(out), "--jobs", "2", "--quiet"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out.is_dir() and model_directories(out)) and time.monotonic() < deadline:
        time.sleep(0.05)
    batch.send_signal(kill_signal)
    batch.wait()
    time.sleep(1.0)              # the orphaned workers notice their parent is gone within 0.2 s
    done = model_directories(out)
    assert 1 <= len(done) < len(EXPECTED_STATUS) and not (out / "summary.json").exists()
    for directory in done:       # every model directory there is complete
        record = json.loads((directory / "zoo.json").read_text())["record"]
        assert (directory / "report.json").is_file() == (record["status"] == "ok")

    completed = run_zoo(str(SAMPLE_ZOO), "-o", str(out), "--jobs", "2", "--resume", "--quiet")
    assert completed.returncode == 1, completed.stderr
    summary = read_summary(out)
    assert comparable(summary) == comparable(sample_run[2])
    assert {record["name"] for record in summary["models"] if record["resumed"]} == {d.name for d in done}
    assert leftovers(out) == [] and [d.name for d in model_directories(out)] == sorted(EXPECTED_STATUS)


def test_sigterm_stops_the_workers_and_leaves_nothing_half_written(tmp_path):
    # Fine-tuning (a minute) is still running when the signal comes; a conversion without data can
    # finish first (a complete model directory), which is not what this test is about.
    manifest = write_manifest(tmp_path, "[[model]]\npath = 'MODELS/digits_dense.onnx'\ndata = 'digits'")
    out = tmp_path / "out"
    batch = subprocess.Popen(zoo_command(str(manifest), "-o", str(out), "--quiet"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out.is_dir() and leftovers(out)) and time.monotonic() < deadline:   # the worker has started
        time.sleep(0.05)
    batch.send_signal(signal.SIGTERM)
    _, stderr = batch.communicate(timeout=30)
    assert batch.returncode == 130 and stderr.strip() == "whetstone-onnx: interrupted"
    assert [p.name for p in out.iterdir()] == [LOCK_FILE]           # the (empty, unlocked) lock file only


def start_dask_cluster(workers: int) -> tuple[str, list[subprocess.Popen]]:
    """A scheduler and ``workers`` single-threaded workers (no nanny: killing one kills it), each its own
    process on the loopback address, as ``dask scheduler`` / ``dask worker`` start them."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    processes = [subprocess.Popen(dask + ["--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    processes += [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                                    "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(workers)]
    from dask.distributed import Client
    with Client(address, timeout=60) as client:
        client.wait_for_workers(workers, timeout=60)
    return address, processes


@pytest.mark.slow
def test_a_real_dask_cluster_finishes_the_batch_when_a_worker_dies(tmp_path):
    """Scheduler and two workers as separate processes; one worker is killed while it converts: the
    scheduler gives its model to the other, and the summary is the local executor's."""
    pytest.importorskip("distributed")
    manifest = write_manifest(tmp_path, """
        [defaults]
        data = "digits"
        finetune = false
        accept_loss = true
        [[model]]
        path = "MODELS/digits_dense.onnx"
        [[model]]
        path = "MODELS/digits_conv.onnx"
        [[model]]
        path = "MODELS/torchstyle_digits_conv.onnx"
        normalize = [0.5, 0.5]
    """)
    local = zoo.convert_zoo(manifest, tmp_path / "local", jobs=2)
    address, processes = start_dask_cluster(2)
    out = tmp_path / "dask"
    try:
        batch = subprocess.Popen(zoo_command(str(manifest), "-o", str(out), "--executor", "dask", "--scheduler",
                                             address, "--jobs", "2", "--quiet"), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not (out.is_dir() and leftovers(out)) and time.monotonic() < deadline:   # a model is converting
            time.sleep(0.05)
        processes[1].kill()
        _, stderr = batch.communicate(timeout=600)
    finally:
        for process in processes:
            process.kill()
    assert batch.returncode == local.exit_code, stderr
    summary = read_summary(out)
    assert summary["executor"] == "dask" and summary["counts"] == local.counts
    assert comparable(summary) == comparable(local.summary)


@pytest.mark.slow
def test_dask_executor_gives_the_same_summary(sample_run, tmp_path):
    result = zoo.convert_zoo(SAMPLE_ZOO, tmp_path / "out", jobs=2, executor="dask")
    assert result.summary["executor"] == "dask" and result.exit_code == 1
    assert comparable(result.summary) == comparable(sample_run[2])
    assert result.counts == sample_run[2]["counts"]


def test_timeout_and_memory_limit_cost_only_their_model(tmp_path):
    manifest = write_manifest(tmp_path, """
        [[model]]
        path = "MODELS/digits_dense.onnx"
        timeout = 0.2
        [[model]]
        path = "MODELS/mnist_dense.onnx"
        [[model]]
        path = "MODELS/digits_conv.onnx"
        memory_limit = 100
    """)
    out = tmp_path / "out"
    result = zoo.convert_zoo(manifest, out, jobs=2)
    records = {record["name"]: record for record in result.models}
    assert records["digits_dense"]["status"] == "timeout"
    assert records["digits_dense"]["error"].endswith("digits_dense.onnx: timed out after 0.2 s")
    assert sorted(p.name for p in (out / "digits_dense").iterdir()) == ["zoo.json", "zoo.log"]
    assert records["mnist_dense"]["status"] == "ok"
    assert records["digits_conv"]["status"] in ("out_of_memory", "crashed")   # MemoryError, or killed importing
    assert "memory limit 100 MB" in records["digits_conv"]["error"]
    assert result.exit_code == 1 and leftovers(out) == []
    # A timeout or running out of memory depends on the run, not the model: --resume tries them again.
    again = zoo.convert_zoo(manifest, out, jobs=2, resume=True)
    assert [record["resumed"] for record in again.models] == [False, True, False]


def test_resume_redoes_a_converted_model_whose_files_changed_and_a_second_batch_is_refused(tmp_path):
    import fcntl

    manifest = write_manifest(tmp_path, """
        [[model]]
        path = "MODELS/digits_dense.onnx"
        netlist = false
    """)
    out = tmp_path / "out"
    assert zoo.convert_zoo(manifest, out).counts["ok"] == 1
    assert zoo.convert_zoo(manifest, out, resume=True).models[0]["resumed"] is True
    (out / "digits_dense" / "spiking.onnx").unlink()
    again = zoo.convert_zoo(manifest, out, resume=True)
    assert again.models[0]["resumed"] is False and (out / "digits_dense" / "spiking.onnx").is_file()
    with open(out / LOCK_FILE) as held:          # as a running batch holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(InputError, match=f"{out}: another zoo batch is writing there"):
            zoo.convert_zoo(manifest, out, resume=True)


@pytest.mark.slow
def test_resume_redoes_a_model_whose_options_changed(tmp_path):
    text = """
        [[model]]
        path = "MODELS/mnist_dense.onnx"
        seed = SEED
        [[model]]
        path = "MODELS/digits_lstm.onnx"
    """
    out = tmp_path / "out"
    zoo.convert_zoo(write_manifest(tmp_path, text.replace("SEED", "0")), out)
    stored = json.loads((out / "mnist_dense" / "zoo.json").read_text())["key"]
    assert stored["options"]["seed"] == 0 and stored["version"] == whetstone_onnx.__version__
    result = zoo.convert_zoo(write_manifest(tmp_path, text.replace("SEED", "1")), out, resume=True)
    assert [(record["name"], record["resumed"]) for record in result.models] == [("mnist_dense", False),
                                                                                 ("digits_lstm", True)]
    assert json.loads((out / "mnist_dense" / "report.json").read_text())["options"]["seed"] == 1


def test_fail_fast_starts_no_more_models(tmp_path):
    manifest = write_manifest(tmp_path, """
        [[model]]
        path = "MODELS/corrupt.onnx"
        [[model]]
        path = "MODELS/digits_conv.onnx"
    """)
    result = zoo.convert_zoo(manifest, tmp_path / "out", fail_fast=True)    # the larger file runs first
    assert [record["status"] for record in result.models] == ["failed", "cancelled"]
    assert not (tmp_path / "out" / "digits_conv").exists()


def test_a_directory_is_a_manifest_with_default_options(tmp_path):
    (tmp_path / "models").mkdir()
    for name in ("mnist_dense.onnx", "digits_tanh.onnx"):
        (tmp_path / "models" / name).write_bytes((MODELS / name).read_bytes())
    manifest = zoo.read_manifest(tmp_path / "models")
    assert [(model.name, model.path) for model in manifest.models] == [("digits_tanh", "digits_tanh.onnx"),
                                                                      ("mnist_dense", "mnist_dense.onnx")]
    assert manifest.models[0].options == zoo.convert_defaults() | {"finetune": dataclasses.asdict(
        api.FinetuneOptions())}


def test_options_are_normalised_for_the_resume_key(tmp_path):
    explicit = write_manifest(tmp_path, """
        [[model]]
        path = "MODELS/digits_dense.onnx"
        normalize = "0.5, 0.5"
        finetune = {effort = "default", seed = 0}
    """)
    options = zoo.read_manifest(explicit).models[0].options
    implicit = write_manifest(tmp_path, """
        [defaults]
        normalize = [0.5, 0.5]
        finetune = true
        [[model]]
        path = "MODELS/digits_dense.onnx"
    """)
    assert zoo.read_manifest(implicit).models[0].options == options
    assert set(zoo.OPTION_TYPES) == set(zoo.convert_defaults())     # every convert option, and only those


@pytest.mark.parametrize("text,problem", [
    ("[[model]\npath = 1", "not a valid TOML manifest"),
    ("[[model]]\npath = 'MODELS/digits_dense.onnx'\nepochs = 3", "unknown option 'epochs'"),
    ("[defaults]\nfinetune = {epoch = 3}\n[[model]]\npath = 'MODELS/digits_dense.onnx'", "unknown field 'epoch'"),
    ("[[model]]\npath = 'MODELS/digits_dense.onnx'\nseed = '1'", "option 'seed' must be an integer"),
    ("[[model]]\npath = 'MODELS/nothing_*.onnx'", "nothing_*.onnx: matches no file"),
    ("[[model]]\npath = 'MODELS/missing.onnx'", "missing.onnx: file not found"),
    ("[[model]]\npath = 'MODELS/mnist_*.onnx'\nname = 'mnist'", "name 'mnist' needs a path naming one file"),
    ("[[model]]\npath = 'MODELS/digits_dense.onnx'\n[[model]]\npath = 'MODELS/digits_dense.onnx'",
     "duplicate model name 'digits_dense'"),
    ("[[model]]\npath = 'MODELS/digits_dense.onnx'\ntimeout = -1", "timeout must be a positive number"),
    ("[models]\npath = 'x'", "unknown top-level key 'models'"),
    ("[defaults]\nfinetune = false", "lists no models"),
])
def test_bad_manifests_name_the_file_and_problem(tmp_path, text, problem):
    manifest = write_manifest(tmp_path, text)
    with pytest.raises(InputError) as raised:
        zoo.read_manifest(manifest)
    assert raised.value.message.startswith(str(manifest)) and problem in raised.value.message
    assert "\n" not in raised.value.message


def test_cli_exits_2_with_one_line_on_bad_input(tmp_path):
    manifest = write_manifest(tmp_path, "[[model]]\npath = 'MODELS/missing.onnx'")
    for args in ([str(manifest), "-o", str(tmp_path / "out")],
                 [str(SAMPLE_ZOO), "-o", str(tmp_path / "out"), "--scheduler", "tcp://127.0.0.1:1"],
                 [str(SAMPLE_ZOO), "-o", str(tmp_path / "out"), "--jobs", "0"]):
        completed = run_zoo(*args)
        assert completed.returncode == 2, completed.stderr
        lines = completed.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("whetstone-onnx: error: ") and completed.stdout == ""
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_verbosity_flags_go_before_or_after_the_command(tmp_path):
    manifest = write_manifest(tmp_path, "[[model]]\npath = 'MODELS/digits_lstm.onnx'")
    quiet = subprocess.run([sys.executable, "-m", "whetstone_onnx.cli", "--quiet", "zoo", str(manifest), "-o",
                            str(tmp_path / "a")], capture_output=True, text=True)
    assert quiet.returncode == 1 and quiet.stderr.startswith("whetstone-onnx: error: 1 of 1")
    verbose = run_zoo(str(manifest), "-o", str(tmp_path / "b"), "--verbose")
    assert "digits_lstm: converting" in verbose.stderr and "zoo: [1/1]" in verbose.stderr
    assert sorted(os.listdir(tmp_path / "b")) == sorted(os.listdir(tmp_path / "a"))
