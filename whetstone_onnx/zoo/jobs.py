"""One model of a zoo batch: its worker process, its staging directory and its record."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..artifacts import json_bytes, make_temporary_directory, verified_report, write_atomic
from ..errors import WhetstoneError
from .manifest import ZooModel

log = logging.getLogger(__name__)

SUMMARY_SCHEMA = "whetstone_onnx.zoo_summary"
# 1.1: the status accuracy_loss (and its count).
# 1.2: the out_of_memory status. 1.3: each model's task and metrics (reconstruct, regress).
SUMMARY_SCHEMA_VERSION = "1.3"
MODEL_RECORD_SCHEMA = "whetstone_onnx.zoo_model"
MODEL_RECORD_FILE = "zoo.json"      # in each model's directory; written last, it marks the directory complete
LOG_FILE = "zoo.log"                # the worker's stdout and stderr
RESULT_FILE = ".zoo-result.json"    # the worker's answer, read and removed by run_job
STAGING_PREFIX = ".zoo-staging-"    # a model directory being written
RETIRED_PREFIX = ".zoo-retired-"    # a model directory being replaced

# accuracy_loss: converted and checked, but the spiking network lost more accuracy than
# the model's max_loss allows (accept_loss = true in the manifest keeps it as ok).
STATUSES = ("ok", "unsupported", "failed", "accuracy_loss", "timeout", "crashed", "out_of_memory", "cancelled")
# Outcomes that depend only on the model and its options: --resume reuses them.
# A timeout, a crash, running out of memory (under --memory-limit) or a cancellation depends on
# the run and its limits, so --resume retries those.
FINAL_STATUSES = frozenset({"ok", "unsupported", "failed", "accuracy_loss"})


@dataclass(frozen=True)
class Job:
    model: ZooModel
    base_dir: str             # absolute: the worker's working directory
    out_dir: str              # absolute: the batch's output directory
    key: dict                 # what --resume compares (see resume_key)
    timeout_s: float
    memory_limit_mb: int | None


def resume_key(base_dir: Path, model: ZooModel) -> dict:
    """The model file's content hash, its options and the package version; ``digest`` sums them up."""
    content = hashlib.sha256((base_dir / model.path).read_bytes()).hexdigest()
    key = {"model_sha256": content, "options": model.options, "version": __version__}
    return {**key, "digest": hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()}


