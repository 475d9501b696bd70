"""``acsl sweep``: one run per combination of non-head comma lists (e.g. seeds), each with
all head combinations in one stage-2 pass; then mean and sample std over runs."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from acsl_cli.engine import distributed as dist
from acsl_cli.errors import AcslError, ConfigError, DataError
from acsl_cli.layout import (
    DELTAS,
    RUNS_LIST,
    STD,
    SUMMARY,
    OutputLayout,
    pointer,
    sweep_run,
    sweep_summary,
)
from acsl_cli.pipeline.preflight import check_run, write_out
from acsl_cli.pipeline.reuse import finished_run, reuse_or_train
from acsl_cli.pipeline.rundir import RunDir, atomic_write_json, atomic_write_text, default_run_name
from acsl_cli.pipeline.sweep_name import taken_message
from acsl_cli.pipeline.train import RunResult
from acsl_cli.plan import RunPlan, SweepPlan, plan_sweep
from acsl_cli.reporting.compare import compare
from acsl_cli.reporting.compare_tables import json_rows, markdown
from acsl_cli.reporting.figures import draw_figures
from acsl_cli.reporting.runs import load_runs
from acsl_cli.reporting.tables import markdown_mean_std, metrics_json, write_metrics

log = logging.getLogger("acsl")


@dataclass
class SweepResult:
    folder: Path | None  # None: jobs submitted without waiting (launcher.wait=false)
    runs: list[RunResult]
    mean: dict[str, dict[str, float]]
    std: dict[str, dict[str, float]]
    jobs: list[str] = field(default_factory=list)  # ids of the jobs this command submitted

    @property
    def num_runs(self) -> int:
        return len(self.runs)


def mean_std(runs: list[dict[str, dict[str, float]]]
             ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Per row and metric: mean and sample std (ddof 1; 0 for a single run) over runs.

    A metric undefined (nan or None, e.g. AP75 under the Open Images metric) in any run is
    undefined in the summary.
    """
    mean, std = {}, {}
    for row in runs[0]:
        vals = {k: np.array([math.nan if r[row][k] is None else float(r[row][k])
                             for r in runs]) for k in runs[0][row]}
        mean[row] = {k: float(v.mean()) for k, v in vals.items()}
        std[row] = {k: float(v.std(ddof=1)) if len(v) > 1 else
                    (0.0 if not math.isnan(v[0]) else math.nan) for k, v in vals.items()}
    return mean, std


def pooled_by_variant(variants: Sequence[str], runs: Sequence[dict[str, dict[str, float]]]
                      ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], int]:
    """Mean and std over the runs of each variant (runs that differ only in the seed), and
    the most runs pooled into one row. With several variants (``detector=a,b``) each row
    is named ``label [variant]``: pooling a Faster and a Cascade R-CNN would measure neither."""
    groups: dict[str, list[dict[str, dict[str, float]]]] = {}
    for variant, metrics in zip(variants, runs, strict=True):
        groups.setdefault(variant, []).append(metrics)
    if len(groups) == 1:
        return *mean_std(list(runs)), len(runs)
    mean, std = {}, {}
    for variant, members in groups.items():
        m, s = mean_std(members)
        mean.update({f"{row} [{variant}]": v for row, v in m.items()})
        std.update({f"{row} [{variant}]": v for row, v in s.items()})
    return mean, std, max(len(g) for g in groups.values())


def run_sweep(overrides: list[str] | tuple[str, ...] = ()) -> SweepResult:
    """``acsl sweep OVERRIDES``: every run's config is checked before the first starts (a
    launcher's checks first: nothing is created for a sweep that cannot be launched)."""
    plan = plan_sweep(list(overrides))
    first = plan.runs[0].settings
    base = first.run_name or default_run_name("multi", first.seed)
    if first.launcher.name != "inprocess":
        from acsl_cli.pipeline.launchers import prepare

        backend = prepare(plan, base)
    for run in plan.runs:
        check_run(run.settings, len(run.heads))
    root = OutputLayout.at(first.output_root).runs
    names = [sweep_run(base, i) for i in range(len(plan.runs))]
    _check_free(root, base, plan, names)
    if first.launcher.name == "inprocess":  # a rerun after an interruption skips finished runs
        runs = [reuse_or_train(run, n) for run, n in zip(plan.runs, names, strict=True)]
        return _summary(plan, base, root, runs, [])
    from acsl_cli.pipeline.launchers import launch, sweep_lock
    from acsl_cli.pipeline.provenance import command_line

    with sweep_lock(plan, base):  # one command per sweep name: one summary
        _check_free(root, base, plan, names)
        launched = launch(plan, overrides, base, names, backend, command_line())
        jobs = list(launched.jobs)
        if not launched.complete:
            return SweepResult(None, [], {}, {}, jobs)
        runs = [_collected(root / n, run) for run, n in zip(plan.runs, names, strict=True)]
        return _summary(plan, base, root, runs, jobs)


def _check_free(root: Path, base: str, plan: SweepPlan, names: list[str]) -> None:
    if (root / sweep_summary(base)).exists():
        raise ConfigError(taken_message(base, root / sweep_summary(base), plan,
                                        [root / n for n in names]))


def _summary(plan: SweepPlan, base: str, root: Path, runs: list[RunResult],
             jobs: list[str]) -> SweepResult:
    """The sweep's tables and figures over its finished runs."""
    mean, std, pooled = pooled_by_variant(plan.variants, [r.metrics for r in runs])
    folder = root / sweep_summary(base)
    if dist.is_main():
        with RunDir(folder.parent, folder.name) as summary:
            summary.open()
            write_metrics(summary.path, mean)
            atomic_write_json(summary.path / STD,
                              {row: metrics_json(m) for row, m in std.items()})
            atomic_write_text(summary.path / SUMMARY,
                              markdown_mean_std(mean, std, pooled))
            atomic_write_text(summary.path / RUNS_LIST, "".join(  # relative: moves along
                f"{setting}\t{pointer(r.run_dir, folder)}\n"
                for setting, r in zip(plan.settings, runs, strict=True)))
            try:  # intervals and figures must not cost the sweep its summary
                _differences(summary.path, markdown_mean_std(mean, std, pooled))
            except AcslError as e:
                log.warning("sweep intervals and figures skipped: %s", e)
            folder = summary.commit()
        if plan.out:
            write_out(plan.out, mean[list(mean)[-1]], folder)
    return SweepResult(folder, runs, mean, std, jobs)


def _differences(folder: Path, table: str) -> None:
    """Each row's difference against the stage-1 row with its 95 % interval (as ``acsl
    report`` computes it) under summary.md's table and in deltas.json; the figures."""
    c = compare(load_runs([folder]))
    atomic_write_text(folder / SUMMARY, f"{table}\n## Differences against the stage-1 "
                      f"row (95 % intervals)\n\n{markdown(c)}")
    atomic_write_json(folder / DELTAS, json_rows(c))
    draw_figures(c, folder)


def _collected(folder: Path, plan: RunPlan) -> RunResult:
    """A run that a job finished (the launcher checked that its folder is there)."""
    result = finished_run(folder, plan)
    if result is None:
        raise DataError(f"{folder}: the run's job ended but its folder is not finished")
    return result
