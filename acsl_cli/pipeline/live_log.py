"""A stable path to a running run's log: ``<output_root>/live/<name>.log``, a relative
symlink to ``train.log`` in the run's hidden partial folder, printed on stderr with the
first training line (a run refused for bad input prints its one error line only) and
removed when the run ends (the finished log is ``runs/<name>/train.log``).

Concurrent runs of one name: the first keeps the link, the others print their partial
folder's path. A killed run's link dangles once its partial folder is cleaned up; the
next run on the same ``output_root`` removes dangling links. ``runs/`` holds only runs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from acsl_cli.engine.iter_log import announce, retract


def _remove_dangling(folder: Path) -> None:
    for link in folder.glob("*.log"):
        if link.is_symlink() and not link.exists():
            link.unlink(missing_ok=True)


def _link(link: Path, target: str) -> bool:
    for _ in range(2):  # a concurrent run may remove the empty folder in between
        try:
            link.parent.mkdir(exist_ok=True)
            os.symlink(target, link)
            return True
        except FileNotFoundError:
            continue
        except OSError:  # taken by a concurrent run of the same name, or no symlinks here
            return False
    return False


@contextlib.contextmanager
def live_log(link: Path, log_file: Path) -> Iterator[Path]:
    """Link ``link`` to ``log_file`` when the name is free, print the path to follow
    (``tail -f``) on stderr and yield it; remove the link (and an empty folder) after."""
    target = os.path.relpath(log_file, link.parent)
    if link.parent.is_dir():
        _remove_dangling(link.parent)
    ours = _link(link, target)
    shown = link if ours else log_file
    line = f"live log: {shown}"
    announce(line)  # printed with the first training line: a refused run prints no path
    try:
        yield shown
    finally:
        retract(line)
        if ours:
            with contextlib.suppress(OSError):
                if os.readlink(link) == target:
                    link.unlink()
            with contextlib.suppress(OSError):
                link.parent.rmdir()  # only when empty