class Children:
    """The worker processes the local executor runs, so an interrupt can stop them all,
    and the flag that tells jobs not yet started (``--fail-fast``) to stand down."""

    def __init__(self):
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self.stopping = False

    def add(self, process: subprocess.Popen) -> None:
        with self._lock:
            if self.stopping:       # started just as kill_all ran
                process.kill()
            self._running.add(process)

    def remove(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._running.discard(process)

    def kill_all(self) -> None:
        self.stopping = True
        with self._lock:
            for process in self._running:
                process.kill()


def run_job(job: Job, children: Children | None = None) -> dict:
    """Convert one model in a worker process; returns its summary record.

    The worker writes into a staging directory, which becomes ``OUTDIR/<name>`` only
    once the record is written into it. (Runs in the local executor's threads and as
    a Dask task; ``children`` is the local executor's registry.)
    """
    if children is not None and children.stopping:
        return cancelled_record(job.model)
    out_dir = Path(job.out_dir)
    staging = make_temporary_directory(out_dir, f"{STAGING_PREFIX}{job.model.name}-")
    started = time.monotonic()
    status, error = _run_worker(job, staging, children)
    if children is not None and children.stopping and status == "crashed":
        shutil.rmtree(staging, ignore_errors=True)     # killed by the interrupt: nothing to keep
        return cancelled_record(job.model)
    if status in ("timeout", "crashed"):
        _keep_only_log(staging)                        # a killed conversion may have written some artifacts
    report = _read_report(staging)
    record = model_record(job.model, status, error, report, time.monotonic() - started)
    write_atomic(staging / MODEL_RECORD_FILE, json_bytes({
        "schema": MODEL_RECORD_SCHEMA, "schema_version": SUMMARY_SCHEMA_VERSION, "key": job.key,
        "record": record}))
    _move_into_place(staging, out_dir / job.model.name)
    return record


def _run_worker(job: Job, staging: Path, children: Children | None) -> tuple[str, str | None]:
    """(status, one-line error) of a worker converting ``job`` into ``staging``."""
    request = {"model": job.model.path, "out_dir": str(staging), "result_file": str(staging / RESULT_FILE),
               "options": job.model.options, "memory_limit_mb": job.memory_limit_mb, "parent_pid": os.getpid()}
    command = [sys.executable, "-m", "whetstone_onnx.zoo.worker", json.dumps(request)]
    log.info("%s: converting %s (log: %s)", job.model.name, job.model.path, staging.name + "/" + LOG_FILE)
    with open(staging / LOG_FILE, "wb") as log_file:
        process = subprocess.Popen(command, cwd=job.base_dir, env=_worker_environment(), stdin=subprocess.DEVNULL,
                                   stdout=log_file, stderr=subprocess.STDOUT)
        if children is not None:
            children.add(process)
        try:
            process.wait(timeout=job.timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return "timeout", f"{job.model.path}: timed out after {job.timeout_s:g} s"
        finally:
            if children is not None:
                children.remove(process)
    result_file = staging / RESULT_FILE
    if process.returncode == 0 and result_file.is_file():
        result = json.loads(result_file.read_text())
        result_file.unlink()
        return result["status"], result["error"]
    return "crashed", _crash_message(job, process.returncode, staging / LOG_FILE)


def _worker_environment() -> dict[str, str]:
    """The worker must import this very package, even from a source checkout that is not installed."""
    environment = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[1])
    environment["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, environment.get("PYTHONPATH")) if p)
    environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # TensorFlow's start-up chatter fills the log otherwise
    return environment


def _crash_message(job: Job, returncode: int, log_path: Path) -> str:
    how = f"killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exit code {returncode}"
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    last = f": {lines[-1].strip()}" if lines else ""
    limit = f" (memory limit {job.memory_limit_mb} MB)" if job.memory_limit_mb else ""
    return f"{job.model.path}: worker crashed, {how}{limit}{last}"


def _keep_only_log(staging: Path) -> None:
    for entry in staging.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        elif entry.name != LOG_FILE:
            entry.unlink()


def _read_report(staging: Path) -> dict | None:
    report = staging / "report.json"
    return json.loads(report.read_text()) if report.is_file() else None


def _move_into_place(staging: Path, target: Path) -> None:
    """Replace ``target`` by ``staging`` with renames only. If interrupted in between,
    ``target`` is missing (never half-written), so --resume redoes the model."""
    if target.exists():
        retired = Path(tempfile.mkdtemp(prefix=f"{RETIRED_PREFIX}{target.name}-", dir=target.parent))
        os.replace(target, retired / target.name)
        os.replace(staging, target)
        shutil.rmtree(retired)
    else:
        os.replace(staging, target)


def model_record(model: ZooModel, status: str, error: str | None, report: dict | None, wall_s: float) -> dict:
    """One model's entry of summary.json."""
    stats = ((report or {}).get("netlist") or {}).get("explicit", {}).get("stats")
    equivalence = None if report is None else {
        name: check["passed"] for name, check in report["equivalence"].items() if check and "passed" in check}
    return {
        "name": model.name, "path": model.path, "status": status, "error": error,
        "passed": None if report is None else report["passed"],
        "task": None if report is None else report["task"],
        "accuracy": None if report is None else report["accuracy"],
        "metrics": None if report is None else report["metrics"],
        "equivalence": equivalence,
        "finetuned": None if report is None else report["finetune"]["performed"],
        "netlist": None if stats is None else {"neurons": stats["neurons"], "synapses": stats["synapses"]},
        "timings_s": {"wall": round(wall_s, 3),
                      "convert": None if report is None else report["timings_s"]},
        "out_dir": model.name if status != "cancelled" else None,
        "resumed": False,
    }


def cancelled_record(model: ZooModel) -> dict:
    return model_record(model, "cancelled", "not run: the batch stopped (--fail-fast or interrupt)", None, 0.0)


def stored_record(out_dir: Path, model: ZooModel, key: dict) -> dict | None:
    """The record of an earlier run --resume may reuse: same key and a final status."""
    try:
        stored = json.loads((out_dir / model.name / MODEL_RECORD_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    record = stored.get("record", {})
    if stored.get("key", {}).get("digest") != key["digest"] or record.get("status") not in FINAL_STATUSES:
        return None
    if record.get("status") in ("ok", "accuracy_loss"):
        # Converted: reused only while every file its report lists is there, unchanged.
        try:
            verified_report(out_dir / model.name)
        except WhetstoneError:
            return None
    return {**record, "resumed": True}
