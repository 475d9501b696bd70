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


class EvalProgress:
    """Forward (done, total) to the caller's callback about 200 times over the run."""

    def __init__(self, total: int, callback: Callable[[int, int], None] | None):
        self.total, self.callback, self.done = total, callback, 0
        self.every = max(1, total // 200)

    def advance(self, steps: int = 1) -> None:
        before, self.done = self.done, self.done + steps
        if self.callback is not None and (self.done // self.every > before // self.every
                                          or self.done == self.total):
            self.callback(self.done, self.total)

    def finish(self) -> None:
        if self.callback is not None and self.done != self.total:
            self.done = self.total
            self.callback(self.done, self.total)


def match_all(g: LvisGroundTruth, k: KeptDetections, pairs: tuple, progress: EvalProgress,
              chunk: int = 2_000_000, min_chunk: int = 125_000) -> np.ndarray:
    """Outcome of each kept detection per (area range, threshold): +1 TP, -1 FP, 0 ignored.

    Only (image, category) pairs holding both GT and detections need matching; every other
    detection is unmatched, i.e. ignored if outside the area range or not-exhaustive, else FP.
    Pairs are matched in chunks of (detection, GT) IoUs, which bounds memory (about 100 bytes
    per IoU while a chunk is matched): at most ``chunk``, and a sixteenth of all the pairs'
    IoUs if that is smaller (not below ``min_chunk``), so that a small evaluation keeps a
    small working set; each chunk costs a fixed number of steps, which only the large
    evaluations (where the inputs dwarf the chunk) would feel.
    """
    n_thr = len(IOU_THRESHOLDS)
    unmatched = np.where(k.ignored_if_unmatched, 0, -1).astype(np.int8)
    outcome = np.repeat(unmatched[:, :, None], n_thr, axis=2)  # (n, A, T)
    gt_lists, dt_lists = pairs
    combos = np.array([len(a) * len(b) for a, b in zip(gt_lists, dt_lists, strict=True)],
                      dtype=np.int64)
    chunk = min(chunk, max(min_chunk, int(combos.sum()) // 16))
    first = 0
    while first < len(gt_lists):
        last = first + max(1, int(np.searchsorted(np.cumsum(combos[first:]), chunk, "right")))
        _match_chunk(g, k, gt_lists[first:last], dt_lists[first:last], outcome)
        progress.advance(last - first)
        first = last
    return outcome


def _offsets(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def _match_chunk(g: LvisGroundTruth, k: KeptDetections, gt_lists: list, dt_lists: list,
                 outcome: np.ndarray) -> None:
    """Greedy matching of a chunk of pairs, written into ``outcome``; lvis-api's rule:
    each detection in score order takes the still-free GT with the highest IoU >= threshold
    (the last one in annotation order on ties), preferring non-ignored GTs over ignored ones.

    Vectorised across pairs: only detections with IoU >= the lowest threshold against some
    GT of their pair can match; the pairs, grouped by GT count (padded to a power of two)
    and sorted by their number of such candidates, advance one candidate per step, every
    (area range, threshold) row at once.
    """
    n_gt = np.array([len(x) for x in gt_lists], dtype=np.int64)
    n_dt = np.array([len(x) for x in dt_lists], dtype=np.int64)
    gt_flat, dt_flat = np.concatenate(gt_lists), np.concatenate(dt_lists)
    n_pairs = len(n_gt)
    # Every (detection, GT) of a pair, detection-major (score order), GT in annotation order.
    combos = n_gt * n_dt
    pair = np.repeat(np.arange(n_pairs), combos)
    within = np.arange(int(combos.sum())) - np.repeat(_offsets(combos), combos)
    det_local = _offsets(n_dt)[pair] + within // n_gt[pair]  # index into dt_flat
    gt_col = within % n_gt[pair]
    iou = _iou_rows(k.boxes[dt_flat[det_local]], g.boxes[gt_flat[_offsets(n_gt)[pair] + gt_col]])
    best_iou = np.full(len(dt_flat), -1.0)
    np.maximum.at(best_iou, det_local, iou)
    cand = best_iou >= IOU_THRESHOLDS[0]
    if not cand.any():
        return
    det_pair = np.repeat(np.arange(n_pairs), n_dt)
    n_cand = np.bincount(det_pair[cand], minlength=n_pairs)
    # candidate row of each detection (-1 if none) and its rank within its pair
    cand_idx = np.full(len(dt_flat), -1)
    cand_idx[cand] = np.arange(int(cand.sum()))
    rank = np.cumsum(cand) - 1 - _offsets(n_cand)[det_pair]
    # One GT: it goes to the first detection (in score order) that reaches the threshold,
    # in every area range alike (a lone GT is the pool whether ignored there or not).
    single = n_gt[pair] == 1
    for t, threshold in enumerate(IOU_THRESHOLDS):
        reach = np.flatnonzero(single & (iou >= threshold))
        _, first = np.unique(pair[reach], return_index=True)
        combo = reach[first]
        gt_global = gt_flat[_offsets(n_gt)[pair[combo]]]
        outcome[dt_flat[det_local[combo]], :, t] = np.where(g.ignored[gt_global], 0, 1)
    # Several GTs: only those a detection overlaps enough can be its match, so each
    # candidate carries just those columns (annotation order), padded with a dummy column
    # that never qualifies; pairs are grouped by their widest candidate.
    qual = iou >= IOU_THRESHOLDS[0]
    n_qual = np.bincount(det_local[qual], minlength=len(dt_flat))
    width = np.zeros(n_pairs, dtype=np.int64)
    np.maximum.at(width, det_pair, n_qual)
    width = 1 << np.ceil(np.log2(np.maximum(width, 1))).astype(np.int64)
    n_area, n_thr = len(AREA_RANGES), len(IOU_THRESHOLDS)
    thr = np.tile(IOU_THRESHOLDS, n_area)[None, :, None]  # (1, R, 1), R = A * T
    areas = np.repeat(np.arange(n_area), n_thr)
    multi = (n_cand > 0) & (n_gt > 1)
    for w in np.unique(width[multi]).tolist():
        members = np.flatnonzero(multi & (width == w))
        members = members[np.argsort(-n_cand[members], kind="stable")]
        slot = np.full(n_pairs, -1)
        slot[members] = np.arange(len(members))
        counts = n_cand[members]
        active = np.bincount(counts - 1, minlength=int(counts.max()))[::-1].cumsum()[::-1]
        step_off = _offsets(active)
        # each candidate's row: step_off[its rank] + its pair's slot
        dets_b = np.flatnonzero(cand & (slot[det_pair] >= 0))
        row_of = np.full(len(dt_flat), -1)
        row_of[dets_b] = step_off[rank[dets_b]] + slot[det_pair[dets_b]]
        dummy = int(n_gt[members].max())
        cols = np.full((len(dets_b), w), dummy)
        ious = np.full((len(dets_b), w), -1.0)
        take = np.flatnonzero(qual & (row_of[det_local] >= 0))  # in det, then GT order
        row = row_of[det_local[take]]
        order = np.argsort(row, kind="stable")
        row, take = row[order], take[order]
        pos = np.arange(len(row)) - np.searchsorted(row, row, side="left")
        cols[row, pos] = gt_col[take]
        ious[row, pos] = iou[take]
        ignored = np.ones((len(members), n_area, dummy + 1), dtype=bool)
        gp = np.repeat(np.arange(len(members)), n_gt[members])
        gc = np.arange(len(gp)) - np.repeat(_offsets(n_gt[members]), n_gt[members])
        ignored[gp, :, gc] = g.ignored[gt_flat[_offsets(n_gt)[members][gp] + gc]]
        taken = np.zeros((len(members), len(areas), dummy + 1), dtype=bool)
        matched = np.full((len(dets_b), len(areas)), -1)
        for d, n_a in enumerate(active.tolist()):
            lo = int(step_off[d])
            p_idx = np.arange(n_a)[:, None, None]
            c = cols[lo : lo + n_a][:, None, :]  # (n_a, 1, w)
            v = ious[lo : lo + n_a][:, None, :]
            ign = ignored[p_idx, areas[None, :, None], c]  # (n_a, R, w)
            free = (v >= thr) & ~taken[p_idx, np.arange(len(areas))[None, :, None], c]
            has_regular = (free & ~ign).any(axis=2, keepdims=True)
            pool = free & (ign != has_regular)  # regular GTs if any qualify, else ignored
            hit = pool.any(axis=2)
            scored = np.where(pool, v, -1.0)
            best = w - 1 - scored[:, :, ::-1].argmax(axis=2)  # the last maximum
            pi, ri = np.nonzero(hit)
            col = cols[lo + pi, best[pi, ri]]
            taken[pi, ri, col] = True
            matched[lo + pi, ri] = col
        # write back: the row of each candidate is its detection's (A, T) outcome
        det_of_row = np.empty(len(dets_b), dtype=np.int64)
        det_of_row[row_of[dets_b]] = dets_b
        r_idx, c_idx = np.nonzero(matched >= 0)
        local = det_of_row[r_idx]
        gt_global = gt_flat[_offsets(n_gt)[det_pair[local]] + matched[r_idx, c_idx]]
        a_idx = areas[c_idx]
        outcome[dt_flat[local], a_idx, c_idx % n_thr] = np.where(
            g.ignored[gt_global, a_idx], 0, 1)


def _iou_rows(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """IoU of paired xywh rows, computed as pycocotools' bbIou.

    Same float operations in the same order (no +1, iscrowd=0), so IoUs that sit exactly on
    a threshold compare the same way as in lvis-api.
    """
    w = np.minimum(d[:, 0] + d[:, 2], g[:, 0] + g[:, 2]) - np.maximum(d[:, 0], g[:, 0])
    h = np.minimum(d[:, 1] + d[:, 3], g[:, 1] + g[:, 3]) - np.maximum(d[:, 1], g[:, 1])
    inter = w * h
    union = (d[:, 2] * d[:, 3] + g[:, 2] * g[:, 3]) - inter
    return np.divide(inter, union, out=np.zeros(inter.shape), where=(w > 0) & (h > 0))


def busy_pairs(g: LvisGroundTruth, k: KeptDetections
               ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(GT indices, detection indices in score order) for each pair holding both."""
    gt_key = g.key(g.img, g.cat)
    gt_order = np.argsort(gt_key, kind="stable")  # annotation order within a pair
    pair_keys, starts, counts = np.unique(gt_key[gt_order], return_index=True, return_counts=True)
    dt_key = g.key(k.img, k.cat)
    # Within a pair: descending score, ties by input order (lvis-api's mergesort on -score).
    dt_order = np.argsort(-k.scores, kind="stable")  # kept detections are in input order
    dt_order = dt_order[np.argsort(dt_key[dt_order], kind="stable")]
    dt_key_sorted = dt_key[dt_order]
    lo = np.searchsorted(dt_key_sorted, pair_keys, side="left")
    hi = np.searchsorted(dt_key_sorted, pair_keys, side="right")
    busy = np.flatnonzero(hi > lo)
    gt_lists = [gt_order[starts[p] : starts[p] + counts[p]] for p in busy]
    dt_lists = [dt_order[lo[p] : hi[p]] for p in busy]
    return gt_lists, dt_lists
