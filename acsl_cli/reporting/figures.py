"""The paper's figures from saved runs: label distribution (Fig. 1-2), per-category AP per
group (Fig. 4), metrics against xi (Table 2) and APr/APc/APf per loss (Table 4).

matplotlib (Agg) is imported inside the functions: the CLI and the library stay fast to
import, and nothing needs a display. Every PNG is written atomically at 150 dpi.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from acsl_cli.errors import AcslError
from acsl_cli.reporting.compare import Comparison, Summary, compare
from acsl_cli.reporting.plotting import GROUP_COLOURS, _pyplot, _save, _wrap
from acsl_cli.reporting.runs import TrainCounts, load_runs, train_counts

GROUP_NAMES = {"f": "frequent", "c": "common", "r": "rare"}
RARE_MAX, COMMON_MAX = 10, 100  # acsl_cli.data.groups thresholds, drawn as lines


def _colours(rows: Sequence[Summary], baseline: str) -> dict[str, Any]:
    """One distinct colour per drawn row; the baseline is black."""
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if len(rows) <= 11 else "tab20")
    others = [r for r in rows if r.name != baseline]
    colours = {r.name: cmap(i % cmap.N) for i, r in enumerate(others)}
    colours[baseline] = "black"
    return colours


def label_distribution(counts: TrainCounts, path: Path) -> Path:
    """Train images per category, sorted, log scale, with the rare/common thresholds."""
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter

    order = sorted(counts.images, key=lambda cid: -counts.images[cid])
    n = len(order)
    fig, ax = plt.subplots(figsize=(min(14.0, max(7.0, 0.08 * n + 4)), 4.2))
    for g in ("f", "c", "r"):
        xs = [i for i, cid in enumerate(order) if counts.groups.get(cid) == g]
        ys = [max(counts.images[order[i]], 0.8) for i in xs]  # 0 images: shown at the floor
        if xs:
            ax.bar(xs, ys, width=1.0 if n > 80 else 0.8, color=GROUP_COLOURS[g],
                   label=f"{GROUP_NAMES[g]} ({len(xs)})")
    ax.set_yscale("log")
    top = max(max(counts.images.values(), default=1), COMMON_MAX)
    ax.set_ylim(0.5, 1.8 * top)  # both thresholds stay in view, also for a tiny set
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    side = ax.get_yaxis_transform()  # x in axes fraction, y in data: labels right of the axes
    for y, ls, text in ((RARE_MAX + 0.5, "--", "rare ≤ 10"), (COMMON_MAX + 0.5, ":",
                                                              "common ≤ 100")):
        ax.axhline(y, color="grey", ls=ls, lw=1)
        ax.text(1.01, y, text, transform=side, ha="left", va="center", fontsize=8,
                color="dimgrey")
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_xlabel("category index, sorted by train image count")
    ax.set_ylabel("train images (log scale)")
    ax.set_title(f"Train label distribution ({n} categories)")
    ax.legend(title="group (categories)", loc="upper right", fontsize=8, title_fontsize=8)
    return _save(fig, path)


def per_category_ap(c: Comparison, path: Path) -> Path | None:
    """Per group, each model's per-category AP sorted from best to worst (paper Fig. 4):
    the area under a curve is the group's AP."""
    rows, title = _curve_rows(c)
    groups = _category_groups(c)
    present = [g for g in ("f", "c", "r") if any(v == g for v in groups.values())]
    if not rows or not present:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    colours = _colours(rows, c.baseline)
    fig, axes = plt.subplots(1, len(present), figsize=(4.6 * len(present), 4.0),
                             squeeze=False, constrained_layout=True)
    for ax, g in zip(axes[0], present, strict=True):
        for r in rows:
            aps = sorted((100 * v for cid, v in r.per_category.items()
                          if groups.get(cid) == g and not math.isnan(v)), reverse=True)
            if aps:
                base = r.name == c.baseline
                # Past ~40 categories a panel's markers touch and hide the baseline's dashes.
                ax.plot(range(1, len(aps) + 1), aps, color=colours[r.name],
                        lw=2.2 if base else 1.4, ls="--" if base else "-",
                        marker="." if len(aps) <= 40 else None,
                        label=r.name, zorder=3 if base else 2)
        size = sum(1 for v in groups.values() if v == g)
        ax.set_title(f"{GROUP_NAMES[g]} categories ({size})")
        ax.set_xlabel("category, sorted by AP")
        ax.set_xlim(0.5, max(size, 2) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("AP (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside lower center", ncol=min(3, len(labels)),
               fontsize=8)
    fig.suptitle(f"Per-category AP (mean over seeds){title}; dashed = baseline")
    return _save(fig, path)


def _curve_rows(c: Comparison, most: int = 7) -> tuple[list[Summary], str]:
    """All rows, or when they would not be told apart, the baseline and each loss's best
    row by AP (e.g. the best xi of ACSL)."""
    rows = [r for r in c.rows if r.per_category]
    if len(rows) <= most:
        return rows, ""
    best: dict[str, Summary] = {}
    for r in rows:
        key = r.loss + (f" [{r.variant}]" if r.variant else "")
        if key not in best or (r.mean["AP"] or 0.0) > (best[key].mean["AP"] or 0.0):
            best[key] = r
    keep = {r.name for r in best.values()} | {c.baseline}
    return [r for r in rows if r.name in keep], ", best row per loss by AP"


def _category_groups(c: Comparison) -> dict[int, str]:
    return {cat.category_id: cat.group for run in c.runs for cat in run.categories}


def xi_families(c: Comparison) -> dict[str, list[Summary]]:
    """ACSL rows that differ only in xi, per family (e.g. bg=official vs adaptive)."""
    families: dict[str, list[Summary]] = {}
    for r in c.rows:
        if r.loss == "acsl" and r.xi is not None:
            rest = " ".join(f"{k}={v}" for k, v in sorted(r.loss_cfg.items())
                            if k not in ("name", "xi", "seed"))
            key = " ".join(s for s in (rest, f"[{r.variant}]" if r.variant else "") if s)
            families.setdefault(key, []).append(r)
    kept = {k: sorted(v, key=lambda r: r.xi or 0.0) for k, v in families.items()
            if len({r.xi for r in v}) > 1}
    shared = set.intersection(*(set(k.split()) for k in kept)) if kept else set()
    return {" ".join(w for w in k.split() if w not in shared): v for k, v in kept.items()}


def xi_sweep(c: Comparison, path: Path) -> Path | None:
    """AP, APr, APc, APf against xi, one line per ACSL family, the baseline dashed."""
    families = xi_families(c)
    if not families:
        return None
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    base = next((r for r in c.rows if r.name == c.baseline), None)
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.9), constrained_layout=True)
    for ax, k in zip(axes, ("AP", "APr", "APc", "APf"), strict=True):
        for i, (fam, rows) in enumerate(families.items()):
            pts = [(r.xi, 100 * r.mean[k], 100 * (r.std[k] or 0.0)) for r in rows
                   if r.mean[k] is not None]
            if pts:
                xs, ys, es = zip(*pts, strict=True)
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color=cmap(i),
                            label=f"ACSL {fam}".strip())
        if base is not None and base.mean[k] is not None:
            ax.axhline(100 * base.mean[k], color="black", ls="--", lw=1,
                       label=f"baseline: {base.name}")
        if not ax.has_data():
            ax.text(0.5, 0.5, f"{k} undefined\n(no category of this group)", ha="center",
                    va="center", transform=ax.transAxes, color="dimgrey")
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_title(k)
        ax.set_xlabel("ξ")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"AP (%), {_spread(c.rows)}")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(3, len(labels)),
               fontsize=8)
    fig.suptitle("ACSL: metrics against ξ")
    return _save(fig, path)


