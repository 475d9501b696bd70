"""The one owner of what lives where under ``output_root``, and of the file names inside
a run, a head, a stage-1 cache entry and a sweep's summary (each written once, here).

    runs/<name>/                     a finished run: config.yaml, metrics.json (+ .csv, .md;
                                     rows: STAGE1_ROW first, then the heads),
                                     per_category_ap.csv, stage1 (a pointer),
                                     stage1_matches.npz, train.log, events.jsonl
    runs/<name>/heads/<id>/          a head: checkpoint.pt, config.yaml, history.json,
                                     results.json or predictions.csv, results_topk.json,
                                     matches.npz
    runs/<base>-sweep-<i>/           a sweep's i-th run (``sweep_run``)
    runs/<base>-sweep/               a sweep's summary (``sweep_summary``): metrics.json,
                                     std.json, summary.md, runs.txt, deltas.json, figures
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

#: the stage-1 row of every run's metrics (the softmax detector before stage 2)
STAGE1_ROW = "stage1 (softmax CE)"
STAGE1_PREFIX = "stage1 ("


def stage1_row(loss: str) -> str:
    """The stage-1 row's label when stage 1 trained with ``loss`` (``schedule.stage1.loss``):
    ``STAGE1_ROW`` for softmax CE, the paper's stage 1; else ``stage1 (<loss>)``."""
    return STAGE1_ROW if loss == "softmax_ce" else f"{STAGE1_PREFIX}{loss})"


def is_stage1_row(label: str) -> bool:
    """Whether a metrics row is a run's stage-1 detector (whatever loss trained it)."""
    return label.startswith(STAGE1_PREFIX) and label.endswith(")")

RUNS = "runs"  # under output_root: the run and sweep folders
# In a run, a head and a stage-1 cache entry
CONFIG = "config.yaml"  # the resolved config (a run's adds heads and provenance)
METRICS = "metrics.json"  # {row: {metric: value}}; its presence marks a finished run
CHECKPOINT = "checkpoint.pt"  # a whole detector (stage 1), or a lean head
HISTORY = "history.json"  # per-epoch losses and lr
PER_CATEGORY = "per_category_ap.csv"
STAGE1_POINTER = "stage1"  # a run's pointer to its stage-1 cache entry
HEADS = "heads"  # a run's folder of heads
RESULTS = "results.json"  # a head's val detections (LVIS results format)
PREDICTIONS = "predictions.csv"  # ... or Open Images predictions
RESULTS_TOPK = "results_topk.json"  # the fixed / pooled protocols' detections
MATCHES = "matches.npz"  # a head's LVIS matches (heads/<id>/), or a stage-1 cache entry's
STAGE1_MATCHES = "stage1_matches.npz"  # the stage-1 row's, in a run folder
TRAIN_LOG = "train.log"
EVENTS = "events.jsonl"
# In a sweep's summary
STD = "std.json"
SUMMARY = "summary.md"
RUNS_LIST = "runs.txt"  # one line per run: its settings, a tab, a pointer to its folder
DELTAS = "deltas.json"


def sweep_summary(base: str) -> str:
    """The folder name of the summary of the sweep named ``base``."""
    return f"{base}-sweep"


def sweep_run(base: str, index: int) -> str:
    """The folder name of the ``index``-th run of the sweep named ``base``."""
    return f"{sweep_summary(base)}-{index}"


def head_dir(run_dir: Path, head_id: str) -> Path:
    return Path(run_dir) / HEADS / head_id


def matches_file(run_dir: Path, head_id: str | None) -> Path:
    """Where a run keeps a row's matches: a head's, or the stage-1 row's (``None``)."""
    run_dir = Path(run_dir)
    return run_dir / STAGE1_MATCHES if head_id is None else head_dir(run_dir, head_id) / MATCHES


def finished(run_dir: Path) -> bool:
    """Whether a run folder is a finished run (run folders appear whole, metrics inside)."""
    return (Path(run_dir) / METRICS).is_file()


@dataclass(frozen=True)
class OutputLayout:
    root: Path

    @classmethod
    def at(cls, root: str | Path) -> OutputLayout:
        return cls(Path(root))

    @property
    def runs(self) -> Path:
        return self.root / RUNS

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
