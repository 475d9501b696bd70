"""Generator and LVIS-format loader."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from acsl_cli.data.groups import apply_train_info, train_category_info
from acsl_cli.data.lvis_dataset import (
    LvisDetection,
    category_map,
    category_stats,
    image_path,
    read_annotations,
)
from acsl_cli.data.synthetic.shapes import (
    SHAPES,
    SyntheticSpec,
    class_attributes,
    frequency_group,
    generate,
)
from acsl_cli.errors import DataError

FIXTURE = Path(__file__).resolve().parent / "data/lvis_v0.5_val_100.json"  # see data/README.md

SMALL = SyntheticSpec(seed=3, max_images_per_class=150, val_instances_per_class=5)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    return generate(SMALL, tmp_path_factory.mktemp("syn") / "set")


def test_generator_counts_match_the_long_tail_and_lvis_groups(small_set):
    train = json.loads((small_set / "train.json").read_text())
    val = json.loads((small_set / "val.json").read_text())
    # image_count in categories is what the annotations say, image by image
    per_cat_images: dict[int, set] = {}
    for a in train["annotations"]:
        per_cat_images.setdefault(a["category_id"], set()).add(a["image_id"])
    for c in train["categories"]:
        assert c["image_count"] == len(per_cat_images.get(c["id"], ()))
        assert c["frequency"] == frequency_group(c["image_count"])
        inst = sum(a["category_id"] == c["id"] for a in train["annotations"])
        assert c["instance_count"] == inst
    counts = [c["image_count"] for c in train["categories"]]
    assert counts[0] == 150 and counts[-1] == 1
    assert all(a >= b for a, b in zip(counts, counts[1:], strict=False))  # monotone tail
    groups = Counter(c["frequency"] for c in train["categories"])
    assert set(groups) == {"r", "c", "f"} and groups["r"] >= groups["f"]
    # every category has the promised number of val instances
    val_counts = Counter(a["category_id"] for a in val["annotations"])
    assert len(val_counts) == SMALL.num_classes
    assert min(val_counts.values()) >= 5
    # exhaustive labelling: negatives = every absent category
    for im in val["images"]:
        present = {a["category_id"] for a in val["annotations"] if a["image_id"] == im["id"]}
        assert set(im["neg_category_ids"]) == set(range(1, 61)) - present
        assert im["not_exhaustive_category_ids"] == []


def test_rare_classes_have_frequent_lookalikes():
    attrs = [class_attributes(r) for r in range(60)]
    assert len(set(attrs)) == 60  # shape x colour pairs are unique
    spec = SyntheticSpec()
    from acsl_cli.data.synthetic.shapes import train_image_counts

    groups = [frequency_group(n) for n in train_image_counts(spec)]
    frequent_shapes = {attrs[r][0] for r in range(60) if groups[r] == "f"}
    for r in range(60):
        if groups[r] == "r":  # same shape as some frequent class, different colour
            assert attrs[r][0] in frequent_shapes
    assert {a[0] for a in attrs} == set(SHAPES)


def test_generation_is_deterministic(small_set, tmp_path):
    again = generate(SMALL, tmp_path / "again")
    assert (again / "train.json").read_bytes() == (small_set / "train.json").read_bytes()
    a = (again / "train" / "000005.png").read_bytes()
    assert a == (small_set / "train" / "000005.png").read_bytes()
    other = generate(SyntheticSpec(seed=4, max_images_per_class=150), tmp_path / "other")
    assert (other / "train.json").read_bytes() != (small_set / "train.json").read_bytes()


def test_loader_yields_boxes_and_labels_from_the_json(small_set):
    ds = LvisDetection(small_set / "train.json", small_set, "train")
    data = json.loads((small_set / "train.json").read_text())
    image, target = ds[0]
    assert image.shape == (3, 128, 128) and 0 <= image.min() and image.max() <= 1
    first = min(im["id"] for im in data["images"])
    anns = [a for a in data["annotations"] if a["image_id"] == first]
    assert int(target["image_id"]) == first
    x, y, w, h = anns[0]["bbox"]
    assert torch.allclose(target["boxes"][0], torch.tensor([x, y, x + w, y + h]))
    assert target["labels"].tolist() == [ds.cmap.label(a["category_id"]) for a in anns]


def test_real_lvis_fixture_label_map_and_stats():
    data = read_annotations(FIXTURE)
    cmap = category_map(data)
    assert cmap.num_classes == 1230
    assert cmap.label(cmap.category_ids[0]) == 1
    for label in (1, 500, 1230):
        assert cmap.label(cmap.category_id(label)) == label
    stats = category_stats(data, cmap)
    by_id = {c["id"]: c for c in data["categories"]}
    assert stats.frequencies[9] == by_id[cmap.category_id(10)]["frequency"]
    assert Counter(stats.frequencies) == {"r": 454, "c": 461, "f": 315}
    # no pixels in the fixture: targets still load when image checks are off
    ds = LvisDetection(FIXTURE, "/nonexistent", "val", data=data, check_images=False)
    total = sum(len(t["labels"]) for t in ds.targets)
    assert total == sum(1 for a in data["annotations"] if a["bbox"][2] >= 1 and a["bbox"][3] >= 1)


def test_image_paths_for_lvis_v05_and_v1():
    root = Path("/coco")
    v05 = {"id": 1, "file_name": "COCO_val2014_000000266409.jpg"}
    assert image_path(v05, root / "val2017", "val") == root / "val2017/000000266409.jpg"
    v1 = {"id": 2, "coco_url": "http://images.cocodataset.org/train2017/000000391895.jpg"}
    assert image_path(v1, root, "train") == root / "train2017/000000391895.jpg"


def test_coco_format_file_gets_lvis_fields(tmp_path):
    coco = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 5, 5]}],
        "categories": [{"id": 7, "name": "x"}, {"id": 9, "name": "y"}],
    }
    p = tmp_path / "coco.json"
    p.write_text(json.dumps(coco))
    data = read_annotations(p)
    assert data["images"][0]["neg_category_ids"] == [9]
    assert data["images"][1]["neg_category_ids"] == [7, 9]
    # Reading never invents groups from the file itself; they come from a train split.
    assert all("frequency" not in c and "image_count" not in c for c in data["categories"])
    apply_train_info(data, train_category_info(data))  # this file as its own train split
    cats = {c["id"]: c for c in data["categories"]}
    assert cats[7]["image_count"] == 1 and cats[7]["frequency"] == "r"
    assert cats[9]["instance_count"] == 0


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "annotation file not found"),
        ("{not json", "not valid JSON"),
        ('{"images": []}', "missing or invalid 'annotations'"),
        ('{"images": [{"id": 1}], "categories": [{"id": 1}], "annotations": '
         '[{"id": 5, "image_id": 1, "category_id": 2, "bbox": [0,0,1,1]}]}',
         "unknown category_id 2"),
    ],
)
def test_bad_annotation_files_name_the_file(tmp_path, content, message):
    p = tmp_path / "ann.json"
    if content is not None:
        p.write_text(content)
    with pytest.raises(DataError) as e:
        read_annotations(p)
    assert str(p) in str(e.value) and message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_image_is_reported(small_set, tmp_path):
    data = json.loads((small_set / "val.json").read_text())
    with pytest.raises(DataError, match="image file .* not found"):
        LvisDetection(small_set / "val.json", tmp_path, "val", data=data)


# ---------------------------------------------------------------------------------------
# Strict annotation files: every rule is one line naming the file and the entry
# ---------------------------------------------------------------------------------------


def _valid_coco() -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 5, 5], "area": 25},
            {"id": 2, "image_id": 2, "category_id": 9, "bbox": [1, 1, 2, 2]},
        ],
        "categories": [{"id": 7, "name": "x"}, {"id": 9, "name": "y"}],
    }


def _set(path: str, value):
    """A mutation that sets data[k0][k1]... = value, keys separated by '.'."""
    def mutate(data: dict) -> dict:
        *parents, last = [int(k) if k.isdigit() else k for k in path.split(".")]
        node = data
        for key in parents:
            node = node[key]
        node[last] = value
        return data
    return mutate


def _nested(depth: int):
    value: list = [1]
    for _ in range(depth):
        value = [value]
    return value


STRICT_CASES = [
    (_set("images.1.id", 1), "images[1]: duplicate id 1"),
    (_set("categories.1.id", 7), "categories[1]: duplicate id 7"),
    (_set("images.0.id", 1.0), "images[0]: id 1.0 is not a 64-bit integer"),
    (_set("images.0.id", "1"), "images[0]: id '1' is not a 64-bit integer"),
    (_set("categories.0.id", True), "categories[0]: id True is not a 64-bit integer"),
    (_set("images.0.id", 2**64), "images[0]: id 18446744073709551616 is not a 64-bit integer"),
    (_set("images.0", {"file_name": "a.png"}), "images[0]: has no 'id'"),
    (_set("images.0", 3), "images[0]: is an integer, expected an object"),
    (_set("annotations.1", [1, 2]), "annotations[1]: is a list, expected an object"),
    (_set("annotations.0.image_id", "1"), "annotations[0]: image_id '1' is not an integer"),
    (_set("annotations.1.category_id", True),
     "annotations[1]: category_id True is not an integer"),
    (_set("annotations.0.image_id", 5), "annotations[0]: unknown image_id 5"),
    (_set("annotations.1.category_id", 8), "annotations[1]: unknown category_id 8"),
    (lambda d: (d["annotations"][1].pop("bbox"), d)[1], "annotations[1]: is missing 'bbox'"),
    (_set("annotations.0.bbox", [0, 0, 5]),
     "annotations[0]: bbox [0, 0, 5] is not [x, y, w, h] (4 finite numbers)"),
    (_set("annotations.0.bbox", [0, 0, float("nan"), 5]),
     "annotations[0]: bbox [0, 0, nan, 5] is not [x, y, w, h] (4 finite numbers)"),
    (_set("annotations.1.bbox", [0, float("inf"), 1, 5]),
     "annotations[1]: bbox [0, inf, 1, 5] is not [x, y, w, h] (4 finite numbers)"),
    (_set("annotations.0.bbox", [0, 0, "5", 5]),
     "annotations[0]: bbox [0, 0, '5', 5] is not [x, y, w, h] (4 finite numbers)"),
    (_set("annotations.0.bbox", [0, True, 5, 5]),
     "annotations[0]: bbox [0, True, 5, 5] is not [x, y, w, h] (4 finite numbers)"),
    (_set("annotations.0.bbox", [0, 0, 5, -1]),
     "annotations[0]: bbox [0, 0, 5, -1] has a negative width or height"),
    (_set("annotations.0.bbox", _nested(200)),
     "annotations[0]: bbox [[[...]]] is not [x, y, w, h] (4 finite numbers)"),
    (_set("annotations.0.area", float("nan")), "annotations[0]: area nan is not a finite number"),
    (_set("images.0.neg_category_ids", "7"),
     "images[0]: neg_category_ids is a string, expected a list of category ids"),
    (_set("images.1.neg_category_ids", [7, 8]),
     "images[1]: neg_category_ids holds unknown category id 8"),
    (_set("images.0.not_exhaustive_category_ids", [7.0]),
     "images[0]: not_exhaustive_category_ids holds 7.0, expected category ids"),
    (_set("images.0.not_exhaustive_category_ids", [True]),
     "images[0]: not_exhaustive_category_ids holds True, expected category ids"),
    (_set("categories.0.image_count", "5"),
     "categories[0]: image_count '5' is not a count (an integer >= 0)"),
    (_set("categories.1.frequency", 1), "categories[1]: frequency 1 is not a string"),
    (_set("images.0.file_name", ["a.png"]), "images[0]: file_name ['a.png'] is not a string"),
    (lambda d: [d], "expected a JSON object with images/annotations/categories, got a list"),
]


@pytest.mark.parametrize(("mutate", "expected"), STRICT_CASES)
def test_strict_annotation_rules(tmp_path, mutate, expected):
    p = tmp_path / "x.json"
    p.write_text(json.dumps(mutate(_valid_coco())))  # NaN/Infinity written as JSON literals
    with pytest.raises(DataError) as e:
        read_annotations(p)
    assert str(e.value) == f"{p}: {expected}"


def test_valid_coco_file_passes_and_deep_json_is_a_data_error(tmp_path):
    p = tmp_path / "ok.json"
    p.write_text(json.dumps(_valid_coco()))
    assert len(read_annotations(p)["annotations"]) == 2
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError) as e:
        read_annotations(deep)
    assert str(e.value) == f"{deep}: not valid JSON (nested too deeply)"


def test_a_decompression_bomb_is_a_one_line_data_error(tmp_path, monkeypatch):
    """PIL's DecompressionBombError is not an OSError; it must not escape as a traceback."""
    from PIL import Image

    from acsl_cli.data.lvis_dataset import read_rgb

    path = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(path)
    assert read_rgb(path).shape == (3, 64, 64)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 4)  # the image is 4x the limit
    with pytest.raises(DataError, match="big.png: cannot read image"):
        read_rgb(path)
