"""``acsl report``'s files: the comparison tables (compare.py), figures (figures.py) and
the self-contained ``report.html`` (html_report.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from acsl_cli.files import atomic_write_json, atomic_write_text, staged_folder
from acsl_cli.reporting.compare import Comparison, compare
from acsl_cli.reporting.compare_tables import csv_text, json_rows, markdown
from acsl_cli.reporting.curves import validation_curves
from acsl_cli.reporting.figures import draw_figures
from acsl_cli.reporting.html_report import render
from acsl_cli.reporting.runs import Run
from acsl_cli.reporting.suppression import suppression_report
from acsl_cli.reporting.tail_classes import tail_classes_markdown


def write_report(runs: Sequence[Run], out_dir: Path, baseline: str | None = None,
                 comparison: Comparison | None = None, command: str = "") -> list[Path]:
    """report.md, report.csv, report.json, the figures and report.html in ``out_dir``;
    returns them.
    ``comparison``: ``compare(runs, baseline)`` already made (its bootstraps take time);
    ``command``: the command line that made the report, said at its top.

    Everything is written into a hidden folder beside ``out_dir`` first and moved in when
    all of it is there: a report that fails half-way leaves ``out_dir`` as it was (not
    created, or with its earlier report)."""
    c = comparison or compare(runs, baseline)
    out_dir = Path(out_dir)
    with staged_folder(out_dir) as stage:
        names = _write_all(c, runs, stage, command)
    return [out_dir / name for name in names]


def _write_all(c: Comparison, runs: Sequence[Run], out_dir: Path, command: str) -> list[str]:
    """Every file of the report into ``out_dir``; their names, tables first."""
    figures, notes = draw_figures(c, out_dir)
    curves = validation_curves(runs, out_dir / "validation.png")
    if curves is not None:
        figures.append(curves)
    suppression_figures, suppression_text = suppression_report(c, out_dir)
    sources = "\n".join(f"- `{r.path}` (seed {r.seed}"
                        + (f"; {r.setting})" if r.setting not in ("", f"seed={r.seed}") else ")")
                        for r in runs)
    pictures = "\n".join(f"![{p.stem}]({p.name})" for p in figures)
    tail = tail_classes_markdown(c)
    tail = (f"## Rarest classes: AP per model (%, mean over each row's seeds)\n\n{tail}\n"
            if tail else "")
    made = f"Made by `{command}`.\n\n" if command else ""
    text = (f"# Comparison of {len(runs)} run(s)\n\n{made}{markdown(c)}\n{tail}"
            f"## Runs\n\n{sources}\n\n## Figures\n\n{pictures}\n"
            + "".join(f"\n{n}\n" for n in notes) + suppression_text)
    paths = [out_dir / "report.md", out_dir / "report.csv", out_dir / "report.json"]
    atomic_write_text(paths[0], text)
    atomic_write_text(paths[1], csv_text(c))
    atomic_write_json(paths[2], json_rows(c))
    drawn = [p.name for p in figures + suppression_figures]
    atomic_write_text(out_dir / "report.html", render(c, out_dir, drawn, command))
    return [p.name for p in paths] + drawn + ["report.html"]
