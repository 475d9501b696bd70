"""``acsl sweep``: one run per combination of non-head comma lists (e.g. seeds), each with
all head combinations in one stage-2 pass; then mean and sample std over runs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from acsl_cli.engine import distributed as dist
from acsl_cli.pipeline.preflight import check_run, write_out
from acsl_cli.pipeline.rundir import RunDir, atomic_write_json, atomic_write_text, default_run_name
from acsl_cli.pipeline.train import RunResult, train
from acsl_cli.plan import plan_sweep
from acsl_cli.reporting.tables import markdown_mean_std, metrics_json, write_metrics


@dataclass
class SweepResult:
    folder: Path
    runs: list[RunResult]
    mean: dict[str, dict[str, float]]
    std: dict[str, dict[str, float]]

    @property
    def num_runs(self) -> int:
        return len(self.runs)


def mean_std(runs: list[dict[str, dict[str, float]]]
             ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Per row and metric: mean and sample std (ddof 1; 0 for a single run) over runs.

    A metric undefined (nan) in any run is undefined in the summary.
    """
    mean, std = {}, {}
    for row in runs[0]:
        vals = {k: np.array([float(r[row][k]) for r in runs]) for k in runs[0][row]}
        mean[row] = {k: float(v.mean()) for k, v in vals.items()}
        std[row] = {k: float(v.std(ddof=1)) if len(v) > 1 else
                    (0.0 if not math.isnan(v[0]) else math.nan) for k, v in vals.items()}
    return mean, std


def run_sweep(overrides: list[str] | tuple[str, ...] = ()) -> SweepResult:
    """``acsl sweep OVERRIDES``: every run's config is checked before the first starts."""
    plan = plan_sweep(list(overrides))
    for run in plan.runs:
        check_run(run.cfg, len(run.heads))
    first = plan.runs[0].cfg
    base = first.run_name or default_run_name("multi", first.seed)
    runs = [train(run, f"{base}-sweep-{i}") for i, run in enumerate(plan.runs)]
    mean, std = mean_std([r.metrics for r in runs])
    folder = runs[0].run_dir.parent / f"{base}-sweep"
    if dist.is_main():
        with RunDir(folder.parent, folder.name) as summary:
            summary.open()
            write_metrics(summary.path, mean)
            atomic_write_json(summary.path / "std.json",
                              {row: metrics_json(m) for row, m in std.items()})
            atomic_write_text(summary.path / "summary.md",
                              markdown_mean_std(mean, std, len(runs)))
            atomic_write_text(summary.path / "runs.txt", "".join(
                f"{setting}\t{r.run_dir}\n"
                for setting, r in zip(plan.settings, runs, strict=True)))
            folder = summary.commit()
        if plan.out:
            write_out(plan.out, mean[list(mean)[-1]], folder)
    return SweepResult(folder, runs, mean, std)
