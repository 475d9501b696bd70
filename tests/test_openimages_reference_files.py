"""Reference cases (#16) about files: hierarchy expansion as the official expansion tool
does it, a too-deep hierarchy JSON, and predictions of images outside the ground truth.
Expected APs are derived by hand in the comments (rules: tests/test_openimages_reference.py).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from typer.testing import CliRunner

from acsl_cli.cli import app
from acsl_cli.data.openimages.hierarchy import read_hierarchy
from acsl_cli.errors import DataError
from acsl_cli.evaluation.openimages_file import evaluate_predictions_file
from tests.openimages_release import A1, ELSEWHERE, G, cli_map, file_aps, predictions, release

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


# ---------------------------------------------------------------------------------------
# The parsed-annotations cache keeps float64
# ---------------------------------------------------------------------------------------


def test_cache_stores_float64_boxes_under_a_new_format(tmp_path):
    # 0.1, 0.3 and 0.30000001 are not float32 numbers: stored as float32, the IoU-exactly-0.5
    # case and close coordinates would change between a first (parsed) and a second
    # (cached) load. Format 1 stored float32, so its caches must not be read any more.
    from acsl_cli.data.openimages import cache as openimages_cache
    from acsl_cli.data.openimages.loader import OpenImagesFiles, load_split

    ann = release(tmp_path / "release", ["/m/a"],
                  [("img0", "/m/a", "0.1", "0.3", "0.0", "0.30000001", False)])
    files = OpenImagesFiles(ann / "validation-annotations-bbox.csv", None, ann)
    args = (files, ann / "class-descriptions-boxable.csv", {"/m/a": 1}, tmp_path / "c", "val")
    parsed = load_split(*args, check_images=False)
    (cache,) = (tmp_path / "c").glob("openimages-val-*.npz")
    cached = load_split(*args, check_images=False)
    with np.load(cache) as z:
        assert z["boxes"].dtype == np.float64
    for split in (parsed, cached):
        assert split.boxes.tolist() == [[0.1, 0.0, 0.3, 0.30000001]]
    assert openimages_cache.FORMAT_VERSION >= 2
