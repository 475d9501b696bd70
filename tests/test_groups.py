"""Frequency groups come from train, by one rule, whatever the file format.

The reference is the embedded benchmark in LVIS format (groups written by the generator
from what it placed in train). A plain COCO-format copy of it, with every LVIS field
stripped, must give the same groups, statistics and metrics; and the val file's own counts
must give different groups, so the old val-counted rule would fail these tests.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from acsl_cli.data.datasets import build_datasets
from acsl_cli.data.groups import (
    describe_groups,
    frequency_group,
    group_sizes,
    train_category_info,
    train_image_counts,
)
from acsl_cli.data.synthetic.shapes import SyntheticSpec, ensure_generated
from acsl_cli.evaluation import evaluate_lvis
from acsl_cli.evaluation.results import evaluate_results_file
from acsl_cli.settings.build import dataset_settings

FIXTURE = Path(__file__).resolve().parent / "data/lvis_v0.5_val_100.json"
GROUP_KEYS = ("APr", "APc", "APf")
LVIS_CATEGORY_FIELDS = ("frequency", "image_count", "instance_count")
LVIS_IMAGE_FIELDS = ("neg_category_ids", "not_exhaustive_category_ids")


def train_groups(data: dict) -> dict[int, str]:
    return {cid: str(row["frequency"]) for cid, row in train_category_info(data).items()}


@pytest.mark.parametrize(
    ("count", "group"),
    [(0, "r"), (1, "r"), (10, "r"), (11, "c"), (100, "c"), (101, "f"), (5000, "f")],
)
def test_lvis_thresholds(count, group):
    assert frequency_group(count) == group


def _tiny(frequencies: dict[int, str] | None = None) -> dict:
    """Category 1 in 11 images (common by counts), category 2 in 1 image, category 3 in none."""
    cats = [{"id": i} for i in (1, 2, 3)]
    for c in cats:
        if frequencies and c["id"] in frequencies:
            c["frequency"] = frequencies[c["id"]]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [0, 0, 1, 1]} for i in range(11)]
    anns += [{"id": 99, "image_id": 0, "category_id": 1, "bbox": [2, 2, 1, 1]}]  # same image
    anns += [{"id": 100, "image_id": 3, "category_id": 2, "bbox": [0, 0, 1, 1]}]
    return {"images": [{"id": i} for i in range(11)], "annotations": anns, "categories": cats}


def test_train_groups_use_lvis_fields_only_when_every_category_has_one():
    assert train_image_counts(_tiny()) == {1: 11, 2: 1, 3: 0}
    assert train_groups(_tiny()) == {1: "c", 2: "r", 3: "r"}
    lvis = _tiny({1: "f", 2: "c", 3: "r"})
    assert train_groups(lvis) == {1: "f", 2: "c", 3: "r"}
    partial = _tiny({1: "f", 2: "c"})  # one category without: counted, never mixed
    assert train_groups(partial) == {1: "c", 2: "r", 3: "r"}
    info = train_category_info(_tiny())
    assert info[1] == {"frequency": "c", "image_count": 11, "instance_count": 12}
    assert info[3] == {"frequency": "r", "image_count": 0, "instance_count": 0}


def test_describe_groups():
    groups = {1: "r", 2: "r", 3: "c", 4: "f"}
    assert group_sizes(groups) == {"r": 2, "c": 1, "f": 1}
    assert describe_groups(groups) == "groups from train: 2 r / 1 c / 1 f"
    assert describe_groups(groups, [9, 5, 2]) == (
        "groups from train: 2 r / 1 c / 1 f; 3 categories never occur in train "
        "(counted as rare): id 2, id 5, id 9"
    )
    many = describe_groups(groups, range(1, 8))
    assert many.endswith("id 1, id 2, id 3, id 4, id 5, ...") and "7 categories" in many


# ---------------------------------------------------------------------------------------
# The embedded benchmark, LVIS format vs a plain COCO-format copy
# ---------------------------------------------------------------------------------------


def _strip(src: Path, dst: Path, drop_category: int | None = None) -> Path:
    data = json.loads(src.read_text())
    for c in data["categories"]:
        for key in LVIS_CATEGORY_FIELDS:
            c.pop(key)
    for im in data["images"]:
        for key in LVIS_IMAGE_FIELDS:
            im.pop(key)
    if drop_category is not None:
        data["annotations"] = [a for a in data["annotations"] if a["category_id"] != drop_category]
    dst.write_text(json.dumps(data))
    return dst


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench")
    folder = ensure_generated(SyntheticSpec(), root)
    plain = root / "plain"
    plain.mkdir()
    return {
        "root": root,
        "folder": folder,
        "train": _strip(folder / "train.json", plain / "train.json"),
        "val": _strip(folder / "val.json", plain / "val.json"),
    }


def _lvis_node(folder: Path, train: Path, val: Path):
    return dataset_settings({
        "name": "coco_format", "kind": "lvis", "train_ann": str(train), "val_ann": str(val),
        "train_images": str(folder), "val_images": str(folder),
    })


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    """Metric dicts equal exactly, nan (no GT in the group, e.g. APl here) equal to nan."""
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a
    )


def _detections(gt: dict, seed: int = 0) -> list[dict]:
    """GT boxes (some missed, jittered) with random scores, plus false positives."""
    rng = np.random.default_rng(seed)
    dets = []
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        if rng.random() < 0.8:
            jitter = rng.normal(0, 0.1, 4) * [w, h, w, h]
            box = [x + jitter[0], y + jitter[1], max(w + jitter[2], 1), max(h + jitter[3], 1)]
            dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                         "bbox": [float(v) for v in box], "score": float(rng.random())})
    cats = [c["id"] for c in gt["categories"]]
    for im in gt["images"]:
        for _ in range(3):
            dets.append({"image_id": im["id"], "category_id": int(rng.choice(cats)),
                         "bbox": [float(v) for v in rng.uniform(0, 60, 4)],
                         "score": float(rng.random()) * 0.8})
    return dets


def test_plain_coco_copy_gets_the_train_groups(benchmark):
    lvis = build_datasets(dataset_settings({"kind": "synthetic"}), benchmark["root"])
    plain = build_datasets(
        _lvis_node(benchmark["folder"], benchmark["train"], benchmark["val"]), benchmark["root"]
    )
    for bundle in (lvis, plain):
        assert bundle.groups_note == "groups from train: 24 r / 22 c / 14 f"
        assert bundle.never_in_train == ()
    assert plain.stats == lvis.stats
    assert Counter(plain.stats.frequencies) == {"r": 24, "c": 22, "f": 14}
    for field in LVIS_CATEGORY_FIELDS:
        assert [c[field] for c in plain.val_gt["categories"]] == [
            c[field] for c in lvis.val_gt["categories"]
        ]
    dets = _detections(lvis.val_gt)
    expected = evaluate_lvis(lvis.val_gt, dets).metrics
    assert all(0 < expected[k] < 1 for k in GROUP_KEYS)
    assert _same(evaluate_lvis(plain.val_gt, dets).metrics, expected)


def test_val_counts_would_give_other_groups(benchmark):
    """The old rule (groups from the val file's own counts) is wrong here, visibly."""
    val = json.loads(benchmark["val"].read_text())
    val_groups = {cid: frequency_group(n) for cid, n in train_image_counts(val).items()}
    train = train_groups(json.loads((benchmark["folder"] / "train.json").read_text()))
    moved = [cid for cid in train if train[cid] != val_groups[cid]]
    assert len(moved) >= 30  # every common and frequent class would become rare
    assert group_sizes(val_groups) != group_sizes(train)


def test_results_file_groups(benchmark, tmp_path):
    folder = benchmark["folder"]
    gt = json.loads((folder / "val.json").read_text())
    dets_path = tmp_path / "dets.json"
    dets_path.write_text(json.dumps(_detections(gt, seed=1)))
    reference = evaluate_results_file(dets_path, folder / "val.json")
    assert reference.groups_note is None and not math.isnan(reference.metrics["APr"])

    with_train = evaluate_results_file(dets_path, benchmark["val"], train_ann=benchmark["train"])
    assert _same(with_train.metrics, reference.metrics)
    assert with_train.groups_note == "groups from train: 24 r / 22 c / 14 f"

    without = evaluate_results_file(dets_path, benchmark["val"])
    assert all(math.isnan(without.metrics[k]) for k in GROUP_KEYS)
    others = set(reference.metrics) - set(GROUP_KEYS)
    assert _same({k: without.metrics[k] for k in others}, {k: reference.metrics[k] for k in others})
    assert reference.metrics["AP"] > 0
    assert without.groups_note == (
        "val.json has no LVIS frequency groups: APr/APc/APf are undefined "
        "(pass train_ann=TRAIN.json to compute them from train image counts)"
    )


def test_results_file_on_real_lvis_uses_its_groups(tmp_path):
    gt = json.loads(FIXTURE.read_text())
    dets_path = tmp_path / "dets.json"
    dets_path.write_text(json.dumps(_detections(gt, seed=2)))
    result = evaluate_results_file(dets_path, FIXTURE)
    assert result.groups_note is None
    assert all(not math.isnan(result.metrics[k]) for k in GROUP_KEYS)
    assert _same(result.metrics, evaluate_lvis(gt, json.loads(dets_path.read_text())).metrics)


def test_category_never_in_train_is_reported_not_fatal(benchmark, tmp_path):
    train = _strip(benchmark["folder"] / "train.json", tmp_path / "train.json", drop_category=7)
    bundle = build_datasets(
        _lvis_node(benchmark["folder"], train, benchmark["val"]), benchmark["root"]
    )
    assert bundle.never_in_train == (7,)
    assert bundle.groups_note.endswith(
        "; 1 category never occurs in train (counted as rare): id 7"
    )
    label = bundle.cmap.label(7)
    assert bundle.stats.image_counts[label - 1] == 0
    assert bundle.stats.frequencies[label - 1] == "r"
    result = evaluate_lvis(bundle.val_gt, _detections(bundle.val_gt))
    row = next(r for r in result.per_category if r["category_id"] == 7)
    assert row["frequency"] == "r" and row["num_gt"] == 10
    assert not math.isnan(result.metrics["APr"])
