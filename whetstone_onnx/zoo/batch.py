"""A whole zoo batch: resume, run, summary.json and summary.md."""
from __future__ import annotations

import shutil
import signal
import threading
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..artifacts import json_bytes, write_atomic
from ..errors import InputError
from .executors import EXECUTORS, run_dask, run_local
from .jobs import (Job, RETIRED_PREFIX, STAGING_PREFIX, STATUSES, SUMMARY_SCHEMA, SUMMARY_SCHEMA_VERSION,
    resume_key, stored_record)
from .manifest import Manifest, read_manifest
from .progress import Progress

DEFAULT_TIMEOUT_S = 600.0
LOCK_FILE = ".zoo.lock"


@dataclass
class ZooResult:
    summary: dict       # summary.json
    out_dir: Path

    @property
    def models(self) -> list[dict]:
        return self.summary["models"]

    @property
    def counts(self) -> dict[str, int]:
        return self.summary["counts"]

    @property
    def passed(self) -> bool:
        """Every model converted and passed its checks."""
        return self.summary["passed"]

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def table(self) -> str:
        return summary_markdown(self.summary)


def convert_zoo(manifest: str | Path, out_dir: str | Path, *, jobs: int = 1, resume: bool = False,
                executor: str = "local", scheduler: str | None = None, fail_fast: bool = False,
                timeout: float = DEFAULT_TIMEOUT_S, memory_limit: int | None = None,
                progress: bool = False) -> ZooResult:
    """See ``zoo.convert_zoo``."""
    _validate_settings(jobs, executor, scheduler, timeout, memory_limit)
    zoo = read_manifest(manifest)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create the directory ({exc.strerror or type(exc).__name__})") from None
    with _locked(out):
        return _convert(zoo, out, jobs, resume, executor, scheduler, fail_fast, timeout, memory_limit, progress)


def _convert(zoo: Manifest, out: Path, jobs: int, resume: bool, executor: str, scheduler: str | None,
             fail_fast: bool, timeout: float, memory_limit: int | None, progress: bool) -> ZooResult:
    _remove_leftovers(out)
    started = time.monotonic()
    records: dict[str, dict] = {}
    pending: list[Job] = []
    for model in zoo.models:
        key = resume_key(zoo.base_dir, model)
        stored = stored_record(out, model, key) if resume else None
        if stored is not None:
            records[model.name] = stored
        else:
            pending.append(Job(model, str(zoo.base_dir), str(out.resolve()), key,
                               model.timeout_s or float(timeout), model.memory_limit_mb or memory_limit))
    # Largest model files first: they tend to take longest, and starting them early keeps
    # every worker busy until the end instead of one finishing a big model alone.
    pending.sort(key=lambda job: (zoo.base_dir / job.model.path).stat().st_size, reverse=True)
    display = Progress(len(zoo.models), progress)
    try:
        for record in records.values():
            display(record["name"], record)
        run = run_local(pending, jobs, fail_fast, display) if executor == "local" else \
            run_dask(pending, jobs, scheduler, fail_fast, display)
        # closing(): an interrupt while a record is being handled still stops the workers
        with _sigterm_as_interrupt(), closing(run):
            for record in run:
                records[record["name"]] = record
                display(record["name"], record)
    finally:
        display.close()
    summary = _summary(zoo, [records[model.name] for model in zoo.models], executor, jobs,
                       time.monotonic() - started)
    write_atomic(out / "summary.json", json_bytes(summary))
    write_atomic(out / "summary.md", (summary_markdown(summary) + "\n").encode())
    return ZooResult(summary, out)


def _validate_settings(jobs: int, executor: str, scheduler: str | None, timeout: float,
                       memory_limit: int | None) -> None:
    if jobs < 1:
        raise InputError(f"--jobs {jobs}: must be at least 1")
    if executor not in EXECUTORS:
        raise InputError(f"--executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    if scheduler is not None and executor != "dask":
        raise InputError("--scheduler needs --executor dask")
    if not timeout > 0:
        raise InputError(f"--timeout {timeout}: must be positive")
    if memory_limit is not None and memory_limit < 1:
        raise InputError(f"--memory-limit {memory_limit}: must be a positive number of MB")
    if executor == "dask":
        import importlib.util
        if importlib.util.find_spec("distributed") is None:        # before OUT is created
            raise InputError("--executor dask needs Dask: pip install 'whetstone-onnx[dask]'")


@contextmanager
def _locked(out: Path):
    """Hold OUT's lock file for the batch: a second batch into the same OUT is refused rather than
    deleting the first one's staging directories under it. (The kernel drops the lock with the
    process, so a killed batch leaves no stale lock.)"""
    import fcntl

    with open(out / LOCK_FILE, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{out}: another zoo batch is writing there (it holds {LOCK_FILE})") from None
        yield


def _remove_leftovers(out: Path) -> None:
    """Staging and retired directories of an interrupted batch (never model directories)."""
    for entry in out.iterdir():
        if entry.is_dir() and entry.name.startswith((STAGING_PREFIX, RETIRED_PREFIX)):
            shutil.rmtree(entry, ignore_errors=True)


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM stops the batch like Ctrl-C does: workers killed, staging directories left for the next run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _summary(zoo: Manifest, records: list[dict], executor: str, jobs: int, wall_s: float) -> dict:
    counts = {status: sum(record["status"] == status for record in records) for status in STATUSES}
    return {"schema": SUMMARY_SCHEMA, "schema_version": SUMMARY_SCHEMA_VERSION, "manifest": str(zoo.source),
            "version": __version__, "executor": executor, "jobs": jobs, "total": len(records), "counts": counts,
            "resumed": sum(record["resumed"] for record in records), "passed": counts["ok"] == len(records),
            "wall_time_s": round(wall_s, 3), "models": records}


def summary_markdown(summary: dict) -> str:
    """summary.md: one table row per model."""
    counts = ", ".join(f"{n} {status}" for status, n in summary["counts"].items() if n)
    lines = [f"# Zoo conversion: {summary['manifest']}", "",
             f"{summary['total']} models: {counts}; {summary['resumed']} reused by --resume; "
             f"{summary['wall_time_s']:.1f} s on {summary['jobs']} job(s), {summary['executor']} executor.", "",
             "| model | status | spiking acc. (MSE) | checks | neurons | synapses | time (s) | error |",
             "|---|---|---|---|---|---|---|---|"]
    for record in summary["models"]:
        accuracy = (record["accuracy"] or {}).get("spiking")
        mse = ((record.get("metrics") or {}).get("spiking") or {}).get("mse")
        score = f"{100 * accuracy:.2f} %" if accuracy is not None else "-" if mse is None else f"MSE {mse:.5g}"
        netlist = record["netlist"] or {}
        checks = "-" if record["passed"] is None else ("pass" if record["passed"] else "FAIL")
        time_text = "resumed" if record["resumed"] else f"{record['timings_s']['wall']:.1f}"
        error = (record["error"] or "").replace("|", "\\|")
        cells = [record["name"], record["status"], score, checks,
                 str(netlist.get("neurons", "-")), str(netlist.get("synapses", "-")), time_text, error]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
