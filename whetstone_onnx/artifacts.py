"""Writing outputs: every file goes through ``write_atomic`` (temporary file,
then rename), so a reader never sees a half-written artifact."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


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
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
