"""Runs -> one comparison: mean ± sample std over seeds per row, deltas against a baseline,
as terminal, Markdown, CSV and JSON tables (percent, 2 decimals); ``report.py`` writes them.

Rows are pooled only across runs that differ in nothing but the seed (the rule of
``settings.pooling``, shared with sweeps): outcome settings that differ between runs (e.g.
``schedule.stage2.lr``) name a variant, shown after the label. A run without config.yaml
has unknown settings and is pooled with no other run.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acsl_cli.errors import ConfigError
from acsl_cli.evaluation import METRIC_KEYS
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
    std: dict[str, float | None]
    delta: dict[str, float | None] = field(default_factory=dict)
    per_category: dict[int, float] = field(default_factory=dict)  # mean AP over runs


@dataclass
class Comparison:
    rows: list[Summary]
    baseline: str  # the name of the baseline row ("" when it matched per variant)
    runs: list[Run]

    def row(self, name: str) -> Summary:
        return next(r for r in self.rows if r.name == name)


def compare(runs: Sequence[Run], baseline: str | None = None) -> Comparison:
    """Pool rows over seeds and subtract the baseline (default: the stage-1 row)."""
    variants = _variants(runs)
    pooled: dict[tuple, list[tuple[Run, str]]] = {}
    for run in runs:
        for label, model in run.models.items():
            cfg = sorted((k, v) for k, v in model.loss_cfg.items() if k != "seed")
            key = (label, variants[run.path], repr(cfg))
            pooled.setdefault(key, []).append((run, label))
    rows = [_summary(members, variant) for (_, variant, _), members in pooled.items()]
    _unique_names(rows)
    name = baseline or STAGE1_ROW
    _apply_deltas(rows, name)
    return Comparison(rows, name, list(runs))


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
    for k in METRIC_KEYS:
        vals = [[run.models[label].metrics[k] for run, label in same]
                for same in by_seed.values()]
        if any(v is None for same in vals for v in same):  # undefined in any run
            mean[k] = std[k] = None
            continue
        per_seed = [statistics.fmean(same) for same in vals]  # type: ignore[arg-type]
        mean[k] = statistics.fmean(per_seed)
        std[k] = statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0
    name = f"{first.label} [{variant}]" if variant else first.label
    seeds = [same[0][0].seed for same in by_seed.values()]
    return Summary(name, first.label, variant, first.loss, first.xi, first.loss_cfg,
                   [run.name for run, _ in members], seeds, mean, std,
                   per_category=_per_category(members))


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
    """Same label and variant but another loss config (rare): number them."""
    seen: dict[str, int] = {}
    for r in rows:
        seen[r.name] = seen.get(r.name, 0) + 1
        if seen[r.name] > 1:
            r.name = f"{r.name} #{seen[r.name]}"


def _apply_deltas(rows: list[Summary], baseline: str) -> None:
    """A baseline given by its full name serves every row; a bare label (the default)
    serves the rows of its own variant."""
    exact = [r for r in rows if r.name == baseline]
    per_variant = {r.variant: r for r in rows if r.label == baseline}
    if not exact and not per_variant:
        names = ", ".join(r.name for r in rows)
        raise ConfigError(f"baseline={baseline}: no such row (rows: {names})")
    for r in rows:
        base = exact[0] if exact else per_variant.get(r.variant)
        r.delta = {k: None if base is None or r.mean[k] is None or base.mean[k] is None
                   else r.mean[k] - base.mean[k] for k in METRIC_KEYS}


def pct(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{100 * v:.2f}"


def signed(v: float | None) -> str:
    """A delta with its sign; one that rounds to zero is +0.00, never -0.00."""
    return "-" if v is None or math.isnan(v) else f"{100 * v + 0.0:+.2f}".replace(
        "-0.00", "+0.00")


def mean_std(r: Summary, k: str) -> str:
    return "-" if r.mean[k] is None else f"{pct(r.mean[k])} ± {pct(r.std[k])}"


def caption(c: Comparison) -> str:
    seeds = sorted({s for r in c.runs if (s := r.seed) is not None})
    return (f"mean ± sample std over seeds ({len(c.runs)} runs, seeds "
            f"{', '.join(map(str, seeds)) or '?'}); Δ = mean - mean of '{c.baseline}', "
            "percentage points; - = undefined")


def terminal_table(c: Comparison, title: str = "comparison (%)"):
    """The headline metrics with their deltas, for the console."""
    from rich.table import Table

    t = Table(title=title, caption=caption(c))
    t.add_column("model")
    t.add_column("seeds", justify="right")
    for k in HEADLINE:
        t.add_column(k, justify="right", style="bold")
    for k in HEADLINE:
        t.add_column(f"Δ{k}", justify="right")
    for r in c.rows:
        t.add_row(r.name, str(len(r.seeds)), *(mean_std(r, k) for k in HEADLINE),
                  *(signed(r.delta[k]) for k in HEADLINE))
    return t


def markdown(c: Comparison) -> str:
    keys = [*METRIC_KEYS, *(f"Δ{k}" for k in HEADLINE)]
    lines = ["| model | seeds | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for r in c.rows:
        cells = [mean_std(r, k) for k in METRIC_KEYS] + [signed(r.delta[k]) for k in HEADLINE]
        lines.append(f"| {r.name} | {len(r.seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + caption(c) + "\n"


def _num(v: float | None) -> str:
    return "" if v is None or math.isnan(v) else f"{100 * v:.2f}".replace("-0.00", "0.00")


def csv_text(c: Comparison) -> str:
    """One line per row; ``<metric>_mean/_std/_delta`` in percent, empty where undefined."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "label", "variant", "loss", "xi", "runs", "seeds",
                *(f"{k}_{s}" for k in METRIC_KEYS for s in ("mean", "std", "delta"))])
    for r in c.rows:
        w.writerow([r.name, r.label, r.variant, r.loss, "" if r.xi is None else r.xi,
                    " ".join(r.runs), " ".join(str(s) for s in r.seeds),
                    *(_num(d[k]) for k in METRIC_KEYS for d in (r.mean, r.std, r.delta))])
    return buf.getvalue()


def json_rows(c: Comparison) -> dict[str, Any]:
    """The same numbers as JSON: percent rounded to 2 decimals, null where undefined."""
    def p(d: Mapping[str, float | None]) -> dict[str, float | None]:
        return {k: None if d[k] is None else round(100 * d[k], 2) for k in METRIC_KEYS}

    return {"baseline": c.baseline, "rows": [
        {"model": r.name, "label": r.label, "variant": r.variant, "loss": r.loss, "xi": r.xi,
         "runs": r.runs, "seeds": r.seeds, "mean": p(r.mean), "std": p(r.std),
         "delta": p(r.delta)} for r in c.rows]}
