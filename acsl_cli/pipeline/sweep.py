"""``acsl sweep``: one run per combination of non-head comma lists (e.g. seeds), each with
all head combinations in one stage-2 pass; then mean and sample std over runs."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from acsl_cli.engine import distributed as dist
from acsl_cli.errors import AcslError, ConfigError, DataError
from acsl_cli.evaluation.lvis_eval import METRIC_KEYS
from acsl_cli.layout import OutputLayout, pointer
from acsl_cli.pipeline.preflight import check_run, write_out
from acsl_cli.pipeline.rundir import RunDir, atomic_write_json, atomic_write_text, default_run_name
from acsl_cli.pipeline.sweep_name import taken_message
from acsl_cli.pipeline.train import RunResult, train
from acsl_cli.plan import RunPlan, SweepPlan, plan_sweep, saved_run_config
from acsl_cli.reporting.compare import compare
from acsl_cli.reporting.compare_tables import json_rows, markdown
from acsl_cli.reporting.figures import draw_figures
from acsl_cli.reporting.runs import load_runs
from acsl_cli.reporting.tables import markdown_mean_std, metrics_json, write_metrics
from acsl_cli.settings.pooling import differences

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


def _first_difference(saved: Mapping[str, Any], mine: Mapping[str, Any]) -> str | None:
    """The first outcome setting (seed included) in which the saved run differs from this
    one, by the rule that pools runs (``settings.pooling``)."""
    diff = differences(saved, mine)
    return None if not diff else f"{diff[0][0]}: {diff[0][1]!r} there, {diff[0][2]!r} here"


def _missing_protocols(saved: Mapping[str, Any], plan: RunPlan) -> str | None:
    """``test.protocol`` is no pooling variant (each row's label names its protocol), so
    the reuse check asks it apart: a run that scored fewer protocols lacks their rows."""
    test = saved.get("test")
    have = test.get("protocol", "standard") if isinstance(test, Mapping) else "standard"
    have_set = {have} if isinstance(have, str) else set(have)
    missing = [p for p in plan.settings.test.protocols if p not in have_set]
    return f"test.protocol: {have!r} there, {missing[0]!r} asked here" if missing else None


def finished_run(folder: Path, plan: RunPlan) -> RunResult | None:
    """The saved result of a sweep's run, if ``folder`` holds one made from this plan."""
    if not (folder / "metrics.json").is_file():
        return None
    try:
        saved = saved_run_config(folder / "config.yaml")
        rows = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{folder}: a finished run that cannot be read "
                        f"({e.__class__.__name__}); move it away to rerun it") from None
    want = {h.id: h.loss.as_dict() for h in plan.heads}
    heads = saved.get("heads") or {}
    have = {k: v.get("loss") for k, v in heads.items()} if isinstance(heads, dict) else None
    differs = ("heads" if have != want else _missing_protocols(saved, plan)
               or _first_difference(saved, plan.settings.source))
    if differs:
        raise ConfigError(f"{folder} exists but was made with other settings ({differs}); "
                          "use another run_name")
    log.info("sweep: %s is finished, reusing it", folder)
    metrics = {row: {k: math.nan if m.get(k) is None else float(m[k]) for k in METRIC_KEYS}
               for row, m in rows.items()}  # rows also say which val images were scored
    return RunResult(folder, metrics, stage1_reused=True)


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
    names = [f"{base}-sweep-{i}" for i in range(len(plan.runs))]
    _check_free(root, base, plan, names)
    if first.launcher.name == "inprocess":  # a rerun after an interruption skips finished runs
        runs = [finished_run(root / n, run) or train(run, n)
                for run, n in zip(plan.runs, names, strict=True)]
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
    if (root / f"{base}-sweep").exists():
        raise ConfigError(taken_message(base, root / f"{base}-sweep", plan,
                                        [root / n for n in names]))


def _summary(plan: SweepPlan, base: str, root: Path, runs: list[RunResult],
             jobs: list[str]) -> SweepResult:
    """The sweep's tables and figures over its finished runs."""
    mean, std, pooled = pooled_by_variant(plan.variants, [r.metrics for r in runs])
    folder = root / f"{base}-sweep"
    if dist.is_main():
        with RunDir(folder.parent, folder.name) as summary:
            summary.open()
            write_metrics(summary.path, mean)
            atomic_write_json(summary.path / "std.json",
                              {row: metrics_json(m) for row, m in std.items()})
            atomic_write_text(summary.path / "summary.md",
                              markdown_mean_std(mean, std, pooled))
            atomic_write_text(summary.path / "runs.txt", "".join(  # relative: moves along
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
    atomic_write_text(folder / "summary.md", f"{table}\n## Differences against the stage-1 "
                      f"row (95 % intervals)\n\n{markdown(c)}")
    atomic_write_json(folder / "deltas.json", json_rows(c))
    draw_figures(c, folder)


def _collected(folder: Path, plan: RunPlan) -> RunResult:
    """A run that a job finished (the launcher checked that its folder is there)."""
    result = finished_run(folder, plan)
    if result is None:
        raise DataError(f"{folder}: the run's job ended but its folder is not finished")
    return result
