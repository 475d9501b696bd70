"""AP, AP75 and APr / APc / APf per model (the paper's Tables 3 and 4), one panel per
metric, one horizontal bar per row: twenty long row names stay readable.

Error bars: where rows have a baseline, each difference's 95 % interval (the one in
report.json) drawn around the row's value, next to a black mark at its baseline's value:
the bar reaches the mark exactly when the interval holds 0. Without any interval, ± the
std over seeds where a row has two; n=1 rows get none, and the axis says so.
"""

from __future__ import annotations

import math
from pathlib import Path

from acsl_cli.reporting.compare import Comparison, Summary
from acsl_cli.reporting.plotting import (
    METRIC_COLOURS,
    bottom_legend,
    pyplot,
    save,
    spread,
    wrap,
)

KEYS = ("AP", "AP75", "APr", "APc", "APf")
LABEL_CHARS = 34  # row names wrap here, between words


def _value(r: Summary, k: str) -> float:
    return math.nan if r.mean.get(k) is None else 100 * r.mean[k]  # type: ignore[operator]


def group_bars(c: Comparison, path: Path) -> Path | None:
    """None when every row's metrics are undefined."""
    keys = [k for k in KEYS if any(r.mean.get(k) is not None for r in c.rows)]
    rows = [r for r in c.rows if any(r.mean.get(k) is not None for k in keys)]
    if not rows:
        return None
    by_name = {r.name: r for r in c.rows}
    with_iv = any(iv is not None for r in rows for iv in r.interval.values())
    labels = [wrap(r.name, LABEL_CHARS) for r in rows]
    lines = max(label.count("\n") + 1 for label in labels)
    n = len(rows)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(keys), sharey=True, constrained_layout=True,
                             figsize=(3.0 + 2.1 * len(keys), 1.6 + n * (0.16 + 0.12 * lines)))
    ys = [n - 1 - i for i in range(n)]
    handles: dict[str, object] = {}
    for ax, k in zip(axes, keys, strict=True):
        vals = [_value(r, k) for r in rows]
        ax.barh(ys, vals, height=0.7, color=METRIC_COLOURS[k])
        for y, r, v in zip(ys, rows, vals, strict=True):
            iv = r.interval.get(k)
            base = by_name.get(r.baseline_row or "")
            if with_iv and iv is not None and not math.isnan(iv.low) and not math.isnan(v):
                handles["iv"] = ax.errorbar(v, y, xerr=[[100 * (iv.delta - iv.low)],
                                                        [100 * (iv.high - iv.delta)]],
                                            fmt="none", ecolor="black", capsize=2, lw=1)
            elif not with_iv and len(r.seeds) > 1 and r.std.get(k) is not None:
                handles["std"] = ax.errorbar(v, y, xerr=100 * r.std[k], fmt="none",
                                             ecolor="black", capsize=2, lw=1)
            if base is not None and base is not r and not math.isnan(_value(base, k)):
                handles["base"] = ax.plot([_value(base, k)], [y], ls="none", marker="|",
                                          ms=9, mew=1.5, color="black")[0]
        ax.set_title(k if any(not math.isnan(v) for v in vals) else f"{k} (undefined)",
                     fontsize=10)
        ends = [v + 100 * (iv.high - iv.delta) for r, v in zip(rows, vals, strict=True)
                if with_iv and (iv := r.interval.get(k)) is not None and not math.isnan(v)
                and not math.isnan(iv.high)]
        ax.set_xlim(0, min(100.0, max(1.0, *(v for v in vals + ends if not math.isnan(v))))
                    * 1.08)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)
        ax.set_xlabel("%", fontsize=8)
    axes[0].set_yticks(ys, labels, fontsize=8)
    axes[0].set_ylim(-0.6, n - 0.4)
    names = {"iv": "95 % interval of the difference to the row's baseline",
             "std": "± std over seeds", "base": "the row's baseline"}
    if handles:
        bottom_legend(fig, list(handles.values()), [names[h] for h in handles])
    what = "" if with_iv else f"; {spread([len(r.seeds) for r in rows])}"
    fig.suptitle(wrap(f"AP per model{what}", int(fig.get_figwidth() * 11)), fontsize=10)
    return save(fig, path)
