"""Validation curves: AP and APr against epoch, from the evaluations a run logged during
training (``schedule.eval_every_epochs``) in its ``events.jsonl``."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from acsl_cli.layout import EVENTS
from acsl_cli.reporting.runs import Run

METRICS = ("AP", "APr")
STAGES = ("stage 1", "stage 2")
log = logging.getLogger("acsl")


def validation_points(run: Run) -> dict[tuple[str, str], list[tuple[int, dict]]]:
    """(stage, model) -> [(epoch, metrics)] of one run's validations, in logged order.

    events.jsonl travels with the run and is read as plain data: a line that is not UTF-8
    or not JSON (cut by a crash), or an eval event whose epoch is not a whole number or
    whose AP/APr is neither a number in [0, 1] nor null, is skipped; one warning counts
    them."""
    path = run.path / EVENTS
    out: dict[tuple[str, str], list[tuple[int, dict]]] = {}
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return out
    except OSError as e:
        log.warning("%s: not read (%s); no validation curves from it", path,
                    e.strerror or e.__class__.__name__)
        return out
    bad = 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line.decode("utf-8"), parse_constant=_no_constant)
        except ValueError:  # UnicodeDecodeError and JSONDecodeError alike
            bad += 1
            continue
        if not (isinstance(event, dict) and event.get("type") == "eval" and "epoch" in event):
            continue
        epoch = _epoch(event["epoch"])
        metrics = {k: event.get(k) for k in METRICS}
        if epoch is None or not all(_metric_ok(v) for v in metrics.values()):
            bad += 1
            continue
        key = (str(event.get("stage")), str(event.get("model")))
        out.setdefault(key, []).append((epoch, metrics))
    if bad:
        log.warning("%s: %d line(s) skipped (not UTF-8 or JSON, or an eval event whose epoch "
                    "or AP is not a number)", path, bad)
    return out


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number of an event")


def _epoch(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and 0 <= value <= 10**9 else None


def _metric_ok(value: object) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                             and 0.0 <= value <= 1.0)


def validation_curves(runs: Sequence[Run], path: Path) -> Path | None:
    """One panel per stage and metric; a line per (run, model), one colour per model in
    every panel and one legend for all of them below. None without data."""
    from acsl_cli.reporting.plotting import bottom_legend, colours, pyplot, save

    series = [(run, key, pts) for run in runs for key, pts in validation_points(run).items()]
    if not series:
        return None
    stages = [s for s in STAGES if any(key[0] == s for _, key, _ in series)]
    models = list(dict.fromkeys(model for _, (_, model), _ in series))
    colour = colours(models)
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(len(stages), len(METRICS), squeeze=False,
                             figsize=(5.2 * len(METRICS), 3.4 * len(stages)),
                             constrained_layout=True)
    handles: dict[str, object] = {}
    for row, stage in enumerate(stages):
        for col, metric in enumerate(METRICS):
            ax = axes[row][col]
            for _run, (st, model), pts in series:
                if st != stage:
                    continue
                xs = [e for e, _ in pts]
                ys = [100 * m[metric] if m.get(metric) is not None else float("nan")
                      for _, m in pts]
                handles[model] = ax.plot(xs, ys, marker="o", ms=3, color=colour[model],
                                         label=model)[0]
            ax.set_title(f"{stage}: {metric} (%) on val", fontsize=10)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    bottom_legend(fig, list(handles.values()), list(handles))
    if len(runs) > 1:
        fig.suptitle(f"Validation during training: one line per run and model "
                     f"({len(runs)} runs)", fontsize=10)
    return save(fig, path)
