"""Runs -> one comparison: mean ± sample std over seeds per row, deltas against a baseline
with their 95 % intervals (``deltas.py``); ``compare_tables.py`` renders it, ``report.py``
writes it.

Rows are pooled only across runs that differ in nothing but the seed (the rule of
``settings.pooling``, shared with sweeps): outcome settings that differ between runs (e.g.
``schedule.stage2.lr``) name a variant, shown after the label. A run without config.yaml
has unknown settings and is pooled with no other run.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acsl_cli.errors import ConfigError
from acsl_cli.evaluation import METRIC_KEYS
from acsl_cli.layout import is_stage1_row
from acsl_cli.reporting.deltas import Bootstrapper, intervals, row_matches
from acsl_cli.reporting.intervals import Interval
from acsl_cli.reporting.runs import STAGE1_ROW, Run
from acsl_cli.settings.pooling import flatten, variant_names  # noqa: F401 - flatten: re-exported

HEADLINE = ("AP", "APr", "APc", "APf")


@dataclass
class Summary:
    """One row of the comparison: a row label pooled over the runs of one variant."""

    name: str  # shown in tables and legends: label, plus [variant] when runs differ
    label: str
    variant: str
    loss: str
    xi: float | None
    loss_cfg: Mapping[str, Any]
    runs: list[str]
    seeds: list[int | None]  # distinct seeds, what the std is taken over
    mean: dict[str, float | None]
    std: dict[str, float | None]  # None with one seed: no spread was measured
    delta: dict[str, float | None] = field(default_factory=dict)
    per_category: dict[int, float] = field(default_factory=dict)  # mean AP over runs
    #: per seed (or run, without a seed): the metrics, and the matches files of its runs
    per_seed: dict[Any, dict[str, float | None]] = field(default_factory=dict)
    sources: dict[Any, list[Path | None]] = field(default_factory=dict)
    baseline_row: str | None = None  # the row the deltas are taken against
    interval: dict[str, Interval | None] = field(default_factory=dict)  # of each delta
    protocol: str = "standard"  # the LVIS protocol its metrics were scored under


@dataclass
class Comparison:
    rows: list[Summary]
    baseline: str  # the name of the baseline row ("" when it matched per variant)
    runs: list[Run]
    #: the runs' dataset and metric (``run_groups``), when a report holds several
    title: str = ""
    suffix: str = ""  # added to the file names of its figures
    note: str = ""  # one line: why the rows have no differences (no baseline row here)

    def row(self, name: str) -> Summary:
        return next(r for r in self.rows if r.name == name)


def compare(runs: Sequence[Run], baseline: str | None = None, resamples: int = 1000,
            bootstrap_seed: int = 0, missing_ok: bool = False) -> Comparison:
    """Pool rows over seeds and subtract the baseline (default: the stage-1 row); each
    difference gets its 95 % interval (``resamples`` image resamples where a row pair has
    one seed; 0: no bootstrap). Without a baseline row: an error, or with ``missing_ok``
    no differences and a note that says so."""
    variants = _variants(runs)
    pooled: dict[tuple, list[tuple[Run, str]]] = {}
    for run in runs:
        for label, model in run.models.items():
            cfg = sorted((k, v) for k, v in model.loss_cfg.items() if k != "seed")
            variant = " ".join(v for v in (variants[run.path], model.protocol)
                               if v and v != "standard")
            key = (label, variant, repr(cfg))
            pooled.setdefault(key, []).append((run, label))
    rows = [_summary(members, variant) for (_, variant, _), members in pooled.items()]
    _unique_names(rows)
    name = baseline or STAGE1_ROW
    note = ""
    if not _apply_deltas(rows, name, stage1=baseline is None):
        names = ", ".join(r.name for r in rows)
        if not missing_ok:
            raise ConfigError(f"baseline={name}: no such row (rows: {names})")
        note = (f"baseline={name}: no such row among these runs (rows: {names}); no "
                "differences are shown for them")
        for r in rows:
            r.baseline_row, r.delta = None, dict.fromkeys(METRIC_KEYS)
    boot = Bootstrapper(resamples, bootstrap_seed)
    by_name = {r.name: r for r in rows}
    for r in rows:
        base = by_name.get(r.baseline_row or "")
        r.interval = dict.fromkeys(METRIC_KEYS) if base is None or base is r else \
            intervals((r.per_seed, r.sources), (base.per_seed, base.sources), boot)
    return Comparison(rows, name, list(runs), note=note)


def _variants(runs: Sequence[Run]) -> dict[Path, str]:
    """Per run, its variant: the outcome settings whose values differ between the runs
    (``settings.pooling``); runs get one variant exactly when they may be pooled."""
    known = [r for r in runs if r.config]
    names = dict(zip((r.path for r in known), variant_names([r.config for r in known]),
                     strict=True))
    for r in runs:
        if not r.config:  # nothing says what it measured: a row of its own
            names[r.path] = f"{r.name}: no config.yaml"
    return names


def _summary(members: list[tuple[Run, str]], variant: str) -> Summary:
    """Mean and sample std over seeds; runs that repeat a seed are averaged first, so a
    seed given twice (a sweep and a lone run of it) does not count twice."""
    first = members[0][0].models[members[0][1]]
    by_seed: dict[Any, list[tuple[Run, str]]] = {}
    for run, label in members:
        by_seed.setdefault(run.path if run.seed is None else run.seed, []).append((run, label))
    mean, std = {}, {}
    per_seed_all: dict[Any, dict[str, float | None]] = {key: {} for key in by_seed}
    for k in METRIC_KEYS:
        vals = [[run.models[label].metrics[k] for run, label in same]
                for same in by_seed.values()]
        for key, same in zip(by_seed, vals, strict=True):
            per_seed_all[key][k] = None if any(v is None for v in same) else \
                statistics.fmean(same)  # type: ignore[arg-type]
        if any(v is None for same in vals for v in same):  # undefined in any run
            mean[k] = std[k] = None
            continue
        per_seed = [statistics.fmean(same) for same in vals]  # type: ignore[arg-type]
        mean[k] = statistics.fmean(per_seed)
        std[k] = statistics.stdev(per_seed) if len(per_seed) > 1 else None
    name = f"{first.label} [{variant}]" if variant else first.label
    seeds = [same[0][0].seed for same in by_seed.values()]
    return Summary(name, first.label, variant, first.loss, first.xi, first.loss_cfg,
                   [run.name for run, _ in members], seeds, mean, std,
                   per_category=_per_category(members), per_seed=per_seed_all,
                   sources={key: [row_matches(run, label) for run, label in same]
                            for key, same in by_seed.items()},
                   protocol=first.protocol)


def _per_category(members: list[tuple[Run, str]]) -> dict[int, float]:
    values: dict[int, list[float]] = {}
    for run, label in members:
        for cat in run.categories:
            ap = cat.ap.get(label, math.nan)
            values.setdefault(cat.category_id, [])
            if not math.isnan(ap):
                values[cat.category_id].append(ap)
    return {cid: statistics.fmean(v) if v else math.nan for cid, v in values.items()}


def _unique_names(rows: list[Summary]) -> None:
    """Rows that would share a name (same label and variant: runs of ``loss=bce`` with
    another ``loss.*`` value) get the loss settings in which they differ after it
    (``bce [loss.alpha=0.5]``), else their run folders; a name is never given twice."""
    by_name: dict[str, list[Summary]] = {}
    for r in rows:
        by_name.setdefault(r.name, []).append(r)
    for same in (v for v in by_name.values() if len(v) > 1):
        keys = sorted({k for r in same for k in r.loss_cfg if k != "seed"})
        differ = [k for k in keys if len({_text(r.loss_cfg.get(k, "-")) for r in same}) > 1]
        for r in same:
            extra = " ".join(f"loss.{k}={_text(r.loss_cfg.get(k, '-'))}" for k in differ) \
                or "runs " + ",".join(r.runs)
            r.name = f"{r.label} [{' '.join(x for x in (r.variant, extra) if x)}]"
    seen: dict[str, int] = {}
    for r in rows:  # what is still equal (the same runs twice) is numbered
        seen[r.name] = seen.get(r.name, 0) + 1
        if seen[r.name] > 1:
            r.name = f"{r.name} #{seen[r.name]}"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _apply_deltas(rows: list[Summary], baseline: str, stage1: bool = False) -> bool:
    """A baseline given by its full name serves every row; a bare label (the default)
    serves the rows of its own variant, and a row whose variant lacks it the one baseline
    row scored under its protocol (``loss=eqlv2 schedule.stage1.loss=eqlv2`` runs against
    ``baseline=softmax_ce`` of decoupled runs: each protocol against its own); ``stage1``
    (the default baseline): each variant's stage-1 row, whatever loss trained it
    (``schedule.stage1.loss``). False when no row is the baseline."""
    exact = [r for r in rows if r.name == baseline]
    labelled = [r for r in rows if (is_stage1_row(r.label) if stage1 else
                                    r.label == baseline)]
    per_variant = {r.variant: r for r in labelled}
    if len(per_variant) < len(labelled) and not exact:
        names = ", ".join(r.name for r in labelled)
        raise ConfigError(f"baseline={baseline}: names several rows ({names}); give one "
                          "of them in full")
    # a label in several variants (e.g. protocols: "acsl", "acsl [fixed]") is per variant
    exact = exact if len(per_variant) < 2 else []
    if not exact and not per_variant:
        return False
    by_protocol: dict[str, list[Summary]] = {}
    for r in labelled:
        by_protocol.setdefault(r.protocol, []).append(r)
    for r in rows:
        same = by_protocol.get(r.protocol, [])
        base = exact[0] if exact else per_variant.get(r.variant) or (
            same[0] if len(same) == 1 else None)
        r.baseline_row = None if base is None else base.name
        r.delta = {k: None if base is None or r.mean[k] is None or base.mean[k] is None
                   else r.mean[k] - base.mean[k] for k in METRIC_KEYS}
    return True
