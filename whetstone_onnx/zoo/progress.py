"""Progress of a zoo batch on stderr."""
from __future__ import annotations

import sys
import threading
import time

from ..native_logs import stderr_is_terminal

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
