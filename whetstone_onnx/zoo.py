"""Batch conversion of a model zoo: a TOML manifest in, one output directory per model
and a versioned summary out.

Every model is converted by a separate worker process (``zoo_worker.py``), so a
crash, a hang (``timeout``) or running out of memory (``memory_limit``) costs that
model only. The worker writes into a staging directory next to the model's
directory; the staging directory is renamed into place once the model's record
(``zoo.json``) is in it, so a model directory either is complete or does not
exist, and ``resume`` can trust what it finds. The same ``run_job`` runs under the
local executor (a thread per running model, each waiting on its worker) and as a
Dask task on a cluster's workers.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from . import __version__
from .artifacts import json_bytes, make_temporary_directory, write_atomic
from .conversion import ConvertOptions
from .data import parse_normalize
from .errors import InputError, WhetstoneError
from .finetune import FinetuneOptions
from .native_logs import stderr_is_terminal

if sys.version_info >= (3, 11):
    import tomllib
else:                                   # the same parser, as a package, before Python 3.11
    import tomli as tomllib

log = logging.getLogger(__name__)

SUMMARY_SCHEMA = "whetstone_onnx.zoo_summary"
# 1.1: the status accuracy_loss (and its count).
SUMMARY_SCHEMA_VERSION = "1.1"
MODEL_RECORD_SCHEMA = "whetstone_onnx.zoo_model"
MODEL_RECORD_FILE = "zoo.json"      # in each model's directory; written last, it marks the directory complete
LOG_FILE = "zoo.log"                # the worker's stdout and stderr
RESULT_FILE = ".zoo-result.json"    # the worker's answer, read and removed by run_job
STAGING_PREFIX = ".zoo-staging-"    # a model directory being written
RETIRED_PREFIX = ".zoo-retired-"    # a model directory being replaced
DEFAULT_TIMEOUT_S = 600.0
EXECUTORS = ("local", "dask")

# accuracy_loss: converted and checked, but the spiking network lost more accuracy than
# the model's max_loss allows (accept_loss = true in the manifest keeps it as ok).
STATUSES = ("ok", "unsupported", "failed", "accuracy_loss", "timeout", "crashed", "cancelled")
# Outcomes that depend only on the model and its options: --resume reuses them.
# A timeout, a crash or a cancellation depends on the run, so --resume retries those.
FINAL_STATUSES = frozenset({"ok", "unsupported", "failed", "accuracy_loss"})

# The manifest's per-model options are api.convert's (conversion.ConvertOptions and
# ``data``, bar ``progress``); their defaults are ConvertOptions', their TOML types are here.
OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "data": (str,), "normalize": (list, str), "output": (str,), "output_name": (str,), "key_width": (int,),
    "seed": (int,),
    "finetune": (bool, dict), "calibration_percentile": (int, float), "netlist": (bool,),
    "nir_profile": (str,), "nir_dt": (int, float), "weight_bits": (int,), "hardware": (str,),
    "max_loss": (int, float), "accept_loss": (bool,),
}
# A [[model]] table's own keys: not convert options, and not part of the resume key
# (a limit changes whether a run finishes, never what a finished run computes).
MODEL_KEYS = ("path", "name", "timeout", "memory_limit")
MANIFEST_KEYS = ("defaults", "model")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_GLOB_CHARACTERS = re.compile(r"[*?\[]")


# ----------------------------------------------------------------------------- manifest

@dataclass(frozen=True)
class ZooModel:
    name: str        # the model's directory under the output directory
    path: str        # relative to the manifest's directory, or absolute as the manifest wrote it (POSIX)
    options: dict    # every api.convert option, normalised (JSON types): part of the resume key
    timeout_s: float | None = None        # this model's limits, overriding the batch's
    memory_limit_mb: int | None = None


@dataclass(frozen=True)
class Manifest:
    source: Path     # the TOML file, or the directory of .onnx files
    base_dir: Path   # absolute; model paths and data specs are relative to it
    models: list[ZooModel]


def read_manifest(source: str | Path) -> Manifest:
    """A TOML manifest, or a directory whose .onnx files are converted with default options.

    Raises ``InputError`` naming the file and the problem (exit code 2 on the command line).
    """
    source = Path(source)
    if source.is_dir():
        base_dir = source.resolve()
        paths = _expand(base_dir, "*.onnx", source)
        return Manifest(source, base_dir, [ZooModel(Path(p).stem, p, normalise_options({}, source)) for p in paths])
    if not source.is_file():
        raise InputError(f"{source}: file not found")
    try:
        document = tomllib.loads(source.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{source}: not a valid TOML manifest ({str(exc).splitlines()[0]})") from None
    _reject_unknown(document, MANIFEST_KEYS, source, "top-level key")
    defaults = document.get("defaults", {})
    entries = document.get("model", [])
    if not isinstance(defaults, dict) or not isinstance(entries, list) or \
            not all(isinstance(entry, dict) for entry in entries):
        raise InputError(f"{source}: expected a [defaults] table and [[model]] tables")
    if not entries:
        raise InputError(f"{source}: lists no models (add [[model]] tables with a path)")
    _reject_unknown(defaults, OPTION_TYPES, source, "option in [defaults]")
    base_dir = source.resolve().parent
    models = [model for index, entry in enumerate(entries, 1)
              for model in _entry_models(entry, index, defaults, base_dir, source)]
    _reject_duplicate_names(models, source)
    return Manifest(source, base_dir, models)


def _entry_models(entry: dict, index: int, defaults: dict, base_dir: Path, source: Path) -> list[ZooModel]:
    where = f"{source}: model {index}"
    _reject_unknown(entry, (*MODEL_KEYS, *OPTION_TYPES), where, "option")
    pattern = entry.get("path")
    if not isinstance(pattern, str) or not pattern:
        raise InputError(f"{where}: needs a path (a file, a directory or a glob such as models/*.onnx)")
    paths = _expand(base_dir, pattern, source)
    name = entry.get("name")
    if name is not None and (len(paths) != 1 or _is_pattern(base_dir, pattern)):
        raise InputError(f"{where}: name {name!r} needs a path naming one file, not {pattern!r}")
    options = normalise_options({**defaults, **{k: v for k, v in entry.items() if k not in MODEL_KEYS}},
                                f"{where} ({pattern})")
    timeout, memory_limit = _limits(entry, where)
    return [ZooModel(name if name is not None else Path(path).stem, path, options, timeout, memory_limit)
            for path in paths]


def _limits(entry: dict, where: str) -> tuple[float | None, int | None]:
    timeout, memory_limit = entry.get("timeout"), entry.get("memory_limit")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise InputError(f"{where}: timeout must be a positive number of seconds, not {timeout!r}")
    if memory_limit is not None and (isinstance(memory_limit, bool) or not isinstance(memory_limit, int)
                                     or memory_limit < 1):
        raise InputError(f"{where}: memory_limit must be a positive integer (MB), not {memory_limit!r}")
    return (None if timeout is None else float(timeout)), memory_limit


def _is_pattern(base_dir: Path, pattern: str) -> bool:
    return bool(_GLOB_CHARACTERS.search(pattern)) or (base_dir / pattern).is_dir()


def _expand(base_dir: Path, pattern: str, source: Path) -> list[str]:
    """The .onnx files a manifest path names, relative to ``base_dir``, sorted."""
    if (base_dir / pattern).is_dir():
        pattern = str(Path(pattern) / "*.onnx")
    if not _GLOB_CHARACTERS.search(pattern):
        if not (base_dir / pattern).is_file():
            raise InputError(f"{source}: {pattern}: file not found")
        return [Path(pattern).as_posix()]
    # Matches under the manifest's directory are written relative to it, others (an absolute pattern) in full.
    matches = sorted((Path(match).relative_to(base_dir) if Path(match).is_relative_to(base_dir) else Path(match))
                     .as_posix() for match in glob.glob(str(base_dir / pattern)) if os.path.isfile(match))
    if not matches:
        raise InputError(f"{source}: {pattern}: matches no file")
    return matches


def _reject_unknown(table: dict, allowed, where: str | Path, what: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise InputError(f"{where}: unknown {what} {unknown[0]!r} (expected one of {', '.join(allowed)})")


def _reject_duplicate_names(models: list[ZooModel], source: Path) -> None:
    seen: dict[str, str] = {}
    for model in models:
        if not _SAFE_NAME.fullmatch(model.name):
            raise InputError(f"{source}: model name {model.name!r} is not a plain directory name")
        if model.name in seen:
            raise InputError(f"{source}: duplicate model name {model.name!r} ({seen[model.name]} and {model.path}; "
                             "give one a name)")
        seen[model.name] = model.path


def convert_defaults() -> dict:
    """The convert options a manifest may set, with their defaults: ``data`` and every
    ``ConvertOptions`` field but ``progress`` and ``model_dir`` (a manifest's models are
    files, read from their own folders)."""
    return {"data": None, **{f.name: f.default for f in fields(ConvertOptions)
                             if f.name not in ("progress", "model_dir")}}


def normalise_options(given: dict, where: str | Path) -> dict:
    """Every convert option, with defaults filled in and one spelling per value, so that
    equal settings hash equally however the manifest wrote them."""
    options = convert_defaults()
    for key, value in given.items():
        expected = OPTION_TYPES[key]
        if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
            names = " or ".join({"str": "a string", "list": "a list", "int": "an integer", "float": "a number",
                                 "bool": "true/false", "dict": "a table"}[t.__name__] for t in expected)
            raise InputError(f"{where}: option {key!r} must be {names}, not {value!r}")
        options[key] = value
    try:
        options["normalize"] = _normalise_normalize(options["normalize"])
        options["finetune"] = _normalise_finetune(options["finetune"], options["seed"])
    except WhetstoneError as exc:
        raise InputError(f"{where}: {exc.message}") from None
    return options


def _normalise_normalize(value) -> list[float] | None:
    if value is None:
        return None
    if isinstance(value, list):
        value = ",".join(str(number) for number in value)
    return list(parse_normalize(value))


def _normalise_finetune(value: bool | dict, seed: int) -> dict | bool:
    """False, or every FinetuneOptions field (True means the defaults, seeded like convert does)."""
    if value is False:
        return False
    table = {} if value is True else value
    known = [f.name for f in fields(FinetuneOptions)]
    _reject_unknown(table, known, "finetune", "field")
    try:
        options = FinetuneOptions(**{"seed": seed, **table})
        options.validate()
    except TypeError as exc:
        raise InputError(f"finetune: {exc}") from None
    return asdict(options)


def convert_arguments(options: dict) -> dict:
    """Normalised manifest options -> api.convert's keyword arguments."""
    finetune = options["finetune"]
    return {**options, "normalize": tuple(options["normalize"]) if options["normalize"] else None,
            "finetune": FinetuneOptions(**finetune) if finetune else False}


