"""Figure 3 drawn: per ACSL model, the full class x column matrix as an overview, and
beside it a readable panel of the rare classes: their names, each one's most suppressed
columns named, shares written in the cells, look-alike columns outlined.

Only measured records are drawn (a head's ``suppression.npz``); sigmoid BCE keeps none and
is not drawn (it suppresses every column by its definition; the report says so in words).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from acsl_cli.reporting.lookalikes import lookalike_matrix
from acsl_cli.reporting.plotting import bottom_legend, pyplot, save, wrap
from acsl_cli.reporting.runs import TrainCounts

TOP = 3  # columns named per rare class
RARE_ROWS = 12  # rare classes in the readable panel
MAX_MODELS = 3  # models drawn (one row of two panels each)
NAMED = 40  # class names on the overview's axes up to this many classes


def rare_panel(rec, rows: Sequence[int]) -> tuple[list[int], np.ndarray]:
    """The union of the rows' ``TOP`` most suppressed columns (first seen first), and the
    rates of ``rows`` x those columns."""
    rates = rec.rates()
    cols: list[int] = []
    for i in rows:
        order = np.argsort(-np.nan_to_num(rates[i], nan=-1.0), kind="stable")
        cols += [int(j) for j in order[:TOP] if rec.counts[i, j] > 0 and j not in cols]
    return cols, rates[np.ix_(list(rows), cols)] if cols else np.zeros((len(rows), 0))


def suppression_figure(records: Mapping[str, object], counts: TrainCounts | None,
                       names: Mapping[int, str], path: Path,
                       traits: Mapping[int, Sequence[str]] | None = None, *,
                       rare_rows: Callable[[Any, TrainCounts | None], list[int]],
                       class_order: Callable[[Any, TrainCounts | None], list[int]]) -> Path:
    """One row of two panels per model (at most ``MAX_MODELS``); which rows are rare and
    the overview's class order come from ``reporting.suppression`` (passed in, so that the
    two modules do not import each other)."""
    traits = traits or {}
    shown = list(records.items())[:MAX_MODELS]
    panels = []
    for model, rec in shown:
        rows = rare_rows(rec, counts)[:RARE_ROWS]
        cols, sub = rare_panel(rec, rows)
        panels.append((model, rec, class_order(rec, counts), rows, cols, sub))
    width = max(3.8, 0.15 * max(len(p[4]) for p in panels) + 2.6)
    height = max(3.8, 0.24 * max(len(p[3]) for p in panels) + 2.4)
    plt = pyplot()
    fig, axes = plt.subplots(len(panels), 2, squeeze=False, constrained_layout=True,
                             figsize=(4.6 + width + 1.0, height * len(panels) + 0.8),
                             gridspec_kw={"width_ratios": [4.2, width]})
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    image = None
    for (model, rec, order, rows, cols, sub), (big, small) in zip(panels, axes, strict=True):
        label = lambda i, r=rec: names.get(int(r.category_ids[i]), str(r.category_ids[i]))  # noqa: E731
        n = len(order)
        image = big.imshow(rec.rates()[np.ix_(order, order)], cmap=cmap, vmin=0.0, vmax=1.0,
                           interpolation="nearest", aspect="auto")
        big.plot([-0.5, n - 0.5], [-0.5, n - 0.5], color="grey", lw=1.2,
                 label="diagonal: the class's own column (never suppressed)")
        ticks = [label(i) for i in order] if n <= NAMED else []
        big.set_xticks(range(n) if ticks else [], ticks, rotation=90, fontsize=5)
        big.set_yticks(range(n) if ticks else [], ticks, fontsize=5)
        big.set_title(wrap(f"{model}: all {n} classes", 44), fontsize=9)
        big.set_xlabel("suppressed column (frequent → rare)", fontsize=8)
        big.set_ylabel("RoI's class (frequent → rare)", fontsize=8)
        small.set_title(wrap(f"{model}: rare classes, {TOP} most suppressed columns each",
                             int(width * 11)), fontsize=9)
        if not cols:
            small.text(0.5, 0.5, "no rare class suppressed a column", ha="center",
                       va="center", transform=small.transAxes)
            small.axis("off")
            continue
        small.imshow(sub, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest",
                     aspect="auto")
        alike = lookalike_matrix(rec.category_ids, traits)[np.ix_(rows, cols)] \
            if traits else np.zeros(sub.shape, dtype=bool)
        for (a, b), share in np.ndenumerate(sub):
            if np.isfinite(share) and share > 0:
                small.text(b, a, f"{100 * share:.0f}", ha="center", va="center", fontsize=5,
                           color="black" if share > 0.5 else "white")
            if alike[a, b]:
                small.add_patch(plt.Rectangle((b - 0.5, a - 0.5), 1, 1, fill=False,
                                              edgecolor="red", lw=1.2))
        small.set_xticks(range(len(cols)), [label(j) for j in cols], rotation=90, fontsize=6)
        small.set_yticks(range(len(rows)), [f"{label(i)} ({int(rec.rois[i])} RoIs)"
                                            for i in rows], fontsize=6)
        small.set_xlabel("most suppressed columns (% of the class's RoIs in the cells)",
                         fontsize=8)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6,
                 label="share of the class's foreground RoIs")
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="lightgrey"))
    labels.append("grey cell: the class itself (target) or a class without RoIs")
    handles.append(plt.Rectangle((0, 0), 1, 1, fill=False, edgecolor="red"))
    labels.append("look-alike: differs in one of shape, colour, pattern" if traits else
                  "look-alikes: not known for this dataset (no shape / colour / pattern)")
    bottom_legend(fig, handles, labels)
    fig.suptitle(wrap("ACSL's suppressed columns per class, stage 2 (Figure 3; measured "
                      "records only: BCE keeps none and suppresses every column)",
                      int(fig.get_figwidth() * 11)), fontsize=10)
    return save(fig, path)
