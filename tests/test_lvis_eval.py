"""Tests of the LVIS bbox evaluator.

Three independent references: lvis-api 0.5.3 on real LVIS v0.5 val annotations (parity of
every metric and every per-category AP), small cases whose AP is derived by hand from the
LVIS rules, and the one-line DataError contract for bad inputs.
"""

from __future__ import annotations

import copy
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from acsl_cli.errors import DataError
from acsl_cli.evaluation import (
    METRIC_KEYS,
    LvisEvalResult,
    evaluate_lvis,
    load_detections,
    validate_detections,
)

# Real LVIS v0.5 val annotations (CC BY 4.0), shipped with the tests: see tests/data/README.md.
LVIS_SAMPLE = Path(__file__).resolve().parent / "data/lvis_v0.5_val_100.json"
TOL = 1e-6


# ---------------------------------------------------------------------------------------
# Parity with lvis-api on real annotations
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lvis_sample() -> dict:
    return json.loads(LVIS_SAMPLE.read_text())


def _synthetic_detections(gt: dict, seed: int, tie_scores: bool) -> list[dict]:
    """A detector-like result list that exercises every LVIS rule.

    Per image: jittered copies of GT boxes (mostly the right category, sometimes a present
    or negative one), plus random boxes of 4-300 px on categories that are present,
    negative, not exhaustive, or drawn from all categories (mostly not evaluable in that
    image, so dropped). Three images get 350 extra boxes so the 300-per-image cap bites.
    ``tie_scores`` rounds scores to one decimal, making ties the norm.
    """
    rng = np.random.default_rng(seed)
    all_cats = [c["id"] for c in gt["categories"]]
    anns_by_image = defaultdict(list)
    for ann in gt["annotations"]:
        anns_by_image[ann["image_id"]].append(ann)
    dets: list[dict] = []

    def add(image_id: int, category_id: int, box) -> None:
        score = float(rng.random())
        dets.append(
            {
                "image_id": image_id,
                "category_id": int(category_id),
                "bbox": [float(v) for v in box],
                "score": round(score, 1) if tie_scores else score,
            }
        )

    for n, image in enumerate(sorted(gt["images"], key=lambda im: im["id"])):
        anns = anns_by_image[image["id"]]
        present = sorted({a["category_id"] for a in anns})
        negative = image["neg_category_ids"]
        for ann in anns:
            x, y, w, h = ann["bbox"]
            for _ in range(rng.integers(0, 4)):
                jx, jy, jw, jh = rng.normal(0.0, 0.12, 4) * [w, h, w, h]
                box = [x + jx, y + jy, max(w + jw, 0.5), max(h + jh, 0.5)]
                wrong = rng.random() < 0.2
                cat = rng.choice(present + negative) if wrong else ann["category_id"]
                add(image["id"], cat, box)
        pools = [
            p for p in (present, negative, image["not_exhaustive_category_ids"], all_cats) if p
        ]
        for _ in range(350 if n < 3 else int(rng.integers(0, 25))):
            side = float(np.exp(rng.uniform(np.log(4), np.log(300))))
            w, h = side * rng.uniform(0.5, 1.5), side * rng.uniform(0.5, 1.5)
            x = rng.uniform(0, max(image["width"] - w, 1))
            y = rng.uniform(0, max(image["height"] - h, 1))
            add(image["id"], rng.choice(pools[int(rng.integers(len(pools)))]), [x, y, w, h])
    return [dets[i] for i in rng.permutation(len(dets))]


def _lvis_api_reference(path: Path, dets: list[dict], monkeypatch) -> tuple[dict, dict]:
    """lvis-api's summary metrics and per-category AP (IoU .50:.95, area all)."""
    # lvis 0.5.3 calls np.float, removed in numpy 2; the shim is for this reference only.
    monkeypatch.setattr(np, "float", float, raising=False)
    from lvis import LVIS, LVISEval, LVISResults

    lvis_gt = LVIS(str(path))
    # LVISResults adds keys to (and reorders) the dicts it gets: give it its own copies.
    lvis_dt = LVISResults(lvis_gt, copy.deepcopy(dets), max_dets=300)
    lvis_eval = LVISEval(lvis_gt, lvis_dt, "bbox")
    lvis_eval.run()
    precision = lvis_eval.eval["precision"]
    per_category = {}
    for k, cat_id in enumerate(lvis_eval.params.cat_ids):
        values = precision[:, :, k, 0]
        if (values > -1).any():
            per_category[cat_id] = float(values[values > -1].mean())
    return {key: float(lvis_eval.results[key]) for key in METRIC_KEYS}, per_category


