"""ΔAP, ΔAPr, ΔAPc, ΔAPf against the baseline per model, with the 95 % intervals as error
bars; a difference whose interval holds 0 is hatched and pale."""

from __future__ import annotations

import math
from pathlib import Path

from acsl_cli.reporting.compare import HEADLINE, Comparison
from acsl_cli.reporting.compare_tables import interval_kind
from acsl_cli.reporting.plotting import GROUP_COLOURS, _pyplot, _save, _wrap

COLOURS = {"AP": "tab:grey", **{f"AP{g}": c for g, c in GROUP_COLOURS.items()}}


def delta_bars(c: Comparison, path: Path) -> Path | None:
    """None when no row has a defined difference to a baseline other than itself."""
    rows = [r for r in c.rows if r.baseline_row not in (None, r.name)
            and any(r.delta.get(k) is not None for k in HEADLINE)]
    if not rows:
        return None
    plt = _pyplot()
    n = len(rows)
    fig, ax = plt.subplots(figsize=(max(6.5, 1.1 * n + 2.5), 4.6), constrained_layout=True)
    width = 0.2
    for j, k in enumerate(HEADLINE):
        for i, r in enumerate(rows):
            iv, d = r.interval.get(k), r.delta.get(k)
            if d is None:
                continue
            x = i + (j - 1.5) * width
            y = 100 * (iv.delta if iv is not None else d)
            pale = iv is not None and iv.holds_zero
            ax.bar(x, y, width, color=COLOURS[k], alpha=0.45 if pale else 1.0,
                   hatch="//" if pale else None, edgecolor="black" if pale else COLOURS[k],
                   linewidth=0.5, label=k if i == 0 else None)
            if iv is not None and not math.isnan(iv.low):
                ax.errorbar(x, y, yerr=[[y - 100 * iv.low], [100 * iv.high - y]], fmt="none",
                            ecolor="black", capsize=3, lw=1)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(n))
    rotate = n > 5
    ax.set_xticklabels([_wrap(f"{r.name}\n({interval_kind(r)})", 14 if rotate else 18)
                        for r in rows], rotation=30 if rotate else 0,
                       ha="right" if rotate else "center", rotation_mode="anchor", fontsize=8)
    ax.set_ylabel(f"Δ vs '{c.baseline}' (percentage points)")
    ax.set_title("Differences with 95 % intervals (hatched: the interval holds 0; "
                 "no error bar: no interval)", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
