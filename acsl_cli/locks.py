"""Primitives for folders shared by concurrent ``acsl`` processes, any of which may be
killed at any moment (Linux: ``flock`` through the ``filelock`` package, ``renameat2``).
Below ``data`` and ``pipeline`` alike, so that a dataset cache and a run folder follow the
same rules.

- ``FileLock``: the kernel drops the lock when its holder dies, even by SIGKILL.
- ``os_lock``: the ``filelock`` lock every lock here is (slots and sweeps use it directly).
- ``CacheEntry``: a cache folder that is complete or absent, and rebuilt when corrupt.
- ``clean_stale``: temp names carry host and pid, so only dead processes' are removed.
- ``rename_noreplace``: publish a folder without ever replacing another.

Filesystems without working ``flock`` across machines (some NFS mounts): set
``ACSL_NO_LOCKS=1``. Locks then do nothing; publishing stays one atomic rename, and two
processes that build the same cache entry both finish with one valid entry (the first
published is kept, the other's copy dropped), at the cost of the work done twice.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import shutil
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

from filelock import Timeout, UnixFileLock

from acsl_cli.errors import DataError
from acsl_cli.files import tmp_name

log = logging.getLogger("acsl")
# ``.<name>.<host>-<pid>-<hex>.<tmp|partial>`` as made by ``tmp_name``; host has no . or -
_STALE = re.compile(r"^\..+\.(?P<host>[^.-]+)-(?P<pid>\d+)-[0-9a-f]+\.(tmp|partial)$")


def _host() -> str:
    """This host as ``tmp_name`` writes it (a test checks that the two agree)."""
    return socket.gethostname().replace(".", "_").replace("-", "_") or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # PermissionError: alive, owned by another user
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _remove(path: Path) -> None:
    """Remove a file or folder; a concurrent remover may get there first."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale(folder: Path) -> list[Path]:
    """Remove temp files and partial folders of dead processes of this host in ``folder``
    (not recursive): a killed process cannot clean up after itself."""
    folder, host, removed = Path(folder), _host(), []
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        m = _STALE.match(entry.name)
        if not m or m["host"] != host or int(m["pid"]) == os.getpid() or _alive(int(m["pid"])):
            continue
        _remove(entry)
        if not os.path.lexists(entry):
            removed.append(entry)
    if removed:
        log.info("removed %d leftover(s) of dead processes in %s", len(removed), folder)
    return removed


def locks_enabled() -> bool:
    """False with ``ACSL_NO_LOCKS=1`` (a filesystem whose ``flock`` cannot be trusted)."""
    return os.environ.get("ACSL_NO_LOCKS", "").strip().lower() not in ("1", "true", "yes")


def _write_owner(fd: int) -> None:
    """``<pid> <host>`` into a lock file just taken, for the message of whoever waits."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {_host()}\n".encode(), 0)


def os_lock(path: Path) -> UnixFileLock:
    """``filelock``'s ``flock`` lock on the file ``path``, as every lock here is: the
    kernel releases it when its holder dies, so it is never stuck; never a soft-lock
    fallback (its marker would outlive a killed holder), the file kept on release
    (deleting it would race), and the holder's pid and host written into it."""
    return UnixFileLock(path, fallback_to_soft=False, preserve_lock_file=True,
                        on_acquired=_write_owner)


def try_lock(lock: UnixFileLock) -> bool:
    """Take ``lock`` if it is free, without waiting."""
    try:
        lock.acquire(blocking=False)
    except Timeout:
        return False
    return True


def release(lock: UnixFileLock) -> None:
    """Empty the lock file first (the next holder writes its own pid), then unlock."""
    try:
        os.truncate(lock.lock_file, 0)
    finally:
        lock.release()


def lock_owner(path: Path) -> tuple[str, str]:
    """(pid, host) written in a lock file by its holder; ``"?"``/``""`` when unknown (best
    effort: it may be mid-rewrite)."""
    try:
        with open(path, "rb") as f:
            words = f.read(200).decode(errors="replace").split()
    except OSError:
        words = []
    words += ["", ""]
    return words[0] or "?", words[1]


