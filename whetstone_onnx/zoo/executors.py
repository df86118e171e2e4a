"""Where the models of a batch run: threads waiting on local workers, or a Dask cluster."""
from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager

from ..errors import InputError
from .jobs import Children, Job, cancelled_record, model_record, run_job

log = logging.getLogger(__name__)

EXECUTORS = ("local", "dask")


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
