"""Open Images loader: hierarchy, streamed CSV parsing, validation, cache, Dataset items."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from acsl_cli.data.openimages import csv_parse as openimages_csv
from acsl_cli.data.openimages import loader as openimages
from acsl_cli.data.openimages.hierarchy import hierarchy_from_parents, read_hierarchy
from acsl_cli.data.openimages.loader import OpenImagesDetection, OpenImagesFiles, load_openimages
from acsl_cli.errors import DataError
from acsl_cli.files import tmp_name

# Animal(1) > Bird(2) > Duck(4); Animal > Cat(3); Toy(5) > Duck: Duck has two parents.
CLASSES = [("/m/a", "Animal"), ("/m/b", "Bird"), ("/m/c", "Cat"), ("/m/d", "Duck"),
           ("/m/t", "Toy")]
HIERARCHY = {"LabelName": "/m/root", "Subcategory": [
    {"LabelName": "/m/a", "Subcategory": [
        {"LabelName": "/m/b", "Subcategory": [{"LabelName": "/m/d"}]},
        {"LabelName": "/m/c", "Part": [{"LabelName": "/m/t"}]}]},
    {"LabelName": "/m/t", "Subcategory": [{"LabelName": "/m/d"}]}]}
BOX_HEADER = ["ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax",
              "IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside"]
BOXES = [  # not sorted by ImageID on purpose
    ["img2", "xclick", "/m/c", "1", "0.1", "0.5", "0.2", "0.6", "0", "0", "0", "0", "0"],
    ["img1", "xclick", "/m/d", "1", "0", "1", "0", "1", "0", "0", "1", "0", "0"],
    ["img1", "xclick", "/m/b", "1", "0.25", "0.75", "0.5", "1.0", "0", "0", "0", "0", "0"],
]
LABEL_HEADER = ["ImageID", "Source", "LabelName", "Confidence"]
LABELS = [["img1", "verification", "/m/d", "1"], ["img1", "verification", "/m/c", "0"],
          ["img3", "verification", "/m/a", "1"], ["img3", "verification", "/m/zzz", "1"],
          ["img1", "crowdsource", "/m/d", "1"]]
SIZES = {"img1": (40, 30, ".png"), "img2": (20, 10, ".jpg"), "img3": (16, 16, ".png")}


def write_csv(path: Path, header: list[str] | None, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if header is not None:
            w.writerow(header)
        w.writerows(rows)
    return path


def make_set(root: Path, boxes: list[list[str]] = BOXES, labels: list[list[str]] = LABELS,
             box_header: list[str] = BOX_HEADER, images: dict = SIZES) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    for image_id, (w, h, ext) in images.items():
        Image.new("RGB", (w, h), (200, 10, 10)).save(root / "images" / f"{image_id}{ext}")
    (root / "hierarchy.json").write_text(json.dumps(HIERARCHY))
    files = OpenImagesFiles(write_csv(root / "boxes.csv", box_header, boxes),
                            write_csv(root / "labels.csv", LABEL_HEADER, labels),
                            root / "images")
    return {"classes_csv": write_csv(root / "classes.csv", None, [list(c) for c in CLASSES]),
            "hierarchy_json": root / "hierarchy.json", "train": files, "val": files,
            "cache_dir": root / "cache"}


def load(root: Path, **kw) -> openimages.OpenImagesData:
    return load_openimages(**make_set(root, **kw))


def arrays(split: openimages.OpenImagesSplit) -> dict[str, np.ndarray]:
    return {k: np.asarray(getattr(split, k)) for k in openimages._ARRAYS}


def test_load_sorted_csr_sizes_and_labels(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="acsl"):
        data = load(tmp_path)
    s = data.train
    assert data.label_names[3] == "/m/d" and data.display_names[3] == "Duck"
    assert s.image_ids.tolist() == ["img1", "img2", "img3"] and s.image_ids.dtype.kind == "U"
    assert [s.image_file(i) for i in range(3)] == ["img1.png", "img2.jpg", "img3.png"]
    assert s.widths.tolist() == [40, 20, 16] and s.heights.tolist() == [30, 10, 16]
    assert s.box_offsets.tolist() == [0, 2, 3, 3]
    assert s.box_labels.tolist() == [4, 2, 3] and s.box_labels.dtype == np.int32
    assert s.group_of.tolist() == [True, False, False]
    np.testing.assert_allclose(s.boxes[1], [0.25, 0.5, 0.75, 1.0])  # xmin, ymin, xmax, ymax
    assert s.boxes.dtype == np.float64  # as the official evaluator reads them
    assert s.pos_offsets.tolist() == [0, 1, 1, 2] and s.pos_labels.tolist() == [4, 1]
    assert s.neg_offsets.tolist() == [0, 1, 1, 1] and s.neg_labels.tolist() == [3]
    assert s.skipped_unknown_labels == 1
    assert "skipped 1 image-level label row(s)" in caplog.text
    assert s.image_categories() == [frozenset({2, 4}), frozenset({3}), frozenset()]
    assert s.image_counts(5).tolist() == [0, 1, 1, 1, 0]
    assert s.instance_counts(5).tolist() == [0, 1, 1, 1, 0]
    table = data.hierarchy.ancestor_table(5)
    assert s.image_counts(5, table).tolist() == [2, 1, 1, 1, 1]  # Animal: img1 and img2
    assert s.instance_counts(5, table).tolist() == [3, 2, 1, 1, 1]
    assert data.groups() == ("r",) * 5


def test_column_order_and_extra_columns(tmp_path: Path) -> None:
    base = arrays(load(tmp_path / "a").train)
    order = [7, 12, 2, 0, 5, 10, 4, 1, 6, 3, 8, 9, 11]
    header = [BOX_HEADER[i] for i in order] + ["Extra"]
    rows = [[r[i] for i in order] + ["x"] for r in BOXES]
    shuffled = arrays(load(tmp_path / "b", boxes=rows, box_header=header).train)
    for k, v in base.items():
        np.testing.assert_array_equal(v, shuffled[k], err_msg=k)


def test_image_order_in_the_file_does_not_matter(tmp_path: Path) -> None:
    base = arrays(load(tmp_path / "a").train)
    ordered = arrays(load(tmp_path / "b", boxes=[BOXES[1], BOXES[2], BOXES[0]]).train)
    for k, v in base.items():
        np.testing.assert_array_equal(v, ordered[k], err_msg=k)


def test_minimal_columns_group_of_defaults_false(tmp_path: Path) -> None:
    keep = [0, 2, 4, 5, 6, 7]
    s = load(tmp_path, boxes=[[r[i] for i in keep] for r in BOXES],
             box_header=[BOX_HEADER[i] for i in keep]).train
    assert s.group_of.tolist() == [False, False, False] and len(s.boxes) == 3


def test_hierarchy_multi_parent(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    path.write_text(json.dumps(HIERARCHY))
    h = read_hierarchy(path, {name: i + 1 for i, (name, _) in enumerate(CLASSES)})
    assert h.parents == {2: (1,), 3: (1,), 4: (2, 5)}  # root not a class; Part ignored
    assert h.ancestors(4) == (1, 2, 5) and h.ancestors(1) == () and h.ancestors(5) == ()
    assert h.descendants(1) == (2, 3, 4) and h.descendants(5) == (4,)
    assert h.descendants(4) == ()
    assert h.ancestor_table(6) == [(), (1,), (1,), (1, 2, 5), (), ()]
    assert h == hierarchy_from_parents({4: [5, 2, 2], 2: [1], 3: [1], 1: []})
    with_root = read_hierarchy(path, {"/m/root": 9, "/m/a": 1, "/m/b": 2, "/m/c": 3,
                                      "/m/d": 4, "/m/t": 5})
    # the top node is skipped even when it is a class, as the official expansion tool does
    assert with_root.ancestors(4) == (1, 2, 5) and with_root.descendants(9) == ()


def test_hierarchy_cycle_and_unknown_label(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    path.write_text(json.dumps({"LabelName": "/r", "Subcategory": [{"LabelName": "/m/a",
                    "Subcategory": [{"LabelName": "/m/b", "Subcategory": [
                        {"LabelName": "/m/a"}]}]}]}))
    with pytest.raises(DataError, match=r"h\.json: hierarchy cycle: /m/(a|b) -> /m/(b|a) -> "):
        read_hierarchy(path, {"/m/a": 1, "/m/b": 2})
    with pytest.raises(DataError, match="cycle: 1 -> 1"):
        hierarchy_from_parents({1: [1]})
    with pytest.raises(DataError, match="cycle: .*3"):
        hierarchy_from_parents({1: [2], 2: [3], 3: [1], 4: [1]})
    with pytest.raises(DataError, match=r"h\.json: label /m/b is not in the class list"):
        read_hierarchy(path, {"/m/a": 1})
    path.write_text('{"LabelName": "/r", "Subcategory": {"LabelName": "/m/a"}}')
    with pytest.raises(DataError, match="Subcategory of /r is not a list"):
        read_hierarchy(path, {"/m/a": 1})
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"h\.json: cannot read the hierarchy JSON"):
        read_hierarchy(path, {"/m/a": 1})


def test_class_descriptions(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", ["LabelName", "DisplayName"],
                     [["/m/a", "A, with comma"], ["/m/b", "B"]])
    assert openimages_csv.read_class_descriptions(path) == (("/m/a", "/m/b"),
                                                            ("A, with comma", "B"))
    write_csv(path, None, [["/m/a", "A"], ["/m/b", "B"], ["/m/a", "again"]])
    with pytest.raises(DataError, match=r"c\.csv: row 3: duplicate LabelName /m/a"):
        openimages_csv.read_class_descriptions(path)


def _error(tmp_path: Path, **kw) -> str:
    with pytest.raises(DataError) as e:
        load(tmp_path, **kw)
    message = str(e.value)
    assert "\n" not in message
    return message


def _bad_row(**fields: str) -> list[list[str]]:
    """BOXES[0] then BOXES[2] with ``fields`` replaced: the bad row is data row 2."""
    row = list(BOXES[2])
    for field, value in fields.items():
        row[BOX_HEADER.index(field)] = value
    return [BOXES[0], row]


@pytest.mark.parametrize(("fields", "expected"), [
    ({"XMin": "1.5"}, "row 2: XMin 1.5 is outside [0, 1]"),
    ({"YMax": "-0.1"}, "row 2: YMax -0.1 is outside [0, 1]"),
    ({"XMin": "0.9"}, "row 2: inverted box, XMin 0.9 > XMax 0.75"),
    ({"YMin": "0.7", "YMax": "0.6"}, "row 2: inverted box, YMin 0.7 > YMax 0.6"),
    ({"XMax": "abc"}, "row 2: XMax 'abc' is not a number"),
    ({"XMax": "nan"}, "row 2: XMax nan is outside [0, 1]"),
    ({"LabelName": "/m/nope"}, "row 2: LabelName /m/nope is not in the class list"),
    ({"IsGroupOf": "yes"}, "row 2: IsGroupOf 'yes' is not 0 or 1"),
    ({"ImageID": ""}, "row 2: empty ImageID"),
])
def test_bad_box_rows(tmp_path: Path, fields: dict[str, str], expected: str) -> None:
    assert f"boxes.csv: {expected}" in _error(tmp_path, boxes=_bad_row(**fields))


def test_missing_columns_and_short_rows(tmp_path: Path) -> None:
    header = [c for c in BOX_HEADER if c not in ("XMax", "ImageID")]
    rows = [[v for c, v in zip(BOX_HEADER, r, strict=True) if c in header] for r in BOXES]
    message = _error(tmp_path / "a", boxes=rows, box_header=header)
    assert "boxes.csv: missing columns ImageID, XMax" in message
    message = _error(tmp_path / "b", boxes=[BOXES[0], BOXES[1][:5]])
    assert "boxes.csv: row 2: 5 fields, the header has 13" in message
    kw = make_set(tmp_path / "c")
    write_csv(kw["train"].labels_csv, ["ImageID", "LabelName"], [["img1", "/m/a"]])
    with pytest.raises(DataError, match=r"labels\.csv: missing column Confidence"):
        load_openimages(**kw)
    write_csv(kw["train"].labels_csv, LABEL_HEADER, [["img1", "x", "/m/a", "0.5"]])
    with pytest.raises(DataError, match=r"labels\.csv: row 1: Confidence 0.5 is not 0 or 1"):
        load_openimages(**kw)


def test_missing_image_named_with_its_first_row(tmp_path: Path) -> None:
    images = {k: v for k, v in SIZES.items() if k != "img1"}
    message = _error(tmp_path / "a", images=images)
    assert "img1.jpg: image file not found (nor .jpeg, .png)" in message
    assert "boxes.csv row 2" in message  # img1 first appears on data row 2
    images = {k: v for k, v in SIZES.items() if k != "img3"}
    message = _error(tmp_path / "b", images=images)
    assert "img3.jpg: image file not found" in message and "labels.csv row 3" in message


def test_degenerate_boxes_counted_and_kept(tmp_path: Path, caplog) -> None:
    flat = list(BOXES[0])
    flat[BOX_HEADER.index("YMax")] = flat[BOX_HEADER.index("YMin")]
    thin = list(BOXES[1])
    thin[BOX_HEADER.index("XMax")] = "0"
    with caplog.at_level(logging.WARNING, logger="acsl"):
        s = load(tmp_path, boxes=[flat, thin, BOXES[2]]).train
    assert "2 degenerate box(es) (zero width or height), kept as ground truth" in caplog.text
    # kept, as the official metric keeps them: ground truth nothing can match
    assert s.skipped_degenerate == 2 and s.box_labels.tolist() == [4, 2, 3]
    assert s.image_ids.tolist() == ["img1", "img2", "img3"]  # img2 stays listed


def test_chunked_parsing_and_blank_lines(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(openimages_csv, "CHUNK", 2)
    many = [BOXES[i % 3] for i in range(7)]
    s = load(tmp_path / "a", boxes=many).train
    assert s.box_offsets.tolist() == [0, 4, 7, 7] and s.box_labels.tolist() == [4, 2, 4, 2,
                                                                                 3, 3, 3]
    kw = make_set(tmp_path / "b", boxes=many + [_bad_row(XMin="2")[1]])
    text = kw["train"].boxes_csv.read_text().replace("\r\n", "\n").replace("\n", "\n\n", 1)
    kw["train"].boxes_csv.write_text(text)  # a blank line after the header
    with pytest.raises(DataError, match=r"boxes\.csv: row 9: XMin 2 is outside"):
        load_openimages(**kw)


def test_cache_reused_rebuilt_on_change_and_damage(tmp_path: Path, monkeypatch, caplog) -> None:
    kw = make_set(tmp_path)
    stale = tmp_name(kw["cache_dir"] / "openimages-train-0.npz").name.split("-")
    stale[-2] = "999999999"  # the temp file of a dead process, left by a kill mid-write
    kw["cache_dir"].mkdir()
    (kw["cache_dir"] / "-".join(stale)).write_bytes(b"partial")
    first = arrays(load_openimages(**kw).train)
    caches = sorted(kw["cache_dir"].glob("*.npz"))
    assert len(caches) == 2 and not list(kw["cache_dir"].glob(".*"))
    stamps = [c.stat().st_mtime_ns for c in caches]
    calls = []
    real = openimages.parse_boxes

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(openimages, "parse_boxes", counting)
    again = load_openimages(**kw)
    assert not calls and [c.stat().st_mtime_ns for c in caches] == stamps
    for k, v in arrays(again.train).items():
        np.testing.assert_array_equal(v, first[k], err_msg=k)
    boxes_csv = kw["train"].boxes_csv
    os.utime(boxes_csv, ns=(boxes_csv.stat().st_atime_ns, boxes_csv.stat().st_mtime_ns + 10**9))
    load_openimages(**kw)
    assert len(calls) == 2  # train and val share the boxes file
    assert len(list(kw["cache_dir"].glob("*.npz"))) == 2  # rebuilt in place
    calls.clear()
    caches[0].write_bytes(caches[0].read_bytes()[:500])
    with caplog.at_level(logging.WARNING, logger="acsl"):
        rebuilt = load_openimages(**kw)
    assert len(calls) == 1 and "damaged Open Images cache" in caplog.text
    np.testing.assert_array_equal(rebuilt.train.boxes, first["boxes"])


def test_check_images_false_needs_no_images(tmp_path: Path) -> None:
    kw = make_set(tmp_path, images={})
    calls: list[tuple[int, int]] = []
    s = load_openimages(**kw, progress=lambda done, total: calls.append((done, total)),
                        check_images=False).train
    assert s.widths.tolist() == [0, 0, 0] and s.image_file(0) == "img1.jpg"
    total = kw["train"].boxes_csv.stat().st_size + kw["train"].labels_csv.stat().st_size
    assert calls[-1] == (total, total)  # CSV bytes read, then done


def test_dataset_items_in_pixels(tmp_path: Path) -> None:
    kw = make_set(tmp_path)
    s = load_openimages(**kw).train
    ds = OpenImagesDetection(s, kw["train"].image_dir, "train", cache_images=True)
    assert len(ds) == 3 and ds.image_categories() == s.image_categories()
    image, target = ds[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    assert 0 <= float(image.min()) and float(image.max()) <= 1
    expected = s.boxes[0:2] * np.array([40, 30, 40, 30], dtype=np.float32)
    np.testing.assert_allclose(target["boxes"].numpy(), expected)
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["labels"].tolist() == [4, 2] and int(target["image_id"]) == 0
    _, t1 = ds[1]
    np.testing.assert_allclose(t1["boxes"].numpy(), [[2, 2, 10, 6]], rtol=1e-6)
    _, t2 = ds[2]
    assert t2["boxes"].shape == (0, 4) and t2["labels"].shape == (0,)
    assert ds._cache[0] is not None
    target["boxes"][0, 0] = 99.0  # items are copies: the split is untouched
    assert ds[0][1]["boxes"][0, 0] == 0


def test_gt_fields(tmp_path: Path) -> None:
    from acsl_cli.evaluation.openimages_gt import ground_truth

    s = load(tmp_path).train
    gt = ground_truth(s, 5)
    assert gt.num_classes == 5 and gt.num_images == 3
    for k in ("box_offsets", "boxes", "box_labels", "group_of", "pos_offsets", "pos_labels",
              "neg_offsets", "neg_labels"):
        np.testing.assert_array_equal(getattr(gt, k), getattr(s, k), err_msg=k)