def _check_mix_covers_rules(gt: dict, dets: list[dict]) -> None:
    """Guard against a generator change silently dropping a rule from the parity test."""
    per_image = defaultdict(int)
    for d in dets:
        per_image[d["image_id"]] += 1
    assert max(per_image.values()) > 300
    images = {im["id"]: im for im in gt["images"]}
    present = {(a["image_id"], a["category_id"]) for a in gt["annotations"]}
    kinds = defaultdict(int)
    for d in dets:
        pair, image = (d["image_id"], d["category_id"]), images[d["image_id"]]
        kinds["negative"] += d["category_id"] in image["neg_category_ids"]
        kinds["not_exhaustive"] += d["category_id"] in image["not_exhaustive_category_ids"]
        kinds["dropped"] += (
            pair not in present and d["category_id"] not in image["neg_category_ids"]
        )
    assert min(kinds["negative"], kinds["not_exhaustive"], kinds["dropped"]) >= 5, kinds
    areas = np.array([d["bbox"][2] * d["bbox"][3] for d in dets])
    assert (areas < 32**2).sum() > 20 and (areas > 96**2).sum() > 20
    assert ((areas >= 32**2) & (areas <= 96**2)).sum() > 20


# Two mixes (lvis-api takes ~3 s each here): distinct scores, and scores rounded to one
# decimal so that the stable tie-breaking of the per-image cap and of the sorts matters.
@pytest.mark.parametrize(("seed", "tie_scores"), [(0, False), (1, True)])
def test_matches_lvis_api_on_real_annotations(lvis_sample, seed, tie_scores, monkeypatch):
    dets = _synthetic_detections(lvis_sample, seed, tie_scores)
    _check_mix_covers_rules(lvis_sample, dets)
    ref_metrics, ref_per_category = _lvis_api_reference(LVIS_SAMPLE, dets, monkeypatch)

    result = evaluate_lvis(copy.deepcopy(lvis_sample), copy.deepcopy(dets))

    assert tuple(result.metrics) == METRIC_KEYS
    for key in METRIC_KEYS:
        if ref_metrics[key] == -1:
            assert math.isnan(result.metrics[key]), key
        else:
            assert result.metrics[key] == pytest.approx(ref_metrics[key], abs=TOL), key
    ours = {row["category_id"]: row["AP"] for row in result.per_category}
    assert ours.keys() == ref_per_category.keys()
    for cat_id, ap in ref_per_category.items():
        assert ours[cat_id] == pytest.approx(ap, abs=TOL), cat_id
    assert 0.05 < result.metrics["AP"] < 0.9  # a non-degenerate mix, not all zeros or ones


def test_empty_detections_on_real_annotations(lvis_sample):
    result = evaluate_lvis(lvis_sample, [])
    with_gt = {a["category_id"] for a in lvis_sample["annotations"] if a["area"] > 0}
    assert {row["category_id"] for row in result.per_category} == with_gt
    assert all(row["AP"] == 0.0 for row in result.per_category)
    counts = defaultdict(int)
    for ann in lvis_sample["annotations"]:
        counts[ann["category_id"]] += 1
    assert all(row["num_gt"] == counts[row["category_id"]] for row in result.per_category)
    assert all(result.metrics[key] == 0.0 for key in ("AP", "AP50", "APr", "APc", "APf"))


# ---------------------------------------------------------------------------------------
# Hand-derived cases
# ---------------------------------------------------------------------------------------

CATEGORIES = [
    {"id": 1, "name": "apple", "frequency": "f"},
    {"id": 2, "name": "banana", "frequency": "c"},
    {"id": 3, "name": "cherry", "frequency": "r"},
]