# ----------------------------------------------------------------------------- one model

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
    command = [sys.executable, "-m", "whetstone_onnx.zoo_worker", json.dumps(request)]
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
        "accuracy": None if report is None else report["accuracy"],
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
    return {**record, "resumed": True}


# ----------------------------------------------------------------------------- executors

Display = Callable[[str, dict | None], None]   # (model name, record or None when it starts)


def run_local(jobs: list[Job], workers: int, fail_fast: bool, display: Display) -> Iterator[dict]:
    """Run the jobs on ``workers`` threads, each waiting on its own worker process; yields records
    as they finish. An exception in the caller (Ctrl-C, SIGTERM) kills the running workers."""
    children = Children()

    def run(job: Job) -> dict:
        if not children.stopping:
            display(job.model.name, None)
        record = run_job(job, children)
        if fail_fast and record["status"] not in ("ok", "cancelled"):
            children.stopping = True    # set here, before this thread takes the next job: jobs not started
        return record                   # yet stand down, running ones finish

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zoo") as pool:
        try:
            for future in as_completed([pool.submit(run, job) for job in jobs]):
                yield future.result()
        except BaseException:
            children.kill_all()
            raise


def run_dask(jobs: list[Job], workers: int, scheduler: str | None, fail_fast: bool,
             display: Display) -> Iterator[dict]:
    """Submit each job as a Dask task (which still converts in its own worker process); yields
    records as they finish. Closing the generator closes the client (and a local cluster)."""
    try:
        from dask.distributed import as_completed as dask_completed
    except ImportError:
        raise InputError("--executor dask needs Dask: pip install 'whetstone-onnx[dask]'") from None
    with _dask_client(scheduler, workers) as client:
        futures = {client.submit(run_job, job, key=f"whetstone-zoo-{job.model.name}-{job.key['digest'][:12]}",
                                 pure=False): job for job in jobs}
        running = _RunningGuess([job.model.name for job in jobs], sum(client.nthreads().values()), display)
        stopping = False
        for future in dask_completed(futures):
            record = _dask_record(future, futures[future])
            if fail_fast and not stopping and record["status"] not in ("ok", "cancelled"):
                stopping = True
                client.cancel([f for f in futures if not f.done()])
            running.finished(record["name"])
            yield record


