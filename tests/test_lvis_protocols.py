"""Fixed and Pooled AP against the reference scripts of achalddave/large-vocab-devil
(``scripts/evaluate_ap_fixed.py``, ``scripts/evaluate_ap_pooled.py``), rewritten here on
top of lvis-api 0.5.3 as an independent reference:

- fixed: group the results by category, keep ``sorted(anns, key=score, reverse=True)[:K]``
  of each, then ``LVISResults(max_dets=-1)`` and ``LVISEval`` with ``params.max_dets = -1``;
- pooled: the same top-K selection, ``max_dets=-1``, area range "all" only, and
  ``LVISPooledEval.accumulate``: for each pool (all, r, c, f) the per-(image, category)
  evaluations of its categories are concatenated image after image, category after
  category, stably sorted on -score, and precision is accumulated over the pooled TPs and
  FPs (a pool without non-ignored GT stays -1).

Ours must equal it on the LVIS fixture and on generated cases: tied scores, more than 300
detections on an image, categories with fewer than K detections, pools without GT.
"""

from __future__ import annotations

import copy
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from acsl_cli.errors import ConfigError
from acsl_cli.evaluation import METRIC_KEYS
from acsl_cli.evaluation.detections import parse_detections
from acsl_cli.evaluation.lvis_protocols import (
    POOL_KEYS,
    evaluate_protocols,
    top_per_category,
)
from tests.test_lvis_eval import LVIS_SAMPLE, _synthetic_detections

# ---------------------------------------------------------------------------------------
# The reference, on lvis-api
# ---------------------------------------------------------------------------------------


def _lvis(monkeypatch):
    # lvis 0.5.3 calls np.float, removed in numpy 2; the shim is for this reference only.
    monkeypatch.setattr(np, "float", float, raising=False)
    import lvis

    return lvis


def _reference_top_k(results: list[dict], k: int) -> list[dict]:
    """The scripts' selection, as they write it: by category (first-seen order), then each
    category's results by a stable descending sort on score, first ``k``."""
    by_cat = defaultdict(list)
    for ann in results:
        by_cat[ann["category_id"]].append(ann)
    out = []
    for anns in by_cat.values():
        out.extend(sorted(anns, key=lambda x: x["score"], reverse=True)[:k])
    return out


def _nan_for_missing(v: float) -> float:
    return math.nan if v == -1 else float(v)


def reference_fixed(gt_path: Path, dets: list[dict], k: int, monkeypatch) -> dict:
    lvis = _lvis(monkeypatch)
    gt = lvis.LVIS(str(gt_path))
    results = lvis.LVISResults(gt, _reference_top_k(copy.deepcopy(dets), k), max_dets=-1)
    ev = lvis.LVISEval(gt, results, "bbox")
    ev.params.max_dets = -1
    ev.run()
    return {key: _nan_for_missing(ev.results[key]) for key in METRIC_KEYS}


def reference_pooled(gt_path: Path, dets: list[dict], k: int, monkeypatch) -> dict:
    """AP per pool, written from LVISPooledEval's description (area "all" only)."""
    lvis = _lvis(monkeypatch)
    gt = lvis.LVIS(str(gt_path))
    results = lvis.LVISResults(gt, _reference_top_k(copy.deepcopy(dets), k), max_dets=-1)
    ev = lvis.LVISEval(gt, results, "bbox")
    p = ev.params
    p.max_dets = -1
    p.area_rng, p.area_rng_lbl = [p.area_rng[0]], [p.area_rng_lbl[0]]
    ev.evaluate()  # lvis-api's own matching, per (category, area, image)
    n_img = len(p.img_ids)
    pools = {"all": list(range(len(p.cat_ids)))}
    for label in ("r", "c", "f"):
        pools[label] = ev.freq_groups[p.img_count_lbl.index(label)]
    out = {}
    for pool, cats in pools.items():
        evals = [ev.eval_imgs[c * n_img + i] for i in range(n_img) for c in cats]
        evals = [e for e in evals if e is not None]
        gt_ig = np.concatenate([e["gt_ignore"] for e in evals]) if evals else np.zeros(0)
        num_gt = int(np.count_nonzero(gt_ig == 0))
        if num_gt == 0:
            out[pool] = math.nan
            continue
        scores = np.concatenate([e["dt_scores"] for e in evals])
        order = np.argsort(-scores, kind="mergesort")
        dt_m = np.concatenate([e["dt_matches"] for e in evals], axis=1)[:, order]
        dt_ig = np.concatenate([e["dt_ignore"] for e in evals], axis=1)[:, order]
        tps = np.logical_and(dt_m, np.logical_not(dt_ig))
        fps = np.logical_and(np.logical_not(dt_m), np.logical_not(dt_ig))
        precision = []
        for tp, fp in zip(np.cumsum(tps, axis=1).astype(float),
                          np.cumsum(fps, axis=1).astype(float), strict=True):
            rc = tp / num_gt
            pr = list(tp / (fp + tp + np.spacing(1)))
            for i in range(len(tp) - 1, 0, -1):
                pr[i - 1] = max(pr[i - 1], pr[i])
            sampled = [0.0] * len(p.rec_thrs)
            for j, at in enumerate(np.searchsorted(rc, p.rec_thrs, side="left")):
                if at >= len(pr):
                    break
                sampled[j] = pr[at]
            precision.append(sampled)
        out[pool] = float(np.mean(precision))
    return out