def _image(image_id: int, neg=(), not_exhaustive=()) -> dict:
    return {
        "id": image_id,
        "width": 640,
        "height": 480,
        "neg_category_ids": list(neg),
        "not_exhaustive_category_ids": list(not_exhaustive),
    }


def _gt(boxes: list[tuple[int, int, list[float]]], images: list[dict] | None = None) -> dict:
    """Ground truth from (image_id, category_id, bbox) triples; area = box area."""
    annotations = [
        {"id": i + 1, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3]}
        for i, (img, cat, box) in enumerate(boxes)
    ]
    return {
        "images": images or [_image(1)],
        "annotations": annotations,
        "categories": copy.deepcopy(CATEGORIES),
    }


def _det(image_id: int, category_id: int, bbox: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


def _ap(result: LvisEvalResult, category_id: int = 1) -> float:
    (row,) = [r for r in result.per_category if r["category_id"] == category_id]
    return row["AP"]


A, B, C = [0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 10.0, 10.0], [0.0, 50.0, 10.0, 10.0]
FAR = [80.0, 80.0, 10.0, 10.0]


def test_hand_computed_ap_three_gt_three_detections():
    # GT A, B, C; detections in score order: exact A (IoU 1), a miss, B at IoU 0.82.
    # IoU .50-.80 (7 thresholds): TP FP TP -> recall 1/3 1/3 2/3, enveloped precision
    # 1 2/3 2/3: 34 recall points (0-.33) at 1, 33 (.34-.66) at 2/3, the rest 0 -> 56/101.
    # IoU .85-.95 (3 thresholds): TP FP FP -> 34 points at 1 -> 34/101.
    gt = _gt([(1, 1, A), (1, 1, B), (1, 1, C)])
    dets = [_det(1, 1, A, 0.9), _det(1, 1, FAR, 0.8), _det(1, 1, [20.0, 0.0, 10.0, 8.2], 0.7)]
    expected = (7 * 56 / 101 + 3 * 34 / 101) / 10

    result = evaluate_lvis(gt, dets)

    m = result.metrics
    assert m["AP"] == pytest.approx(expected, abs=1e-12)
    assert m["AP50"] == pytest.approx(56 / 101, abs=1e-12)
    assert m["AP75"] == pytest.approx(56 / 101, abs=1e-12)
    assert m["APs"] == pytest.approx(expected, abs=1e-12)  # every box is 100 px^2: small
    assert m["APf"] == pytest.approx(expected, abs=1e-12)
    for key in ("APm", "APl", "APr", "APc"):  # no category with GT in these groups
        assert math.isnan(m[key]), key
    assert result.per_category == [
        {"category_id": 1, "name": "apple", "frequency": "f", "num_gt": 3, "AP": m["AP"]}
    ]
    # Input order does not matter when scores differ.
    assert evaluate_lvis(gt, dets[::-1]).metrics == m


def test_detection_takes_the_highest_iou_gt():
    # GT A, A' = A shifted by 5, C (never found). The first detection overlaps A' at
    # IoU 90/110 = .818 and A at .43, so it takes A'; the second then takes A.
    # IoU .50-.80: TP TP -> 67 points (recall <= 2/3) at 1. IoU .85-.95: FP TP ->
    # precision 0 .5 enveloped to .5 .5 over recall 0 1/3 -> 34 points at .5.
    shifted = [5.0, 0.0, 10.0, 10.0]
    gt = _gt([(1, 1, A), (1, 1, shifted), (1, 1, C)])
    dets = [_det(1, 1, [4.0, 0.0, 10.0, 10.0], 0.9), _det(1, 1, A, 0.8)]
    expected = (7 * 67 / 101 + 3 * 17 / 101) / 10
    assert evaluate_lvis(gt, dets).metrics["AP"] == pytest.approx(expected, abs=1e-12)


def test_equal_iou_tie_goes_to_the_later_gt():
    # G1 and G2 overlap the first detection equally (IoU 80/120 = .667); lvis-api's scan
    # keeps the later GT on ties, so G2 is taken and the second detection (IoU .818 with
    # G1, .33 with G2) can still take G1. C is never found (3 GT in all).
    # IoU .50-.65 (4 thresholds): TP TP -> 67/101. IoU .70-.80 (3): FP TP -> 34 recall
    # points at .5 -> 17/101. IoU .85-.95: FP FP -> 0.
    gt = _gt([(1, 1, A), (1, 1, [4.0, 0.0, 10.0, 10.0]), (1, 1, C)])
    dets = [_det(1, 1, [2.0, 0.0, 10.0, 10.0], 0.9), _det(1, 1, [-1.0, 0.0, 10.0, 10.0], 0.8)]
    expected = (4 * 67 / 101 + 3 * 17 / 101) / 10
    assert evaluate_lvis(gt, dets).metrics["AP"] == pytest.approx(expected, abs=1e-12)


def test_area_range_bounds_are_inclusive():
    # A 32x32 box (1024 px^2) is both small and medium, for GT and for detections: the
    # 32x32 miss ranked first is a false positive in both ranges (FP TP -> AP .5).
    gt = _gt([(1, 1, [0.0, 0.0, 32.0, 32.0])])
    dets = [_det(1, 1, [0.0, 0.0, 32.0, 32.0], 0.5), _det(1, 1, [200.0, 200.0, 32.0, 32.0], 0.9)]
    m = evaluate_lvis(gt, dets).metrics
    assert m["APs"] == pytest.approx(0.5) and m["APm"] == pytest.approx(0.5)
    assert math.isnan(m["APl"])


def test_unmatched_detection_on_not_exhaustive_category_is_ignored():
    tp = _det(1, 1, A, 0.5)
    miss = _det(1, 1, FAR, 0.9)  # ranked first, matches nothing
    exhaustive = _gt([(1, 1, A)], images=[_image(1)])
    not_exhaustive = _gt([(1, 1, A)], images=[_image(1, not_exhaustive=[1])])

    assert _ap(evaluate_lvis(exhaustive, [tp])) == pytest.approx(1.0)
    assert _ap(evaluate_lvis(not_exhaustive, [tp, miss])) == pytest.approx(1.0)
    # The same miss on an exhaustively annotated category is a false positive: FP TP gives
    # precision .5 at every recall level.
    assert _ap(evaluate_lvis(exhaustive, [tp, miss])) == pytest.approx(0.5)


def test_detection_on_negative_category_counts_and_unknown_category_is_dropped():
    tp = _det(1, 1, A, 0.5)
    elsewhere = _det(2, 1, A, 0.9)  # image 2 has no GT of category 1

    def ap_with(image2: dict) -> float:
        gt = _gt([(1, 1, A)], images=[_image(1), image2])
        return _ap(evaluate_lvis(gt, [tp, elsewhere]))

    assert ap_with(_image(2, neg=[1])) == pytest.approx(0.5)  # verified absent: FP
    assert ap_with(_image(2)) == pytest.approx(1.0)  # unknown presence: dropped
    assert ap_with(_image(2, not_exhaustive=[1])) == pytest.approx(1.0)  # still dropped


def test_top_300_cap_spans_categories_and_keeps_input_order_on_ties():
    gt = _gt([(1, 1, A)], images=[_image(1, neg=[2])])
    others = [_det(1, 2, [100.0 + i, 100.0, 10.0, 10.0], 0.5) for i in range(300)]
    tp_last_tie = _det(1, 1, A, 0.5)

    # 301 detections tied at 0.5: the one given last is the 301st and is cut.
    assert _ap(evaluate_lvis(gt, others + [tp_last_tie])) == 0.0
    assert _ap(evaluate_lvis(gt, [tp_last_tie] + others)) == pytest.approx(1.0)
    assert _ap(evaluate_lvis(gt, others + [tp_last_tie], max_dets=301)) == pytest.approx(1.0)
    # Lower score than all 300 others: cut wherever it is, unless the cap is off.
    low = _det(1, 1, A, 0.1)
    assert _ap(evaluate_lvis(gt, [low] + others)) == 0.0
    assert _ap(evaluate_lvis(gt, [low] + others, max_dets=-1)) == pytest.approx(1.0)
    # The cap is per image: 300 detections in image 2 do not push out image 1's.
    two_images = _gt([(1, 1, A)], images=[_image(1), _image(2, neg=[2])])
    moved = [{**d, "image_id": 2} for d in others]
    assert _ap(evaluate_lvis(two_images, moved + [low])) == pytest.approx(1.0)


def test_area_ranges_use_the_annotation_area_field():
    box = [0.0, 0.0, 100.0, 100.0]  # 10000 px^2 box: large by box area
    gt = _gt([(1, 1, box)])
    gt["annotations"][0]["area"] = 500.0  # e.g. a thin mask: small by annotation area
    result = evaluate_lvis(gt, [_det(1, 1, box, 0.9)])
    assert result.metrics["APs"] == pytest.approx(1.0)
    assert math.isnan(result.metrics["APl"])

    del gt["annotations"][0]["area"]  # falls back to the box area
    result = evaluate_lvis(gt, [_det(1, 1, box, 0.9)])
    assert result.metrics["APl"] == pytest.approx(1.0)
    assert math.isnan(result.metrics["APs"])


def test_empty_detections_give_zero_for_categories_with_gt_and_nan_without():
    result = evaluate_lvis(_gt([(1, 1, A), (1, 2, B)]), [])
    m = result.metrics
    assert m["AP"] == m["AP50"] == m["AP75"] == m["APs"] == m["APf"] == m["APc"] == 0.0
    assert math.isnan(m["APr"]) and math.isnan(m["APm"]) and math.isnan(m["APl"])
    assert [(r["category_id"], r["num_gt"], r["AP"]) for r in result.per_category] == [
        (1, 1, 0.0),
        (2, 1, 0.0),
    ]


def test_progress_reports_up_to_total():
    calls: list[tuple[int, int]] = []
    gt = _gt([(1, 1, A), (1, 2, B)])
    evaluate_lvis(
        gt, [_det(1, 1, A, 0.9)], progress=lambda done, total: calls.append((done, total))
    )
    assert calls and calls[-1][0] == calls[-1][1] > 0
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


# ---------------------------------------------------------------------------------------
# Input errors
# ---------------------------------------------------------------------------------------


def _data_error(func, *args) -> str:
    with pytest.raises(DataError) as info:
        func(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("detections", "expected"),
    [
        ({"image_id": 1}, "must be a JSON list"),
        ([_det(1, 1, A, 0.5), _det(7, 1, A, 0.5)], "image ids not in the ground truth: 7"),
        ([_det(1, 9, A, 0.5)], "category ids not in the ground truth: 9"),
        (
            [_det(1, 1, A, 0.5), {"image_id": 1, "category_id": 1, "bbox": A}],
            "detection 1 is missing key 'score'",
        ),
        ([_det(1, 1, A, "high")], "detection 0 has score 'high'"),
        ([_det("1", 1, A, 0.5)], "detection 0 has image_id '1'"),
        ([_det(1, True, A, 0.5)], "detection 0 has category_id True"),
        ([_det(1, 1, [0, 0, 10], 0.5)], "detection 0 has bbox [0, 0, 10]"),
        ([[1, 1, A, 0.5]], "detection 0 is a list"),
        ([_det(1, 1, A, 0.5), _det(1, 1, A, float("nan"))], "detection 1 has a non-finite"),
        ([_det(1, 1, [0, 0, float("inf"), 1], 0.5)], "detection 0 has a non-finite"),
        # bools among ints would pass a numpy dtype check: the entry is still named
        ([_det(1, 1, A, 0.5), _det(True, 1, A, 0.5)], "detection 1 has image_id True"),
        ([_det(1, 1, A, 0.5), _det(1, 1, A, False)], "detection 1 has score False"),
        ([_det(1, 1, A, 0.5), _det(1, 1, [0, True, 1, 1], 0.5)], "detection 1 has bbox [0, True"),
        ([_det(1, 1, A, 0.5), _det(1.0, 1, A, 0.5)], "detection 1 has image_id 1.0"),
        ([_det(2**70, 1, A, 0.5)], "detection 0 has image_id 1180591620717411303424"),
        ([_det(1, 1, [0, 0, 10**400, 1], 0.5)], "detection 0 has a non-finite score or bbox"),
        ([_det(1, 1, A, [[[[0.5]]]])], "detection 0 has score [[[...]]], expected a number"),
        ([_det(1, 1, A, 0.5), None], "detection 1 is a NoneType, expected an object"),
        ([_det(1, 1, (0, 0, 1, 1), 0.5), _det(1, 1, {"x": 0}, 0.5)], "detection 1 has bbox {'x"),
    ],
)
def test_validate_detections_errors(detections, expected):
    gt = _gt([(1, 1, A)])
    message = _data_error(validate_detections, gt, detections, "run7/dets.json")
    assert message.startswith("run7/dets.json: ")
    assert expected in message


def test_unknown_ids_are_listed_up_to_five():
    gt = _gt([(1, 1, A)])
    dets = [_det(1, cat, A, 0.5) for cat in (11, 12, 13, 14, 15, 16, 17, 12)]
    message = _data_error(validate_detections, gt, dets, "src")
    assert message == (
        "src: 8 detection(s) use category ids not in the ground truth: "
        "11, 12, 13, 14, 15 (and 2 more)"
    )


def test_evaluate_validates_its_input():
    message = _data_error(evaluate_lvis, _gt([(1, 1, A)]), [_det(5, 1, A, 0.5)])
    assert message.startswith("detections: ")


def test_load_detections(tmp_path):
    gt = _gt([(1, 1, A)])
    good = tmp_path / "good.json"
    good.write_text(json.dumps([_det(1, 1, A, 0.5)]))
    assert load_detections(good, gt) == [_det(1, 1, A, 0.5)]

    missing = tmp_path / "missing.json"
    assert _data_error(load_detections, missing, gt) == f"{missing}: file not found"

    broken = tmp_path / "broken.json"
    broken.write_text('[{"image_id": 1,\n')
    assert _data_error(load_detections, broken, gt).startswith(f"{broken}: invalid JSON")

    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps([_det(3, 1, A, 0.5)]))
    assert _data_error(load_detections, str(unknown), gt).startswith(f"{unknown}: 1 detection")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": NaN}]',
         "detection 0 has a non-finite score or bbox"),
        ('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, Infinity, 1], "score": 1}]',
         "detection 0 has a non-finite score or bbox"),
        ('{"image_id": 1}', "detections must be a JSON list, got dict"),
        ("7", "detections must be a JSON list, got int"),
        ("[" * 100_000 + "]" * 100_000, "invalid JSON (nested too deeply)"),
        ('[{"image_id": 1, "category_id": 1, "bbox": ' + "[" * 500 + "]" * 500
         + ', "score": 1}]', "detection 0 has bbox [[[...]]], expected [x, y, w, h] numbers"),
    ],
)
def test_load_detections_rejects_malformed_files(tmp_path, text, expected):
    path = tmp_path / "dets.json"
    path.write_text(text)
    assert _data_error(load_detections, path, _gt([(1, 1, A)])) == f"{path}: {expected}"


