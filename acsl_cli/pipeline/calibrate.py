"""``test.calibration``: calibrated rows beside a run's (or a checkpoint's) own rows.

Each row that NorCal can score (``models.calibration.refusal``) gets one more scorer per
gamma; they all share the frozen pass that scores the plain rows (``FrozenTrunk.detect``),
so a list of gammas costs one pass, not one per value. The whole gamma curve is reported
on val. Which gamma is *the* result is decided without val: on held-out images drawn from
the train distribution (``data.synthetic.heldout``), by ``select_metric``; ties go to the
smaller gamma. With one gamma, or ``select=none``, nothing is picked.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from acsl_cli.data.bundle import DatasetBundle
from acsl_cli.models.calibration import calibrated, refusal
from acsl_cli.models.trunk import FrozenTrunk, Scorer
from acsl_cli.settings import LossSettings, Settings

log = logging.getLogger("acsl")


@dataclass(frozen=True)
class Row:
    """A row calibration may add to: its label and how it is scored."""

    label: str
    scorer: Scorer
    loss: LossSettings


def row_label(label: str, gamma: float) -> str:
    return f"{label} norcal gamma={float(gamma):g}"


def picked_label(label: str) -> str:
    """The reported row: without the gamma, so that a sweep pools its seeds' picks (each
    run's gamma is in its ``calibration.json``)."""
    return f"{label} norcal (gamma picked on held-out)"


@dataclass
class CalibrationPlan:
    """The calibrated scorers (keyed by their row labels) of every row NorCal can score."""

    gammas: tuple[float, ...]
    select: bool  # whether a gamma is picked (on held-out images)
    curves: dict[str, list[str]]  # base label -> its calibrated labels, one per gamma
    scorers: dict[str, Scorer]
    refused: dict[str, str]  # base label -> why it is not calibrated


def plan_calibration(s: Settings, data: DatasetBundle, rows: Sequence[Row]
                     ) -> CalibrationPlan | None:
    """None when calibration is off. ``N_c`` comes from the train split's statistics."""
    c = s.test.calibration
    if c.method == "none":
        return None
    stats = data.stats
    counts = stats.image_counts if c.counts == "images" else stats.instance_counts
    gammas = tuple(float(g) for g in c.gamma)
    plan = CalibrationPlan(gammas, c.select == "heldout" and len(gammas) > 1, {}, {}, {})
    for row in rows:
        why = refusal(row.loss.name, row.loss.params)
        if why is not None:
            plan.refused[row.label] = why
            log.info("%s: not calibrated (%s)", row.label, why)
            continue
        plan.curves[row.label] = [row_label(row.label, g) for g in gammas]
        for g, name in zip(gammas, plan.curves[row.label], strict=True):
            plan.scorers[name] = calibrated(row.scorer, counts, g)
    return plan


@dataclass
class CalibrationOutcome:
    """The rows calibration adds (val metrics, per-category AP) and its record."""

    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    per_category: dict[str, list[dict]] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    headline: dict[str, str] = field(default_factory=dict)  # base label -> reported row


