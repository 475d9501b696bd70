"""The pipeline's detections scored with the Open Images challenge metric.

The pipeline predicts LVIS-style results (``image_id`` = index in the val split, xywh in
pixels, ``category_id`` = label); Open Images scores normalised xyxy boxes against ground
truth expanded up the class hierarchy. Metrics use the LVIS table's keys so that tables,
sweeps and reports need no second format: ``AP`` and ``AP50`` are both AP at IoU 0.5 (the
only threshold Open Images uses; the paper's Table 5 calls it AP), ``APr/APc/APf`` the
per-group means, and the COCO-only keys are absent (None).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from acsl_cli.evaluation.lvis_eval import METRIC_KEYS
from acsl_cli.evaluation.openimages_metric import (
    OpenImagesGT,
    OpenImagesResult,
    evaluate_openimages,
    expand_detections,
)

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def count_value(value: float) -> int | float:
    """A GT count as an int when whole (group-of boxes weigh ``group_of_weight``)."""
    return int(value) if float(value).is_integer() else float(value)


def results_to_arrays(results: Sequence[dict], widths: np.ndarray, heights: np.ndarray
                      ) -> Arrays:
    """LVIS results -> (image index, label, score, normalised xyxy box) arrays."""
    n = len(results)
    image = np.fromiter((r["image_id"] for r in results), np.int64, n)
    labels = np.fromiter((r["category_id"] for r in results), np.int32, n)
    scores = np.fromiter((r["score"] for r in results), np.float64, n)
    boxes = np.array([r["bbox"] for r in results], dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    w = widths[image].astype(np.float64)
    h = heights[image].astype(np.float64)
    boxes /= np.stack([w, h, w, h], axis=1)
    return image, labels, scores, np.clip(boxes, 0.0, 1.0)


def first_images(gt: OpenImagesGT, count: int) -> OpenImagesGT:
    """The ground truth of images 0..count-1 (the pipeline's ``eval_max_images``)."""
    if count >= gt.num_images:
        return gt
    b, p, q = (int(gt.box_offsets[count]), int(gt.pos_offsets[count]),
               int(gt.neg_offsets[count]))
    return replace(gt, box_offsets=gt.box_offsets[: count + 1], boxes=gt.boxes[:b],
                   box_labels=gt.box_labels[:b], group_of=gt.group_of[:b],
                   pos_offsets=gt.pos_offsets[: count + 1], pos_labels=gt.pos_labels[:p],
                   neg_offsets=gt.neg_offsets[: count + 1], neg_labels=gt.neg_labels[:q])


def score_openimages(
    gt: OpenImagesGT, results: Sequence[dict], widths: np.ndarray, heights: np.ndarray, *,
    ancestors: Sequence[tuple[int, ...]], names: Sequence[str], groups: Sequence[str],
    expand: bool = False, group_of_weight: float = 1.0,
) -> tuple[dict[str, float | None], list[dict]]:
    """Metrics (fractions, LVIS keys) and per-category rows for one model's results.

    ``gt`` is the val ground truth already expanded up the hierarchy
    (``expand_ground_truth``, once for all models scored); ``expand`` also copies every
    detection to the ancestors of its class (``test.expand_hierarchy``), for models that
    predict leaf classes only.
    """
    arrays = results_to_arrays(results, widths, heights)
    if expand:
        arrays = expand_detections(*arrays, ancestors)
    r = evaluate_openimages(gt, *arrays, group_of_weight=group_of_weight, groups=groups)
    return table_metrics(r, grouped=True), category_rows(r, names, groups)


def table_metrics(r: OpenImagesResult, grouped: bool) -> dict[str, float | None]:
    """The LVIS table's keys: AP = AP50 = AP at IoU 0.5, group APs (nan without groups)."""
    metrics: dict[str, float | None] = dict.fromkeys(METRIC_KEYS)
    metrics["AP"] = metrics["AP50"] = r.map
    for g in "rcf":
        metrics[f"AP{g}"] = r.group_ap.get(g, float("nan")) if grouped else float("nan")
    return metrics


def category_rows(r: OpenImagesResult, names: Sequence[str], groups: Sequence[str] | None
                  ) -> list[dict]:
    """Per-category rows (classes with GT) as ``per_category_ap.csv`` takes them."""
    return [{"category_id": c, "name": names[c - 1], "frequency": groups[c - 1] if groups
             else "", "num_gt": count_value(r.num_gt[c - 1]), "AP": float(r.ap[c - 1])}
            for c in range(1, len(r.ap) + 1) if r.num_gt[c - 1] > 0]
