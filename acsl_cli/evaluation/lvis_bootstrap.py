"""The image bootstrap of LVIS AP: resample validation images with replacement and recompute
AP from the saved matches, never re-running the matching.

Why it needs no matching: a detection's outcome (TP, FP, ignored) depends only on its own
image, so a resample is a weight per image (how often it was drawn), and each category's
precision / recall curve becomes a weighted cumulative sum over its detections in score
order. With every weight 1 the numbers are ``summarise``'s, bit for bit (same float
operations, same summation order; ``tests/test_intervals.py``).

Why it is fast: precision only matters where recall rises, so only the detections that are
a TP at some IoU threshold are kept as positions; the others only add to the false
positives counted before each position (one weighted cumulative sum for those that are FP
at every threshold, a per-threshold one for the few that change). The 101-point sampling
is a grouped maximum per (threshold, category, recall bin) then a reverse running maximum,
all vectorised over a chunk of resamples.

Metrics: AP, AP50, AP75, APr, APc, APf (area "all"; the area-range metrics are not
resampled). A category whose ground truth is not drawn in a resample drops out of its
means, as lvis-api drops categories without ground truth.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from acsl_cli.evaluation.lvis_eval import FREQUENCIES, RECALL_THRESHOLDS, LvisMatches
from acsl_cli.evaluation.lvis_matching import IOU_THRESHOLDS

BOOTSTRAP_KEYS: tuple[str, ...] = ("AP", "AP50", "AP75", "APr", "APc", "APf")
DRAW = 8  # resamples drawn per call to the generator: fixed, so a seed gives fixed draws
BUDGET = 2.5e7  # numbers held per evaluated chunk of resamples (about 200 MB)


@dataclass(frozen=True)
class ImageMatches:
    """One model's matches at area "all", compact: what ``matches.npz`` stores.

    Detections are in ``summarise``'s accumulation order (category, descending score,
    image, input order); ``outcome`` is (n, T): +1 TP, -1 FP, 0 ignored. The ground truth
    is the non-ignored count per (image, category) pair that has any.
    """

    image_ids: np.ndarray  # (N,) int64, sorted
    category_ids: np.ndarray  # (K,) int64, sorted
    frequency: np.ndarray  # (K,) str: 'r', 'c', 'f' or anything else (no group)
    det_img: np.ndarray  # (n,) image index
    det_cat: np.ndarray  # (n,) category index, nondecreasing
    det_score: np.ndarray  # (n,) float64
    outcome: np.ndarray  # (n, T) int8
    gt_img: np.ndarray  # (m,) image index
    gt_cat: np.ndarray  # (m,) category index
    gt_count: np.ndarray  # (m,) int64 >= 1


def image_matches(m: LvisMatches) -> ImageMatches:
    """The compact form of an evaluator's matches."""
    g, k = m.gt, m.kept
    order = m.accumulation_order()
    kept_gt = ~g.ignored[:, 0]
    keys, counts = np.unique(g.key(g.img[kept_gt], g.cat[kept_gt]), return_counts=True)
    n_cats = len(g.category_ids)
    freq = [c.get("frequency") for c in g.categories]
    return ImageMatches(
        image_ids=g.image_ids.astype(np.int64), category_ids=g.category_ids.astype(np.int64),
        frequency=np.array([f if isinstance(f, str) else "" for f in freq], dtype=str),
        det_img=k.img[order].astype(np.int64), det_cat=k.cat[order].astype(np.int64),
        det_score=k.scores[order].astype(np.float64),
        outcome=m.outcome[order, 0, :].astype(np.int8),
        gt_img=(keys // n_cats).astype(np.int64), gt_cat=(keys % n_cats).astype(np.int64),
        gt_count=counts.astype(np.int64))


def resample_weights(n_images: int, resamples: int, seed: int, chunk: int = DRAW
                     ) -> Iterator[np.ndarray]:
    """Chunks of (<= chunk, n_images) draw counts: each row is one resample of the images
    with replacement (a multinomial draw). The rows depend only on the seed: they are
    drawn ``DRAW`` at a time whatever the chunk."""
    rng = np.random.default_rng(seed)
    p = np.full(n_images, 1.0 / n_images)
    done, held = 0, []
    while done < resamples:
        b = min(DRAW, resamples - done)
        held.append(rng.multinomial(n_images, p, size=b).astype(np.float64))
        done += b
        if sum(len(h) for h in held) >= chunk or done >= resamples:
            yield np.concatenate(held)
            held = []


class _Prepared:
    """Everything about one model's matches that does not depend on the weights.

    At threshold t a category's curve only needs the positions where it has a TP (recall
    rises only there), with the TPs up to each (a running sum over those positions) and
    the FPs up to each: every detection up to it that can count (not ignored at every
    threshold), minus those TPs, minus the detections ignored at t but not at every
    threshold (few: not-exhaustive pairs, ignored ground truth).
    """

    def __init__(self, im: ImageMatches):
        n_thr = im.outcome.shape[1]
        g0 = np.bincount(im.gt_cat, weights=im.gt_count, minlength=len(im.category_ids))
        cats = np.flatnonzero(g0 > 0)  # summarise's eval_cats
        self.n_thr, self.n_eval = n_thr, len(cats)
        self.frequency = im.frequency[cats]
        e_of = np.full(len(im.category_ids), -1)
        e_of[cats] = np.arange(len(cats))
        on = e_of[im.gt_cat] >= 0
        self.gt_img, self.gt_count = im.gt_img[on], im.gt_count[on].astype(np.float64)
        gt_e = e_of[im.gt_cat[on]]
        self.gt_order = np.argsort(gt_e, kind="stable")
        self.gt_starts = np.searchsorted(gt_e[self.gt_order], np.arange(len(cats)))
        d = e_of[im.det_cat] >= 0
        img, e, out = im.det_img[d], e_of[im.det_cat[d]], im.outcome[d]
        n = len(img)
        cat_start = np.searchsorted(e, e, side="left")  # first detection of each one's category
        # detections that can count, running sums looked up at [lo, hi) per position
        counts = np.flatnonzero((out != 0).any(axis=1))
        self.c_img = img[counts]
        lo_c = np.searchsorted(counts, cat_start, side="left")
        hi_c = np.searchsorted(counts, np.arange(n), side="right")
        zero = out == 0
        partly = np.flatnonzero(zero.any(axis=1) & ~zero.all(axis=1))
        self.z_img = img[partly]
        self.z_at = np.ascontiguousarray(zero[partly].T, dtype=np.float64)  # (T, nZ)
        lo_z = np.searchsorted(partly, cat_start, side="left")
        hi_z = np.searchsorted(partly, np.arange(n), side="right")
        # per threshold, its TP positions in order; all thresholds one after the other
        t_of, k_of = np.nonzero((out == 1).T)
        self.t_of = t_of
        self.img, self.e = img[k_of], e[k_of]
        unique, self.u_inv = np.unique(k_of, return_inverse=True)
        self.c_lo, self.c_hi = lo_c[unique], hi_c[unique]
        self.z_lo, self.z_hi = lo_z[k_of], hi_z[k_of]
        first = np.ones(len(k_of), dtype=bool)
        first[1:] = (self.e[1:] != self.e[:-1]) | (t_of[1:] != t_of[:-1])
        self.starts = np.flatnonzero(first)
        # where (threshold, recall bin 1, category) of each position sits in (T, 101, E)
        self.base = (t_of * len(RECALL_THRESHOLDS) - 1) * len(cats) + self.e


def _segment_cumsum(v: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Running sums along the last axis, restarting at each index in ``starts`` (in place;
    exact for integer-valued floats)."""
    if v.shape[-1]:
        totals = np.add.reduceat(v, starts, axis=-1)
        v[..., starts[1:]] -= totals[..., :-1]  # each segment starts from 0 again
        np.cumsum(v, axis=-1, out=v)
    return v


def _sums_before(values: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Sums of ``values[:, lo:hi]`` (b, n) -> (b, len(hi)), exact for integer-valued floats."""
    c = np.zeros((values.shape[0], values.shape[1] + 1))
    np.cumsum(values, axis=1, out=c[:, 1:])
    return c[:, hi] - c[:, lo]


def _recall_bins(recall: np.ndarray) -> np.ndarray:
    """How many of the 101 recall thresholds are <= each recall (exactly, by comparing with
    the thresholds themselves where the fast estimate sits near one)."""
    r = RECALL_THRESHOLDS
    flat = np.ascontiguousarray(recall).reshape(-1)
    scaled = flat * (len(r) - 1)
    below = np.floor(scaled)
    scaled -= below
    near = np.flatnonzero((scaled < 1e-6) | (scaled > 1 - 1e-6))
    c = below.astype(np.int64)
    c += 1
    c[near] = np.searchsorted(r, flat[near], side="right")
    return c.reshape(recall.shape)


def _sampled_precision(p: _Prepared, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(b, T, 101, E) precision at the recall thresholds under weights ``w`` (b, N), as
    summarise's ``precision[..., 0]`` (0 for a category without drawn ground truth), and
    (b, E) whether each category has drawn ground truth."""
    b, n_thr, n_e, n = w.shape[0], p.n_thr, p.n_eval, len(p.e)
    gt_w = (w[:, p.gt_img] * p.gt_count)[:, p.gt_order]
    total = np.add.reduceat(gt_w, p.gt_starts, axis=1) if n_e else np.zeros((b, 0))
    valid = total > 0
    out = np.zeros((b, n_thr, len(RECALL_THRESHOLDS), n_e))
    if not n:
        return out, valid
    tp = _segment_cumsum(w[:, p.img], p.starts)  # (b, L)
    fp = _sums_before(w[:, p.c_img], p.c_hi, p.c_lo)[:, p.u_inv]
    fp -= tp
    if len(p.z_img):
        wz = w[:, p.z_img]
        for t in range(n_thr):
            at = slice(*np.searchsorted(p.t_of, [t, t + 1]))
            fp[:, at] -= _sums_before(wz * p.z_at[t], p.z_hi[at], p.z_lo[at])
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp / total[:, p.e]
        fp += tp
        fp += np.spacing(1)
        precision = np.divide(tp, fp, out=fp)
    np.nan_to_num(recall, copy=False, nan=0.0, posinf=0.0)
    # flat index into out: (b, t, bin - 1, e); a category without drawn ground truth has
    # tp = 0 everywhere, so it only writes zeros
    at = _recall_bins(recall)
    at *= n_e
    at += p.base
    # keep the best precision per index (equal indices are consecutive)
    new = np.empty(at.shape, dtype=bool)
    np.not_equal(at[:, 1:], at[:, :-1], out=new[:, 1:])
    new[:, 0] = True
    starts = np.flatnonzero(new)
    best = np.maximum.reduceat(precision.reshape(-1), starts)
    at = at.reshape(-1)[starts]
    at += (starts // n) * out[0].size
    out.reshape(-1)[at] = best
    # precision at threshold i: the best precision at any recall >= R_i
    flipped = out[:, :, ::-1, :]
    np.maximum.accumulate(flipped, axis=2, out=flipped)
    return out, valid


def _means(p: _Prepared, s: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
    """The summary means of (b, T, 101, E) sampled precision, nan where a group has no
    category with drawn ground truth (summarise's sums, element for element in order)."""
    b = s.shape[0]
    t50 = np.flatnonzero(np.isclose(IOU_THRESHOLDS, 0.5))
    t75 = np.flatnonzero(np.isclose(IOU_THRESHOLDS, 0.75))
    n_r = len(RECALL_THRESHOLDS)

    def mean(part: np.ndarray, cats: np.ndarray, n_thr: int) -> np.ndarray:
        count = valid[:, cats].sum(axis=1) * n_thr * n_r
        total = np.ascontiguousarray(part).reshape(b, -1).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    every = np.arange(p.n_eval)
    out = {"AP": mean(s, every, p.n_thr), "AP50": mean(s[:, t50], every, len(t50)),
           "AP75": mean(s[:, t75], every, len(t75))}
    for f in FREQUENCIES:
        cats = np.flatnonzero(p.frequency == f)
        out[f"AP{f}"] = mean(s[:, :, :, cats], cats, p.n_thr)
    return out


def weighted_metrics(im: ImageMatches, weights: np.ndarray) -> dict[str, np.ndarray]:
    """``BOOTSTRAP_KEYS`` -> (b,) values for each row of image weights (b, N)."""
    p = _Prepared(im)
    s, valid = _sampled_precision(p, np.asarray(weights, dtype=np.float64))
    return _means(p, s, valid)


@dataclass(frozen=True)
class BootstrapDelta:
    """A model's metric minus the baseline's on the full set, and the 2.5 / 97.5
    percentiles of that difference over the resamples where it is defined."""

    delta: float
    low: float
    high: float
    resamples: int  # resamples where both metrics are defined


def paired_bootstrap(model: ImageMatches, baseline: ImageMatches, resamples: int = 1000,
                     seed: int = 0, level: float = 0.95) -> dict[str, BootstrapDelta | None]:
    """Percentile intervals of ``model - baseline`` over ``resamples`` image resamples,
    both scored on the same resample; None for a metric undefined on the full set."""
    if not np.array_equal(model.image_ids, baseline.image_ids):
        raise ValueError("the two models were evaluated on different images")
    pm, pb = _Prepared(model), _Prepared(baseline)

    def score(p: _Prepared, w: np.ndarray) -> dict[str, np.ndarray]:
        return _means(p, *_sampled_precision(p, w))

    def size(p: _Prepared) -> int:  # numbers per resample, roughly
        return p.n_thr * len(RECALL_THRESHOLDS) * p.n_eval + 6 * len(p.e) + len(p.c_img)

    chunk = max(DRAW, int(BUDGET / (size(pm) + size(pb) + 2 * len(model.image_ids))))

    full = np.ones((1, len(model.image_ids)))
    observed = {k: float(score(pm, full)[k][0] - score(pb, full)[k][0])
                for k in BOOTSTRAP_KEYS}
    diffs: dict[str, list[np.ndarray]] = {k: [] for k in BOOTSTRAP_KEYS}
    # the two models of a resample in two threads (numpy releases the GIL in its loops)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for w in resample_weights(len(model.image_ids), resamples, seed, chunk):
            a, c = pool.map(score, (pm, pb), (w, w))
            for k in BOOTSTRAP_KEYS:
                diffs[k].append(a[k] - c[k])
    out: dict[str, BootstrapDelta | None] = {}
    tail = 100 * (1 - level) / 2
    for k in BOOTSTRAP_KEYS:
        d = np.concatenate(diffs[k]) if diffs[k] else np.zeros(0)
        d = d[~np.isnan(d)]
        if np.isnan(observed[k]) or not len(d):
            out[k] = None
            continue
        low, high = np.percentile(d, [tail, 100 - tail])
        out[k] = BootstrapDelta(observed[k], float(low), float(high), len(d))
    return out