def ours(gt: dict, dets: list[dict], k: int, protocols=("fixed", "pooled")):
    parsed = parse_detections(gt, copy.deepcopy(dets), "dets")
    return evaluate_protocols(copy.deepcopy(gt), parsed, protocols, dets_per_class=k)


def assert_same(got: dict, want: dict, keys) -> None:
    for key in keys:
        if math.isnan(want[key]):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(want[key], abs=1e-12), key


def check(gt_path: Path, gt: dict, dets: list[dict], k: int, monkeypatch) -> None:
    result = ours(gt, dets, k)
    assert_same(result["fixed"].metrics, reference_fixed(gt_path, dets, k, monkeypatch),
                METRIC_KEYS)
    pooled = reference_pooled(gt_path, dets, k, monkeypatch)
    assert_same(result["pooled"].metrics, {POOL_KEYS[p]: v for p, v in pooled.items()},
                POOL_KEYS.values())
    others = set(METRIC_KEYS) - set(POOL_KEYS.values())
    assert all(math.isnan(result["pooled"].metrics[key]) for key in others)


# ---------------------------------------------------------------------------------------
# The LVIS fixture
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lvis_sample() -> dict:
    return json.loads(LVIS_SAMPLE.read_text())


# K=10,000 (the default: no category reaches it, so only the cap's removal acts) and K=15
# (most categories are cut, ties at the cut decided by input order); scores distinct or
# rounded to one decimal (ties the norm); three images hold 350+ detections each.
@pytest.mark.parametrize(("seed", "tie_scores", "k"),
                         [(0, False, 10_000), (1, True, 15), (2, False, 15)])
def test_fixed_and_pooled_match_reference_on_lvis_fixture(lvis_sample, seed, tie_scores, k,
                                                          monkeypatch):
    dets = _synthetic_detections(lvis_sample, seed, tie_scores)
    per_image = defaultdict(int)
    per_cat = defaultdict(int)
    for d in dets:
        per_image[d["image_id"]] += 1
        per_cat[d["category_id"]] += 1
    assert max(per_image.values()) > 300
    assert min(per_cat.values()) < k  # categories with fewer than K detections
    if k < 10_000:
        assert max(per_cat.values()) > k
    check(LVIS_SAMPLE, lvis_sample, dets, k, monkeypatch)


def test_fixed_differs_from_standard_when_the_cap_bites(lvis_sample):
    """A sanity check that the protocols are not the same number under another name."""
    dets = _synthetic_detections(lvis_sample, 0, False)
    r = ours(lvis_sample, dets, 10_000, ("standard", "fixed"))
    assert r["fixed"].metrics["AP"] != r["standard"].metrics["AP"]


# ---------------------------------------------------------------------------------------
# Generated edge cases
# ---------------------------------------------------------------------------------------

CATEGORIES = [{"id": 1, "name": "apple", "frequency": "f"},
              {"id": 2, "name": "banana", "frequency": "c"},
              {"id": 3, "name": "cherry", "frequency": "r"}]


def _dataset(images: list[dict], anns: list[dict]) -> dict:
    return {"images": images, "categories": copy.deepcopy(CATEGORIES),
            "annotations": [{**a, "id": i + 1, "area": a["bbox"][2] * a["bbox"][3]}
                            for i, a in enumerate(anns)]}


def _image(image_id: int, neg=(), not_exhaustive=()) -> dict:
    return {"id": image_id, "width": 640, "height": 480, "neg_category_ids": list(neg),
            "not_exhaustive_category_ids": list(not_exhaustive)}


def _write(tmp_path: Path, gt: dict) -> Path:
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    return path


