"""Look-alike classes and the figures of Figure 3's claim, computed from the records.

Two classes look alike when the train annotations describe each by ``shape``, ``colour``
and ``pattern`` (``synthetic_lvis`` writes them) and they differ in exactly one of the
three. Datasets without those fields have no look-alikes marked (said so where shown).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from acsl_cli.errors import DataError

TRAITS = ("shape", "colour", "pattern")


def category_traits(runs: Sequence[Any]) -> dict[int, tuple[str, ...]]:
    """Category id -> (shape, colour, pattern) from the first run whose train annotations
    give all three for every category; {} when none does."""
    from acsl_cli.data.annotations import load_json
    from acsl_cli.reporting.runs import train_annotation_file

    for run in runs:
        try:
            data = load_json(train_annotation_file(run))
        except DataError:
            continue
        cats = data.get("categories") if isinstance(data, dict) else None
        if isinstance(cats, list) and cats and all(
                isinstance(c, dict) and isinstance(c.get("id"), int)
                and all(isinstance(c.get(t), str) for t in TRAITS) for c in cats):
            return {c["id"]: tuple(str(c[t]) for t in TRAITS) for c in cats}
    return {}


def lookalike(a: Sequence[str] | None, b: Sequence[str] | None) -> bool:
    return a is not None and b is not None and sum(x != y for x, y in zip(a, b,
                                                                          strict=True)) == 1


def lookalike_matrix(ids: Sequence[int], traits: Mapping[int, Sequence[str]]) -> np.ndarray:
    """(C, C) booleans: column j looks like row i's class."""
    t = [traits.get(int(i)) for i in ids]
    return np.array([[lookalike(a, b) for b in t] for a in t], dtype=bool)


def summary(rec: Any, traits: Mapping[int, Sequence[str]]) -> dict[str, Any]:
    """The claim's numbers for one record (pooled over a row's runs): columns suppressed
    per foreground RoI; of the classes with RoIs, how many have a look-alike as their most
    suppressed column; and the share of columns that are look-alikes (chance)."""
    rois = rec.rois.astype(np.float64)
    has = rec.rois > 0
    c = len(rec.category_ids)
    out: dict[str, Any] = {
        "classes": c, "classes_with_rois": int(has.sum()), "rois": int(rec.rois.sum()),
        "columns_per_roi": round(float(rec.counts.sum() / rois.sum()), 4) if has.any()
        else None, "other_columns": c - 1}
    if not traits:
        return out | {"lookalikes_known": False}
    alike = lookalike_matrix(rec.category_ids, traits)
    rates = np.where(has[:, None], rec.counts / np.maximum(rois, 1)[:, None], 0.0)
    np.fill_diagonal(rates, -1.0)
    top = rates.argmax(axis=1)
    suppressed = has & (rates.max(axis=1) > 0)
    hits = int((suppressed & alike[np.arange(c), top]).sum())
    per_class = alike.sum(axis=1)
    return out | {"lookalikes_known": True, "classes_suppressing": int(suppressed.sum()),
                  "top_column_is_lookalike": hits,
                  "lookalike_columns_per_class": round(float(per_class.mean()), 2),
                  "lookalike_share_of_columns": round(float(per_class.mean() / max(c - 1, 1)),
                                                      4)}


def summary_markdown(stats: Mapping[str, Mapping[str, Any]]) -> str:
    """One sentence per model, every number read from ``stats``."""
    out = []
    for model, s in stats.items():
        if s["columns_per_roi"] is None:
            continue
        line = (f"- **{model}**: {s['columns_per_roi']:.2f} of the {s['other_columns']} other "
                f"columns suppressed per foreground RoI ({s['rois']} RoIs of "
                f"{s['classes_with_rois']} classes)")
        if s.get("lookalikes_known"):
            line += (f"; for {s['top_column_is_lookalike']} of the "
                     f"{s['classes_suppressing']} classes that suppressed any column the "
                     f"most suppressed one is a look-alike, while look-alikes are "
                     f"{100 * s['lookalike_share_of_columns']:.1f} % of the columns")
        out.append(line + ".")
    return "\n".join(out) + "\n" if out else ""
