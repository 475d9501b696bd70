"""A comparison as terminal, Markdown, CSV and JSON tables (percent, 2 decimals): each row's
mean ± sample std over seeds ("n=1" where one seed gives no spread), and each difference
against the baseline with its 95 % interval, marked † where the interval holds 0."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from acsl_cli.evaluation import METRIC_KEYS
from acsl_cli.reporting.compare import HEADLINE, Comparison, Summary
from acsl_cli.reporting.intervals import Interval

HOLDS_ZERO = "†"


def pct(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{100 * v:.2f}"


def signed(v: float | None) -> str:
    """A delta with its sign; one that rounds to zero is +0.00, never -0.00."""
    return "-" if v is None or math.isnan(v) else f"{100 * v + 0.0:+.2f}".replace(
        "-0.00", "+0.00")


def mean_std(r: Summary, k: str) -> str:
    """``mean ± std``; with one seed no std was measured: ``mean (n=1)``."""
    if r.mean[k] is None:
        return "-"
    return f"{pct(r.mean[k])} (n=1)" if len(r.seeds) < 2 else \
        f"{pct(r.mean[k])} ± {pct(r.std[k])}"


def delta_cell(r: Summary, k: str) -> str:
    """``Δ [low, high]`` with † where the interval holds 0; the bare Δ where none exists."""
    d, iv = r.delta.get(k), r.interval.get(k)
    if d is None or iv is None:
        return signed(d)
    mark = HOLDS_ZERO if iv.holds_zero else ""
    return f"{signed(d)} [{signed(iv.low)}, {signed(iv.high)}]{mark}"


def interval_kind(r: Summary) -> str:
    """What the row's intervals are: ``seeds (n=3)``, ``images (1000)`` or ``none``."""
    found = [iv for iv in r.interval.values() if iv is not None]
    if r.name == r.baseline_row:
        return "baseline"
    if not found:
        return "none"
    iv = found[0]
    return f"seeds (n={iv.n})" if iv.kind == "seeds" else f"images ({iv.n})"


def caption(c: Comparison) -> str:
    seeds = sorted({s for r in c.runs if (s := r.seed) is not None})
    single = [len(r.seeds) < 2 for r in c.rows]
    spread = "one seed per row (n=1): no std" if all(single) else \
        "mean ± sample std over seeds" + ("; n=1: one seed, no std" if any(single) else "")
    return (f"{spread} ({len(c.runs)} runs, seeds {', '.join(map(str, seeds)) or '?'}); "
            f"Δ = mean - mean of {_baselines(c)}, percentage points, with its 95 % interval "
            "[low, high]: t interval over seeds paired with the baseline's, or with one seed "
            f"a paired bootstrap over val images; {HOLDS_ZERO} = the interval holds 0; "
            "- = undefined")


def _baselines(c: Comparison) -> str:
    """The rows the deltas are taken against: one row, or per variant (the default: each
    variant's stage-1 row, whatever loss trained it)."""
    rows = {r.name: r for r in c.rows}
    bases = list(dict.fromkeys(r.baseline_row for r in c.rows if r.baseline_row in rows))
    if len(bases) < 2:
        return f"'{bases[0] if bases else c.baseline}'"
    labels = dict.fromkeys(rows[b].label for b in bases)
    crossed = any(rows[r.baseline_row].variant != r.variant for r in c.rows
                  if r.baseline_row in rows)
    return " / ".join(f"'{label}'" for label in labels) + " of each row's variant" + (
        " (where it has none, of its protocol)" if crossed else "")


def terminal_table(c: Comparison, title: str = "comparison (%)"):
    """The headline metrics with their deltas, for the console."""
    from rich.markup import escape
    from rich.table import Table

    if c.title:
        title = f"{title}: {c.title}"
    t = Table(title=escape(title), caption=escape(caption(c)))
    t.add_column("model")
    t.add_column("seeds", justify="right")
    for k in HEADLINE:
        t.add_column(k, justify="right", style="bold")
    for k in HEADLINE:
        t.add_column(f"Δ{k} [95 %]", justify="right")
    t.add_column("interval")
    for r in c.rows:
        t.add_row(escape(r.name), str(len(r.seeds)), *(mean_std(r, k) for k in HEADLINE),
                  *(escape(delta_cell(r, k)) for k in HEADLINE), interval_kind(r))
    return t


