"""Per-class AP of the rarest classes, models side by side (the paper's Table 6).

Group means hide which tail classes moved; this table lists the ``count`` classes with the
fewest train images (ties by name) and each model's AP on them, mean over seeds.
"""

from __future__ import annotations

import math

from acsl_cli.reporting.compare import Comparison


def rarest_classes(c: Comparison, count: int = 10) -> list[tuple[int, str, int | None]]:
    """(category id, name, train images) of the ``count`` rarest classes with GT."""
    seen: dict[int, tuple[str, int | None]] = {}
    for run in c.runs:
        for cat in run.categories:
            seen.setdefault(cat.category_id, (cat.name, cat.train_images))
    known = [(cid, name, n) for cid, (name, n) in seen.items() if n is not None]
    known.sort(key=lambda t: (t[2], t[1]))
    return known[:count]


def tail_classes_markdown(c: Comparison, count: int = 10) -> str:
    """A Markdown table: one row per rare class, one AP column per model (percent)."""
    classes = rarest_classes(c, count)
    if not classes:
        return ""
    head = ["class", "train images", *(r.name for r in c.rows)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cid, name, n in classes:
        cells = [_pct(r.per_category.get(cid, math.nan)) for r in c.rows]
        lines.append("| " + " | ".join([name, str(n), *cells]) + " |")
    return "\n".join(lines) + "\n"


def _pct(v: float) -> str:
    return "-" if math.isnan(v) else f"{100 * v:.2f}"
