"""Issue 27: every figure ``acsl report`` draws is free of layout defects on a sweep with
long model names (18 rows, two detectors, 24 classes), and says what it shows.

The runs are written as plain files (tests/synth_runs.py); the figures are the real
``write_report``'s, checked the moment they are saved with matplotlib's own text extents
(tests/figure_layout.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from acsl_cli.reporting.compare import compare
from acsl_cli.reporting.report import write_report
from acsl_cli.reporting.runs import STAGE1_ROW, load_runs
from tests.figure_layout import defects
from tests.synth_runs import HEADS, categories, make_sweep

FIGURES = {"label_distribution.png", "per_category_ap.png", "xi_sweep.png", "group_ap.png",
           "deltas.png", "validation.png", "suppression.png"}


@contextlib.contextmanager
def _kept_figures() -> Iterator[list[Figure]]:
    """Every figure saved inside the block, kept as it was saved (savefig still writes)."""
    kept: list[Figure] = []
    save = Figure.savefig

    def keep(fig, fname, *args, **kwargs):
        save(fig, fname, *args, **kwargs)
        kept.append(fig)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Figure, "savefig", keep)
        yield kept


def _drawn(runs, out: Path, baseline: str | None = STAGE1_ROW) -> dict[str, Figure]:
    """``write_report``'s figures by file name, each kept as it was saved."""
    with _kept_figures() as kept:
        paths = write_report(runs, out, baseline, comparison=compare(runs, baseline, 0))
    pngs = [p.name for p in paths if p.suffix == ".png"]
    assert len(pngs) == len(kept)
    return dict(zip(pngs, kept, strict=True))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[list, dict[str, Figure], Path]:
    """The long-names sweep's runs, figures and report folder (drawn once)."""
    root = tmp_path_factory.mktemp("long")
    runs = load_runs([make_sweep(root)])
    return runs, _drawn(runs, root / "rep"), root / "rep"


@pytest.fixture(scope="module")
def one_seed(tmp_path_factory) -> tuple[list, dict[str, Figure], Path]:
    root = tmp_path_factory.mktemp("one")
    runs = load_runs([make_sweep(root, seeds=(0,), detectors=("faster_rcnn",))])
    return runs, _drawn(runs, root / "rep"), root / "rep"


def _words(runs) -> list[str]:
    c = compare(runs, STAGE1_ROW, 0)
    return [r.name for r in c.rows] + [x["name"] for x in categories(24)]


def _all_texts(fig: Figure) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text")))


def test_every_figure_of_a_long_names_sweep_has_no_layout_defect(sweep):
    runs, figures, _ = sweep
    assert set(figures) == FIGURES
    words = _words(runs)
    found = {name: defects(fig, words) for name, fig in figures.items()}
    assert not any(found.values()), "\n".join(
        f"{name}: {d}" for name, ds in found.items() for d in ds[:8])


def test_per_category_ap_shares_one_class_order_sorted_by_the_baseline(sweep):
    runs, figures, _ = sweep
    fig = figures["per_category_ap.png"]
    c = compare(runs, STAGE1_ROW, 0)
    base = c.rows[0]
    assert base.label == STAGE1_ROW
    groups = {x["category_id"]: x["group"] for x in categories(24)}
    for ax in fig.axes:
        g = {"frequent": "f", "common": "c", "rare": "r"}[ax.get_title().split()[0]]
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        dashed = [name for name, ln in lines.items() if ln.get_linestyle() == "--"]
        assert base.name in dashed  # the baseline by its real row name, dashed
        ids = sorted((cid for cid, gg in groups.items() if gg == g),
                     key=lambda cid: (-base.per_category[cid], cid))
        ticks = [t.get_text() for t in ax.get_xticklabels()]
        names = {x["category_id"]: x["name"] for x in categories(24)}
        if ticks and ticks[0]:
            assert ticks == [names[cid] for cid in ids]
        for label, ln in lines.items():
            row = c.row(label)
            assert list(ln.get_ydata()) == pytest.approx(
                [100 * row.per_category[cid] for cid in ids])


