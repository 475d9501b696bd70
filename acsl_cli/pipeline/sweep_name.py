"""A sweep name already taken: say whether it is this very sweep (complete) or another
one, and what differs (the rule of ``reuse``), instead of a bare "complete already"."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from acsl_cli.layout import CONFIG, RUNS_LIST
from acsl_cli.pipeline.reuse import differences
from acsl_cli.plan import SweepPlan, saved_run_config

SHOWN = 3  # differences named in the message


def taken_message(base: str, folder: Path, plan: SweepPlan, runs: Sequence[Path]) -> str:
    """The one line for ``run_name=base`` when ``folder`` (its summary) exists."""
    try:
        lines = (folder / RUNS_LIST).read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    saved = [line.split("\t")[0] for line in lines if line.strip()]
    want = list(plan.settings)
    other = f"run_name={base}: {folder} holds another sweep"
    if saved != want:
        return (f"{other} (its runs: {'; '.join(saved) or 'unknown'}; this one: "
                f"{'; '.join(want)}); use another run_name")
    for run, path in zip(plan.runs, runs, strict=True):
        try:
            config = saved_run_config(path / CONFIG)
        except (OSError, ValueError):
            continue
        diff = [d.arrow() for d in differences(config, run)]
        if diff:
            more = f" and {len(diff) - SHOWN} more" if len(diff) > SHOWN else ""
            return f"{other} ({'; '.join(diff[:SHOWN])}{more}); use another run_name"
    return (f"run_name={base}: this sweep is complete already ({folder}); its tables are "
            "there (use another run_name to run it again)")
