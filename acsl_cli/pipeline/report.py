"""``acsl report``: saved runs and sweeps -> comparison tables, figures and a Markdown
report; also the pieces of reporting the other commands print (the CLI asks only the
plan and the pipeline)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from acsl_cli.errors import ConfigError

__all__ = ["ReportResult", "is_main", "metrics_table", "print_stats", "run_report"]


@dataclass(frozen=True)
class ReportResult:
    table: object  # a rich renderable: the comparison as the terminal shows it
    markdown: Path
    figures: int  # -1 on a dry run (nothing drawn)
    out: Path
    notes: tuple[str, ...] = ()  # one line each: a dataset without the baseline row


def is_main() -> bool:
    """Whether this process prints (rank 0 under torchrun); torch only when asked."""
    from acsl_cli.engine.distributed import is_main as rank0

    return rank0()


def metrics_table(rows: dict, title: str, note: str = "") -> object:
    from acsl_cli.reporting.tables import rich_table

    return rich_table(rows, title, note)


def print_stats(stats: dict, title: str) -> None:
    from acsl_cli.data.stats import print_stats as show

    show(stats, title)


def run_report(args: Sequence[str], dry_run: bool = False) -> ReportResult:
    """``FOLDER... [out_dir=DIR] [baseline=NAME] [resamples=N] [bootstrap_seed=S]``: compare
    the runs, write the report (on a dry run: read and compare them, write nothing); runs
    on several datasets or metrics are compared per dataset (``run_groups``).
    ``resamples`` (default 1000, 0 = off) and ``bootstrap_seed`` (default 0) drive the
    image bootstrap of single-seed differences."""
    from rich.console import Group

    from acsl_cli.reporting.compare_tables import terminal_table
    from acsl_cli.reporting.report import write_report
    from acsl_cli.reporting.run_groups import compare_groups
    from acsl_cli.reporting.runs import load_runs

    folders, options = [], {"out_dir": None, "baseline": None, "resamples": "1000",
                            "bootstrap_seed": "0"}
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key in options:
            if not value:
                raise ConfigError(f"{key}=: needs a value")
            options[key] = value
        elif sep and key == "out" and not Path(arg).exists():
            raise ConfigError(f"{arg}: acsl report writes a folder, given as out_dir=DIR "
                              "(out= is the JSON file of train, eval, sweep and data stats)")
        elif sep and not Path(arg).exists():
            raise ConfigError(f"{key}: unknown option (acsl report takes out_dir=, "
                              "baseline=, resamples= and bootstrap_seed=)")
        else:
            folders.append(arg)
    resamples, seed = (_count(k, options[k]) for k in ("resamples", "bootstrap_seed"))
    if not folders:
        raise ConfigError("acsl report: give at least one run or sweep folder")
    runs = load_runs(folders)
    out = Path(options["out_dir"] or Path(folders[0]) / "report")
    cs = compare_groups(runs, options["baseline"], resamples, seed)
    table = Group(*(terminal_table(c) for c in cs))
    notes = tuple(f"{c.title}: {c.note}" for c in cs if c.note)
    if dry_run:
        return ReportResult(table, out / "report.md", -1, out, notes)
    command = " ".join(["acsl report", *(shlex.quote(a) for a in args)])
    written = write_report(runs, out, options["baseline"], comparison=cs, command=command)
    pictures = sum(p.suffix == ".png" for p in written)
    return ReportResult(table, written[0], pictures, out, notes)


def _count(key: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise ConfigError(f"{key}={value}: must be an integer >= 0")
    return n
