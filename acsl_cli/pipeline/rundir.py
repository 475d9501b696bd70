"""Files that stay consistent when several ``acsl`` processes share ``outputs/`` and any
of them may be killed at any moment (Linux: ``fcntl.flock``, ``renameat2``).

- Writes go to a per-process temp name and are renamed into place (``acsl_cli.files``).
- ``RunDir``: a run is built in a hidden ``.partial`` folder and renamed when finished;
  the rename never replaces another run and never throws the finished work away.
- ``CacheEntry``: a cache folder that is complete or absent, and rebuilt when corrupt.
- ``FileLock``: the kernel drops the lock when its holder dies, even by SIGKILL.
- ``clean_stale``: temp names carry host and pid, so only dead processes' are removed.
- Preflight checks turn a bad path into one ``ConfigError`` line before any work starts.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from datetime import datetime
from pathlib import Path
from types import TracebackType

from acsl_cli.errors import ConfigError
from acsl_cli.files import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    strict_json,
    tmp_name,
)
from acsl_cli.locks import CacheEntry, FileLock, clean_stale, rename_noreplace

__all__ = ["CacheEntry", "FileLock", "RunDir", "atomic_write_bytes", "atomic_write_json",
           "atomic_write_text", "check_free_disk", "check_out_file", "check_output_root",
           "check_run_name", "clean_stale", "default_run_name", "rename_noreplace",
           "strict_json", "tmp_name"]

log = logging.getLogger("acsl")


class RunDir:
    """One run's folder as a transaction: written under ``runs_root/.<name>.<host>-<pid>-
    <hex>.partial`` and renamed to ``runs_root/<name>`` by ``commit``. An exception, or
    leaving the ``with`` block without committing, removes it; a killed process's partial
    folder is removed by the next ``open`` in the same ``runs_root``."""

    def __init__(self, runs_root: Path, name: str) -> None:
        check_run_name(name)
        self.root = Path(runs_root)
        self.name = name
        self.final = self.root / name
        self._partial: Path | None = None
        self._committed: Path | None = None

    @property
    def path(self) -> Path:
        """Where to write: the partial folder while open, the published one after commit."""
        if self._committed is not None:
            return self._committed
        if self._partial is None:
            raise RuntimeError(f"run folder {self.final} is not open")
        return self._partial

    def open(self) -> Path:
        """Create the partial folder (idempotent) after removing dead processes' ones."""
        if self._partial is None and self._committed is None:
            self.root.mkdir(parents=True, exist_ok=True)
            clean_stale(self.root)
            partial = tmp_name(self.final, "partial")
            partial.mkdir()
            self._partial = partial
        return self.path

    def commit(self) -> Path:
        """Publish the folder and return where it went: ``<name>``, or ``<name>-<hex>`` if
        that is taken, or as a last resort a visible ``<name>-unfinalised-<hex>``."""
        if self._committed is not None:
            return self._committed
        partial = self.path
        tries = [self.name] + [f"{self.name}-{secrets.token_hex(2)}" for _ in range(3)]
        tries.append(f"{self.name}-unfinalised-{secrets.token_hex(2)}")
        error: OSError | None = None
        for name in tries:
            try:
                rename_noreplace(partial, self.root / name)
            except FileExistsError:
                continue
            except OSError as e:
                error = e
                continue
            self._committed, self._partial = self.root / name, None
            if name != self.name:
                why = f"({error.strerror or error})" if error else "(the name is taken)"
                log.warning("run folder %s not used %s: saved as %s", self.final, why,
                            self._committed)
            return self._committed
        log.error("run folder %s could not be published (%s): it is left in %s", self.final,
                  error.strerror if error else "every name is taken", partial)
        self._committed, self._partial = partial, None
        return partial

    def abort(self) -> None:
        """Remove the partial folder (a committed folder is kept)."""
        partial, self._partial = self._partial, None
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.abort()


def default_run_name(label: str, seed: int) -> str:
    """``YYYYmmdd-HHMMSS-ffffff-s<seed>-<label>-<hex4>``: sorts by time, and distinct per
    call even within one microsecond or across processes."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip(".-")[:60].rstrip(".-") or "run"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return f"{stamp}-s{seed}-{slug}-{secrets.token_hex(2)}"


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _probe_write(folder: Path, key: str, shown: Path) -> None:
    """Create and remove a temp file in ``folder``: the only sure test (root ignores
    permission bits; read-only mounts and /proc do not)."""
    probe = tmp_name(folder / "write-test")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"{key}={shown}: {folder} is not writable ({e.strerror or e})") from None


def check_output_root(path: Path, key: str = "output_root", create: bool = True) -> None:
    """An existing or creatable, writable directory (it is created here, unless
    ``create=False``: a dry run then probes its nearest existing ancestor)."""
    path = Path(path)
    found = _nearest_existing(path)
    if not found.is_dir():
        where = "" if found == Path(os.path.abspath(path)) else f"{found} "
        raise ConfigError(f"{key}={path}: {where}is not a directory")
    if not create:
        _probe_write(found, key, path)
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{key}={path}: cannot be created ({e.strerror or e})") from None
    _probe_write(path, key, path)


def check_out_file(path: Path, key: str = "out") -> None:
    """A file that can be written later: not a directory, in an existing writable folder
    (a mistyped path creates no folders, least of all under /). Nothing is left behind."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{key}={path}: is a directory, not a file")
    found = _nearest_existing(path.parent)
    if not found.is_dir():
        raise ConfigError(f"{key}={path}: {found} is not a directory")
    if found != Path(os.path.abspath(path.parent)):  # relative: from the working folder
        raise ConfigError(f"{key}={path}: folder {path.parent} does not exist (a file in an "
                          "existing folder; create the folder first if it is meant)")
    _probe_write(found, key, path)


def check_run_name(name: str, key: str = "run_name") -> None:
    """One plain, visible folder name."""
    bad = (not isinstance(name, str) or not name or name in (".", "..") or name.startswith(".")
           or any(c in name for c in "/\\\0") or len(name) > 200)
    if bad:
        raise ConfigError(f"{key}={name!r}: must be one folder name (no '/', '\\', leading "
                          "'.' or NUL; at most 200 characters)")


def check_free_disk(path: Path, needed_bytes: int, key: str = "output_root") -> None:
    """Enough free space where ``path`` is (or will be) for ``needed_bytes``."""
    free = shutil.disk_usage(_nearest_existing(Path(path))).free
    if free < needed_bytes:
        size = [f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"
                for n in (needed_bytes, free)]
        raise ConfigError(f"{key}={path}: needs about {size[0]} free, has {size[1]}")
