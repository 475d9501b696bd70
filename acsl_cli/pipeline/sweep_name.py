"""A sweep name already taken: say whether it is this very sweep (complete) or another
one, and what differs, instead of a bare "complete already"."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from acsl_cli.plan import SweepPlan, saved_run_config
from acsl_cli.settings.pooling import differences as pooled_differences

SHOWN = 3  # differences named in the message


def differences(saved: Mapping[str, Any], mine: Mapping[str, Any]) -> list[str]:
    """``key: saved -> mine`` for the settings that can change a result (the rule of
    ``settings.pooling``, seed included)."""
    return [f"{k}: {a!r} -> {b!r}" for k, a, b in pooled_differences(saved, mine)]


def _heads(config: Mapping[str, Any]) -> list[str]:
    heads = config.get("heads")
    return sorted(str(h.get("label", k)) for k, h in heads.items()) \
        if isinstance(heads, Mapping) else []


def taken_message(base: str, folder: Path, plan: SweepPlan, runs: Sequence[Path]) -> str:
    """The one line for ``run_name=base`` when ``folder`` (its summary) exists."""
    try:
        lines = (folder / "runs.txt").read_text(encoding="utf-8").splitlines()
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
            config = saved_run_config(path / "config.yaml")
        except (OSError, ValueError):
            continue
        mine = {**run.settings.as_dict(),
                "heads": {h.id: {"label": h.label} for h in run.heads}}
        diff = differences(config, mine)
        if _heads(config) != _heads(mine):
            diff.insert(0, f"heads: {', '.join(_heads(config))} -> "
                           f"{', '.join(_heads(mine))}")
        if diff:
            more = f" and {len(diff) - SHOWN} more" if len(diff) > SHOWN else ""
            return f"{other} ({'; '.join(diff[:SHOWN])}{more}); use another run_name"
    return (f"run_name={base}: this sweep is complete already ({folder}); its tables are "
            "there (use another run_name to run it again)")
