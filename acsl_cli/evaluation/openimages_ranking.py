"""Score orders and AP arithmetic of the Open Images challenge metric, as the reference has them.

Apart from the matching (``openimages_metric``) because these are the places where the
official TensorFlow evaluator's answer depends on *how* it computes, not only on the rules:

- Detections of one (image, class) are sorted by ``np.argsort(scores)[::-1]`` (default
  kind, reversed) before matching, and each class's entries (per image, in image order:
  the kept detections in that order, then one entry per hit group-of box in ground-truth
  order) are concatenated and sorted the same way before the precision/recall sums.
  Tied scores are therefore ordered by what numpy's argsort does on that exact float64
  array; we make the same call on the same array (docs/openimages-metric.md).
- AP, the class GT counts and the mean are summed in the reference's order, so results
  agree to the last bit, not only to rounding.
"""

from __future__ import annotations

import numpy as np


def reference_sort(order: np.ndarray, key: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Rows grouped by key (ascending), each group in the reference's descending-score order.

    ``order`` are row numbers in input order; ``scores`` float64. Groups without tied
    scores have one descending order, found vectorised; a group with a tie is re-sorted
    with the reference's own call, ``np.argsort`` on its scores in input order, reversed.
    """
    order = order[np.lexsort((-order, -scores[order], key[order]))]
    k, s = key[order], scores[order]
    tie = np.flatnonzero((k[1:] == k[:-1]) & (s[1:] == s[:-1]))
    if not len(tie):
        return order
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    ends = np.r_[starts[1:], len(k)]
    for g in np.unique(np.searchsorted(starts, tie, "right") - 1):
        a, b = starts[g], ends[g]
        rows = np.sort(order[a:b])  # the group in input order
        order[a:b] = rows[np.argsort(scores[rows])[::-1]]
    return order


def class_entries(cls: np.ndarray, scores: np.ndarray, tp: np.ndarray, num_classes: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(bounds, TP weights): class c's entries in [bounds[c-1], bounds[c]), score-ranked.

    Input entries are in the reference's concatenation order within each class (classes may
    interleave); each class is ranked with ``np.argsort(scores)[::-1]`` as the reference does.
    """
    by_class = np.argsort(cls, kind="stable")
    cls, scores, tp = cls[by_class], scores[by_class], tp[by_class]
    bounds = np.searchsorted(cls, np.arange(1, num_classes + 2))
    out = np.empty_like(tp)
    for c in range(num_classes):
        a, b = bounds[c], bounds[c + 1]
        if b > a:
            out[a:b] = tp[a:b][np.argsort(scores[a:b])[::-1]]
    return bounds, out


def voc_ap(tp: np.ndarray, num_gt: float) -> float:
    """VOC all-point AP of score-ranked TP weights (<= 0: false positive), summed as the
    reference does: recall padded with 0 and 1, precision with 0 and 0, the envelope, then
    one term per recall change."""
    ctp = np.cumsum(tp)
    cfp = np.cumsum((tp <= 0).astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = ctp / (ctp + cfp)
    recall = np.concatenate([[0.0], ctp / num_gt, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[at] - recall[at - 1]) * precision[at]))


def class_gt_counts(image: np.ndarray, labels: np.ndarray, group_of: np.ndarray,
                    num_classes: int, group_of_weight: float) -> np.ndarray:
    """num_gt per class (index label-1): per image, boxes + weight x group-of boxes, added
    image after image in float64 as the reference accumulates them."""
    c1 = num_classes + 1
    key = np.asarray(image, np.int64) * c1 + np.asarray(labels, np.int64)
    pairs, where = np.unique(key, return_inverse=True)
    plain = np.bincount(where, weights=~group_of, minlength=len(pairs))
    group = np.bincount(where, weights=group_of, minlength=len(pairs))
    out = np.zeros(c1)
    np.add.at(out, pairs % c1, plain + group_of_weight * group)  # pairs are in image order
    return out[1:]


def nan_mean(ap: np.ndarray, has: np.ndarray) -> float:
    """``np.nanmean`` over all classes (AP nan where a class has no GT), as the reference."""
    if not has.any():
        return float("nan")
    return float(np.sum(np.where(has, ap, 0.0)) / int(has.sum()))
