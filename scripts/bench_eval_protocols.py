"""Fixed and Pooled AP at LVIS v1 val scale (issue 24: 19,809 images, 10,000 detections per
category, ~12 M detections, within 2 minutes and 6 GB), and against lvis-api running the
reference scripts' logic at a size it can finish. ``bench_eval.py --protocols`` runs it.

The ground truth is ``bench_eval.build_ground_truth`` (fixture images drawn with
replacement, categories renamed within their frequency group: 1,230 LVIS v0.5 categories,
LVIS v1 has 1,203). Detections come per category, as a top-K detector writes them: exactly
``--dets-per-class`` for every category, 30 % jittered copies of its GT boxes, 20 % random
boxes on images where it is annotated, 20 % on images that list it negative, 30 % on random
images (most dropped by the federated rules); float32 scores, uniform. They are handed to
``evaluate_protocols`` as arrays (``Detections``): 12 M result dicts alone would take
~6 GB, and their parsing is measured by ``bench_eval.py --json-file`` at its scale.

The side-by-side line times ours and lvis-api 0.5.3 with the scripts' steps (top-K per
category, ``max_dets=-1``; pooled: area "all", the pooled accumulation) on the same small
input, and checks that they agree.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

SHARES = (0.3, 0.2, 0.2, 0.3)  # near own GT, random box on a positive / negative image, any


def build_topk_detections(gt: dict, per_class: int, seed: int):
    """``per_class`` detections of every category (see the module docstring for the mix),
    as ``Detections``."""
    from acsl_cli.evaluation.detections import Detections

    rng = np.random.default_rng(seed + 2)
    images = gt["images"]
    n_img = len(images)
    img_ids = np.array([im["id"] for im in images], dtype=np.int64)
    width = np.array([im["width"] for im in images], dtype=np.float64)
    height = np.array([im["height"] for im in images], dtype=np.float64)
    cat_ids = np.array(sorted(c["id"] for c in gt["categories"]), dtype=np.int64)
    n_cat = len(cat_ids)
    anns = gt["annotations"]
    ann_img = np.searchsorted(img_ids, np.array([a["image_id"] for a in anns]))
    ann_cat = np.searchsorted(cat_ids, np.array([a["category_id"] for a in anns]))
    ann_box = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    neg_img, neg_cat = [], []
    for i, im in enumerate(images):
        neg_img += [i] * len(im["neg_category_ids"])
        neg_cat += im["neg_category_ids"]
    neg_img_a = np.array(neg_img, dtype=np.int64)
    neg_cat_a = np.searchsorted(cat_ids, np.array(neg_cat, dtype=np.int64))

    cat = np.repeat(np.arange(n_cat), per_class)
    n = len(cat)
    kind = rng.choice(4, size=n, p=SHARES)

    def pick(owner_cat: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For detections ``rows`` (of categories cat[rows]) a random member of the
        category's entries in ``owner_cat`` (sorted groups); ok=False where it has none."""
        order = np.argsort(owner_cat, kind="stable")
        start = np.searchsorted(owner_cat[order], np.arange(n_cat))
        count = np.bincount(owner_cat, minlength=n_cat)
        c = cat[rows]
        ok = count[c] > 0
        off = (rng.uniform(0, 1, len(rows)) * np.maximum(count[c], 1)).astype(np.int64)
        return order[np.minimum(start[c] + off, max(len(order) - 1, 0))], ok

    img = rng.integers(0, n_img, size=n)
    boxes = np.zeros((n, 4))
    near = np.flatnonzero(kind == 0)
    a, ok = pick(ann_cat, near)
    near, a = near[ok], a[ok]
    src = ann_box[a]
    centre = src[:, :2] + src[:, 2:] / 2 + rng.normal(0, 0.1, (len(a), 2)) * src[:, 2:]
    sides = np.maximum(src[:, 2:] * np.exp(rng.normal(0, 0.15, (len(a), 2))), 1.0)
    boxes[near] = np.concatenate([centre - sides / 2, sides], axis=1)
    img[near] = ann_img[a]
    pos = np.flatnonzero(kind == 1)
    a, ok = pick(ann_cat, pos)
    img[pos[ok]] = ann_img[a[ok]]
    neg = np.flatnonzero(kind == 2)
    a, ok = pick(neg_cat_a, neg)
    img[neg[ok]] = neg_img_a[a[ok]]
    rand = np.ones(n, dtype=bool)
    rand[near] = False
    r = np.flatnonzero(rand)
    size = np.exp(rng.uniform(math.log(0.02), math.log(0.9), size=(len(r), 2)))
    w, h = size[:, 0] * width[img[r]], size[:, 1] * height[img[r]]
    boxes[r] = np.stack([rng.uniform(0, 1, len(r)) * (width[img[r]] - w),
                         rng.uniform(0, 1, len(r)) * (height[img[r]] - h), w, h], axis=1)
    shuffle = rng.permutation(n)  # a detector writes image after image, not by category
    return Detections(img_ids[img[shuffle]], cat_ids[cat[shuffle]],
                      boxes[shuffle].astype(np.float32).astype(np.float64),
                      rng.uniform(0, 1, n).astype(np.float32).astype(np.float64))


