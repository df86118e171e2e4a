"""Writing outputs: every file goes through ``write_atomic`` (temporary file,
then rename), so a reader never sees a half-written artifact."""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

from .errors import CheckFailed, InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_temporary_directory(parent: Path, prefix: str) -> Path:
    """A new directory in ``parent`` with the ordinary permissions (mkdtemp makes 0700 ones),
    for a set of files that is renamed into place once complete."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(path, 0o777 & ~_umask())
    return path


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, 0o666 & ~_umask())   # mkstemp makes 0600 files; artifacts are ordinary files
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def write_atomic_with(path: Path, writer) -> None:
    """Like ``write_atomic`` for libraries that write files themselves: ``writer(temporary_path)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        writer(Path(temporary))
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def json_bytes(obj) -> bytes:
    """Strict JSON: a NaN or infinite number (which JSON cannot hold) is written as null."""
    return (json.dumps(_finite(obj), indent=2, sort_keys=False, allow_nan=False) + "\n").encode()


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(value) for value in obj]
    return obj


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- verifying a finished folder


def verified_report(out: Path) -> dict:
    """The folder's report.json, once every artifact it lists is there with the sha256 it records
    (``CheckFailed`` naming what is missing or changed); ``InputError`` if it is no convert output."""
    report_path = out / "report.json"
    if not out.is_dir():
        raise InputError(f"{out}: not a folder (give a whetstone-onnx convert output)")
    if not report_path.is_file():
        raise InputError(f"{report_path}: not found (is {out} a whetstone-onnx convert output?)")
    try:
        report = json.loads(report_path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"{report_path}: not valid JSON") from None
    artifacts = report.get("artifacts") if isinstance(report, dict) else None
    if not isinstance(artifacts, dict) or "spiking.onnx" not in artifacts:
        raise InputError(f"{report_path}: not a whetstone-onnx report (it lists no artifacts)")
    problems = []
    for name, entry in artifacts.items():
        path = out / str(name)
        if Path(str(name)).name != name or name in ("", ".", ".."):
            problems.append(f"report.json names '{name}', which is not a file of the folder")
        elif not path.is_file():
            problems.append(f"{name} is missing")
        elif not isinstance(entry, dict) or file_sha256(path) != entry.get("sha256"):
            problems.append(f"{name} has changed since the conversion (its sha256 is not report.json's)")
    if problems:
        raise CheckFailed(f"{out}: {'; '.join(problems)}")
    return report


# ---------------------------------------------------------------- the output folder as one unit

STAGING_MARK = ".staging-"       # .<OUT>.staging-<pid>-<random>: a conversion's folder being written
REPLACED_MARK = ".replaced-"     # .<OUT>.replaced-<pid>-<random>: the previous folder, being removed
_RENAME_EXCHANGE = 2             # renameat2 flag (Linux): swap two paths in one step


class OutputFolder:
    """A conversion's output folder, written as one unit.

    Checked before any work: ``path`` must be a folder or creatable, in a writable folder, and
    empty unless ``force``. Everything is written into ``staging`` (a hidden folder beside
    ``path``); ``commit`` puts it in ``path``'s place whole (an atomic exchange where the
    kernel offers one), so a reader finds the old folder or the new one, never a mix, and a
    killed conversion leaves only a staging folder, which the next conversion into ``path``
    removes."""

    def __init__(self, path: Path | str, *, force: bool = False):
        self.path = Path(path).absolute()
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"{path}: exists and is not a folder")
        if self.path.is_dir() and any(self.path.iterdir()):
            if not force:
                raise InputError(f"{path}: the folder exists and is not empty (--force replaces it)")
            # --force replaces a conversion's output, never a folder of other things (or one holding the
            # working directory).
            if not (self.path / "report.json").is_file() or Path.cwd().resolve().is_relative_to(self.path.resolve()):
                raise InputError(f"{path}: not a whetstone-onnx output folder (no report.json), so --force does "
                                 "not replace it")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._remove_abandoned()
            self.staging = make_temporary_directory(self.path.parent, f".{self.path.name}{STAGING_MARK}{os.getpid()}-")
        except OSError as exc:
            raise InputError(f"{path}: cannot write there ({exc.strerror or type(exc).__name__})") from None

    def commit(self) -> None:
        """The staged folder becomes ``path``; a previous one is removed."""
        import shutil

        if not self.path.exists():
            os.replace(self.staging, self.path)
            return
        if not _exchange(self.staging, self.path):
            replaced = Path(tempfile.mkdtemp(prefix=f".{self.path.name}{REPLACED_MARK}{os.getpid()}-",
                                             dir=self.path.parent))
            os.replace(self.path, replaced / "folder")
            try:
                os.replace(self.staging, self.path)
            except OSError:
                os.replace(replaced / "folder", self.path)          # the previous folder stays
                raise
            self.staging = replaced
        shutil.rmtree(self.staging, ignore_errors=True)     # (after the exchange: the previous folder)

    def discard(self) -> None:
        import shutil

        shutil.rmtree(self.staging, ignore_errors=True)

    def _remove_abandoned(self) -> None:
        """Staging and replaced folders of conversions into ``path`` whose process is gone."""
        import shutil

        for folder in self.path.parent.iterdir():
            for mark in (STAGING_MARK, REPLACED_MARK):
                prefix = f".{self.path.name}{mark}"
                pid = folder.name[len(prefix):].split("-")[0] if folder.name.startswith(prefix) else ""
                # (A process id says whether a conversion is alive on this machine only: OUT's parent
                # must not be shared by conversions running on several machines.)
                if pid.isdigit() and not _alive(int(pid)):
                    shutil.rmtree(folder, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where that is not available."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_cwd = -100
    return renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
