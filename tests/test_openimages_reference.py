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

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from acsl_cli.cli import app
from acsl_cli.data.hierarchy import read_hierarchy
from acsl_cli.errors import DataError
from acsl_cli.evaluation.openimages_file import evaluate_predictions_file
from acsl_cli.evaluation.openimages_metric import OpenImagesGT, evaluate_openimages

BOX_HEADER = ["ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax",
              "IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside"]
PRED_HEADER = ["ImageID", "LabelName", "Score", "XMin", "XMax", "YMin", "YMax"]
A1 = ("0.1", "0.5", "0.1", "0.5")  # XMin, XMax, YMin, YMax
A1_SHIFTED = ("0.12", "0.52", "0.1", "0.5")  # IoU with A1 .38x.4 / (2 x .16 - .152) = .905
ELSEWHERE = ("0.7", "0.9", "0.0", "0.2")  # no overlap with A1 or G
G = ("0.5", "1.0", "0.5", "1.0")  # a group-of box
INSIDE_G = ("0.6", "0.8", "0.6", "0.8")


def test_premise_argsort_keeps_small_ties_in_input_order():
    assert np.argsort(np.array([0.5, 0.5])).tolist() == [0, 1]
    assert np.argsort(np.array([0.6, 0.5, 0.6])).tolist() == [1, 0, 2]


# ---------------------------------------------------------------------------------------
# A tiny release, and the three ways to score it
# ---------------------------------------------------------------------------------------


def _write(path: Path, header: list[str] | None, rows: list) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        if header:
            w.writerow(header)
        w.writerows(rows)
    return path


def shown(label_name: str) -> str:
    """The display name of a class in these releases: "/m/cat" -> "CAT"."""
    return label_name.removeprefix("/m/").upper()


def release(root: Path, classes: list[str], boxes: list[tuple], labels: list[tuple] = (),
            hierarchy: dict | None = None) -> Path:
    """boxes = (image, class, XMin, XMax, YMin, YMax, group_of); labels = (image, class, 0|1)."""
    root.mkdir(parents=True, exist_ok=True)
    _write(root / "class-descriptions-boxable.csv", None, [[c, shown(c)] for c in classes])
    hierarchy = hierarchy or {"LabelName": "/m/entity",
                              "Subcategory": [{"LabelName": c} for c in classes]}
    (root / "bbox_labels_600_hierarchy.json").write_text(json.dumps(hierarchy))
    _write(root / "validation-annotations-bbox.csv", BOX_HEADER,
           [[b[0], "xclick", b[1], "1", *b[2:6], "0", "0", str(int(b[6])), "0", "0"]
            for b in boxes])
    _write(root / "validation-annotations-human-imagelabels-boxable.csv",
           ["ImageID", "Source", "LabelName", "Confidence"],
           [[lab[0], "verification", lab[1], str(lab[2])] for lab in labels])
    return root


def predictions(path: Path, rows: list[tuple]) -> Path:
    """rows = (image, class, score text, XMin, XMax, YMin, YMax)."""
    return _write(path, PRED_HEADER, [list(r) for r in rows])


def file_aps(dets: Path, ann: Path, **kw) -> dict[str, float]:
    """Per-class AP (classes with GT) and the mean ("mAP") from ``evaluate_predictions_file``."""
    r = evaluate_predictions_file(dets, ann, **kw)
    return {"mAP": r.metrics["AP"], **{row["name"]: row["AP"] for row in r.per_category}}


def cli_map(dets: Path, ann: Path, out: Path, *overrides: str) -> float:
    res = CliRunner().invoke(app, ["eval", f"dets={dets}", f"ann={ann}", f"out={out}",
                                   "progress=false", *overrides])
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text())["AP"]


def array_aps(classes: list[str], boxes: list[tuple], labels: list[tuple],
              preds: list[tuple]) -> np.ndarray:
    """``evaluate_openimages`` on arrays built by hand (flat hierarchy, images by ImageID)."""
    index = {c: i + 1 for i, c in enumerate(classes)}
    images = sorted({b[0] for b in boxes} | {lab[0] for lab in labels})
    where = {im: i for i, im in enumerate(images)}

    def csr(rows: list) -> tuple[np.ndarray, list]:
        rows = sorted(rows, key=lambda r: where[r[0]])  # stable: file order within an image
        return np.searchsorted([where[r[0]] for r in rows], np.arange(len(images) + 1)), rows

    box_off, bs = csr(boxes)
    pos_off, ps = csr([lab for lab in labels if lab[2] == 1])
    neg_off, ns = csr([lab for lab in labels if lab[2] == 0])
    gt = OpenImagesGT(
        len(classes), box_off, np.array([[float(b[2]), float(b[4]), float(b[3]), float(b[5])]
                                         for b in bs]).reshape(-1, 4),
        np.array([index[b[1]] for b in bs], np.int32), np.array([b[6] for b in bs], bool),
        pos_off, np.array([index[p[1]] for p in ps], np.int32),
        neg_off, np.array([index[p[1]] for p in ns], np.int32))
    r = evaluate_openimages(
        gt, np.array([where[p[0]] for p in preds], np.int64),
        np.array([index[p[1]] for p in preds], np.int32),
        np.array([float(p[2]) for p in preds]),
        np.array([[float(p[3]), float(p[5]), float(p[4]), float(p[6])] for p in preds]))
    return r.ap