@pytest.mark.parametrize("chunk", [1, 500, 5_000])
def test_matching_does_not_depend_on_how_pairs_are_chunked(lvis_sample, chunk):
    """The matching runs over chunks of (image, category) pairs to bound memory; every chunk
    size, down to one pair per chunk, gives the outcome of the whole set in one chunk."""
    from acsl_cli.evaluation.detections import parse_detections
    from acsl_cli.evaluation.lvis_gt import index_ground_truth, select_detections
    from acsl_cli.evaluation.lvis_matching import EvalProgress, busy_pairs, match_all

    gt = copy.deepcopy(lvis_sample)
    dets = parse_detections(gt, _synthetic_detections(lvis_sample, 0, True), "detections")
    g = index_ground_truth(gt)
    kept = select_detections(g, dets, 300)
    pairs = busy_pairs(g, kept)
    combos = [len(a) * len(b) for a, b in zip(*pairs, strict=True)]
    assert max(combos) > 1 and sum(combos) > 3 * 5_000  # several chunks even at the largest

    whole = match_all(g, kept, pairs, EvalProgress(len(pairs[0]), None),
                      chunk=10**9, min_chunk=10**9)
    chunked = match_all(g, kept, pairs, EvalProgress(len(pairs[0]), None),
                        chunk=chunk, min_chunk=1)
    assert (whole == 1).any() and (whole == -1).any()
    np.testing.assert_array_equal(chunked, whole)