def _spread(rows: Sequence[Summary]) -> str:
    """What the error bars are: a std needs two seeds."""
    if all(len(r.seeds) < 2 for r in rows):
        return "one seed per row (n=1: no std)"
    if any(len(r.seeds) < 2 for r in rows):
        return "mean ± std over seeds (none for n=1 rows)"
    return "mean ± std over seeds"


def group_bars(c: Comparison, path: Path) -> Path | None:
    """APr / APc / APf per model, error bars = sample std over seeds (Table 4)."""
    keys = ("APr", "APc", "APf")
    rows = [r for r in c.rows if any(r.mean[k] is not None for k in keys)]
    if not rows:
        return None
    plt = _pyplot()
    n = len(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.95 * n + 2.0), 4.6), constrained_layout=True)
    width = 0.26
    for j, k in enumerate(keys):
        xs = [i + (j - 1) * width for i in range(n)]
        ys = [math.nan if r.mean[k] is None else 100 * r.mean[k] for r in rows]  # no bar
        es = [0.0 if r.std[k] is None else 100 * r.std[k] for r in rows]  # none for n=1
        none = all(r.mean[k] is None for r in rows)
        ax.bar(xs, ys, width, yerr=es, capsize=2, color=GROUP_COLOURS[k[-1]],
               label=f"{k} ({GROUP_NAMES[k[-1]]}{': undefined' if none else ''})",
               error_kw={"lw": 1})
    ax.set_xticks(range(n))
    rotate = n > 6
    ax.set_xticklabels([_wrap(r.name, 14 if rotate else 16) for r in rows],
                       rotation=30 if rotate else 0, ha="right" if rotate else "center",
                       rotation_mode="anchor", fontsize=8)
    ax.set_ylim(bottom=0)  # AP is never negative; a large std is cut at 0
    ax.set_ylabel(f"AP (%), {_spread(rows)}")
    ax.set_title("AP of rare / common / frequent categories per model")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def draw_figures(c: Comparison, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Every figure the runs allow, and one note per figure that could not be drawn."""
    out_dir = Path(out_dir)
    from acsl_cli.reporting.delta_figure import delta_bars  # it draws with this module

    paths: list[Path] = []
    notes: list[str] = []
    counts, why = _first_counts(c.runs)
    if counts is not None:
        paths.append(label_distribution(counts, out_dir / "label_distribution.png"))
    else:
        notes.append(f"Label distribution not drawn: {why}")
    for draw, name, reason in (
            (per_category_ap, "per_category_ap.png", "no per_category_ap.csv in the runs"),
            (xi_sweep, "xi_sweep.png", "no ACSL heads with several xi"),
            (group_bars, "group_ap.png", "APr / APc / APf undefined in every row"),
            (delta_bars, "deltas.png", "no row has a difference to a baseline")):
        p = draw(c, out_dir / name)
        if p is not None:
            paths.append(p)
        elif name != "xi_sweep.png":
            notes.append(f"{name} not drawn: {reason}")
    return paths, notes


def _first_counts(runs: Sequence[Any]) -> tuple[TrainCounts | None, str]:
    why = "no runs"
    for run in runs:
        try:
            return train_counts(run), ""
        except AcslError as e:
            why = str(e)
    return None, why


def sweep_figures(sweep_folder: str | Path, baseline: str | None = None) -> list[Path]:
    """The figures of a sweep, drawn into its folder (needs its runs.txt)."""
    folder = Path(sweep_folder)
    return draw_figures(compare(load_runs([folder]), baseline), folder)[0]