def check_all_ways(tmp_path: Path, classes: list[str], boxes: list[tuple],
                   labels: list[tuple], preds: list[tuple], expected: dict[str, float]) -> None:
    """Per-class APs (by class name) and their mean, through the arrays, the file, the CLI."""
    ann = release(tmp_path / "release", classes, boxes, labels)
    dets = predictions(tmp_path / "predictions.csv", preds)
    want_map = sum(expected.values()) / len(expected)
    ap = array_aps(classes, boxes, labels, preds)
    got = {c: float(ap[i]) for i, c in enumerate(classes) if not math.isnan(ap[i])}
    assert got == pytest.approx(expected, abs=1e-12)
    named = file_aps(dets, ann)
    assert named == pytest.approx({"mAP": want_map, **{shown(c): v
                                                        for c, v in expected.items()}})
    assert cli_map(dets, ann, tmp_path / "m.json") == pytest.approx(want_map, abs=1e-12)


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
# 4. Hierarchy expansion as the reference's expansion tool
# ---------------------------------------------------------------------------------------

CLASSES_H = ["/m/bird", "/m/toy", "/m/duck", "/m/mallard"]
# Duck sits under Bird (with Mallard below it) and, alone, under Toy.
HIERARCHY_H = {"LabelName": "/m/entity", "Subcategory": [
    {"LabelName": "/m/bird", "Subcategory": [
        {"LabelName": "/m/duck", "Subcategory": [{"LabelName": "/m/mallard"}]}]},
    {"LabelName": "/m/toy", "Subcategory": [{"LabelName": "/m/duck"}]}]}


def test_multi_parent_subtree_follows_the_json(tmp_path):
    # Reference expansion: Mallard's ancestors are the labels on its JSON path, Duck and
    # Bird, not Toy; Toy's descendants are what is written under it: Duck only.
    index = {c: i + 1 for i, c in enumerate(CLASSES_H)}
    (tmp_path / "h.json").write_text(json.dumps(HIERARCHY_H))
    h = read_hierarchy(tmp_path / "h.json", index)
    assert h.ancestors(4) == (1, 3) and h.ancestors(3) == (1, 2)
    assert h.descendants(2) == (3,) and h.descendants(1) == (3, 4)
    # img0: a Mallard box M (= A1) -> also Duck and Bird boxes, no Toy box.
    # img1: a Toy box T. img2: Toy verified absent -> Duck absent too, Mallard not.
    # Detections (all on M in img0): Mallard 0.9, Duck 0.9, Bird 0.9, Toy 0.9; and
    # Mallard 0.95 in img2.
    # Bird: 0.9 TP -> 1. Duck: 0.9 TP -> 1. Mallard: img2 says nothing about Mallard, its
    # 0.95 is dropped; 0.9 TP -> 1. Toy: num_gt 1 (T); img0 says nothing about Toy, its
    # 0.9 is dropped -> AP 0. mAP = 3/4. (With Toy above Mallard: Toy AP 1/2, Mallard 1/2.)
    ann = release(tmp_path / "release", CLASSES_H,
                  [("img0", "/m/mallard", *A1, False), ("img1", "/m/toy", *G, False)],
                  [("img2", "/m/toy", 0)], HIERARCHY_H)
    dets = predictions(tmp_path / "p.csv", [
        ("img0", c, "0.9", *A1) for c in CLASSES_H] + [("img2", "/m/mallard", "0.95", *A1)])
    assert file_aps(dets, ann) == pytest.approx(
        {"mAP": 0.75, "BIRD": 1.0, "TOY": 0.0, "DUCK": 1.0, "MALLARD": 1.0})
    assert cli_map(dets, ann, tmp_path / "m.json") == pytest.approx(0.75)


