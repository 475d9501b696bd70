"""Validation curves: AP and APr against epoch, from the evaluations a run logged during
training (``schedule.eval_every_epochs``) in its ``events.jsonl``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from acsl_cli.reporting.runs import Run

METRICS = ("AP", "APr")
STAGES = ("stage 1", "stage 2")


def validation_points(run: Run) -> dict[tuple[str, str], list[tuple[int, dict]]]:
    """(stage, model) -> [(epoch, metrics)] of one run's validations, in logged order."""
    path = run.path / "events.jsonl"
    out: dict[tuple[str, str], list[tuple[int, dict]]] = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash: the rest still draws
        if isinstance(event, dict) and event.get("type") == "eval" and "epoch" in event:
            key = (str(event.get("stage")), str(event.get("model")))
            out.setdefault(key, []).append((int(event["epoch"]), event))
    return out


def validation_curves(runs: Sequence[Run], path: Path) -> Path | None:
    """One panel per stage and metric; a line per (run, model). None without data."""
    from acsl_cli.reporting.figures import _pyplot, _save

    series = [(run, key, pts) for run in runs for key, pts in validation_points(run).items()]
    if not series:
        return None
    stages = [s for s in STAGES if any(key[0] == s for _, key, _ in series)]
    plt = _pyplot()
    fig, axes = plt.subplots(len(stages), len(METRICS), squeeze=False,
                             figsize=(5.2 * len(METRICS), 3.4 * len(stages)),
                             constrained_layout=True)
    several = len(runs) > 1
    for row, stage in enumerate(stages):
        for col, metric in enumerate(METRICS):
            ax = axes[row][col]
            for run, (st, model), pts in series:
                if st != stage:
                    continue
                xs = [e for e, _ in pts]
                ys = [100 * m[metric] if m.get(metric) is not None else float("nan")
                      for _, m in pts]
                label = f"{model} ({run.name})" if several else model
                ax.plot(xs, ys, marker="o", ms=3, label=label)
            ax.set_title(f"{stage}: {metric} (%) on val")
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)
