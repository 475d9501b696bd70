"""Metrics tables: printed like the paper (percent, 2 decimals) and saved as JSON/CSV/MD."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from acsl_cli.evaluation import METRIC_KEYS
from acsl_cli.files import atomic_write_json, atomic_write_text
from acsl_cli.layout import METRICS

HEADLINE = ("AP", "APr", "APc", "APf")


def pct(v: float | None) -> str:
    return "-" if _undefined(v) else f"{100 * v:.2f}"


def _undefined(v: float | None) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def rich_table(rows: Mapping[str, Mapping[str, float]], title: str = "", note: str = ""
               ) -> Table:
    t = Table(title=title or None, caption=note or None)
    t.add_column("model")
    for k in METRIC_KEYS:
        t.add_column(k, justify="right", style="bold" if k in HEADLINE else None)
    for name, m in rows.items():  # escaped: "acsl [fixed]" is not a rich style tag
        t.add_row(escape(name), *(pct(m.get(k)) for k in METRIC_KEYS))
    return t


def markdown_table(rows: Mapping[str, Mapping[str, float]], keys: Sequence[str] = METRIC_KEYS,
                   note: str = "") -> str:
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, m in rows.items():
        lines.append(f"| {name} | " + " | ".join(pct(m.get(k)) for k in keys) + " |")
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def csv_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", *METRIC_KEYS])
    for name, m in rows.items():
        w.writerow([name, *("" if _undefined(m[k]) else repr(float(m[k])) for k in METRIC_KEYS)])
    return buf.getvalue()


def metrics_json(m: Mapping[str, float]) -> dict[str, float | None]:
    """Full-precision values in [0, 1]; undefined (no category with GT) becomes null."""
    return {k: (None if _undefined(m[k]) else float(m[k])) for k in METRIC_KEYS}


def write_metrics(folder: Path, rows: Mapping[str, Mapping[str, float]], note: str = "",
                  scored: tuple[int, int] | None = None) -> None:
    """metrics.json / metrics.csv / metrics.md for every evaluated model of a run; ``note``
    (e.g. the frequency-group sizes) goes under the Markdown table, and so does ``scored``
    (val images scored, of how many): a run that scored part of val says so, and re-scoring
    its detections on the whole set explains itself. metrics.json rows hold metrics only."""
    if scored is not None:
        done, total = scored
        part = (f"scored {done} of {total} val images (the first {done}: "
                "schedule.eval_max_images)" if done < total else f"scored all {total} val images")
        note = f"{note}\n\n{part}" if note else part
    atomic_write_json(folder / METRICS, {n: metrics_json(m) for n, m in rows.items()})
    atomic_write_text(folder / "metrics.csv", csv_table(rows))
    atomic_write_text(folder / "metrics.md", markdown_table(rows, note=note))


def write_per_category(path: Path, per_category: Mapping[str, Sequence[Mapping]],
                       train_counts: Mapping[int, tuple[int, int]] | None = None) -> None:
    """One row per category with GT, one AP column per model; with ``train_counts``
    (category id -> train images, instances) those two columns too."""
    names = list(per_category)
    by_cat: dict[int, dict] = {}
    for name in names:
        for row in per_category[name]:
            entry = by_cat.setdefault(row["category_id"], {
                "category_id": row["category_id"], "name": row["name"],
                "frequency": row["frequency"], "num_gt": row["num_gt"]})
            entry[name] = row["AP"]
    extra = ["train_images", "train_instances"] if train_counts is not None else []
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["category_id", "name", "frequency", "num_gt", *extra, *names])
    for cid in sorted(by_cat):
        e = by_cat[cid]
        counts = list(train_counts.get(cid, ("", ""))) if train_counts is not None else []
        w.writerow([e["category_id"], e["name"], e["frequency"], e["num_gt"], *counts,
                    *(repr(float(e.get(n, float("nan")))) for n in names)])
    atomic_write_text(path, buf.getvalue())


def markdown_mean_std(mean: Mapping[str, Mapping[str, float]],
                      std: Mapping[str, Mapping[str, float]], runs: int,
                      keys: Sequence[str] = HEADLINE) -> str:
    """A sweep's table: mean ± sample std over runs, in percent (one run: no std, n=1)."""
    head = f"mean ± std over {runs} runs" if runs > 1 else "one run: n=1, no std"
    lines = [f"| model ({head}) | " + " | ".join(keys) + " |",
             "|---" * (len(keys) + 1) + "|"]
    for name, m in mean.items():
        cells = ["-" if _undefined(m[k]) else pct(m[k]) if runs < 2 else
                 f"{pct(m[k])} ± {pct(std[name][k])}" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