def _dask_record(future, job: Job) -> dict:
    if future.cancelled():
        return cancelled_record(job.model)
    if future.status == "error":      # the task itself failed (e.g. its Dask worker died), not the conversion
        exc = future.exception()
        return {**model_record(job.model, "crashed", f"{job.model.path}: Dask task failed: "
                               f"{type(exc).__name__}: {exc}", None, 0.0), "out_dir": None}
    return future.result()


class _RunningGuess:
    """Which models the progress display calls running under Dask. The client is not told
    when a task starts, so the first ``slots`` unfinished models in submission order (the
    cluster's order, roughly) count as running: the count is right, the names may not be."""

    def __init__(self, names: list[str], slots: int, display: Display):
        self.waiting = deque(names)
        self.display = display
        for _ in range(min(max(slots, 1), len(names))):
            display(self.waiting.popleft(), None)

    def finished(self, name: str) -> None:
        if name in self.waiting:          # ran ahead of its turn: one counted as running still is
            self.waiting.remove(name)
        elif self.waiting:                # its slot goes to the next model
            self.display(self.waiting.popleft(), None)


@contextmanager
def _dask_client(scheduler: str | None, workers: int):
    from dask.distributed import Client, LocalCluster

    with _dask_logs_follow_ours():
        if scheduler is not None:
            try:
                client = Client(scheduler, timeout="20s")
            except OSError as exc:
                raise InputError(f"--scheduler {scheduler}: cannot connect ({exc})") from None
            with client:
                yield client
            return
        # One single-threaded worker process per job slot. Everything listens on loopback only,
        # the dashboard included (dashboard_address=None does not turn it off).
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
            yield client


