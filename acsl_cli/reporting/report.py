"""``acsl report``'s files: the comparison tables (compare.py), figures (figures.py) and
the self-contained ``report.html`` (html_report.py)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from acsl_cli.files import atomic_write_json, atomic_write_text, staged_folder
from acsl_cli.reporting.compare import Comparison
from acsl_cli.reporting.compare_tables import csv_text, json_groups, markdown
from acsl_cli.reporting.curves import validation_curves
from acsl_cli.reporting.figures import draw_figures, suffixed
from acsl_cli.reporting.html_report import render
from acsl_cli.reporting.run_groups import compare_groups
from acsl_cli.reporting.runs import Run
from acsl_cli.reporting.suppression import suppression_report
from acsl_cli.reporting.tail_classes import tail_classes_markdown


def write_report(runs: Sequence[Run], out_dir: Path, baseline: str | None = None,
                 comparison: Comparison | Sequence[Comparison] | None = None,
                 command: str = "") -> list[Path]:
    """report.md, report.csv, report.json, the figures and report.html in ``out_dir``;
    returns them. Runs on several datasets (or metrics) are one comparison each
    (``run_groups``): a section per dataset, figure files suffixed with its name.
    ``comparison``: ``compare_groups(runs, baseline)`` (or one ``compare``) already made
    (its bootstraps take time); ``command``: the command line that made the report, said
    at its top.

    Everything is written into a hidden folder beside ``out_dir`` first and moved in when
    all of it is there: a report that fails half-way leaves ``out_dir`` as it was (not
    created, or with its earlier report)."""
    if comparison is None:
        comparisons = compare_groups(runs, baseline)
    elif isinstance(comparison, Comparison):
        comparisons = [comparison]
    else:
        comparisons = list(comparison)
    out_dir = Path(out_dir)
    with staged_folder(out_dir) as stage:
        names = _write_all(comparisons, runs, stage, command)
    return [out_dir / name for name in names]


def _section(c: Comparison, out_dir: Path) -> tuple[str, list[Path]]:
    """One comparison's Markdown (table, rarest classes, runs, figures) and its files."""
    figures, notes = draw_figures(c, out_dir)
    curves = validation_curves(c.runs, out_dir / suffixed("validation.png", c.suffix))
    if curves is not None:
        figures.append(curves)
    suppression_files, suppression_text = suppression_report(c, out_dir)
    sources = "\n".join(f"- `{r.path}` (seed {r.seed}"
                        + (f"; {r.setting})" if r.setting not in ("", f"seed={r.seed}") else ")")
                        for r in c.runs)
    pictures = "\n".join(f"![{p.stem}]({p.name})" for p in figures)
    tail = tail_classes_markdown(c)
    tail = (f"## Rarest classes: AP per model (%, mean over each row's seeds)\n\n{tail}\n"
            if tail else "")
    text = (f"{markdown(c)}\n{tail}## Runs\n\n{sources}\n\n## Figures\n\n{pictures}\n"
            + "".join(f"\n{n}\n" for n in notes) + suppression_text)
    return text, figures + suppression_files


def _write_all(comparisons: Sequence[Comparison], runs: Sequence[Run], out_dir: Path,
               command: str) -> list[str]:
    """Every file of the report into ``out_dir``; their names, tables first."""
    made = f"Made by `{command}`.\n\n" if command else ""
    drawn: list[Path] = []
    if len(comparisons) == 1:
        c = comparisons[0]
        text, drawn = _section(c, out_dir)
        on = f"Dataset: {c.title}.\n\n" if c.title else ""
        text = f"# Comparison of {len(runs)} run(s)\n\n{made}{on}{text}"
    else:
        parts = [f"# Comparison of {len(runs)} run(s) on {len(comparisons)} datasets\n\n"
                 f"{made}The runs are on {len(comparisons)} datasets or metrics, each "
                 "compared on its own: its own table, baseline rows and figures (file names "
                 "end in the dataset's name); no difference is taken across them.\n"]
        for c in comparisons:
            text, files = _section(c, out_dir)
            drawn += files
            parts.append(f"\n## {c.title}\n\n" + re.sub(r"^(#+) ", r"#\1 ", text,
                                                           flags=re.M))
        text = "".join(parts)
    paths = [out_dir / "report.md", out_dir / "report.csv", out_dir / "report.json"]
    atomic_write_text(paths[0], text)
    atomic_write_text(paths[1], csv_text(comparisons))
    atomic_write_json(paths[2], json_groups(comparisons))
    names = [p.name for p in drawn]
    atomic_write_text(out_dir / "report.html", render(comparisons, out_dir, names, command))
    return [p.name for p in paths] + names + ["report.html"]