def test_pool_without_ground_truth_is_undefined(tmp_path, monkeypatch):
    # cherry (r) has no annotation anywhere, only detections on an image listing it
    # negative: they are FPs of pool "all" but pool "r" has no GT (nan, the reference -1).
    gt = _dataset([_image(1, neg=[3]), _image(2, not_exhaustive=[2])],
                  [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
                   {"image_id": 2, "category_id": 2, "bbox": [50, 50, 20, 20]},
                   {"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10]}])
    dets = [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.5},
            {"image_id": 2, "category_id": 2, "bbox": [300, 300, 5, 5], "score": 0.7},
            {"image_id": 2, "category_id": 2, "bbox": [50, 50, 20, 20], "score": 0.6},
            {"image_id": 2, "category_id": 1, "bbox": [1, 0, 10, 10], "score": 0.5}]
    result = ours(gt, dets, 10)
    assert math.isnan(result["pooled"].metrics["APr"])
    assert math.isnan(result["fixed"].metrics["APr"])
    # Hand-derived pool "all" at IoU .5: ranking 0.9 FP (cherry), 0.7 ignored (not
    # exhaustive, unmatched), 0.6 TP, 0.5 TP (image 1), 0.5 TP (image 2, IoU 90/110 = .82).
    # Precision after each counted step: 0, 1/2, 2/3, 3/4 -> envelope .75 for every recall
    # (7 thresholds up to .80). From .85 the last one is a FP: tied 0.5s rank image 1 first,
    # so precision 0, 1/2, 2/3, 2/4 with recall reaching 2/3: .667 at 67 of 101 points.
    assert result["pooled"].metrics["AP"] == pytest.approx((7 * .75 + 3 * 67 / 101 * 2 / 3)
                                                            / 10, abs=1e-12)
    check(_write(tmp_path, gt), gt, dets, 10, monkeypatch)


def test_generated_ties_caps_and_short_categories(tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    images = [_image(i, neg=[3] if i % 3 == 0 else [], not_exhaustive=[2] if i == 4 else [])
              for i in range(1, 9)]
    anns = []
    for i in range(1, 9):
        for _ in range(int(rng.integers(1, 5))):
            x, y = rng.uniform(0, 500, 2)
            cat = int(rng.choice([1, 2, 3] if i != 5 else [1, 2]))
            anns.append({"image_id": i, "category_id": cat,
                         "bbox": [float(x), float(y), float(rng.uniform(8, 120)),
                                  float(rng.uniform(8, 120))]})
    gt = _dataset(images, anns)
    dets = []
    for a in anns:  # near-GT boxes, some of the wrong class
        for _ in range(3):
            x, y, w, h = a["bbox"]
            jitter = rng.normal(0, 0.1, 4) * [w, h, w, h]
            cat = a["category_id"] if rng.random() < 0.8 else int(rng.integers(1, 4))
            dets.append({"image_id": a["image_id"], "category_id": cat,
                         "bbox": [x + jitter[0], y + jitter[1], max(w + jitter[2], 1.0),
                                  max(h + jitter[3], 1.0)],
                         "score": round(float(rng.random()), 1)})
    for _ in range(400):  # image 2 gets more than 300 detections (the cap would bite)
        x, y = rng.uniform(0, 600, 2)
        dets.append({"image_id": 2, "category_id": int(rng.integers(1, 3)),
                     "bbox": [float(x), float(y), 20.0, 20.0],
                     "score": round(float(rng.random()), 2)})
    dets = [dets[i] for i in rng.permutation(len(dets))]
    path = _write(tmp_path, gt)
    counts = defaultdict(int)
    for d in dets:
        counts[d["category_id"]] += 1
    for k in (5, 40, max(counts.values()) + 1):
        assert min(counts.values()) < k or k == 5
        check(path, gt, dets, k, monkeypatch)


def test_top_per_category_keeps_the_first_of_tied_scores():
    gt = _dataset([_image(1), _image(2)], [])
    dets = [{"image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5},
            {"image_id": 1, "category_id": 2, "bbox": [0, 0, 1, 1], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "score": 0.5},
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 3, 3], "score": 0.7}]
    kept = top_per_category(parse_detections(gt, dets, "dets"), 2)
    # category 1: 0.7 (input 3), then the first 0.5 (input 0); input order is kept
    assert kept.boxes[:, 2].tolist() == [1.0, 1.0, 3.0]
    assert kept.category_ids.tolist() == [1, 2, 1]
    with pytest.raises(ConfigError):
        top_per_category(parse_detections(gt, dets, "dets"), 0)
