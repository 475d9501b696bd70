"""LVIS bounding-box evaluation under lvis-api 0.5.3 rules, vectorised with numpy.

Why our own: lvis-api loops in Python over every (image, category, area range, IoU
threshold, detection, ground truth) combination, which takes many minutes on LVIS val,
crashes on an empty result list and needs ``np.float`` (gone in numpy 2). This module
reproduces its numbers -- federated negatives and not-exhaustive rules, greedy matching,
101-point interpolated AP -- and ``tests/test_lvis_eval.py`` checks it against lvis-api.

Differences from lvis-api, all on inputs lvis-api mishandles: an empty detection list gives
AP 0 instead of crashing; detections with unknown image or category ids are an error
instead of being dropped or asserted on; a ground-truth annotation without ``area`` uses its
box ``w * h``; a ground-truth annotation id of 0 still counts as a match; a category whose
``frequency`` is not r/c/f counts in AP but in no frequency group.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from acsl_cli.errors import DataError
from acsl_cli.evaluation.detections import (
    Detections,
    gt_ids,
    load_detections,
    parse_detections,
    validate_detections,
)

METRIC_KEYS: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")

# Built with linspace as lvis-api does: arange drifts (0.7500000000000002), and the exact
# threshold values decide matches whose IoU sits on a threshold. (lvis-api also clips each
# threshold to 1 - 1e-10 while matching; a no-op for these values, so left out.)
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
# Rows: all, small, medium, large; both ends inclusive.
AREA_RANGES = np.array([[0.0, 1e10], [0.0, 32.0**2], [32.0**2, 96.0**2], [96.0**2, 1e10]])
FREQUENCIES = ("r", "c", "f")

# Results files are read and checked in ``detections``; re-exported for existing imports.
__all__ = [
    "METRIC_KEYS",
    "LvisEvalResult",
    "evaluate_lvis",
    "load_detections",
    "validate_detections",
]


@dataclass(frozen=True)
class LvisEvalResult:
    """Summary metrics (nan where no category of the group has ground truth) and per-category AP."""

    metrics: dict[str, float]
    per_category: list[dict]


# ---------------------------------------------------------------------------------------
# Ground truth and detection selection
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _GroundTruth:
    image_ids: np.ndarray  # sorted unique; an image's index is its position here
    category_ids: np.ndarray  # sorted unique
    categories: list[dict]  # in category_ids order
    img: np.ndarray  # per evaluated annotation (file order): image index
    cat: np.ndarray  # category index
    boxes: np.ndarray  # (m, 4) xywh
    ignored: np.ndarray  # (m, A) bool: 'ignore' flag set or area outside the range
    pos_keys: np.ndarray  # sorted pair keys (image, category) that have an annotation
    neg_keys: np.ndarray  # pair keys from images[].neg_category_ids
    nel_keys: np.ndarray  # pair keys from images[].not_exhaustive_category_ids

    def key(self, img: np.ndarray, cat: np.ndarray) -> np.ndarray:
        return img.astype(np.int64) * len(self.category_ids) + cat


def _image_pair_keys(
    images: list[dict], field: str, image_ids: np.ndarray, category_ids: np.ndarray
) -> np.ndarray:
    img, cat = [], []
    for image in images:
        listed = image.get(field, [])
        img.extend([image["id"]] * len(listed))
        cat.extend(listed)
    img_arr, cat_arr = np.array(img, dtype=np.int64), np.array(cat, dtype=np.int64)
    known = np.isin(cat_arr, category_ids)  # other ids cannot match any valid detection
    img_idx = np.searchsorted(image_ids, img_arr[known])
    cat_idx = np.searchsorted(category_ids, cat_arr[known])
    return np.unique(img_idx * len(category_ids) + cat_idx)


def _index_ground_truth(gt: dict) -> _GroundTruth:
    """Arrays of the annotations lvis-api evaluates, plus per-image federated category lists.

    Like lvis-api (its get_ann_ids area filter), annotations with area <= 0 are dropped
    entirely: they neither count as GT nor make their category "present" in the image.
    """
    image_ids = gt_ids(gt, "images")
    category_ids = gt_ids(gt, "categories")
    cat_by_id = {c["id"]: c for c in gt["categories"]}
    categories = [cat_by_id[int(c)] for c in category_ids]
    try:
        anns = gt["annotations"]
        ann_img = np.array([a["image_id"] for a in anns], dtype=np.int64)
        ann_cat = np.array([a["category_id"] for a in anns], dtype=np.int64)
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        area = np.array(
            [a["area"] if "area" in a else a["bbox"][2] * a["bbox"][3] for a in anns],
            dtype=np.float64,
        )
        flagged = np.array([bool(a.get("ignore", 0)) for a in anns], dtype=bool)
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(
            f"ground truth: malformed annotations ({type(err).__name__}: {err})"
        ) from None
    keep = (
        np.isin(ann_img, image_ids) & np.isin(ann_cat, category_ids) & (area > 0) & (area < np.inf)
    )
    img = np.searchsorted(image_ids, ann_img[keep])
    cat = np.searchsorted(category_ids, ann_cat[keep])
    area = area[keep]
    out_of_range = (area[:, None] < AREA_RANGES[:, 0]) | (area[:, None] > AREA_RANGES[:, 1])
    images = gt["images"]
    return _GroundTruth(
        image_ids=image_ids,
        category_ids=category_ids,
        categories=categories,
        img=img,
        cat=cat,
        boxes=boxes[keep],
        ignored=out_of_range | flagged[keep][:, None],
        pos_keys=np.unique(img * len(category_ids) + cat),
        neg_keys=_image_pair_keys(images, "neg_category_ids", image_ids, category_ids),
        nel_keys=_image_pair_keys(images, "not_exhaustive_category_ids", image_ids, category_ids),
    )


@dataclass(frozen=True)
class _Kept:
    """Detections that take part in evaluation, in input order."""

    order: np.ndarray  # position in the input list (breaks score ties, as lvis-api's stable sorts)
    img: np.ndarray
    cat: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    ignored_if_unmatched: np.ndarray  # (k, A): outside the area range or not-exhaustive pair


def _select_detections(g: _GroundTruth, dets: Detections, max_dets: int) -> _Kept:
    """Apply lvis-api's result filtering: per-image top-``max_dets``, then federated rules.

    The cap comes first and spans all categories of an image; ties keep input order
    (Python's stable ``sorted(reverse=True)``). A negative ``max_dets`` disables it.
    Detections with box area <= 0 are dropped after the cap (lvis-api's area filter), and
    a detection survives only if its category is annotated or listed negative in its image.
    """
    n = len(dets.scores)
    position = np.arange(n)
    img = np.searchsorted(g.image_ids, dets.image_ids)
    cat = np.searchsorted(g.category_ids, dets.category_ids)
    keep = np.ones(n, dtype=bool)
    if max_dets >= 0 and n:
        by_image = np.lexsort((position, -dets.scores, img))
        img_sorted = img[by_image]
        rank = position - np.searchsorted(img_sorted, img_sorted, side="left")
        keep[by_image[rank >= max_dets]] = False
    area = dets.boxes[:, 2] * dets.boxes[:, 3]
    keep &= (area > 0) & (area < np.inf)
    key = g.key(img, cat)
    keep &= np.isin(key, g.pos_keys) | np.isin(key, g.neg_keys)
    idx = np.flatnonzero(keep)
    area = area[idx]
    out_of_range = (area[:, None] < AREA_RANGES[:, 0]) | (area[:, None] > AREA_RANGES[:, 1])
    not_exhaustive = np.isin(key[idx], g.nel_keys)
    return _Kept(
        order=idx,
        img=img[idx],
        cat=cat[idx],
        boxes=dets.boxes[idx],
        scores=dets.scores[idx],
        ignored_if_unmatched=out_of_range | not_exhaustive[:, None],
    )


# ---------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------


def _box_iou(dt: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU matrix (len(dt), len(gt)) of xywh boxes, computed as pycocotools' bbIou.

    Same float operations in the same order (no +1, iscrowd=0), so IoUs that sit exactly on
    a threshold compare the same way as in lvis-api.
    """
    d, g = dt[:, None, :], gt[None, :, :]
    w = np.minimum(d[..., 0] + d[..., 2], g[..., 0] + g[..., 2]) - np.maximum(d[..., 0], g[..., 0])
    h = np.minimum(d[..., 1] + d[..., 3], g[..., 1] + g[..., 3]) - np.maximum(d[..., 1], g[..., 1])
    inter = w * h
    union = (d[..., 2] * d[..., 3] + g[..., 2] * g[..., 3]) - inter
    overlap = (w > 0) & (h > 0)
    return np.divide(inter, union, out=np.zeros(inter.shape), where=overlap)


def _greedy_match(ious: np.ndarray, gt_ignored: np.ndarray) -> np.ndarray:
    """Greedy matching of one (image, category) for every area range and IoU threshold.

    ``ious`` is (D, G) with detections in evaluation order; ``gt_ignored`` is (A, G).
    Returns (A, T, D) GT column matched by each detection, -1 for none. lvis-api's rule:
    each detection in turn takes the still-free GT with the highest IoU >= threshold (the
    last one in annotation order on ties), preferring non-ignored GTs over ignored ones.
    All A x T (area, threshold) rows advance together, one detection at a time.
    """
    n_dt, n_gt = ious.shape
    n_area, n_thr = gt_ignored.shape[0], len(IOU_THRESHOLDS)
    thr = np.tile(IOU_THRESHOLDS, n_area)[:, None]  # (R, 1), R = A * T
    match = np.full((n_area * n_thr, n_dt), -1, dtype=np.int64)
    if n_gt == 1:
        # One GT: it goes to the first detection (in score order) that reaches the threshold.
        hit = ious[:, 0][None, :] >= thr
        first = hit.argmax(axis=1)
        rows = np.flatnonzero(hit[np.arange(len(first)), first])
        match[rows, first[rows]] = 0
        return match.reshape(n_area, n_thr, n_dt)
    ignored = np.repeat(gt_ignored, n_thr, axis=0)  # (R, G)
    taken = np.zeros(ignored.shape, dtype=bool)
    for d in np.flatnonzero(ious.max(axis=1) >= IOU_THRESHOLDS[0]):
        free = (ious[d] >= thr) & ~taken
        has_regular = (free & ~ignored).any(axis=1, keepdims=True)
        pool = free & (ignored != has_regular)  # regular GTs if any qualify, else ignored ones
        rows = np.flatnonzero(pool.any(axis=1))
        if rows.size == 0:
            continue
        scored = np.where(pool[rows], ious[d], -1.0)
        best = n_gt - 1 - scored[:, ::-1].argmax(axis=1)  # last maximum, as lvis-api's >= scan
        taken[rows, best] = True
        match[rows, d] = best
    return match.reshape(n_area, n_thr, n_dt)


class _Progress:
    """Forward (done, total) to the caller's callback about 200 times over the run."""

    def __init__(self, total: int, callback: Callable[[int, int], None] | None):
        self.total, self.callback, self.done = total, callback, 0
        self.every = max(1, total // 200)

    def advance(self) -> None:
        self.done += 1
        if self.callback is not None and (self.done % self.every == 0 or self.done == self.total):
            self.callback(self.done, self.total)

    def finish(self) -> None:
        if self.callback is not None and self.done != self.total:
            self.done = self.total
            self.callback(self.done, self.total)


def _match_all(g: _GroundTruth, k: _Kept, busy_pairs: tuple, progress: _Progress) -> np.ndarray:
    """Outcome of each kept detection per (area range, threshold): +1 TP, -1 FP, 0 ignored.

    Only (image, category) pairs holding both GT and detections need matching; every other
    detection is unmatched, i.e. ignored if outside the area range or not-exhaustive, else FP.
    """
    n_thr = len(IOU_THRESHOLDS)
    unmatched = np.where(k.ignored_if_unmatched, 0, -1).astype(np.int8)
    outcome = np.repeat(unmatched[:, :, None], n_thr, axis=2)  # (n, A, T)
    areas = np.arange(len(AREA_RANGES))[:, None, None]
    for gt_idx, dt_idx in zip(*busy_pairs, strict=True):
        gt_ignored = g.ignored[gt_idx].T  # (A, G)
        match = _greedy_match(_box_iou(k.boxes[dt_idx], g.boxes[gt_idx]), gt_ignored)
        hit = match >= 0
        hit_ignored = gt_ignored[areas, np.maximum(match, 0)]
        current = outcome[dt_idx].transpose(1, 2, 0)
        updated = np.where(hit, np.where(hit_ignored, 0, 1), current).astype(np.int8)
        outcome[dt_idx] = updated.transpose(2, 0, 1)
        progress.advance()
    return outcome


def _busy_pairs(g: _GroundTruth, k: _Kept) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(GT indices, detection indices in score order) for each pair holding both."""
    gt_key = g.key(g.img, g.cat)
    gt_order = np.argsort(gt_key, kind="stable")  # annotation order within a pair
    pair_keys, starts, counts = np.unique(gt_key[gt_order], return_index=True, return_counts=True)
    dt_key = g.key(k.img, k.cat)
    # Within a pair: descending score, ties by input order (lvis-api's mergesort on -score).
    dt_order = np.lexsort((k.order, -k.scores, dt_key))
    dt_key_sorted = dt_key[dt_order]
    lo = np.searchsorted(dt_key_sorted, pair_keys, side="left")
    hi = np.searchsorted(dt_key_sorted, pair_keys, side="right")
    busy = np.flatnonzero(hi > lo)
    gt_lists = [gt_order[starts[p] : starts[p] + counts[p]] for p in busy]
    dt_lists = [dt_order[lo[p] : hi[p]] for p in busy]
    return gt_lists, dt_lists


# ---------------------------------------------------------------------------------------
# Accumulation and summary
# ---------------------------------------------------------------------------------------


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


def evaluate_parsed(
    gt: dict,
    dets: Detections,
    max_dets: int = 300,
    progress: Callable[[int, int], None] | None = None,
) -> LvisEvalResult:
    """``evaluate_lvis`` on detections already checked by ``parse_detections``."""
    g = _index_ground_truth(gt)
    kept = _select_detections(g, dets, max_dets)

    n_cats, n_area = len(g.category_ids), len(AREA_RANGES)
    num_gt = np.stack(
        [np.bincount(g.cat[~g.ignored[:, a]], minlength=n_cats) for a in range(n_area)], axis=1
    )  # (K, A)
    eval_cats = np.flatnonzero(num_gt[:, 0] > 0)  # "all" contains every other range
    busy_pairs = _busy_pairs(g, kept)
    tracker = _Progress(len(busy_pairs[0]) + len(eval_cats), progress)

    outcome = _match_all(g, kept, busy_pairs, tracker)

    # Per category, detections of all images by descending score; ties by image id, then
    # input order (lvis-api concatenates per-image lists in image order, then mergesorts).
    acc_order = np.lexsort((kept.order, kept.img, -kept.scores, kept.cat))
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
