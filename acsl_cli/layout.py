"""The one owner of what lives where under ``output_root``.

    runs/<name>/                     a finished run (heads/<id>/ inside; matches files:
                                     heads/<id>/matches.npz, stage1_matches.npz)
    cache/data/                      generated benchmarks, parsed annotation caches
    cache/stage1/<key>/              a trained stage-1 detector (+ <key>.resume.pt)
    cache/stage2/<key>.resume.pt     an interrupted stage-2 pass
    launcher/<sweep>/                a sweep's jobs (launcher=local|slurm): ids, specs, logs
    live/<name>.log                  while a run is going: a link to its train.log

Files that point to other files (a head to its stage 1) store the path relative to the
pointing file's folder, so a moved or copied ``outputs/`` keeps working.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MATCHES = "matches.npz"  # a head's LVIS matches (heads/<id>/), or a stage-1 cache entry's
STAGE1_MATCHES = "stage1_matches.npz"  # the stage-1 row's, in a run folder


def matches_file(run_dir: Path, head_id: str | None) -> Path:
    """Where a run keeps a row's matches: a head's, or the stage-1 row's (``None``)."""
    run_dir = Path(run_dir)
    return run_dir / STAGE1_MATCHES if head_id is None else run_dir / "heads" / head_id / MATCHES


@dataclass(frozen=True)
class OutputLayout:
    root: Path

    @classmethod
    def at(cls, root: str | Path) -> OutputLayout:
        return cls(Path(root))

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def run(self, name: str) -> Path:
        return self.runs / name

    @property
    def data_cache(self) -> Path:
        return self.root / "cache" / "data"

    def stage1(self, key: str) -> Path:
        return self.root / "cache" / "stage1" / key

    def stage1_resume(self, key: str) -> Path:
        return self.root / "cache" / "stage1" / f"{key}.resume.pt"

    def live_log(self, name: str) -> Path:
        return self.root / "live" / f"{name}.log"

    def launcher(self, sweep: str) -> Path:
        return self.root / "launcher" / sweep

    def stage2_resume(self, key: str) -> Path:
        return self.root / "cache" / "stage2" / f"{key}.resume.pt"


def pointer(target: Path, origin_folder: Path) -> str:
    """``target`` as a path relative to ``origin_folder`` (POSIX separators)."""
    rel = os.path.relpath(Path(target).resolve(), Path(origin_folder).resolve())
    return Path(rel).as_posix()


def follow(ptr: str, origin_folder: Path) -> Path:
    """The file a pointer names: relative to ``origin_folder``, or absolute (older runs)."""
    path = Path(ptr)
    return path if path.is_absolute() else Path(origin_folder) / path