class FileLock:
    """Exclusive lock on ``<path>.lock`` (``os_lock``): one process builds a shared thing,
    the others wait, told once by ``on_wait`` whom they wait for."""

    def __init__(self, path: Path, on_wait: Callable[[str], None] | None = None) -> None:
        self.target = Path(path)
        self.path = self.target.with_name(self.target.name + ".lock")
        self.on_wait = on_wait
        self._lock: UnixFileLock | None = None

    def __enter__(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not locks_enabled():
            return self
        lock = os_lock(self.path)
        if not try_lock(lock):
            if self.on_wait is not None:
                self.on_wait(f"waiting for {self.target} ({self._owner()})")
            lock.acquire()
        self._lock = lock
        return self

    def __exit__(self, *exc: object) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            release(lock)

    def _owner(self) -> str:
        """``locked by pid N`` (and ``on HOST`` when another host holds it)."""
        pid, host = lock_owner(self.path)
        on = f" on {host}" if host not in ("", _host()) else ""
        return f"locked by pid {pid}{on}"


_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD, _RENAME_NOREPLACE = -100, 1


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename folder ``src`` to ``dst`` atomically unless ``dst`` exists (then
    ``FileExistsError``): plain ``rename`` silently replaces an empty folder at ``dst``."""
    fn = getattr(_libc, "renameat2", None)
    if fn is not None:
        if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):  # EINVAL: flag unsupported; fall back
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
    os.mkdir(dst)  # claim the name (FileExistsError if taken), then replace the empty claim
    try:
        os.rename(src, dst)
    except BaseException:
        os.rmdir(dst)
        raise


class CacheEntry:
    """A cache folder that is complete or absent: built in a temp folder, published by one
    rename, moved aside and rebuilt when found corrupt. Hold a ``FileLock`` on ``folder``
    while checking, building and publishing."""

    def __init__(self, folder: Path, required: Sequence[str]) -> None:
        self.folder = Path(folder)
        self.required = tuple(required)

    def _missing(self, folder: Path) -> list[str]:
        return [f for f in self.required
                if not (folder / f).is_file() or (folder / f).stat().st_size == 0]

    def complete(self) -> bool:
        """All required files present and non-empty (dead builders' temp folders beside
        it are removed on the way)."""
        clean_stale(self.folder.parent)
        return self.folder.is_dir() and not self._missing(self.folder)

    def invalidate(self, reason: str) -> None:
        """Report the entry in one line and remove it, so that it is rebuilt."""
        log.warning("cache entry %s is corrupt (%s): rebuilding", self.folder, reason)
        self._discard()

    def publish(self, tmp_folder: Path) -> Path:
        """Rename a fully written ``tmp_folder`` into place, replacing an incomplete entry.

        Under the lock the entry is absent or known corrupt here. Without locks another
        builder may have published the same entry meanwhile: a complete one is kept and
        ``tmp_folder`` left to the caller to remove, so both builders end with one entry."""
        tmp_folder = Path(tmp_folder)
        missing = self._missing(tmp_folder)
        if missing:
            raise DataError(f"{tmp_folder / missing[0]}: missing or empty, not publishing")
        for _ in range(3):
            try:
                rename_noreplace(tmp_folder, self.folder)
                return self.folder
            except FileExistsError:
                if not locks_enabled() and not self._missing(self.folder):
                    log.info("cache entry %s was published by another process: keeping it",
                             self.folder)
                    return self.folder
                self._discard()
        raise DataError(f"{self.folder}: could not be published (replaced concurrently)")

    def _discard(self) -> None:
        """Rename aside first: if killed while deleting, ``clean_stale`` finishes the job."""
        if not os.path.lexists(self.folder):
            return
        aside = tmp_name(self.folder)
        os.rename(self.folder, aside)
        _remove(aside)
