"""ΔAP, ΔAPr, ΔAPc, ΔAPf against the baseline per model, with the 95 % intervals as error
bars; a difference whose interval holds 0 is hatched and pale. Horizontal bars, one group
per row: long row names stay whole and readable."""

from __future__ import annotations

import math
from pathlib import Path

from acsl_cli.reporting.compare import HEADLINE, Comparison
from acsl_cli.reporting.compare_tables import interval_kind
from acsl_cli.reporting.plotting import METRIC_COLOURS, bottom_legend, pyplot, save, wrap

LABEL_CHARS = 34


def delta_bars(c: Comparison, path: Path) -> Path | None:
    """None when no row has a defined difference to a baseline other than itself."""
    rows = [r for r in c.rows if r.baseline_row not in (None, r.name)
            and any(r.delta.get(k) is not None for k in HEADLINE)]
    if not rows:
        return None
    labels = [wrap(r.name, LABEL_CHARS) + f"\ninterval: {interval_kind(r)}" for r in rows]
    lines = max(label.count("\n") + 1 for label in labels)
    n = len(rows)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 1.6 + n * max(0.55, 0.13 * lines + 0.2)),
                           constrained_layout=True)
    height = 0.2
    for j, k in enumerate(HEADLINE):
        for i, r in enumerate(rows):
            iv, d = r.interval.get(k), r.delta.get(k)
            if d is None:
                continue
            y = (n - 1 - i) - (j - 1.5) * height
            x = 100 * (iv.delta if iv is not None else d)
            pale = iv is not None and iv.holds_zero
            ax.barh(y, x, height, color=METRIC_COLOURS[k], alpha=0.45 if pale else 1.0,
                    hatch="//" if pale else None,
                    edgecolor="black" if pale else METRIC_COLOURS[k], linewidth=0.5)
            if iv is not None and not math.isnan(iv.low):
                ax.errorbar(x, y, xerr=[[x - 100 * iv.low], [100 * iv.high - x]], fmt="none",
                            ecolor="black", capsize=2, lw=1)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(n - 1, -1, -1), labels, fontsize=8)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlabel(wrap(f"difference to the baseline '{c.baseline}' (percentage points)", 80),
                  fontsize=9)
    ax.set_title(wrap("Differences with 95 % intervals (hatched: the interval holds 0; no "
                      "error bar: no interval)", 80), fontsize=9)
    from matplotlib.patches import Patch

    bottom_legend(fig, [Patch(color=METRIC_COLOURS[k]) for k in HEADLINE],
                  [f"Δ{k}" for k in HEADLINE])
    ax.grid(axis="x", alpha=0.3)
    return save(fig, path)