def as_results(dets) -> list[dict]:
    return [{"image_id": int(i), "category_id": int(c), "bbox": b, "score": s}
            for i, c, b, s in zip(dets.image_ids.tolist(), dets.category_ids.tolist(),
                                  dets.boxes.tolist(), dets.scores.tolist(), strict=True)]


def reference_protocols(gt: dict, dets: list[dict], k: int) -> dict[str, dict[str, float]]:
    """lvis-api 0.5.3 with the reference scripts' steps (fixed; pooled, area "all")."""
    np.float = float  # type: ignore[attr-defined]  # lvis 0.5.3 needs it; numpy 2 dropped it
    from lvis import LVIS, LVISEval, LVISResults

    by_cat = defaultdict(list)
    for d in dets:
        by_cat[d["category_id"]].append(d)
    top = [d for anns in by_cat.values()
           for d in sorted(anns, key=lambda x: x["score"], reverse=True)[:k]]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gt.json"
        path.write_text(json.dumps(gt))
        lvis_gt = LVIS(str(path))
    ev = LVISEval(lvis_gt, LVISResults(lvis_gt, copy.deepcopy(top), max_dets=-1), "bbox")
    ev.params.max_dets = -1
    ev.run()
    fixed = {key: float(v) for key, v in ev.results.items() if key.startswith("AP")}
    ev = LVISEval(lvis_gt, LVISResults(lvis_gt, copy.deepcopy(top), max_dets=-1), "bbox")
    p = ev.params
    p.max_dets, p.area_rng, p.area_rng_lbl = -1, [p.area_rng[0]], [p.area_rng_lbl[0]]
    ev.evaluate()
    pooled = {}
    n_img = len(p.img_ids)
    groups = {"all": range(len(p.cat_ids)),
              **{g: ev.freq_groups[p.img_count_lbl.index(g)] for g in ("r", "c", "f")}}
    for pool, cats in groups.items():
        e = [x for x in (ev.eval_imgs[c * n_img + i] for i in range(n_img) for c in cats)
             if x is not None]
        num_gt = sum(int((x["gt_ignore"] == 0).sum()) for x in e)
        if num_gt == 0:
            pooled[pool] = math.nan
            continue
        order = np.argsort(-np.concatenate([x["dt_scores"] for x in e]), kind="mergesort")
        m = np.concatenate([x["dt_matches"] for x in e], axis=1)[:, order] > 0
        ig = np.concatenate([x["dt_ignore"] for x in e], axis=1)[:, order] > 0
        tp = np.cumsum(m & ~ig, axis=1).astype(float)
        fp = np.cumsum(~m & ~ig, axis=1).astype(float)
        prec = []
        for t, f in zip(tp, fp, strict=True):
            pr = np.maximum.accumulate((t / (t + f + np.spacing(1)))[::-1])[::-1]
            at = np.searchsorted(t / num_gt, p.rec_thrs, side="left")
            prec.append(np.where(at < len(pr), pr[np.minimum(at, len(pr) - 1)], 0.0))
        pooled[pool] = float(np.mean(prec))
    return {"fixed": fixed, "pooled": pooled}


