"""LVIS's Fixed and Pooled AP (Dave et al. 2021, "Evaluating Large-Vocabulary Object
Detectors: The Devil is in the Details"), on top of the one lvis-api matching of
``lvis_eval.match_detections``.

Why: the standard protocol's 300-detections-per-image cap ties AP to how scores compare
across categories. The reference scripts (achalddave/large-vocab-devil,
``scripts/evaluate_ap_fixed.py`` and ``scripts/evaluate_ap_pooled.py``) define:

- **Fixed AP**: per category, the K highest-scoring detections over the whole set (Python's
  stable ``sorted(reverse=True)[:K]``: ties keep input order), then lvis-api with
  ``max_dets=-1`` (no per-image cap). Every standard metric key, computed that way.
- **Pooled AP**: the same top-K selection and no cap; the matching is lvis-api's, per
  category, but precision is accumulated over the true and false positives of all the
  categories of a pool (all, r, c, f) at once, area range "all" only (the script's
  default). A pool without non-ignored ground truth is undefined (nan; the reference: -1).
  Pooled detections are ranked by a stable sort on -score of a list concatenated image
  after image and, within an image, category after category (``LVISPooledEval``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from acsl_cli.errors import ConfigError
from acsl_cli.evaluation.detections import Detections
from acsl_cli.evaluation.lvis_eval import (
    FREQUENCIES,
    METRIC_KEYS,
    RECALL_THRESHOLDS,
    LvisEvalResult,
    LvisMatches,
    _interpolated_precision,
    match_detections,
    summarise,
)

PROTOCOLS = ("standard", "fixed", "pooled")
POOLS = ("all", *FREQUENCIES)
#: the metric key each pool's AP is reported under (the other keys are null)
POOL_KEYS = {"all": "AP", "r": "APr", "c": "APc", "f": "APf"}


def top_per_category(dets: Detections, k: int) -> Detections:
    """The reference's selection: each category's ``k`` highest scores over the whole set,
    ties broken by input order; kept detections stay in input order (the reference reorders
    them by category and score, which changes no tie that lvis-api breaks by input order)."""
    if k <= 0:
        raise ConfigError(f"test.dets_per_class={k}: must be at least 1")
    _, cat, counts = np.unique(dets.category_ids, return_inverse=True, return_counts=True)
    crowded = np.flatnonzero(np.isin(cat, np.flatnonzero(counts > k)))
    if crowded.size == 0:  # no category has more than k: all are kept
        return dets
    # by category, then descending score, ties in input order (stable sorts)
    by_score = crowded[np.argsort(-dets.scores[crowded], kind="stable")]
    by_cat = by_score[np.argsort(cat[by_score], kind="stable")]
    cats = cat[by_cat]
    rank = np.arange(len(by_cat)) - np.searchsorted(cats, cats, side="left")
    keep = np.ones(len(cat), dtype=bool)
    keep[by_cat[rank >= k]] = False
    return Detections(dets.image_ids[keep], dets.category_ids[keep], dets.boxes[keep],
                      dets.scores[keep])


def match_protocol(gt: dict, dets: Detections, protocol: str, dets_per_class: int = 10_000,
                   max_dets: int = 300, progress: Callable[[int, int], None] | None = None
                   ) -> LvisMatches:
    """lvis-api's matching of the detections that ``protocol`` evaluates: the standard
    per-image cap of ``max_dets``, or (fixed, pooled) each category's top ``dets_per_class``
    and no per-image cap. Fixed and pooled share one matching."""
    if protocol == "standard":
        return match_detections(gt, dets, max_dets, progress)
    if protocol not in PROTOCOLS:
        raise ConfigError(f"test.protocol={protocol}: must be one of {', '.join(PROTOCOLS)}")
    return match_detections(gt, top_per_category(dets, dets_per_class), -1, progress)


def pooled_ap(m: LvisMatches, pools: Sequence[str] = POOLS) -> dict[str, float]:
    """AP per pool (area "all", IoU .50:.95) from one matching, as ``LVISPooledEval``."""
    g, kept = m.gt, m.kept
    frequency = np.array([c.get("frequency") for c in g.categories], dtype=object)
    # (-score, image, category, input order): the reference's concatenation, then mergesort;
    # kept detections are in input order, so stable sorts key by key give the same order
    order = np.argsort(kept.cat, kind="stable")
    order = order[np.argsort(kept.img[order], kind="stable")]
    order = order[np.argsort(-kept.scores[order], kind="stable")]
    cat_sorted = kept.cat[order]
    out = {}
    for pool in pools:
        members = (np.ones(len(g.category_ids), dtype=bool) if pool == "all"
                   else frequency == pool)
        num_gt = int(m.num_gt[members, 0].sum())
        if num_gt == 0:
            out[pool] = math.nan
            continue
        rows = order[members[cat_sorted]]
        total = 0.0
        n_thr = m.outcome.shape[2]
        for t in range(n_thr):  # one IoU threshold at a time: bounded memory at 12 M dets
            column = m.outcome[rows, 0, t][:, None]
            total += float(_interpolated_precision(column, num_gt).sum())
        out[pool] = total / (n_thr * len(RECALL_THRESHOLDS))
    return out


def pooled_metrics(m: LvisMatches) -> dict[str, float]:
    """Pooled AP under the standard keys: AP, APr, APc, APf; the other keys nan."""
    metrics = dict.fromkeys(METRIC_KEYS, math.nan)
    for pool, ap in pooled_ap(m).items():
        metrics[POOL_KEYS[pool]] = ap
    return metrics


def evaluate_protocols(gt: dict, dets: Detections, protocols: Sequence[str],
                       dets_per_class: int = 10_000, max_dets: int = 300,
                       progress: Callable[[int, int], None] | None = None
                       ) -> dict[str, LvisEvalResult]:
    """Metrics (and per-category AP; none for pooled) under each protocol, matching once
    for the standard protocol and once for fixed and pooled together."""
    out: dict[str, LvisEvalResult] = {}
    topk: LvisMatches | None = None
    for protocol in protocols:
        if protocol == "standard":
            out[protocol] = summarise(match_protocol(gt, dets, protocol, max_dets=max_dets,
                                                     progress=progress))
            continue
        if topk is None:
            topk = match_protocol(gt, dets, protocol, dets_per_class, progress=progress)
        if protocol == "fixed":
            out[protocol] = summarise(topk)
        else:
            out[protocol] = LvisEvalResult(pooled_metrics(topk), [])
    return out


def protocol_label(label: str, protocol: str) -> str:
    """A metrics row's label under ``protocol``: the standard protocol keeps the plain label,
    the others are ``label [fixed]``, ``label [pooled]`` (metrics.json, tables, reports)."""
    return label if protocol == "standard" else f"{label} [{protocol}]"


def split_protocol(label: str) -> tuple[str, str]:
    """(plain label, protocol) of a metrics row's label; inverse of ``protocol_label``."""
    for protocol in PROTOCOLS[1:]:
        suffix = f" [{protocol}]"
        if label.endswith(suffix):
            return label[: -len(suffix)], protocol
    return label, "standard"
