"""Open Images challenge detection metric (AP@0.5, verified labels, group-of boxes) in numpy.

Why our own: the official evaluator (TensorFlow object_detection's
``OpenImagesDetectionChallengeEvaluator``) needs TensorFlow and loops in Python over every
image, class and detection. This module keeps its rules and vectorises them over detections
sorted once by (image, class, -score), so 10 M detections take minutes in bounded memory.

The rules, as the official tool applies them:
- Per image only classes with a verified image label (present or absent) or a GT box are
  evaluated; detections of other classes are dropped.
- Detections with xmin >= xmax or ymin >= ymax (or non-finite coordinates), or a score that
  is NaN or <= -10, are removed; then at most ``max_per_class_image`` per (image, class),
  highest scores first.
- Stage 1, in score order: a detection takes the non-group-of box of its class with the
  highest IoU (the first box on ties); IoU >= threshold and the box still free -> TP, else FP.
- Stage 2: a detection that is not a TP and whose best intersection over its own area with
  a group-of box of its class is >= threshold is ignored. Each group-of box hit this way adds
  one entry at the best score of its hits that counts ``group_of_weight`` to the TPs and 0 to
  the FPs (no entry when the weight is 0 or that best score is <= 0).
- num_gt(c) = its non-group-of boxes + group_of_weight x its group-of boxes, over all images,
  so an unhit group-of box is a false negative of that weight.
- precision = cumTP / (cumTP + cumFP), recall = cumTP / num_gt; AP = VOC all-point area under
  the monotone precision envelope. Classes with num_gt == 0 get nan and stay out of means.
- Order: as the official tool, detections of an (image, class) are ranked by
  ``np.argsort(score)[::-1]`` before matching, and each class's entries (image after image:
  kept detections, then its hit group-of boxes) by the same call before the sums
  (``openimages_ranking``; tied scores: docs/openimages-metric.md). Zero-area ground-truth
  boxes stay: nothing can match them, they count in num_gt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from acsl_cli.evaluation.openimages_gt import (
    OpenImagesGT,
    expand_detections,
    expand_ground_truth,
    pair_keys,
)
from acsl_cli.evaluation.openimages_ranking import (
    class_entries,
    class_gt_counts,
    nan_mean,
    reference_sort,
    voc_ap,
)

__all__ = ["DET_CHUNK", "GROUPS", "PAIR_BUDGET", "OpenImagesGT", "OpenImagesResult",
           "evaluate_openimages", "expand_detections", "expand_ground_truth"]

GROUPS = ("r", "c", "f")
PAIR_BUDGET = 1 << 20  # detection x box pairs whose overlaps are held at once
DET_CHUNK = 1 << 18  # detections looked up per step (bounds the lookup arrays)


@dataclass
class OpenImagesResult:
    """Per-class AP (index label-1, nan without GT), weighted GT counts, mAP, group means."""

    ap: np.ndarray
    num_gt: np.ndarray
    map: float
    group_ap: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Percent values; APr/APc/APf only when groups were given (nan if a group has no GT)."""
        out = {"AP50": self.map * 100.0}
        out.update({f"AP{g}": v * 100.0 for g, v in self.group_ap.items()})
        return out


# ---------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------


def _overlaps(det: np.ndarray, gboxes: np.ndarray, lo: np.ndarray, cnt: np.ndarray,
              over_det_area: bool) -> tuple[np.ndarray, np.ndarray]:
    """Best IoU (or intersection / detection area) and its first box, per detection (cnt>0)."""
    starts = np.cumsum(cnt) - cnt
    pd = np.repeat(np.arange(len(cnt)), cnt)
    gi = np.repeat(lo - starts, cnt) + np.arange(len(pd))
    d, g = det[pd].astype(np.float64), gboxes[gi]
    iw = np.maximum(np.minimum(d[:, 2], g[:, 2]) - np.maximum(d[:, 0], g[:, 0]), 0.0)
    ih = np.maximum(np.minimum(d[:, 3], g[:, 3]) - np.maximum(d[:, 1], g[:, 1]), 0.0)
    inter = ih * iw
    darea = (d[:, 3] - d[:, 1]) * (d[:, 2] - d[:, 0])
    if over_det_area:
        val = inter / darea
    else:
        val = inter / (darea + (g[:, 3] - g[:, 1]) * (g[:, 2] - g[:, 0]) - inter)
    best = np.maximum.reduceat(val, starts)
    at = np.flatnonzero(val == np.repeat(best, cnt))
    first = at[np.r_[True, pd[at][1:] != pd[at][:-1]]]
    return best, gi[first]


