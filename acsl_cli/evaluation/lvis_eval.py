"""LVIS bounding-box evaluation under lvis-api 0.5.3 rules, vectorised with numpy.

Why our own: lvis-api loops in Python over every (image, category, area range, IoU
threshold, detection, ground truth) combination, which takes many minutes on LVIS val,
crashes on an empty result list and needs ``np.float`` (gone in numpy 2). This module
reproduces its numbers -- federated negatives and not-exhaustive rules, greedy matching,
101-point interpolated AP -- and ``tests/test_lvis_eval.py`` checks it against lvis-api.
``lvis_gt`` selects what takes part, ``lvis_matching`` matches, this module accumulates
precision and summarises.

Differences from lvis-api, all on inputs lvis-api mishandles: an empty detection list gives
AP 0 instead of crashing; detections with unknown image or category ids are an error
instead of being dropped or asserted on; a ground-truth annotation without ``area`` uses its
box ``w * h``; a ground-truth annotation id of 0 still counts as a match; a category whose
``frequency`` is not r/c/f counts in AP but in no frequency group.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from acsl_cli.evaluation.detections import Detections, parse_detections
from acsl_cli.evaluation.lvis_gt import (
    AREA_RANGES,
    KeptDetections,
    LvisGroundTruth,
    index_ground_truth,
    select_detections,
)
from acsl_cli.evaluation.lvis_matching import (
    IOU_THRESHOLDS,
    EvalProgress,
    busy_pairs,
    match_all,
)

METRIC_KEYS: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
FREQUENCIES = ("r", "c", "f")

@dataclass(frozen=True)
class LvisEvalResult:
    """Summary metrics (nan where no category of the group has ground truth) and per-category AP."""

    metrics: dict[str, float]
    per_category: list[dict]


def _interpolated_precision(outcome: np.ndarray, num_gt: int) -> np.ndarray:
    """(T, 101) precision at the recall thresholds for one category and area range.

    ``outcome`` is (n, T) in descending-score order. Ignored detections stay in the
    sequence as steps that add neither TP nor FP, exactly as in lvis-api, because the
    recall lookup indexes into that full sequence.
    """
    n, n_thr = outcome.shape
    tp = np.cumsum(outcome == 1, axis=0, dtype=np.float64)
    fp = np.cumsum(outcome == -1, axis=0, dtype=np.float64)
    recall = tp / num_gt
    precision = tp / (fp + tp + np.spacing(1))
    # Precision envelope: best precision at this or any higher recall.
    precision = np.maximum.accumulate(precision[::-1], axis=0)[::-1]
    sampled = np.zeros((n_thr, len(RECALL_THRESHOLDS)))
    for t in range(n_thr):
        idx = np.searchsorted(recall[:, t], RECALL_THRESHOLDS, side="left")
        reached = idx < n  # recall levels never reached keep precision 0
        sampled[t, reached] = precision[idx[reached], t]
    return sampled


def _mean_valid(values: np.ndarray) -> float:
    """Mean over entries > -1 (lvis-api's marker for "no GT"), nan if there are none."""
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else math.nan


def evaluate_lvis(
    gt: dict,
    detections: list[dict],
    max_dets: int = 300,
    progress: Callable[[int, int], None] | None = None,
) -> LvisEvalResult:
    """Evaluate bbox detections on LVIS-format ground truth with lvis-api 0.5.3 rules.

    ``gt`` is the parsed LVIS json (images, annotations, categories); ``detections`` are
    ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` dicts (validated first,
    DataError on bad input). ``progress(done, total)`` is called as work proceeds, last with
    ``done == total``. Metrics are in [0, 1]; a metric whose group has no category with GT
    is nan (lvis-api reports -1). ``per_category`` lists AP at IoU .50:.95, area all, for
    each category with GT.
    """
    return evaluate_parsed(gt, parse_detections(gt, detections, "detections"), max_dets, progress)


@dataclass(frozen=True)
class LvisMatches:
    """Everything the summary needs after matching, so other summaries (Fixed and Pooled AP,
    the image bootstrap) reuse one matching instead of running it again.

    ``outcome`` is (n, A, T) per kept detection: +1 TP, -1 FP, 0 ignored; ``num_gt`` (K, A)
    counts the non-ignored ground truth per category index and area range.
    """

    gt: LvisGroundTruth
    kept: KeptDetections
    outcome: np.ndarray
    num_gt: np.ndarray
    #: the caller's progress counter, sized for the matching and one step per category
    progress: EvalProgress = field(default_factory=lambda: EvalProgress(0, None),
                                   compare=False, repr=False)

    @property
    def eval_cats(self) -> np.ndarray:
        """Category indices with ground truth ("all" contains every other area range)."""
        return np.flatnonzero(self.num_gt[:, 0] > 0)

    def accumulation_order(self) -> np.ndarray:
        """Kept detections per category by descending score; ties by image id, then input
        order (lvis-api concatenates per-image lists in image order, then mergesorts)."""
        k = self.kept  # in input order: stable sorts, last key first (faster than lexsort)
        order = np.argsort(k.img, kind="stable")
        order = order[np.argsort(-k.scores[order], kind="stable")]
        return order[np.argsort(k.cat[order], kind="stable")]


def match_detections(
    gt: dict,
    dets: Detections,
    max_dets: int = 300,
    progress: Callable[[int, int], None] | None = None,
) -> LvisMatches:
    """lvis-api's selection and greedy matching (``progress`` as in ``evaluate_lvis``)."""
    g = index_ground_truth(gt)
    kept = select_detections(g, dets, max_dets)
    n_cats, n_area = len(g.category_ids), len(AREA_RANGES)
    num_gt = np.stack(
        [np.bincount(g.cat[~g.ignored[:, a]], minlength=n_cats) for a in range(n_area)], axis=1
    )  # (K, A)
    pairs = busy_pairs(g, kept)
    n_eval = int((num_gt[:, 0] > 0).sum())
    tracker = EvalProgress(len(pairs[0]) + n_eval, progress)
    return LvisMatches(g, kept, match_all(g, kept, pairs, tracker), num_gt, tracker)


def evaluate_parsed(
    gt: dict,
    dets: Detections,
    max_dets: int = 300,
    progress: Callable[[int, int], None] | None = None,
) -> LvisEvalResult:
    """``evaluate_lvis`` on detections already checked by ``parse_detections``."""
    return summarise(match_detections(gt, dets, max_dets, progress))


def summarise(m: LvisMatches) -> LvisEvalResult:
    """Precision per category and area range, then lvis-api's summary metrics."""
    g, kept, outcome, num_gt, tracker = m.gt, m.kept, m.outcome, m.num_gt, m.progress
    n_area = len(AREA_RANGES)
    eval_cats = m.eval_cats
    acc_order = m.accumulation_order()
    cat_sorted = kept.cat[acc_order]
    starts = np.searchsorted(cat_sorted, eval_cats, side="left")
    ends = np.searchsorted(cat_sorted, eval_cats, side="right")
    precision = -np.ones((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(eval_cats), n_area))
    for j, cat in enumerate(eval_cats):
        block = outcome[acc_order[starts[j] : ends[j]]]
        for a in range(n_area):
            if num_gt[cat, a] > 0:
                precision[:, :, j, a] = _interpolated_precision(block[:, a, :], num_gt[cat, a])
        tracker.advance()
    tracker.finish()

    frequency = np.array([g.categories[c].get("frequency") for c in eval_cats], dtype=object)
    t50 = np.flatnonzero(np.isclose(IOU_THRESHOLDS, 0.5))
    t75 = np.flatnonzero(np.isclose(IOU_THRESHOLDS, 0.75))
    area_all = precision[..., 0]
    metrics = {
        "AP": _mean_valid(area_all),
        "AP50": _mean_valid(area_all[t50]),
        "AP75": _mean_valid(area_all[t75]),
        "APs": _mean_valid(precision[..., 1]),
        "APm": _mean_valid(precision[..., 2]),
        "APl": _mean_valid(precision[..., 3]),
    }
    for freq in FREQUENCIES:
        metrics[f"AP{freq}"] = _mean_valid(area_all[:, :, frequency == freq])

    per_category = []
    for j, cat in enumerate(eval_cats):
        info = g.categories[cat]
        per_category.append(
            {
                "category_id": int(g.category_ids[cat]),
                "name": info.get("name", str(info["id"])),
                "frequency": info.get("frequency"),
                "num_gt": int(num_gt[cat, 0]),
                "AP": _mean_valid(area_all[:, :, j]),
            }
        )
    return LvisEvalResult(
        metrics={key: metrics[key] for key in METRIC_KEYS}, per_category=per_category
    )
