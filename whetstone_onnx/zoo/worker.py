"""The process that converts one model of a zoo batch (``python -m whetstone_onnx.zoo.worker REQUEST``).

``zoo.jobs.run_job`` starts it with a JSON request (model path relative to the working
directory, output directory, normalised options, memory limit, the parent's pid) and reads the one
JSON answer it writes to ``result_file``: ``{"status", "error"}``. Anything that
kills it (a crash, the memory limit, the timeout) leaves no answer, which is how
the parent tells those apart from a conversion that failed cleanly.
"""
from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from ..errors import UnsupportedModelError, WhetstoneError

PARENT_POLL_S = 0.2     # where there is no PR_SET_PDEATHSIG
PR_SET_PDEATHSIG = 1    # <linux/prctl.h>
CONVERTED_DIR = "converted"     # the conversion's own output folder inside the staging directory


def main(argv: list[str]) -> int:
    request = json.loads(argv[1])
    _exit_with_parent(request["parent_pid"])
    if request["memory_limit_mb"]:
        # The address-space limit covers everything imported below, as it should:
        # the whole conversion must fit in it.
        limit = request["memory_limit_mb"] * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    result = convert(request)
    _write_result(Path(request["result_file"]), result)
    return 0


def convert(request: dict) -> dict:
    """Run api.convert; every way it can end cleanly becomes a status and a one-line error."""
    try:
        from .. import api    # imported here, under the memory limit: importing is part of the conversion
        from .manifest import convert_arguments

        data, options = convert_arguments(request["options"])
        # The conversion's folder is a new one inside the staging directory (which holds the log);
        # its files then join the log there.
        converted_dir = Path(request["out_dir"]) / CONVERTED_DIR
        converted = api.convert_with_options(request["model"], converted_dir, data=data, options=options)
        for path in converted_dir.iterdir():
            os.replace(path, Path(request["out_dir"]) / path.name)
        converted_dir.rmdir()
    except UnsupportedModelError as exc:
        return {"status": "unsupported", "error": exc.message}
    except WhetstoneError as exc:
        return {"status": "failed", "error": exc.message}
    except MemoryError:
        limit = f" (memory limit {request['memory_limit_mb']} MB)" if request["memory_limit_mb"] else ""
        return {"status": "out_of_memory", "error": f"{request['model']}: out of memory{limit}"}
    except Exception as exc:      # a bug, or memory running out where it surfaces as another error
        traceback.print_exc()     # into the model's zoo.log
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        # Under an address-space limit, a failed allocation can surface as anything (an
        # ImportError when a shared library cannot be mapped, for one): say the limit was on.
        limit = f"; memory limit {request['memory_limit_mb']} MB: raise it if this is out of memory" \
            if request["memory_limit_mb"] else ""
        # Under a memory limit, a library or file that cannot be mapped is the limit's doing: a status
        # --resume retries. Other errors are the model's or a bug's.
        memory = bool(limit) and isinstance(exc, (ImportError, OSError))
        return {"status": "out_of_memory" if memory else "failed",
                "error": f"{request['model']}: internal error: {type(exc).__name__}: {first_line} "
                         f"(traceback in zoo.log{limit})"}
    if not converted.passed:
        return {"status": "failed", "error": f"{request['model']}: equivalence check failed (see report.json)"}
    if not converted.accuracy_ok:
        from ..report import guard_message
        return {"status": "accuracy_loss", "error": guard_message(request["model"], converted.report)}
    return {"status": "ok", "error": None}


def _exit_with_parent(parent: int) -> None:
    """Die when the process that started us does (even by SIGKILL), so an interrupted
    batch leaves no conversion running that could write into its output directory."""
    if sys.platform == "linux":
        # The kernel sends SIGKILL the moment the parent goes, even while we are deep in C code.
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    else:
        threading.Thread(target=_poll_parent, args=(parent,), name="watch-parent", daemon=True).start()
    if os.getppid() != parent:      # it went before the above took effect
        os._exit(1)


def _poll_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def _write_result(path: Path, result: dict) -> None:
    temporary = path.with_name(path.name + ".part")
    temporary.write_text(json.dumps(result))
    os.replace(temporary, path)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