def _hits(skip: np.ndarray, keys: np.ndarray, boxes: np.ndarray, gkeys: np.ndarray,
          gboxes: np.ndarray, threshold: float, over_det_area: bool,
          tick: Callable[[int], None]) -> tuple[np.ndarray, np.ndarray]:
    """(detection row, box) for the detections not in ``skip`` whose best overlap >= threshold."""
    out_rows, out_boxes = [], []
    for a in range(0, len(keys), DET_CHUNK):
        r = np.arange(a, min(a + DET_CHUNK, len(keys)))
        r = r[~skip[r]]
        lo = np.searchsorted(gkeys, keys[r], "left")
        cnt = np.searchsorted(gkeys, keys[r], "right") - lo
        has = cnt > 0
        r, lo, cnt = r[has], lo[has], cnt[has]
        cum = np.cumsum(cnt)
        s = 0
        while s < len(r):  # sub-steps of at most PAIR_BUDGET pairs (at least one detection)
            base = cum[s - 1] if s else 0
            e = max(int(np.searchsorted(cum, base + PAIR_BUDGET, "right")), s + 1)
            best, box = _overlaps(boxes[r[s:e]], gboxes, lo[s:e], cnt[s:e], over_det_area)
            ok = best >= threshold
            out_rows.append(r[s:e][ok])
            out_boxes.append(box[ok])
            s = e
        tick(min(DET_CHUNK, len(keys) - a))
    return (np.concatenate(out_rows or [np.zeros(0, np.int64)]),
            np.concatenate(out_boxes or [np.zeros(0, np.int64)]))


def _gt_index(gt: OpenImagesGT, group_of: bool) -> tuple[np.ndarray, np.ndarray]:
    """(sorted (image, class) keys, boxes in that order) of the group-of or other boxes."""
    sel = np.flatnonzero(np.asarray(gt.group_of, bool) == group_of)
    key = pair_keys(gt.box_offsets, gt.box_labels, gt.num_classes)[sel]
    order = np.argsort(key, kind="stable")
    return key[order], np.asarray(gt.boxes, np.float64)[sel[order]]


def _select(gt: OpenImagesGT, image_index, labels, scores, boxes, cap: int):
    """Kept detections by (image, class), each ranked as the reference: (keys, scores, boxes)."""
    c1, n = gt.num_classes + 1, len(scores)
    image_index, labels = np.asarray(image_index, np.int64), np.asarray(labels, np.int64)
    scores, boxes = np.asarray(scores, np.float64), np.asarray(boxes, np.float64)
    boxes = boxes.reshape(0, 4) if boxes.size == 0 else boxes
    if not (len(image_index) == len(labels) == n and boxes.shape == (n, 4)):
        raise ValueError("image_index, labels, scores and boxes (n, 4) must have the same n")
    if n and not (0 <= image_index.min() and image_index.max() < gt.num_images):
        raise ValueError(f"image_index outside [0, {gt.num_images})")
    if n and not (1 <= labels.min() and labels.max() < c1):
        raise ValueError(f"labels outside [1, {gt.num_classes}]")
    key = image_index * c1 + labels
    del image_index, labels
    verified = np.unique(np.concatenate([
        pair_keys(gt.box_offsets, gt.box_labels, gt.num_classes),
        pair_keys(gt.pos_offsets, gt.pos_labels, gt.num_classes),
        pair_keys(gt.neg_offsets, gt.neg_labels, gt.num_classes)]))
    keep = ((boxes[:, 0] < boxes[:, 2]) & (boxes[:, 1] < boxes[:, 3])
            & np.isfinite(boxes).all(axis=1) & (scores > -10))
    if len(verified):
        pos = np.minimum(np.searchsorted(verified, key), len(verified) - 1)
        keep &= verified[pos] == key
    else:
        keep[:] = False
    idx = reference_sort(np.flatnonzero(keep), key, scores)
    k = key[idx]
    first = np.flatnonzero(np.r_[True, k[1:] != k[:-1]]) if len(k) else np.zeros(0, np.int64)
    rank = np.arange(len(k)) - np.repeat(first, np.diff(np.r_[first, len(k)]))
    idx = idx[rank < cap]
    return key[idx], scores[idx], boxes[idx]


