"""Writing files safely when several processes share ``outputs/`` and any may be killed.

Every write goes to a temp name unique to this process in the target's folder, then is
renamed into place: a reader sees the old file or the new one, never half of one. Temp
names carry host and pid, so a later process can tell those of dead processes and remove
them (``locks.clean_stale``). JSON is strict: undefined numbers become null. A write
that fails (full disk, file-size limit, permissions) is a ``WriteError``: one line naming
the file and the OS error, with the temp file removed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import secrets
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from acsl_cli.errors import AcslError, ConfigError


class WriteError(AcslError, OSError):
    """A file of ours could not be written. Still an ``OSError`` (callers that handle
    those keep doing so), and an ``AcslError``: the CLI prints one line, exit 2."""

    def __init__(self, path: str | os.PathLike[str], error: OSError) -> None:
        super().__init__(error.errno, error.strerror or str(error), str(path))
        self.path = Path(path)

    def __str__(self) -> str:
        code = errno.errorcode.get(self.errno or 0, "")
        return f"{self.path}: cannot write ({self.strerror}{', ' + code if code else ''})"


@contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``path`` into a ``WriteError`` naming it."""
    try:
        yield
    except WriteError:
        raise
    except OSError as e:
        raise WriteError(path, e) from None


def tmp_name(path: Path, suffix: str = "tmp") -> Path:
    """``<dir>/.<name>.<host>-<pid>-<random6>.<suffix>``: unique per process and call."""
    path = Path(path)
    host = socket.gethostname().replace(".", "_").replace("-", "_") or "host"
    return path.with_name(f".{path.name}.{host}-{os.getpid()}-{secrets.token_hex(3)}.{suffix}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically; a failure is a ``WriteError`` and leaves
    neither a temp file nor a half-written ``path``."""
    path = Path(path)
    tmp = tmp_name(path)
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (nested in dicts, lists, tuples) set to None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    """Strict JSON (``allow_nan=False``; nan/inf written as null), atomically."""
    atomic_write_text(path, json.dumps(strict_json(obj), indent=2, allow_nan=False) + "\n")


@contextmanager
def staged_folder(out: str | os.PathLike[str], key: str = "out_dir") -> Iterator[Path]:
    """A folder of outputs (a report, pictures) written whole or not at all: the files go
    into a hidden sibling of ``out``, moved in once the block has finished; a failure
    leaves ``out`` as it was. ``out`` is checked on entry, before any work: a file, a path
    under a file, or a place where no folder can be made is one line naming ``key``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{key}={out}: exists and is not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = tmp_name(out, "partial")
        stage.mkdir()
    except OSError as e:
        raise ConfigError(f"{key}={out}: cannot create the folder "
                          f"({e.strerror or e.__class__.__name__})") from None
    try:
        yield stage
        try:
            if out.is_dir():
                for f in sorted(stage.iterdir()):
                    os.replace(f, out / f.name)
            else:
                os.replace(stage, out)
        except OSError as e:
            raise ConfigError(f"{key}={out}: cannot write into the folder "
                              f"({e.strerror or e.__class__.__name__})") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes (hex): ties a lean head to the exact stage-1 checkpoint it
    was trained on, and ``init=`` into the stage-1 key by content, not by name."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