def side_by_side(images: int, per_class: int, seed: int) -> dict:
    """Ours and the lvis-api reference on the same small input: seconds and agreement."""
    from bench_eval import build_ground_truth

    from acsl_cli.evaluation.lvis_protocols import POOL_KEYS, evaluate_protocols

    gt = build_ground_truth(images, seed)
    dets = build_topk_detections(gt, per_class, seed)
    results = as_results(dets)
    start = time.perf_counter()
    ours = evaluate_protocols(gt, dets, ("fixed", "pooled"), dets_per_class=per_class)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    ref = reference_protocols(gt, results, per_class)
    ref_s = time.perf_counter() - start
    diffs = [abs(ours["fixed"].metrics[k] - ref["fixed"][k]) for k in ours["fixed"].metrics
             if ref["fixed"][k] != -1]
    diffs += [abs(ours["pooled"].metrics[POOL_KEYS[p]] - v) for p, v in ref["pooled"].items()
              if not math.isnan(v)]
    return {"images": images, "detections": len(results), "ours s": ours_s,
            "lvis-api s": ref_s, "max abs diff": max(diffs)}


def child(images: int, per_class: int, seed: int) -> dict:
    """Build the inputs, then time Fixed and Pooled AP (one matching) with peak RSS."""
    from bench_eval import (
        build_ground_truth,
        current_rss,
        peak_rss,
        release_free_memory,
        reset_peak,
    )

    from acsl_cli.evaluation.lvis_protocols import evaluate_protocols

    start = time.perf_counter()
    gt = build_ground_truth(images, seed)
    dets = build_topk_detections(gt, per_class, seed)
    info = {"images": len(gt["images"]), "annotations": len(gt["annotations"]),
            "detections": len(dets.scores), "build s": time.perf_counter() - start}
    release_free_memory()
    info["baseline"] = current_rss()
    info["peak reset"] = reset_peak()
    start, cpu = time.perf_counter(), time.process_time()
    result = evaluate_protocols(gt, dets, ("fixed", "pooled"), dets_per_class=per_class)
    info["seconds"] = time.perf_counter() - start
    info["cpu seconds"] = time.process_time() - cpu
    info["peak"] = peak_rss()
    info["metrics"] = {p: r.metrics for p, r in result.items()}
    return info


def report(r: dict, side: dict, per_class: int) -> None:
    """The bench lines as a Markdown table."""
    mib, gb = 1024.0**2, 1e9
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    print(f"\nFixed + Pooled AP (evaluate_protocols, one matching), {os.cpu_count()} CPUs, "
          f"load average {load:.1f} at the end (other processes share the CPUs)\n")
    rows = [("images / GT annotations", f"{r['images']:,} / {r['annotations']:,}"),
            ("detections", f"{r['detections']:,} ({per_class:,} per category, 1230 "
                           "categories)"),
            ("inputs built in", f"{r['build s']:.1f} s"),
            ("Fixed + Pooled AP wall time", f"{r['seconds']:.1f} s"),
            ("Fixed + Pooled AP CPU time (this process)", f"{r['cpu seconds']:.1f} s"),
            ("peak RSS, absolute", f"{r['peak'] / mib:,.0f} MiB ({r['peak'] / gb:.2f} GB)"
             + ("" if r["peak reset"] else " (peak mark not reset: includes building)")),
            ("peak RSS above baseline", f"{(r['peak'] - r['baseline']) / mib:,.0f} MiB"),
            ("issue 24 target: <= 120 s and <= 6 GB",
             f"wall time {'met' if r['seconds'] <= 120 else 'NOT met'}, CPU time "
             f"{'met' if r['cpu seconds'] <= 120 else 'NOT met'} (single-threaded: the wall "
             f"time of an unshared machine), memory {'met' if r['peak'] <= 6 * gb else 'NOT met'}"),
            (f"side by side ({side['images']} images, {side['detections']:,} detections): "
             "lvis-api + the reference scripts' logic / ours",
             f"{side['lvis-api s']:.1f} s / {side['ours s']:.2f} s = "
             f"{side['lvis-api s'] / max(side['ours s'], 1e-9):.0f}x; "
             f"max |difference| {side['max abs diff']:.1e}")]
    print("| quantity | value |")
    print("|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    fixed, pooled = r["metrics"]["fixed"], r["metrics"]["pooled"]
    print("\nfixed  " + "  ".join(f"{k} {fixed[k] * 100:.2f}" for k in ("AP", "APr", "APc", "APf"))
          + "\npooled " + "  ".join(f"{k} {pooled[k] * 100:.2f}"
                                    for k in ("AP", "APr", "APc", "APf"))
          + "  (x100; detections are synthetic, scores random)")


if __name__ == "__main__":  # the same as ``bench_eval.py --protocols``
    import sys

    import bench_eval  # puts the checkout on sys.path

    bench_eval.main(["--protocols", *sys.argv[1:]])