def _result(gt: OpenImagesGT, cls: np.ndarray, score: np.ndarray, tp: np.ndarray,
            group_of_weight: float, groups: Sequence[str] | None) -> OpenImagesResult:
    """Per-class AP from entries in the reference's concatenation order, then the means."""
    image = np.repeat(np.arange(gt.num_images), np.diff(gt.box_offsets))
    num_gt = class_gt_counts(image, gt.box_labels, np.asarray(gt.group_of, bool),
                             gt.num_classes, group_of_weight)
    bounds, tp = class_entries(cls, score, tp, gt.num_classes)
    ap = np.full(gt.num_classes, np.nan)
    has = num_gt > 0
    for c in np.flatnonzero(has):
        ap[c] = voc_ap(tp[bounds[c]:bounds[c + 1]], num_gt[c])
    group_ap: dict[str, float] = {}
    if groups is not None:
        member = np.array([[g == name for g in groups] for name in GROUPS]) & has
        group_ap = {name: float(ap[m].mean()) if m.any() else float("nan")
                    for name, m in zip(GROUPS, member, strict=True)}
    return OpenImagesResult(ap=ap, num_gt=num_gt, map=nan_mean(ap, has), group_ap=group_ap)


def evaluate_openimages(gt: OpenImagesGT, image_index: np.ndarray, labels: np.ndarray,
                        scores: np.ndarray, boxes: np.ndarray, *, iou_threshold: float = 0.5,
                        group_of_weight: float = 1.0, groups: Sequence[str] | None = None,
                        max_per_class_image: int = 10_000,
                        progress: Callable[[int, int], None] | None = None) -> OpenImagesResult:
    """Open Images challenge AP of detections (image index, label 1..C, score, xyxy box).

    The rules are in the module docstring. Pass GT already expanded to the hierarchy
    (``expand_ground_truth``), as the official tool does. ``groups[label-1]`` in r/c/f gives
    per-group means; ``progress(done, total)`` is called as matching proceeds.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold {iou_threshold} not in (0, 1]")
    if not (np.isfinite(group_of_weight) and group_of_weight >= 0):
        raise ValueError(f"group_of_weight {group_of_weight} must be finite and >= 0")
    if max_per_class_image < 1:
        raise ValueError(f"max_per_class_image {max_per_class_image} must be >= 1")
    if groups is not None and len(groups) != gt.num_classes:
        raise ValueError(f"groups has {len(groups)} entries for {gt.num_classes} classes")
    if not np.isfinite(np.asarray(gt.boxes, np.float64)).all():
        raise ValueError("ground-truth boxes must be finite")
    key, score, box = _select(gt, image_index, labels, scores, boxes, max_per_class_image)
    n, done = len(key), [0]

    def tick(k: int) -> None:
        done[0] += k
        if progress is not None:
            progress(done[0], 2 * n)

    # Stage 1: a box goes to the first (ranked) detection whose best box it is.
    tp = np.zeros(n, bool)
    rows, hit = _hits(tp, key, box, *_gt_index(gt, False), iou_threshold, False, tick)
    tp[rows[np.unique(hit, return_index=True)[1]]] = True
    # Stage 2: other detections mostly inside a group-of box are ignored; each hit box counts
    # once at its best score, i.e. at its first detection in ranked order.
    rows, hit = _hits(tp, key, box, *_gt_index(gt, True), iou_threshold, True, tick)
    ignored = np.zeros(n, bool)
    ignored[rows] = True
    group_rows = rows[np.unique(hit, return_index=True)[1]]
    group_rows = group_rows[(score[group_rows] > 0) & (group_of_weight > 0)]
    del box
    # Entries as the reference concatenates them per class: image after image, the kept
    # detections in their ranked order, then one per hit group-of box in ground-truth order
    # (``group_rows`` is ordered by box, boxes by (image, class) then file order).
    kept = np.flatnonzero(~ignored)
    e_row = np.concatenate([kept, group_rows])
    e_tp = np.concatenate([tp[kept].astype(np.float64),
                           np.full(len(group_rows), float(group_of_weight))])
    section = np.repeat([0, 1], [len(kept), len(group_rows)])
    order = np.lexsort((np.arange(len(e_row)), section, key[e_row] // (gt.num_classes + 1)))
    e_row, e_tp = e_row[order], e_tp[order]
    return _result(gt, key[e_row] % (gt.num_classes + 1), score[e_row], e_tp,
                   group_of_weight, groups)
