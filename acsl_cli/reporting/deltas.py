"""The interval of each row's difference against its baseline: paired by seed when both
rows share two or more seeds, else the image bootstrap of the one shared run pair from
their saved matches, else none (said so in the tables).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

from acsl_cli.evaluation import METRIC_KEYS
from acsl_cli.evaluation.lvis_bootstrap import ImageMatches, paired_bootstrap
from acsl_cli.evaluation.match_file import load_matches
from acsl_cli.layout import is_stage1_row, matches_file
from acsl_cli.reporting.intervals import Interval, seed_interval
from acsl_cli.reporting.runs import Run

#: per seed key: the row's metrics (mean over runs of that seed)
PerSeed = Mapping[Hashable, Mapping[str, float | None]]
#: per seed key: where the row's matches are (one file per run of that seed)
Sources = Mapping[Hashable, Sequence[Path | None]]


def row_matches(run: Run, label: str) -> Path | None:
    """The matches file of a row of a run, if the run saved one."""
    if is_stage1_row(label):
        path = matches_file(run.path, None)
    else:
        heads = run.config.get("heads") or {}
        ids = [i for i, h in heads.items() if isinstance(h, Mapping) and h.get("label") == label]
        if len(ids) != 1:
            return None
        path = matches_file(run.path, str(ids[0]))
    return path if path.is_file() else None


class Bootstrapper:
    """Image bootstraps of row pairs, each file read once."""

    def __init__(self, resamples: int, seed: int):
        self.resamples, self.seed = resamples, seed
        self._loaded: dict[Path, ImageMatches] = {}

    def _load(self, path: Path) -> ImageMatches:
        if path not in self._loaded:
            self._loaded[path] = load_matches(path)
        return self._loaded[path]

    def __call__(self, model: Path, baseline: Path) -> dict[str, Interval | None]:
        a, b = self._load(model), self._load(baseline)
        if self.resamples < 1 or a.image_ids.shape != b.image_ids.shape or \
                (a.image_ids != b.image_ids).any():
            return {}  # not evaluated on the same images: nothing to pair
        out = paired_bootstrap(a, b, self.resamples, self.seed)
        return {k: None if d is None else Interval(d.delta, d.low, d.high, "bootstrap",
                                                   d.resamples) for k, d in out.items()}


def intervals(row: tuple[PerSeed, Sources], base: tuple[PerSeed, Sources],
              boot: Bootstrapper) -> dict[str, Interval | None]:
    """Per metric, the interval of row - base (see the module docstring)."""
    (values, files), (base_values, base_files) = row, base
    shared = [key for key in values if key in base_values]
    if len(shared) >= 2:
        out: dict[str, Interval | None] = {}
        for k in METRIC_KEYS:
            pairs = [(values[s][k], base_values[s][k]) for s in shared]
            out[k] = None if any(a is None or b is None for a, b in pairs) else \
                seed_interval([a - b for a, b in pairs])  # type: ignore[operator]
        return out
    if len(shared) == 1:
        mine, theirs = files[shared[0]][0], base_files[shared[0]][0]
        if mine is not None and theirs is not None and mine != theirs:
            found = boot(mine, theirs)
            return {k: found.get(k) for k in METRIC_KEYS}
    return dict.fromkeys(METRIC_KEYS)