def test_group_ap_shows_ap_ap75_apr_with_the_intervals_of_the_comparison(sweep):
    runs, figures, _ = sweep
    fig = figures["group_ap.png"]
    titles = [ax.get_title() for ax in fig.axes]
    assert {"AP", "AP75", "APr"} <= {t.split()[0] for t in titles if t}
    c = compare(runs, STAGE1_ROW, 0)
    ax = next(a for a in fig.axes if a.get_title().split()[0] == "APr")
    # one bar per row, its length the row's mean; the error bar is the delta's interval
    # shifted onto the row's mean (it reaches the baseline's mark iff it holds 0)
    bars = [p for p in ax.patches if p.get_height() > 0]
    assert len(bars) == len(c.rows)
    for bar, r in zip(sorted(bars, key=lambda p: -p.get_y()), c.rows, strict=True):
        assert bar.get_width() == pytest.approx(100 * r.mean["APr"])
    segments = [seg for coll in ax.collections for seg in coll.get_segments()
                if len(seg) == 2 and seg[0][1] == seg[1][1]]
    spans = sorted((round(min(s[0][0], s[1][0]), 6), round(max(s[0][0], s[1][0]), 6))
                   for s in segments)
    want = sorted((round(100 * (r.mean["APr"] + iv.low - iv.delta), 6),
                   round(100 * (r.mean["APr"] + iv.high - iv.delta), 6))
                  for r in c.rows if (iv := r.interval.get("APr")) is not None)
    assert want and len(spans) == len(want)
    assert [x for s in spans for x in s] == pytest.approx([x for w in want for x in w])


def test_one_seed_says_n1_and_never_a_std(one_seed):
    _, figures, out = one_seed
    for name, fig in figures.items():
        text = _all_texts(fig)
        assert "± std" not in text and "over seeds" not in text, name
    assert "n=1" in _all_texts(figures["group_ap.png"])
    md = (out / "report.md").read_text()
    assert "± 0.00" not in md and "(n=1)" in md
    assert "std over seeds" not in md and "one seed per row (n=1): no std" in md


def test_heads_named_alike_in_both_detectors_stay_apart(sweep):
    names = [r.name for r in compare(sweep[0], STAGE1_ROW, 0).rows]
    assert len(names) == 2 * (len(HEADS) + 1) == len(set(names))


def test_figure3_of_the_table3_runs_has_no_layout_defect(tmp_path):
    """As the Table 3 report drew it: ACSL xi=0.7 under two detectors, too many classes to
    name (the old figure's main title sat on both panel titles)."""
    from acsl_cli.reporting.suppression import suppression_report

    heads = {"acsl xi=0.7 bg=official": {"name": "acsl", "xi": 0.7, "bg": "official"}}
    runs = load_runs([make_sweep(tmp_path, seeds=(0,), classes=60, heads=heads)])
    c = compare(runs, STAGE1_ROW, 0)
    with _kept_figures() as kept:
        paths, _ = suppression_report(c, tmp_path)
    assert [p.name for p in paths if p.suffix == ".png"] == ["suppression.png"]
    (fig,) = kept
    assert defects(fig, [r.name for r in c.rows]) == []


def test_per_category_curves_pick_each_losss_best_row_under_the_baselines_protocol():
    """Past 7 rows the figure keeps the baseline and each loss's best row by AP; a loss's
    Fixed AP row (the same heads, a higher AP) is no candidate beside its standard rows."""
    from acsl_cli.reporting.category_figure import curve_rows
    from acsl_cli.reporting.compare import Comparison, Summary

    def row(name: str, loss: str, ap: float, protocol: str = "standard") -> Summary:
        label = name.split(" [")[0]
        return Summary(name=name, label=label, variant="", loss=loss, xi=None, loss_cfg={},
                       runs=["r"], seeds=[0], mean={"AP": ap}, std={"AP": None},
                       per_category={1: ap}, protocol=protocol)

    rows = [row("softmax_ce", "softmax_ce", 0.50), row("bce", "bce", 0.52),
            row("acsl xi=0.5", "acsl", 0.58), row("acsl xi=0.7", "acsl", 0.57),
            row("softmax_ce [fixed]", "softmax_ce", 0.51, "fixed"),
            row("bce [fixed]", "bce", 0.53, "fixed"),
            row("acsl xi=0.5 [fixed]", "acsl", 0.59, "fixed"),
            row("acsl xi=0.7 [fixed]", "acsl", 0.60, "fixed")]
    picked, note = curve_rows(Comparison(rows=rows, baseline="softmax_ce", runs=[]))
    assert [r.name for r in picked] == ["softmax_ce", "bce", "acsl xi=0.5"]
    assert "best row by AP" in note
