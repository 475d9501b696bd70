"""Tests of the Open Images challenge metric and the predictions CSV.

Every expected AP is derived by hand from the challenge rules (in the comments), plus a
parity check against a literal per-image, per-class loop over the same rules (the way the
official TensorFlow evaluator is written) on random inputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from acsl_cli.errors import DataError
from acsl_cli.evaluation import openimages_metric as om
from acsl_cli.evaluation.openimages_metric import (
    OpenImagesGT,
    evaluate_openimages,
    expand_detections,
    expand_ground_truth,
)
from acsl_cli.evaluation.openimages_predictions import (
    COLUMNS,
    read_predictions_csv,
    write_predictions_csv,
)

TOL = 1e-9


def make_gt(num_classes: int, images: list[dict]) -> OpenImagesGT:
    """images[i] = {"boxes": [(label, (x0, y0, x1, y1), group_of)], "pos": [..], "neg": [..]}."""
    def offsets(key: str) -> np.ndarray:
        return np.cumsum([0] + [len(im.get(key, ())) for im in images]).astype(np.int64)

    boxes = [b for im in images for b in im.get("boxes", ())]
    return OpenImagesGT(
        num_classes=num_classes, box_offsets=offsets("boxes"),
        boxes=np.array([b[1] for b in boxes], np.float64).reshape(-1, 4),
        box_labels=np.array([b[0] for b in boxes], np.int32),
        group_of=np.array([b[2] for b in boxes], bool),
        pos_offsets=offsets("pos"),
        pos_labels=np.array([p for im in images for p in im.get("pos", ())], np.int32),
        neg_offsets=offsets("neg"),
        neg_labels=np.array([p for im in images for p in im.get("neg", ())], np.int32))


def make_dets(rows: list[tuple]) -> tuple[np.ndarray, ...]:
    """rows = [(image, label, score, (x0, y0, x1, y1))]."""
    return (np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.int32),
            np.array([r[2] for r in rows], np.float64),
            np.array([r[3] for r in rows], np.float64).reshape(-1, 4))


def evaluate(gt: OpenImagesGT, rows: list[tuple], **kw) -> om.OpenImagesResult:
    return evaluate_openimages(gt, *make_dets(rows), **kw)


def box(x0: float, y0: float, x1: float, y1: float, scale: float = 1.0) -> tuple:
    return (x0 / scale, y0 / scale, x1 / scale, y1 / scale)


# ---------------------------------------------------------------------------------------
# The published golden case
# ---------------------------------------------------------------------------------------


def test_golden_challenge_case():
    # TensorFlow object_detection's OpenImagesChallengeEvaluatorTest (boxes there are
    # [ymin, xmin, ymax, xmax] in pixels; all are squares, so here x/y order is moot and
    # /1000 puts them in [0, 1] without changing any IoU). Classes 1 cat, 2 dog, 3 elephant.
    # img1: cat [0,0,1,1]; elephant [0,0,2,2]; cat [0,0,3,3] group-of; verified 1, 2, 3.
    # img2: cat [10,10,11,11]; cat [500,500,510,510]; elephant [10,10,12,12] group-of.
    # img3: dog [0,0,1,1].
    # num_gt (group_of_weight w = 0.5): cat 1 + 2 + 0.5 x 1 = 3.5; dog 1; elephant 1 + 0.5.
    # img1: dog 0.8 [100,100,120,120] and dog 0.7 [10,10,11,11]: dog is verified but has no
    #   box there -> both false positives.
    # img2: cat 0.7 [10,10,11,11] IoU 1 with a cat box -> TP; cat 0.8 [100,...] -> FP;
    #   dog 0.5: dog neither verified nor boxed in img2 -> dropped; elephant 0.9
    #   [10,10,11,11]: no plain elephant box, inside the group-of elephant (IoA 1) ->
    #   ignored, the group-of box adds one TP of weight 0.5 at 0.9.
    # img3: dog 0.5 IoU 1 -> TP.
    # cat: 0.8 FP, 0.7 TP -> precision 0, 1/2 at recall 0, 1/3.5 -> AP = 0.5 / 3.5 = 1/7.
    # dog: 0.8 FP, 0.7 FP, 0.5 TP -> precision 1/3 at recall 1 -> AP = 1/3.
    # elephant: 0.9 TP of weight 0.5 (adds 0.5 to TP, 0 to FP) -> precision 1 at recall
    #   0.5 / 1.5 -> AP = 1/3.     mAP = (1/7 + 1/3 + 1/3) / 3 = 17/63.
    s = 1000.0
    gt = make_gt(3, [
        {"boxes": [(1, box(0, 0, 1, 1, s), False), (3, box(0, 0, 2, 2, s), False),
                   (1, box(0, 0, 3, 3, s), True)], "pos": [1, 2, 3]},
        {"boxes": [(1, box(10, 10, 11, 11, s), False), (1, box(500, 500, 510, 510, s), False),
                   (3, box(10, 10, 12, 12, s), True)]},
        {"boxes": [(2, box(0, 0, 1, 1, s), False)]},
    ])
    r = evaluate(gt, [
        (0, 2, 0.7, box(10, 10, 11, 11, s)), (0, 2, 0.8, box(100, 100, 120, 120, s)),
        (1, 1, 0.7, box(10, 10, 11, 11, s)), (1, 1, 0.8, box(100, 100, 120, 120, s)),
        (1, 2, 0.5, box(100, 100, 220, 220, s)), (1, 3, 0.9, box(10, 10, 11, 11, s)),
        (2, 2, 0.5, box(0, 0, 1, 1, s)),
    ], group_of_weight=0.5)
    np.testing.assert_allclose(r.num_gt, [3.5, 1.0, 1.5])
    np.testing.assert_allclose(r.ap, [1 / 7, 1 / 3, 1 / 3], atol=TOL)
    assert r.map == pytest.approx(17 / 63, abs=TOL)
    # the published decimals
    np.testing.assert_allclose(r.ap, [0.142857, 0.333333, 0.333333], atol=1e-6)
    assert r.map == pytest.approx(0.269841, abs=1e-6)
    assert r.metrics() == {"AP50": pytest.approx(100 * 17 / 63)}


# ---------------------------------------------------------------------------------------
# Matching rules
# ---------------------------------------------------------------------------------------

A = box(0.0, 0.0, 0.2, 0.2)
G = box(0.5, 0.5, 1.0, 1.0)  # a group-of region
INSIDE_G = box(0.6, 0.6, 0.7, 0.7)  # IoU with G 0.04, but wholly inside it
ELSEWHERE = box(0.3, 0.0, 0.4, 0.1)


@pytest.mark.parametrize("w, expected", [
    # entries 0.9 TP, 0.85 FP, 0.8 group-of TP of weight w; num_gt = 1 + w
    # w=1: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> 1/2 x 1 + 1/2 x 2/3 = 5/6
    (1.0, 5 / 6),
    # w=0.5: cumTP 1, 1, 1.5; cumFP 0, 1, 1 -> precision 1, 1/2, 3/5 at recall 2/3, 2/3, 1
    #   -> 2/3 x 1 + 1/3 x 3/5 = 13/15
    (0.5, 13 / 15),
    # w=0: the group-of box counts nowhere, its detections are still ignored: 0.9 TP,
    #   0.85 FP at recall 1, 1 -> AP 1
    (0.0, 1.0),
])
def test_group_of_hit_is_one_tp_at_best_score(w, expected):
    gt = make_gt(1, [{"boxes": [(1, A, False), (1, G, True)]}])
    r = evaluate(gt, [(0, 1, 0.9, A), (0, 1, 0.85, ELSEWHERE), (0, 1, 0.8, INSIDE_G),
                      (0, 1, 0.7, box(0.8, 0.8, 0.9, 0.9))], group_of_weight=w)
    assert r.num_gt[0] == 1 + w
    assert r.ap[0] == pytest.approx(expected, abs=TOL)


def test_group_of_tp_takes_the_best_score_of_its_hits():
    # hits at 0.3 and 0.7, a false positive at 0.5; one group-of box, w=1, num_gt 1.
    # best score: 0.7 TP, 0.5 FP -> precision 1 at recall 1 -> AP 1 (the lowest hit, 0.3,
    # would give 0.5 FP, 0.3 TP -> 1/2).
    gt = make_gt(1, [{"boxes": [(1, G, True)]}])
    r = evaluate(gt, [(0, 1, 0.3, INSIDE_G), (0, 1, 0.5, ELSEWHERE),
                      (0, 1, 0.7, box(0.75, 0.75, 0.95, 0.95))])
    assert r.ap[0] == pytest.approx(1.0, abs=TOL)


def test_unhit_group_of_box_is_a_false_negative():
    # image 0: box A found at 0.9; image 1: a group-of box nobody hits.
    # w=1: num_gt 2, one TP at precision 1 -> AP 1/2; w=0.5: num_gt 1.5 -> AP 2/3.
    gt = make_gt(1, [{"boxes": [(1, A, False)]}, {"boxes": [(1, G, True)]}])
    for w, expected in ((1.0, 0.5), (0.5, 2 / 3), (0.0, 1.0)):
        assert evaluate(gt, [(0, 1, 0.9, A)], group_of_weight=w).ap[0] == pytest.approx(expected)


def test_class_with_only_group_of_boxes_has_no_gt_at_weight_zero():
    # class 2's only box is group-of: num_gt = 0 at w=0 -> AP nan, left out of the mean.
    gt = make_gt(2, [{"boxes": [(1, A, False), (2, G, True)]}])
    rows = [(0, 1, 0.9, A), (0, 2, 0.8, INSIDE_G)]
    r0 = evaluate(gt, rows, group_of_weight=0.0)
    assert math.isnan(r0.ap[1]) and r0.num_gt[1] == 0 and r0.map == pytest.approx(1.0)
    r1 = evaluate(gt, rows, group_of_weight=1.0)
    assert r1.ap[1] == pytest.approx(1.0) and r1.map == pytest.approx(1.0)


def test_partly_inside_group_of_is_a_false_positive():
    # detection [0.4, 0.4, 0.6, 0.6] vs group-of [0.5, 0.5, 1, 1]: intersection 0.01 over its
    # own area 0.04 = 0.25 < 0.5 -> FP; num_gt 1 (unhit group-of) -> no TP -> AP 0.
    gt = make_gt(1, [{"boxes": [(1, G, True)]}])
    assert evaluate(gt, [(0, 1, 0.9, box(0.4, 0.4, 0.6, 0.6))]).ap[0] == 0.0


def test_duplicate_on_taken_box_inside_group_of_is_ignored():
    # A' = [0.55, 0.55, 0.75, 0.75] lies inside group-of G. 0.9 matches A' (TP); 0.8 also has
    # its best IoU on A' (taken -> not a TP) but is inside G -> ignored, and G is hit at 0.8.
    # w=1, num_gt 2: 0.9 TP, 0.8 TP(G) -> AP 1 (as an FP, with G unhit, it would be 1/2).
    a2 = box(0.55, 0.55, 0.75, 0.75)
    gt = make_gt(1, [{"boxes": [(1, a2, False), (1, G, True)]}])
    r = evaluate(gt, [(0, 1, 0.9, a2), (0, 1, 0.8, box(0.56, 0.56, 0.76, 0.76))])
    assert r.ap[0] == pytest.approx(1.0)


def test_best_iou_box_taken_makes_a_false_positive():
    # boxes P = [0, 0, .4, .4] and Q = P shifted .04 right. 0.9 = P exactly -> TP on P.
    # 0.8 = [.01, 0, .41, .4]: IoU with P .156/.164 = .95, with Q .148/.172 = .86; its best
    # box P is taken -> FP although Q is free (no second choice). num_gt 2 -> AP 1/2.
    gt = make_gt(1, [{"boxes": [(1, (0, 0, .4, .4), False), (1, (.04, 0, .44, .4), False)]}])
    r = evaluate(gt, [(0, 1, 0.9, (0, 0, .4, .4)), (0, 1, 0.8, (.01, 0, .41, .4))])
    assert r.ap[0] == pytest.approx(0.5)


def test_iou_threshold_is_inclusive_and_invalid_boxes_removed():
    # GT [0,0,.5,.25] (area 1/8), detection [0,0,.5,.125] (area 1/16): IoU exactly 1/2 -> TP.
    # Zero-area and inverted detections are removed, not false positives -> AP 1.
    gt = make_gt(1, [{"boxes": [(1, (0, 0, .5, .25), False)]}])
    r = evaluate(gt, [(0, 1, 0.5, (0, 0, .5, .125)), (0, 1, 0.9, (.6, .6, .6, .7)),
                      (0, 1, 0.8, (.7, .6, .6, .7))])
    assert r.ap[0] == pytest.approx(1.0)
    # just below: IoU 0.5 at threshold 0.5001 -> FP -> AP 0
    r = evaluate(gt, [(0, 1, 0.5, (0, 0, .5, .125))], iou_threshold=0.5001)
    assert r.ap[0] == 0.0


def test_verified_negative_is_fp_and_unannotated_class_dropped():
    # class 1: image 0 has box A, found at 0.5. Image 1 says "no class 1" (verified
    # negative): its 0.9 detection of class 1 is an FP -> 0.9 FP, 0.5 TP -> AP 1/2.
    # Image 2 has a verified-present class 1 label but no box: same, an FP.
    # Image 3 says nothing about class 1: its detection is dropped.
    imgs = [{"boxes": [(1, A, False)]}, {"neg": [1]}, {"pos": [1], "neg": [2]}, {"pos": [2]}]
    gt = make_gt(2, imgs)
    assert evaluate(gt, [(0, 1, 0.5, A), (1, 1, 0.9, A)]).ap[0] == pytest.approx(0.5)
    assert evaluate(gt, [(0, 1, 0.5, A), (2, 1, 0.9, A)]).ap[0] == pytest.approx(0.5)
    r = evaluate(gt, [(0, 1, 0.5, A), (3, 1, 0.9, A), (3, 1, 0.95, G)])
    assert r.ap[0] == pytest.approx(1.0)
    assert math.isnan(r.ap[1]) and r.map == pytest.approx(1.0)  # class 2 has no GT


def test_voc_all_point_ap_by_hand():
    # 5 GT boxes, detections in score order T F T F T: cumTP 1 1 2 2 3, cumFP 0 1 1 2 2
    # precision 1, 1/2, 2/3, 1/2, 3/5 at recall 1/5, 1/5, 2/5, 2/5, 3/5.
    # Envelope (max to the right): 1, 2/3, 2/3, 3/5, 3/5.
    # AP = 1/5 x 1 + 1/5 x 2/3 + 1/5 x 3/5 = (15 + 10 + 9) / 75 = 34/75.
    gts = [(1, (0.1 * i, 0, 0.1 * i + 0.05, 0.05), False) for i in range(5)]
    gt = make_gt(1, [{"boxes": gts}])
    miss = box(0.5, 0.5, 0.6, 0.6)
    rows = [(0, 1, 0.9, gts[0][1]), (0, 1, 0.8, miss), (0, 1, 0.7, gts[1][1]),
            (0, 1, 0.6, miss), (0, 1, 0.5, gts[2][1])]
    assert evaluate(gt, rows).ap[0] == pytest.approx(34 / 75, abs=TOL)
    assert evaluate(gt, []).ap[0] == 0.0


def test_max_per_class_image_cap():
    # one GT box; FPs at 0.9, 0.8, 0.7, the TP at 0.6; class 2 (own GT, TP at 0.95) shares
    # the image but not the cap. cap 3 -> the TP is cut -> AP 0; cap 4 -> precision 1/4 at
    # recall 1 -> AP 1/4. Class 2 stays 1 either way.
    gt = make_gt(2, [{"boxes": [(1, A, False), (2, G, False)]}])
    rows = [(0, 1, s, ELSEWHERE) for s in (0.9, 0.8, 0.7)] + [(0, 1, 0.6, A), (0, 2, 0.95, G)]
    r3 = evaluate(gt, rows, max_per_class_image=3)
    r4 = evaluate(gt, rows, max_per_class_image=4)
    assert r3.ap[0] == 0.0 and r3.ap[1] == pytest.approx(1.0)
    assert r4.ap[0] == pytest.approx(0.25) and r4.ap[1] == pytest.approx(1.0)


def test_per_group_ap():
    # classes 1 r, 2 r, 3 f, 4 c without GT. AP1 = 1, AP2 = 0 (missed), AP3 = 1/2
    # (0.9 FP, 0.8 TP). APr = 1/2, APf = 1/2, APc unknown (nan), AP50 = (1 + 0 + 1/2) / 3.
    gt = make_gt(4, [{"boxes": [(1, A, False), (2, G, False), (3, INSIDE_G, False)]}])
    rows = [(0, 1, 0.5, A), (0, 3, 0.9, ELSEWHERE), (0, 3, 0.8, INSIDE_G)]
    r = evaluate(gt, rows, groups=["r", "r", "f", "c"])
    assert r.group_ap["r"] == pytest.approx(0.5) and r.group_ap["f"] == pytest.approx(0.5)
    assert math.isnan(r.group_ap["c"])
    m = r.metrics()
    assert set(m) == {"AP50", "APr", "APc", "APf"}
    assert m["AP50"] == pytest.approx(50.0) and m["APr"] == pytest.approx(50.0)
    assert set(evaluate(gt, rows).metrics()) == {"AP50"}


# ---------------------------------------------------------------------------------------
# Hierarchy
# ---------------------------------------------------------------------------------------

# 1 animal; 2 pet < animal; 3 wild < animal; 4 cat < pet and wild (two parents); 5 dog < pet.
ANCESTORS = [(), (1,), (1,), (1, 2, 3), (1, 2)]


def test_expand_ground_truth_multi_parent():
    gt = make_gt(5, [
        {"boxes": [(4, A, False), (5, G, True)], "pos": [4]},
        {"neg": [1]},  # no animal -> no pet, wild, cat, dog either
        {"pos": [3], "neg": [2]},  # wild (-> animal) present; no pet -> no cat, no dog
    ])
    e = expand_ground_truth(gt, ANCESTORS)
    # cat's box reaches animal, pet and wild once each (animal not twice via both parents);
    # dog's group-of box reaches animal and pet, still group-of.
    assert e.box_offsets.tolist() == [0, 7, 7, 7]
    assert e.box_labels.tolist() == [4, 1, 2, 3, 5, 1, 2]
    assert e.group_of.tolist() == [False] * 4 + [True] * 3
    np.testing.assert_array_equal(e.boxes, [A] * 4 + [G] * 3)
    assert e.pos_offsets.tolist() == [0, 4, 4, 6]
    assert e.pos_labels.tolist() == [1, 2, 3, 4, 1, 3]
    assert e.neg_offsets.tolist() == [0, 0, 5, 8]
    assert e.neg_labels.tolist() == [1, 2, 3, 4, 5, 2, 4, 5]


def test_expanded_gt_evaluates_parents():
    # image 0: a cat box; image 1: no animal. A cat detection on the box is a TP for cat and,
    # after GT expansion, the animal/pet/wild detections on it are TPs too; an animal
    # detection in image 1 (0.95) is an FP for animal: 0.95 FP, 0.9 TP -> AP 1/2.
    gt = expand_ground_truth(make_gt(5, [{"boxes": [(4, A, False)]}, {"neg": [1]}]), ANCESTORS)
    rows = [(0, 4, 0.9, A), (0, 1, 0.9, A), (0, 2, 0.9, A), (0, 3, 0.9, A),
            (1, 1, 0.95, A)]
    r = evaluate(gt, rows)
    np.testing.assert_allclose(r.ap[:4], [0.5, 1.0, 1.0, 1.0])
    assert math.isnan(r.ap[4])  # dog: no GT anywhere
    # the same from leaf detections expanded to their ancestors
    r2 = evaluate_openimages(gt, *expand_detections(*make_dets([(0, 4, 0.9, A)]), ANCESTORS))
    np.testing.assert_allclose(r2.ap[:4], [1.0, 1.0, 1.0, 1.0])


def test_expand_detections_multi_parent():
    img, lab, sc, bx = expand_detections(*make_dets([(3, 4, 0.7, A), (1, 5, 0.2, G)]),
                                         ANCESTORS)
    assert lab.tolist() == [4, 1, 2, 3, 5, 1, 2]
    assert img.tolist() == [3] * 4 + [1] * 3
    np.testing.assert_array_equal(sc, [0.7] * 4 + [0.2] * 3)
    np.testing.assert_array_equal(bx, [A] * 4 + [G] * 3)
    with pytest.raises(ValueError, match="labels outside"):
        expand_detections(*make_dets([(0, 6, 0.5, A)]), ANCESTORS)


# ---------------------------------------------------------------------------------------
# Parity with a literal per-image loop over the rules (the official tool's structure)
# ---------------------------------------------------------------------------------------


def _overlap(d, g, own_area: bool) -> float:
    iw = max(0.0, min(d[2], g[2]) - max(d[0], g[0]))
    ih = max(0.0, min(d[3], g[3]) - max(d[1], g[1]))
    ad, ag = (d[2] - d[0]) * (d[3] - d[1]), (g[2] - g[0]) * (g[3] - g[1])
    return iw * ih / (ad if own_area else ad + ag - iw * ih)


def _reference(gt: OpenImagesGT, img, lab, sc, bx, w: float, cap: int) -> np.ndarray:
    entries: dict[int, list] = {c: [] for c in range(1, gt.num_classes + 1)}
    for i in range(gt.num_images):
        b = slice(gt.box_offsets[i], gt.box_offsets[i + 1])
        gl, gb, gg = gt.box_labels[b], gt.boxes[b], gt.group_of[b]
        pos = gt.pos_labels[gt.pos_offsets[i]:gt.pos_offsets[i + 1]]
        neg = gt.neg_labels[gt.neg_offsets[i]:gt.neg_offsets[i + 1]]
        verified = set(gl.tolist()) | set(pos.tolist()) | set(neg.tolist())
        for c in verified:
            js = [j for j in range(len(sc)) if img[j] == i and lab[j] == c
                  and bx[j][0] < bx[j][2] and bx[j][1] < bx[j][3]]
            js = sorted(js, key=lambda j: -sc[j])[:cap]
            plain, groups = gb[(gl == c) & ~gg], gb[(gl == c) & gg]
            taken, tp, ignored, best = [False] * len(plain), set(), set(), {}
            for j in js:
                if len(plain):
                    ious = [_overlap(bx[j], g, False) for g in plain]
                    k = int(np.argmax(ious))
                    if ious[k] >= 0.5 and not taken[k]:
                        taken[k] = True
                        tp.add(j)
            for j in js:
                if j not in tp and len(groups):
                    ioas = [_overlap(bx[j], g, True) for g in groups]
                    k = int(np.argmax(ioas))
                    if ioas[k] >= 0.5:
                        ignored.add(j)
                        best[k] = max(best.get(k, 0.0), sc[j])
            entries[c] += [(sc[j], 1.0 if j in tp else 0.0) for j in js if j not in ignored]
            entries[c] += [(s, w) for s in best.values() if s > 0 and w > 0]
    ap = np.full(gt.num_classes, np.nan)
    for c, ent in entries.items():
        n_gt = np.sum((gt.box_labels == c) & ~gt.group_of) + w * np.sum(
            (gt.box_labels == c) & gt.group_of)
        if n_gt == 0:
            continue
        ent.sort(key=lambda e: -e[0])
        ctp, cfp, prec, rec = 0.0, 0.0, [], []
        for _, t in ent:
            ctp, cfp = ctp + t, cfp + (t <= 0)
            prec.append(ctp / (ctp + cfp))
            rec.append(ctp / n_gt)
        r, p = [0.0] + rec + [1.0], [0.0] + prec + [0.0]
        for k in range(len(p) - 2, -1, -1):
            p[k] = max(p[k], p[k + 1])
        ap[c - 1] = sum((r[k] - r[k - 1]) * p[k] for k in range(1, len(r)) if r[k] != r[k - 1])
    return ap


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parity_with_literal_loop(seed, monkeypatch):
    monkeypatch.setattr(om, "PAIR_BUDGET", 7)  # many sub-steps, some of one detection
    monkeypatch.setattr(om, "DET_CHUNK", 13)
    rng = np.random.default_rng(seed)
    c, images, rows = 4, [], []
    for i in range(12):
        bxs = []
        for _ in range(rng.integers(0, 6)):
            x, y = rng.uniform(0, 0.7, 2)
            b = (x, y, x + rng.uniform(0.05, 0.3), y + rng.uniform(0.05, 0.3))
            bxs.append((int(rng.integers(1, c + 1)), b, bool(rng.random() < 0.3)))
            if rng.random() < 0.2:
                bxs.append(bxs[-1][:2] + (False,))  # duplicate box: IoU ties
        images.append({"boxes": bxs, "pos": list(rng.choice(c, 1) + 1),
                       "neg": list(rng.choice(c, 1) + 1)})
        for _ in range(rng.integers(0, 15)):
            if bxs and rng.random() < 0.6:
                lab, b, _ = bxs[rng.integers(len(bxs))]
                b = tuple(np.clip(np.array(b) + rng.normal(0, 0.03, 4), 0, 1))
            else:
                lab, (x, y) = int(rng.integers(1, c + 1)), rng.uniform(0, 0.8, 2)
                b = (x, y, x + rng.uniform(0, 0.2), y + rng.uniform(0, 0.2))
            rows.append((i, lab, float(rng.random()), b))
    gt = make_gt(c, images)
    img, lab, sc, bx = make_dets(rows)
    for w, cap in ((1.0, 10_000), (0.5, 3), (0.0, 10_000)):
        got = evaluate_openimages(gt, img, lab, sc, bx, group_of_weight=w, max_per_class_image=cap)
        np.testing.assert_allclose(got.ap, _reference(gt, img, lab, sc, bx, w, cap), atol=1e-12)


def test_progress_and_bad_arguments():
    gt = make_gt(1, [{"boxes": [(1, A, False)]}])
    seen: list[tuple[int, int]] = []
    evaluate(gt, [(0, 1, 0.5, A)], progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (2, 2)
    with pytest.raises(ValueError, match="labels outside"):
        evaluate(gt, [(0, 2, 0.5, A)])
    with pytest.raises(ValueError, match="image_index outside"):
        evaluate(gt, [(1, 1, 0.5, A)])
    with pytest.raises(ValueError, match="groups has"):
        evaluate(gt, [], groups=["r", "c"])


# ---------------------------------------------------------------------------------------
# Predictions CSV
# ---------------------------------------------------------------------------------------

IMAGES = {"img0": 0, "img1": 1}
CLASSES = {"/m/cat": 1, "/m/dog": 2}


def _write(path, header, rows) -> str:
    path.write_text("\n".join([",".join(header)] + [",".join(r) for r in rows]) + "\n")
    return str(path)


def test_predictions_roundtrip_and_column_order(tmp_path):
    rng = np.random.default_rng(0)
    n = 50
    img, lab = rng.integers(0, 2, n), rng.integers(1, 3, n).astype(np.int32)
    sc = rng.random(n).astype(np.float32)
    lo, hi = rng.random((n, 2)), rng.random((n, 2))
    bx = np.concatenate([np.minimum(lo, hi), np.maximum(lo, hi)], 1).astype(np.float32)
    out = tmp_path / "sub" / "pred.csv"
    write_predictions_csv(out, ["img0", "img1"], ["/m/cat", "/m/dog"], img, lab, sc, bx)
    assert out.read_text().splitlines()[0] == ",".join(COLUMNS)
    got = read_predictions_csv(out, IMAGES, CLASSES)
    for a, b in zip(got, (img, lab, sc, bx), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [a.dtype for a in got] == [np.int64, np.int32, np.float64, np.float64]
    assert not [p for p in out.parent.iterdir() if p.name != "pred.csv"]  # no temp left
    # shuffled header plus an extra column: same arrays
    lines = out.read_text().splitlines()
    perm = [6, 3, 0, 5, 2, 4, 1]
    shuffled = [",".join([r.split(",")[k] for k in perm] + ["x"]) for r in lines]
    shuffled[0] = shuffled[0][:-1] + "Extra"
    (tmp_path / "s.csv").write_text("\n".join(shuffled) + "\n")
    for a, b in zip(read_predictions_csv(tmp_path / "s.csv", IMAGES, CLASSES), got,
                    strict=True):
        np.testing.assert_array_equal(a, b)


GOOD = ["img0", "/m/cat", "0.5", "0.1", "0.2", "0.3", "0.4"]


@pytest.mark.parametrize("bad_row, pattern", [
    (["img9", "/m/cat", "0.5", "0.1", "0.2", "0.3", "0.4"], "row 2: unknown ImageID 'img9'"),
    (["img0", "/m/cow", "0.5", "0.1", "0.2", "0.3", "0.4"], "row 2: unknown LabelName '/m/cow'"),
    (["img0", "/m/cat", "high", "0.1", "0.2", "0.3", "0.4"], "row 2: Score 'high' is not a"),
    (["img0", "/m/cat", "nan", "0.1", "0.2", "0.3", "0.4"], "row 2: Score 'nan' is not a"),
    (["img0", "/m/cat", "0.5", "0.1", "", "0.3", "0.4"], "row 2: XMax '' is not a"),
    (["img0", "/m/cat", "0.5", "-0.1", "0.2", "0.3", "0.4"], r"row 2: XMin -0.1 outside \[0, 1\]"),
    (["img0", "/m/cat", "0.5", "0.1", "0.2", "0.3", "1.5"], r"row 2: YMax 1.5 outside \[0, 1\]"),
    (["img0", "/m/cat", "0.5", "0.3", "0.2", "0.3", "0.4"], "row 2: inverted box, XMin 0.3 > XMax"),
    (["img0", "/m/cat", "0.5", "0.1", "0.2", "0.5", "0.4"], "row 2: inverted box, YMin 0.5 > YMax"),
    (["img0", "/m/cat", "0.5"], "row 2: 3 fields, the header has 7"),
])
def test_predictions_bad_rows_name_file_and_row(tmp_path, bad_row, pattern):
    path = _write(tmp_path / "p.csv", COLUMNS, [GOOD, bad_row, GOOD])
    with pytest.raises(DataError, match=pattern) as e:
        read_predictions_csv(path, IMAGES, CLASSES)
    assert str(e.value).startswith(path + ": ") and "\n" not in str(e.value)


def test_predictions_bad_header_and_file(tmp_path):
    path = _write(tmp_path / "p.csv", [c for c in COLUMNS if c not in ("XMin", "Score")], [])
    with pytest.raises(DataError, match="p.csv: header row: missing column.s. Score, XMin$"):
        read_predictions_csv(path, IMAGES, CLASSES)
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match="e.csv: empty file"):
        read_predictions_csv(tmp_path / "e.csv", IMAGES, CLASSES)
    with pytest.raises(DataError, match="missing.csv: cannot read"):
        read_predictions_csv(tmp_path / "missing.csv", IMAGES, CLASSES)
    # a header alone is an empty prediction set; the metric then scores AP 0
    path = _write(tmp_path / "h.csv", COLUMNS, [])
    img, lab, sc, bx = read_predictions_csv(path, IMAGES, CLASSES)
    assert len(img) == len(lab) == len(sc) == 0 and bx.shape == (0, 4)


def test_predictions_that_are_not_utf8_csv_are_one_line_data_errors(tmp_path):
    path = _write(tmp_path / "p.csv", COLUMNS, [GOOD])
    with open(path, "ab") as f:
        f.write(b"img0,/m/cat\xff\xfe,0.5,0.1,0.2,0.3,0.4\n")
    with pytest.raises(DataError, match="p.csv: not a UTF-8 CSV file") as e:
        read_predictions_csv(path, IMAGES, CLASSES)
    assert "\n" not in str(e.value)
    nul = tmp_path / "n.csv"
    nul.write_text(",".join(COLUMNS) + "\nimg0,/m/cat,0.5,0.1,\0,0.3,0.4\n")
    with pytest.raises(DataError, match="n.csv: "):
        read_predictions_csv(nul, IMAGES, CLASSES)
