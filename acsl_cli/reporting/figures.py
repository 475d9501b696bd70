"""The paper's figures from saved runs: label distribution (Fig. 1-2) and metrics against
xi (Table 2) here; per-category AP (Fig. 4, ``category_figure``), AP / AP75 / APr / APc /
APf per model (Tables 3-4, ``group_figure``) and the differences (``delta_figure``) beside.
``draw_figures`` draws every one the runs allow (``plotting``: what they share)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from acsl_cli.errors import AcslError
from acsl_cli.reporting.compare import Comparison, Summary, compare
from acsl_cli.reporting.plotting import (
    DPI,  # noqa: F401 - re-exported
    GROUP_COLOURS,
    GROUP_NAMES,
    bottom_legend,
    spread,
)
from acsl_cli.reporting.plotting import pyplot as _pyplot
from acsl_cli.reporting.plotting import save as _save
from acsl_cli.reporting.plotting import wrap as _wrap  # noqa: F401 - re-exported
from acsl_cli.reporting.runs import TrainCounts, load_runs, train_counts

RARE_MAX, COMMON_MAX = 10, 100  # acsl_cli.data.groups thresholds, drawn as lines


def label_distribution(counts: TrainCounts, path: Path) -> Path:
    """Train images per category, sorted, log scale, with the rare/common thresholds."""
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter

    order = sorted(counts.images, key=lambda cid: -counts.images[cid])
    n = len(order)
    fig, ax = plt.subplots(figsize=(min(14.0, max(7.0, 0.08 * n + 4)), 4.2),
                           constrained_layout=True)
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
    axes[0].set_ylabel(f"AP (%), {spread([len(r.seeds) for r in c.rows])}")
    handles, labels = axes[0].get_legend_handles_labels()
    bottom_legend(fig, handles, labels)
    fig.suptitle("ACSL: metrics against ξ")
    return _save(fig, path)


def suffixed(name: str, suffix: str) -> str:
    """A figure's file name in a report of several datasets: ``group_ap-<dataset>.png``."""
    stem, dot, ext = name.rpartition(".")
    return f"{stem}{suffix}{dot}{ext}" if dot else name + suffix


def draw_figures(c: Comparison, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Every figure the runs allow, and one note per figure that could not be drawn; the
    file names carry the comparison's ``suffix`` (one per dataset of a report)."""
    out_dir = Path(out_dir)
    from acsl_cli.reporting.category_figure import per_category_ap
    from acsl_cli.reporting.delta_figure import delta_bars
    from acsl_cli.reporting.group_figure import group_bars

    paths: list[Path] = []
    notes: list[str] = []
    counts, why = _first_counts(c.runs)
    if counts is not None:
        paths.append(label_distribution(counts, out_dir / suffixed("label_distribution.png",
                                                                    c.suffix)))
    else:
        notes.append(f"Label distribution not drawn: {why}")
    for draw, name, reason in (
            (per_category_ap, "per_category_ap.png", "no per_category_ap.csv in the runs"),
            (xi_sweep, "xi_sweep.png", "no ACSL heads with several xi"),
            (group_bars, "group_ap.png", "APr / APc / APf undefined in every row"),
            (delta_bars, "deltas.png", "no row has a difference to a baseline")):
        p = draw(c, out_dir / suffixed(name, c.suffix))
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
