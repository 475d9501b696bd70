"""Greedy matching of detections to ground truth under lvis-api 0.5.3 rules, every area
range and IoU threshold at once, only for (image, category) pairs that hold both."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from acsl_cli.evaluation.lvis_gt import AREA_RANGES, KeptDetections, LvisGroundTruth

# Built with linspace as lvis-api does: arange drifts (0.7500000000000002), and the exact
# threshold values decide matches whose IoU sits on a threshold. (lvis-api also clips each
# threshold to 1 - 1e-10 while matching; a no-op for these values, so left out.)
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def box_iou(dt: np.ndarray, gt: np.ndarray) -> np.ndarray:
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


def greedy_match(ious: np.ndarray, gt_ignored: np.ndarray) -> np.ndarray:
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


class EvalProgress:
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


def match_all(g: LvisGroundTruth, k: KeptDetections, pairs: tuple, progress: EvalProgress
              ) -> np.ndarray:
    """Outcome of each kept detection per (area range, threshold): +1 TP, -1 FP, 0 ignored.

    Only (image, category) pairs holding both GT and detections need matching; every other
    detection is unmatched, i.e. ignored if outside the area range or not-exhaustive, else FP.
    """
    n_thr = len(IOU_THRESHOLDS)
    unmatched = np.where(k.ignored_if_unmatched, 0, -1).astype(np.int8)
    outcome = np.repeat(unmatched[:, :, None], n_thr, axis=2)  # (n, A, T)
    areas = np.arange(len(AREA_RANGES))[:, None, None]
    for gt_idx, dt_idx in zip(*pairs, strict=True):
        gt_ignored = g.ignored[gt_idx].T  # (A, G)
        match = greedy_match(box_iou(k.boxes[dt_idx], g.boxes[gt_idx]), gt_ignored)
        hit = match >= 0
        hit_ignored = gt_ignored[areas, np.maximum(match, 0)]
        current = outcome[dt_idx].transpose(1, 2, 0)
        updated = np.where(hit, np.where(hit_ignored, 0, 1), current).astype(np.int8)
        outcome[dt_idx] = updated.transpose(2, 0, 1)
        progress.advance()
    return outcome


def busy_pairs(g: LvisGroundTruth, k: KeptDetections
               ) -> tuple[list[np.ndarray], list[np.ndarray]]:
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
