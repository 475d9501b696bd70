"""Where our Open Images challenge metric must give the TensorFlow reference's answer (#16).

Each case is a tiny release (class list, hierarchy JSON, boxes and image-level labels CSVs)
plus a predictions CSV, scored three ways: the metric function on arrays
(``evaluate_openimages``), the file function (``evaluate_predictions_file``) and the CLI
(``acsl eval dets=PREDICTIONS.csv ann=FOLDER out=M.json``). Every expected AP is derived
by hand in the comments from the reference's rules:

- per (image, class), detections are ranked by ``np.argsort(scores)[::-1]`` before matching;
- per image and class the entries are the kept detections in that order, then one entry per
  hit group-of box; a class's entries are concatenated image after image (images sorted by
  ImageID) and ranked by ``np.argsort(scores)[::-1]`` again;
- numpy's argsort of a few (<= 16) numbers keeps tied ones in input order, so after the
  reversal a tie comes out last-in-first (checked below, the premise of the tie cases).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from acsl_cli.evaluation.openimages_file import evaluate_predictions_file
from acsl_cli.evaluation.openimages_metric import OpenImagesGT, evaluate_openimages
from tests.openimages_release import A1, A1_SHIFTED, ELSEWHERE, INSIDE_G, G, check_all_ways
from tests.test_openimages_metric import make_dets, make_gt


def test_premise_argsort_keeps_small_ties_in_input_order():
    assert np.argsort(np.array([0.5, 0.5])).tolist() == [0, 1]
    assert np.argsort(np.array([0.6, 0.5, 0.6])).tolist() == [1, 0, 2]


# ---------------------------------------------------------------------------------------
# 1. Tied scores and group-of entries
# ---------------------------------------------------------------------------------------


def test_tie_within_an_image_is_matched_last_row_first(tmp_path):
    # One box A1. Rows p1 (0.5, on A1), p2 (0.5, A1 shifted: IoU .905, best box A1 too).
    # Per image: argsort([.5, .5]) = [0, 1], reversed -> p2 matched first -> p2 TP, p1 FP
    # (A1 taken). Entries [p2 TP, p1 FP]; ranked: reversed again -> [p1 FP, p2 TP].
    # precision 0, 1/2 at recall 0, 1 -> AP = 1 x 1/2 = 0.5 (input order would give 1).
    check_all_ways(tmp_path, ["/m/a"], [("img0", "/m/a", *A1, False)], [],
                   [("img0", "/m/a", "0.5", *A1), ("img0", "/m/a", "0.5", *A1_SHIFTED)],
                   {"/m/a": 0.5})


def test_tie_across_images_ranks_the_later_image_first(tmp_path):
    # img0: box A1, detected at 0.5 (TP). img1: /m/a verified present, no box; its 0.5
    # detection is an FP. Class entries, image after image: [img0 TP, img1 FP]; ranked by
    # argsort reversed -> [img1 FP, img0 TP] -> AP = 1/2. The order of rows in the CSV does
    # not matter (images are taken by ImageID), so the same with img1's row first.
    boxes, labels = [("img0", "/m/a", *A1, False)], [("img1", "/m/a", 1)]
    rows = [("img0", "/m/a", "0.5", *A1), ("img1", "/m/a", "0.5", *ELSEWHERE)]
    check_all_ways(tmp_path / "a", ["/m/a"], boxes, labels, rows, {"/m/a": 0.5})
    check_all_ways(tmp_path / "b", ["/m/a"], boxes, labels, rows[::-1], {"/m/a": 0.5})


def test_group_of_entry_comes_after_the_images_detections(tmp_path):
    # One group-of box G (w = 1, num_gt 1). Rows: p1 0.6 elsewhere, p2 0.6 inside G.
    # Per image: ranked [p2, p1]; p2 inside G -> ignored, G hit at 0.6; p1 FP. Entries: the
    # kept detections [p1 FP], then G's entry [0.6 TP] -> ranked (reversed) [G TP, p1 FP]
    # -> precision 1 at recall 1 -> AP 1 (G's entry at p2's place would rank p1 first: 1/2).
    check_all_ways(tmp_path, ["/m/a"], [("img0", "/m/a", *G, True)], [],
                   [("img0", "/m/a", "0.6", *ELSEWHERE), ("img0", "/m/a", "0.6", *INSIDE_G)],
                   {"/m/a": 1.0})


# ---------------------------------------------------------------------------------------
# 2. float64 end to end
# ---------------------------------------------------------------------------------------


def test_close_scores_are_not_a_tie(tmp_path):
    # float32 makes 0.3 and 0.30000001 equal; float64 keeps 0.30000001 first.
    # p1 0.3 on A1 (TP), p2 0.30000001 elsewhere (FP): ranked [p2 FP, p1 TP] -> AP 1/2.
    # (As a tie the two reversals would keep file order: [p1 TP, p2 FP] -> AP 1.)
    assert np.float32(0.3) == np.float32(0.30000001) and 0.3 < 0.30000001
    check_all_ways(tmp_path, ["/m/a"], [("img0", "/m/a", *A1, False)], [],
                   [("img0", "/m/a", "0.3", *A1), ("img0", "/m/a", "0.30000001", *ELSEWHERE)],
                   {"/m/a": 0.5})


def test_iou_exactly_one_half_is_a_true_positive(tmp_path):
    # GT x 0.1..0.3, y 0..0.3 (area .06); detection x 0.1..0.2, same y (area .03, inside the
    # GT): IoU = .03 / .06 = 1/2 -> TP at threshold 0.5 -> AP 1. Computed as the reference
    # does in float64 it is exactly 0.5; from float32 coordinates it falls just below.
    def iou(d, g):  # boxes (x0, y0, x1, y1), the reference's operation order
        ih = max(min(d[3], g[3]) - max(d[1], g[1]), 0.0)
        iw = max(min(d[2], g[2]) - max(d[0], g[0]), 0.0)
        inter = ih * iw
        return inter / ((d[3] - d[1]) * (d[2] - d[0]) + (g[3] - g[1]) * (g[2] - g[0]) - inter)

    d, g = (0.1, 0.0, 0.2, 0.3), (0.1, 0.0, 0.3, 0.3)
    assert iou(d, g) == 0.5
    assert iou(*(tuple(float(np.float32(v)) for v in b) for b in (d, g))) < 0.5
    check_all_ways(tmp_path, ["/m/a"], [("img0", "/m/a", "0.1", "0.3", "0.0", "0.3", False)],
                   [], [("img0", "/m/a", "0.9", "0.1", "0.2", "0.0", "0.3")], {"/m/a": 1.0})


# ---------------------------------------------------------------------------------------
# 3. Zero-area ground truth
# ---------------------------------------------------------------------------------------


def test_zero_area_ground_truth_counts_and_matches_nothing(tmp_path, caplog):
    # img0: A1 and Z = x 0.4..0.4 (zero width). num_gt 2. Detections: 0.9 on A1 (TP);
    # 0.8 around Z (x .35..45, y .4..6): IoU 0 with Z (no area), .01/.17 with A1 -> FP.
    # Ranked TP, FP: precision 1 at recall 1/2 -> AP = 1/2 (dropping Z would give 1).
    zero = ("0.4", "0.4", "0.4", "0.6")
    with caplog.at_level(logging.WARNING, logger="acsl"):
        check_all_ways(tmp_path, ["/m/a"],
                       [("img0", "/m/a", *A1, False), ("img0", "/m/a", *zero, False)], [],
                       [("img0", "/m/a", "0.9", *A1),
                        ("img0", "/m/a", "0.8", "0.35", "0.45", "0.4", "0.6")], {"/m/a": 0.5})
    assert "1 degenerate box(es) (zero width or height), kept" in caplog.text
    rows = evaluate_predictions_file(tmp_path / "predictions.csv", tmp_path / "release")
    assert rows.per_category[0]["num_gt"] == 2


# ---------------------------------------------------------------------------------------
# Bit-for-bit parity with a literal loop over the reference's steps, scores full of ties
# ---------------------------------------------------------------------------------------


def _overlap(d, g, own_area: bool) -> float:
    """IoU (or intersection over the detection's area), in the reference's operation order."""
    ih = max(min(d[3], g[3]) - max(d[1], g[1]), 0.0)
    iw = max(min(d[2], g[2]) - max(d[0], g[0]), 0.0)
    inter, area = ih * iw, (d[3] - d[1]) * (d[2] - d[0])
    return inter / area if own_area else inter / (area + (g[3] - g[1]) * (g[2] - g[0]) - inter)


def _literal(gt: OpenImagesGT, img, lab, sc, bx, w: float, cap: int) -> np.ndarray:
    scores: dict[int, list] = {c: [] for c in range(1, gt.num_classes + 1)}
    tps: dict[int, list] = {c: [] for c in scores}
    num_gt = np.zeros(gt.num_classes + 1)
    for i in range(gt.num_images):
        b = slice(gt.box_offsets[i], gt.box_offsets[i + 1])
        gl, gb, gg = gt.box_labels[b], gt.boxes[b], gt.group_of[b]
        verified = set(gl.tolist()) | set(gt.pos_labels[gt.pos_offsets[i]:gt.pos_offsets[i + 1]]
                                          .tolist()) | set(
            gt.neg_labels[gt.neg_offsets[i]:gt.neg_offsets[i + 1]].tolist())
        for c in scores:
            num_gt[c] += np.sum((gl == c) & ~gg) + w * np.sum((gl == c) & gg)
            js = [j for j in range(len(sc)) if img[j] == i and lab[j] == c and c in verified
                  and bx[j][0] < bx[j][2] and bx[j][1] < bx[j][3] and sc[j] > -10]
            if not js:
                continue
            js = [js[k] for k in np.argsort(sc[js])[::-1][:cap]]
            plain, groups = gb[(gl == c) & ~gg], gb[(gl == c) & gg]
            taken, tp, ignored = [False] * len(plain), set(), set()
            best = np.zeros(len(groups))
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
                        best[k] = max(best[k], sc[j])
            kept = [j for j in js if j not in ignored]
            hit = [k for k in range(len(groups)) if best[k] > 0 and w > 0]
            scores[c] += [sc[j] for j in kept] + [best[k] for k in hit]
            tps[c] += [float(j in tp) for j in kept] + [w] * len(hit)
    ap = np.full(gt.num_classes, np.nan)
    for c in scores:
        if num_gt[c] == 0:
            continue
        t = np.array(tps[c], float)[np.argsort(np.array(scores[c], float))[::-1]]
        ctp, cfp = np.cumsum(t), np.cumsum((t <= 0).astype(float))
        r = np.concatenate([[0.0], ctp / num_gt[c], [1.0]])
        p = np.concatenate([[0.0], ctp / (ctp + cfp), [0.0]])
        for k in range(len(p) - 2, -1, -1):
            p[k] = max(p[k], p[k + 1])
        at = np.flatnonzero(r[1:] != r[:-1]) + 1
        ap[c - 1] = np.sum((r[at] - r[at - 1]) * p[at])
    return ap


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_bit_parity_with_a_literal_reference_loop_on_ties(seed):
    rng = np.random.default_rng(seed)
    c, images, rows = 3, [], []
    for i in range(10):
        bxs = []
        for _ in range(rng.integers(0, 5)):
            x, y = rng.uniform(0, 0.6, 2).round(1)
            b = (x, y, x + rng.choice([0.0, 0.2, 0.3]), y + 0.3)  # some zero-area boxes
            bxs.append((int(rng.integers(1, c + 1)), b, bool(rng.random() < 0.3)))
        images.append({"boxes": bxs, "pos": [int(rng.integers(1, c + 1))], "neg": []})
        for _ in range(rng.integers(0, 40)):  # up to 40 a class: argsort beyond 16 too
            lab, b, _ = bxs[rng.integers(len(bxs))] if bxs and rng.random() < 0.7 else (
                int(rng.integers(1, c + 1)), (0.5, 0.5, 0.8, 0.8), False)
            b = tuple(np.clip(np.array(b) + rng.choice([0.0, 0.01, 0.05], 4), 0, 1))
            rows.append((i, lab, float(rng.choice([0.0, 0.3, 0.5, 0.5, 0.9, -0.2])), b))
    gt = make_gt(c, images)
    img, lab, sc, bx = make_dets(rows)
    for w, cap in ((1.0, 10_000), (0.3, 10_000), (0.5, 4)):
        got = evaluate_openimages(gt, img, lab, sc, bx, group_of_weight=w, max_per_class_image=cap)
        np.testing.assert_array_equal(got.ap, _literal(gt, img, lab, sc, bx, w, cap))