def finish_calibration(plan: CalibrationPlan, s: Settings, data: DatasetBundle,
                       trunk: FrozenTrunk, device: str,
                       val_metrics: Mapping[str, dict[str, float]],
                       val_per_category: Mapping[str, list[dict]]) -> CalibrationOutcome:
    """Curves on val (already scored with ``plan.scorers``), the pick on held-out images."""
    from acsl_cli.reporting.tables import metrics_json

    c = s.test.calibration
    heldout: dict[str, dict[str, float]] = {}
    heldout_images = 0
    if plan.select and plan.curves:
        heldout, heldout_images = heldout_metrics(s, data, trunk, plan.scorers, device)
    out = CalibrationOutcome()
    heads: dict[str, Any] = {}
    for base, names in plan.curves.items():
        picked = None
        if heldout:
            picked = pick(plan.gammas, [heldout[n].get(c.select_metric) for n in names])
        for name in names:
            out.rows[name] = val_metrics[name]
            out.per_category[name] = val_per_category[name]
        if picked is not None:
            name = names[plan.gammas.index(picked)]
            top = picked_label(base)
            out.rows[top], out.per_category[top] = val_metrics[name], val_per_category[name]
            out.headline[base] = top
            log.info("%s: NorCal gamma=%g picked on %d held-out images (%s %.4f)", base,
                     picked, heldout_images, c.select_metric,
                     heldout[name].get(c.select_metric) or float("nan"))
            if at_grid_edge(plan.gammas, picked):
                log.warning("%s: NorCal picked gamma=%g, the largest of the grid: the held-out "
                            "%s may still rise; extend test.calibration.gamma (e.g. "
                            "gamma=[1,1.5,2,3])", base, picked, c.select_metric)
        elif len(names) == 1:
            out.headline[base] = names[0]
        heads[base] = {
            "picked_gamma": picked,
            "picked_at_grid_edge": at_grid_edge(plan.gammas, picked),
            "reported_row": out.headline.get(base),
            "curve": [{"gamma": g, "row": n, "val": metrics_json(val_metrics[n]),
                       "heldout": metrics_json(heldout[n]) if heldout else None}
                      for g, n in zip(plan.gammas, names, strict=True)],
        }
    out.record = {
        "method": c.method, "counts": c.counts, "gamma": list(plan.gammas),
        "select": c.select if plan.select else "none", "select_metric": c.select_metric,
        "heldout": ({"images": heldout_images, "fraction": c.heldout_fraction}
                    if heldout else None),
        "heads": heads, "not_calibrated": dict(plan.refused),
    }
    return out


def pick(gammas: Sequence[float], values: Sequence[float | None]) -> float | None:
    """The gamma with the largest value (undefined values never win; ties: the first,
    i.e. the smaller gamma when the list is sorted); None if no value is defined."""
    best: tuple[float, float] | None = None
    for g, v in sorted(zip(gammas, values, strict=True), key=lambda t: t[0]):
        if v is None or v != v:  # None or NaN
            continue
        if best is None or v > best[1]:
            best = (g, float(v))
    return None if best is None else best[0]


def at_grid_edge(gammas: Sequence[float], picked: float | None) -> bool:
    """Whether the pick is the largest gamma of a grid of several: the held-out metric may
    still rise past it, so the grid should be extended (a larger gamma is never tried)."""
    return picked is not None and len(set(gammas)) > 1 and picked == max(gammas)


def heldout_metrics(s: Settings, data: DatasetBundle, trunk: FrozenTrunk,
                    scorers: Mapping[str, Scorer], device: str
                    ) -> tuple[dict[str, dict[str, float]], int]:
    """LVIS metrics of every scorer on the held-out images, and how many there are."""
    from acsl_cli.engine.inference import predict
    from acsl_cli.evaluation import evaluate_lvis

    heldout = load_heldout(s, data)
    results = predict(trunk, heldout, data.cmap, device, scorers, s.schedule.batch_size,
                      s.progress, amp=s.amp)
    return ({name: evaluate_lvis(heldout.data, dets).metrics for name, dets in
             results.items()}, len(heldout))


def load_heldout(s: Settings, data: DatasetBundle):
    """The held-out images of a generated set (generated once, under the data lock)."""
    from acsl_cli.data.datasets import generated_folder, synthetic_lvis_spec, synthetic_spec
    from acsl_cli.data.lvis_dataset import LvisDetection, read_annotations
    from acsl_cli.data.synthetic.heldout import ensure_heldout
    from acsl_cli.engine import distributed as dist
    from acsl_cli.pipeline.components import data_root
    from acsl_cli.pipeline.rundir import FileLock

    d, root = s.dataset, data_root(s)
    spec = synthetic_lvis_spec(d) if d.kind == "synthetic_lvis" else synthetic_spec(d)
    if not dist.is_main():
        dist.barrier()
    with FileLock(root / "generate"):
        ann = ensure_heldout(d.kind, spec, generated_folder(d, root),
                             s.test.calibration.heldout_fraction)
    if dist.is_main():
        dist.barrier()
    gt = read_annotations(ann)
    return LvisDetection(ann, ann.parent, "heldout", data.cmap, gt, cache_images=True)