def markdown(c: Comparison) -> str:
    keys = [*METRIC_KEYS, *(f"Δ{k} [95 %]" for k in HEADLINE), "interval"]
    lines = ["| model | seeds | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for r in c.rows:
        cells = [mean_std(r, k) for k in METRIC_KEYS] + [delta_cell(r, k) for k in HEADLINE]
        lines.append(f"| {r.name} | {len(r.seeds)} | " + " | ".join(cells)
                     + f" | {interval_kind(r)} |")
    note = f"\n{c.note}\n" if c.note else ""
    return "\n".join(lines) + "\n\n" + caption(c) + "\n" + note


def _num(v: float | None) -> str:
    return "" if v is None or math.isnan(v) else f"{100 * v:.2f}".replace("-0.00", "0.00")


def _interval_columns(iv: Interval | None) -> list[str]:
    if iv is None:
        return ["", "", "", ""]
    return [_num(iv.low), _num(iv.high), iv.kind, "yes" if iv.holds_zero else "no"]


def csv_text(comparisons: Comparison | Sequence[Comparison]) -> str:
    """One line per row; ``<metric>_mean/_std/_delta`` in percent, empty where undefined,
    and the delta's interval: ``_delta_low/_delta_high``, ``_delta_kind`` (seeds or
    bootstrap) and ``_delta_holds_0`` (yes / no). ``dataset``: the dataset and metric of
    the row's comparison (a report of several datasets has one per dataset)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    parts = ("mean", "std", "delta", "delta_low", "delta_high", "delta_kind", "delta_holds_0")
    w.writerow(["model", "label", "variant", "loss", "xi", "runs", "seeds",
                *(f"{k}_{s}" for k in METRIC_KEYS for s in parts), "dataset"])
    for c in [comparisons] if isinstance(comparisons, Comparison) else comparisons:
        for r in c.rows:
            cells = []
            for k in METRIC_KEYS:
                cells += [_num(r.mean[k]), _num(r.std[k]), _num(r.delta[k]),
                          *_interval_columns(r.interval.get(k))]
            w.writerow([r.name, r.label, r.variant, r.loss, "" if r.xi is None else r.xi,
                        " ".join(r.runs), " ".join(str(s) for s in r.seeds), *cells,
                        c.title])
    return buf.getvalue()


def _entry(iv: Interval | None) -> dict[str, Any] | None:
    if iv is None:
        return None
    return {"delta": round(100 * iv.delta, 2), "low": round(100 * iv.low, 2),
            "high": round(100 * iv.high, 2), "kind": iv.kind, "n": iv.n,
            "holds_zero": iv.holds_zero}


def json_groups(comparisons: Sequence[Comparison]) -> dict[str, Any]:
    """report.json: one comparison as ``json_rows``; several (one per dataset and metric)
    as ``{"groups": [json_rows, ...]}``. A reader takes ``doc.get("groups", [doc])``."""
    if len(comparisons) == 1:
        return json_rows(comparisons[0])
    return {"groups": [json_rows(c) for c in comparisons]}


def json_rows(c: Comparison) -> dict[str, Any]:
    """The same numbers as JSON: percent rounded to 2 decimals, null where undefined;
    ``intervals`` holds per metric ``{delta, low, high, kind, n, holds_zero}`` or null
    (no interval: the baseline itself, or one seed without saved matches); ``dataset``:
    its runs' dataset and metric; ``note``: why no row has a difference, or null."""
    def p(d: Mapping[str, float | None]) -> dict[str, float | None]:
        return {k: None if d[k] is None else round(100 * d[k], 2) for k in METRIC_KEYS}

    return {"dataset": c.title, "baseline": c.baseline, "note": c.note or None, "rows": [
        {"model": r.name, "label": r.label, "variant": r.variant, "loss": r.loss, "xi": r.xi,
         "runs": r.runs, "seeds": r.seeds, "mean": p(r.mean), "std": p(r.std),
         "delta": p(r.delta), "baseline_row": r.baseline_row,
         "intervals": {k: _entry(r.interval.get(k)) for k in METRIC_KEYS}} for r in c.rows]}
