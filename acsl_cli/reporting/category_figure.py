"""Per-category AP per frequency group (the paper's Figure 4), every model on one class
order: the classes sorted by the baseline's AP, so one x position is one class for all
models and a model above the dashed baseline line is better on that class."""

from __future__ import annotations

import math
from pathlib import Path

from acsl_cli.reporting.compare import Comparison, Summary
from acsl_cli.reporting.plotting import (
    GROUP_NAMES,
    bottom_legend,
    colours,
    pyplot,
    save,
    seed_words,
    wrap,
)

NAMED = 30  # class names under a panel up to this many classes
MARKED = 40  # past this many classes, the other models are dots (lines would be a blur)


def order_row(c: Comparison) -> Summary | None:
    """The baseline row that orders the classes: the row of that name, else the first row
    with the baseline's label (a label serves each variant); None without a baseline."""
    named = [r for r in c.rows if r.name == c.baseline and r.per_category]
    labelled = [r for r in c.rows if r.label == c.baseline and r.per_category]
    return (named or labelled or [None])[0]


def curve_rows(c: Comparison, most: int = 7) -> tuple[list[Summary], str]:
    """All rows, or when they would not be told apart, the baseline and each loss's best
    row by AP (e.g. the best xi of ACSL, the better detector) under the baseline's protocol
    (a loss's Fixed AP row is the same heads, not another candidate)."""
    rows = [r for r in c.rows if r.per_category]
    if len(rows) <= most:
        return rows, ""
    base = order_row(c)
    protocol = base.protocol if base is not None else "standard"
    best: dict[str, Summary] = {}
    for r in rows:
        if r is not base and r.label != c.baseline and r.protocol == protocol and \
                (r.loss not in best or (r.mean["AP"] or 0.0) > (best[r.loss].mean["AP"] or 0.0)):
            best[r.loss] = r
    keep = {id(r) for r in best.values()} | {id(base)}
    return [r for r in rows if id(r) in keep], "; the baseline and each loss's best row by AP"


def category_groups(c: Comparison) -> dict[int, str]:
    return {cat.category_id: cat.group for run in c.runs for cat in run.categories}


def per_category_ap(c: Comparison, path: Path) -> Path | None:
    """One panel per group; None without per-category AP."""
    rows, picked = curve_rows(c)
    groups = category_groups(c)
    present = [g for g in ("f", "c", "r") if any(v == g for v in groups.values())]
    if not rows or not present:
        return None
    base = order_row(c) or rows[0]  # no baseline with per-category AP: the first row
    names = {cat.category_id: cat.name for run in c.runs for cat in run.categories}
    dashed = [r.name for r in rows if c.baseline in (r.name, r.label)]
    colour = colours([r.name for r in rows], black=[base.name])
    orders = {g: sorted((cid for cid, v in groups.items() if v == g),
                        key=lambda cid: (-_ap(base, cid), cid)) for g in present}
    widths = [max(3.2, 0.16 * len(orders[g]) + 1.2) for g in present]
    plt = pyplot()
    fig, axes = plt.subplots(1, len(present), figsize=(sum(widths), 4.6), squeeze=False,
                             constrained_layout=True, gridspec_kw={"width_ratios": widths})
    for ax, g in zip(axes[0], present, strict=True):
        ids = orders[g]
        xs = range(1, len(ids) + 1)
        for r in rows:
            ys = [100 * r.per_category.get(cid, math.nan) for cid in ids]
            if r.name in dashed:
                ax.plot(xs, ys, color=colour[r.name], lw=2.0, ls="--", label=r.name, zorder=3)
            else:
                ax.plot(xs, ys, color=colour[r.name], marker=".", ms=5,
                        lw=1.0 if len(ids) <= MARKED else 0.0, label=r.name, zorder=2)
        ax.set_title(f"{GROUP_NAMES[g]} categories ({len(ids)})", fontsize=10)
        if len(ids) <= NAMED:
            ax.set_xticks(list(xs), [names.get(cid, str(cid)) for cid in ids], rotation=90,
                          fontsize=6)
            ax.set_xlabel("class", fontsize=8)
        else:
            ax.set_xlabel("class index", fontsize=8)
        ax.set_xlim(0.5, max(len(ids), 2) + 0.5)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("AP (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    bottom_legend(fig, handles, labels)
    title = (f"Per-category AP ({seed_words([len(r.seeds) for r in rows])}){picked}. "
             f"Classes in the order of the AP of {base.name}"
             + ("; dashed: baseline" if dashed else ""))
    fig.suptitle(wrap(title, int(sum(widths) * 11)), fontsize=10)
    return save(fig, path)


def _ap(row: Summary, cid: int) -> float:
    v = row.per_category.get(cid, math.nan)
    return -1.0 if math.isnan(v) else v