@contextmanager
def _dask_logs_follow_ours():
    """Dask logs its cluster's life at INFO level: show that only when our own INFO logs show (--verbose)."""
    dask_log = logging.getLogger("distributed")
    previous = dask_log.level
    if not log.isEnabledFor(logging.INFO):
        dask_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        dask_log.setLevel(previous)


# ----------------------------------------------------------------------------- progress

class Progress:
    """Models done / failed / running and an ETA on stderr: a rich live bar on a terminal,
    one plain line per finished model otherwise, nothing when disabled."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.failed = total, 0, 0
        self.running: set[str] = set()     # under Dask: submitted and not finished (the cluster schedules)
        self.enabled = enabled
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._bar = None
        if enabled and stderr_is_terminal():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, \
                TimeRemainingColumn
            self._bar = RichProgress(TextColumn("zoo"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[state]}"), TimeRemainingColumn(),
                                     console=Console(stderr=True, force_terminal=True))
            self._task = self._bar.add_task("zoo", total=total, state="")
            self._bar.start()

    def __call__(self, name: str, record: dict | None) -> None:
        with self._lock:
            if record is None:
                self.running.add(name)
            else:
                self.running.discard(name)
                self.done += 1
                self.failed += record["status"] != "ok"
            if self._bar is not None:
                self._bar.update(self._task, completed=self.done, state=self._state())
            elif self.enabled and record is not None:
                print(f"zoo: [{self.done}/{self.total}] {name}: {_status_text(record)} | {self._state()}, "
                      f"ETA {self._eta()}", file=sys.stderr, flush=True)

    def _state(self) -> str:
        return f"failed {self.failed}, running {len(self.running)}"

    def _eta(self) -> str:
        if not self.done:
            return "?"
        seconds = (time.monotonic() - self.started) / self.done * (self.total - self.done)
        return time.strftime("%H:%M:%S", time.gmtime(seconds))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _status_text(record: dict) -> str:
    text = record["status"] + (" (resumed)" if record["resumed"] else f" in {record['timings_s']['wall']:.1f} s")
    return text + (f": {record['error']}" if record["error"] else "")


# ----------------------------------------------------------------------------- batch

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
    """See ``api.convert_zoo``."""
    _validate_settings(jobs, executor, scheduler, timeout, memory_limit)
    zoo = read_manifest(manifest)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
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
             "| model | status | spiking acc. | checks | neurons | synapses | time (s) | error |",
             "|---|---|---|---|---|---|---|---|"]
    for record in summary["models"]:
        accuracy = (record["accuracy"] or {}).get("spiking")
        netlist = record["netlist"] or {}
        checks = "-" if record["passed"] is None else ("pass" if record["passed"] else "FAIL")
        time_text = "resumed" if record["resumed"] else f"{record['timings_s']['wall']:.1f}"
        error = (record["error"] or "").replace("|", "\\|")
        cells = [record["name"], record["status"], "-" if accuracy is None else f"{100 * accuracy:.2f} %", checks,
                 str(netlist.get("neurons", "-")), str(netlist.get("synapses", "-")), time_text, error]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