def test_hierarchy_root_listed_as_a_class_is_skipped(tmp_path):
    # The top node /m/entity is also a class. The reference skips the top node: Animal has
    # no parent, Entity is nobody's ancestor. img0: a Cat box C (= A1) -> also an Animal
    # box. img1: an Entity box E (= G). Detections on C in img0: Cat, Animal, Entity 0.9.
    # Cat 1, Animal 1; Entity: num_gt 1 (E), img0 says nothing about Entity -> its 0.9 is
    # dropped -> AP 0. mAP = 2/3. (Entity above Animal would give it C too: AP 1/2, 5/6.)
    classes = ["/m/entity", "/m/animal", "/m/cat"]
    tree = {"LabelName": "/m/entity", "Subcategory": [
        {"LabelName": "/m/animal", "Subcategory": [{"LabelName": "/m/cat"}]}]}
    ann = release(tmp_path / "release", classes,
                  [("img0", "/m/cat", *A1, False), ("img1", "/m/entity", *G, False)], [], tree)
    h = read_hierarchy(ann / "bbox_labels_600_hierarchy.json", {"/m/entity": 1, "/m/animal": 2,
                                                                "/m/cat": 3})
    assert h.ancestor_table(3) == [(), (), (2,)] and h.descendants(1) == ()
    dets = predictions(tmp_path / "p.csv", [("img0", c, "0.9", *A1) for c in classes])
    assert file_aps(dets, ann) == pytest.approx(
        {"mAP": 2 / 3, "ENTITY": 0.0, "ANIMAL": 1.0, "CAT": 1.0})
    assert cli_map(dets, ann, tmp_path / "m.json") == pytest.approx(2 / 3)


def test_hierarchy_5000_deep_is_one_line_data_error(tmp_path):
    ann = release(tmp_path / "release", ["/m/a"], [("img0", "/m/a", *A1, False)])
    deep = '{"LabelName": "/m/a", "Subcategory": [' * 5000 + '{"LabelName": "/m/a"}' + \
        "]}" * 5000
    path = ann / "bbox_labels_600_hierarchy.json"
    path.write_text(deep)
    with pytest.raises(DataError, match=r"bbox_labels_600_hierarchy\.json: .*nested too deep"):
        read_hierarchy(path, {"/m/a": 1})
    dets = predictions(tmp_path / "p.csv", [("img0", "/m/a", "0.9", *A1)])
    res = CliRunner().invoke(app, ["eval", f"dets={dets}", f"ann={ann}", "progress=false"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0]
    assert "Traceback" not in res.output and "RecursionError" not in res.output


# ---------------------------------------------------------------------------------------
# 5. Predictions of images outside the ground truth
# ---------------------------------------------------------------------------------------


def test_unknown_images_are_ignored_with_one_counted_warning(tmp_path, caplog):
    # img0: box A1 found at 0.9 -> AP 1. Three more rows on ghost1 (x2) and ghost2, which
    # the ground truth does not list: the reference never looks at them -> still AP 1.
    ann = release(tmp_path / "release", ["/m/a"], [("img0", "/m/a", *A1, False)])
    dets = predictions(tmp_path / "p.csv", [
        ("ghost1", "/m/a", "0.99", *A1), ("img0", "/m/a", "0.9", *A1),
        ("ghost2", "/m/a", "0.95", *A1), ("ghost1", "/m/a", "0.97", *ELSEWHERE)])
    line = f"{dets}: ignored 3 predictions for 2 images not in the ground truth"
    with caplog.at_level(logging.WARNING, logger="acsl"):
        assert file_aps(dets, ann) == pytest.approx({"mAP": 1.0, "A": 1.0})
    assert [r.getMessage() for r in caplog.records] == [line]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="acsl"):
        assert cli_map(dets, ann, tmp_path / "m.json") == pytest.approx(1.0)
    assert [r.getMessage() for r in caplog.records] == [line]


def test_unknown_images_error_keeps_the_strict_refusal(tmp_path):
    ann = release(tmp_path / "release", ["/m/a"], [("img0", "/m/a", *A1, False)])
    dets = predictions(tmp_path / "p.csv", [("img0", "/m/a", "0.9", *A1),
                                            ("ghost1", "/m/a", "0.99", *A1)])
    with pytest.raises(DataError, match=r"p\.csv: row 2: unknown ImageID 'ghost1'"):
        evaluate_predictions_file(dets, ann, unknown_images="error")
    res = CliRunner().invoke(app, ["eval", f"dets={dets}", f"ann={ann}", "progress=false",
                                   "test.unknown_images=error"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "p.csv: row 2: unknown ImageID 'ghost1'" in lines[0]
    res = CliRunner().invoke(app, ["eval", f"dets={dets}", f"ann={ann}", "progress=false",
                                   "test.unknown_images=maybe"])
    assert res.exit_code == 2 and "test.unknown_images" in res.output, res.output
