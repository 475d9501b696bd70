"""``dataset=openimages_synthetic``: the embedded set in Open Images format, checked against
its own drawing plan (``layout``) and the Open Images file conventions."""

from __future__ import annotations

import csv
import json
import socket
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

import acsl_cli.data.synthetic.openimages_like as ois
from acsl_cli.data.groups import frequency_group
from acsl_cli.data.synthetic.shapes import (
    COLOURS,
    SyntheticSpec,
    class_attributes,
    train_image_counts,
)

SMALL = ois.OpenImagesSyntheticSpec(seed=3, num_classes=24, max_images_per_class=150,
                                    val_instances_per_class=3, group_of_fraction=0.2,
                                    unlabelled_fraction=0.3)
S = SMALL.image_size


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return ois.ensure_generated(SMALL, tmp_path_factory.mktemp("oi"))


@pytest.fixture(scope="module")
def plans() -> dict[str, list[ois.PlannedImage]]:
    return ois.layout(SMALL)


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _dicts(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _boxes(root: Path, split: str) -> list[dict[str, str]]:
    return _dicts(root / f"{split}-annotations-bbox.csv")


def _boxed_labels(root: Path, split: str) -> dict[str, set[str]]:
    """ImageID -> LabelNames with a box."""
    boxed: dict[str, set[str]] = defaultdict(set)
    for r in _boxes(root, split):
        boxed[r["ImageID"]].add(r["LabelName"])
    return boxed


def _labels(root: Path, split: str) -> dict[str, dict[str, str]]:
    """ImageID -> {LabelName: Confidence}."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for r in _dicts(root / f"{split}-annotations-human-imagelabels-boxable.csv"):
        out[r["ImageID"]][r["LabelName"]] = r["Confidence"]
    return out


def _shape_of(name: str) -> str:
    return name.split("_")[1]  # /m/acsl_<shape>[_<colour>]


def test_files_parse_with_open_images_headers(small: Path):
    classes = _rows(small / ois.CLASSES_CSV)
    assert len(classes) == SMALL.num_classes + 6  # leaves then the 6 shape parents, no header
    assert all(len(r) == 2 and r[0].startswith("/m/acsl_") for r in classes)
    assert classes[0] == ["/m/acsl_circle_red", "Red circle"] and classes[-1][1] == "Ring"
    for split in ois.SPLITS:
        boxes = _rows(small / f"{split}-annotations-bbox.csv")
        labels = _rows(small / f"{split}-annotations-human-imagelabels-boxable.csv")
        assert tuple(boxes[0]) == ois.BOX_HEADER and tuple(labels[0]) == ois.LABEL_HEADER
        assert [r[0] for r in boxes[1:]] == sorted(r[0] for r in boxes[1:])
        assert {r[3] for r in labels[1:]} == {"0", "1"}
        known = {r[0] for r in classes}
        for r in _boxes(small, split):
            x0, x1, y0, y1 = (float(r[k]) for k in ("XMin", "XMax", "YMin", "YMax"))
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 and r["LabelName"] in known
        image_ids = {r[0] for r in boxes[1:]}
        files = sorted((small / split).iterdir())
        assert {f.stem for f in files} == image_ids and all(len(i) == 16 for i in image_ids)
        with Image.open(files[0]) as im:
            assert im.size == (S, S) and im.mode == "RGB"


def test_hierarchy_is_a_tree_of_shapes_over_leaves(small: Path):
    tree = json.loads((small / ois.HIERARCHY_JSON).read_text())
    classes = [r[0] for r in _rows(small / ois.CLASSES_CSV)]
    assert tree["LabelName"] == ois.ROOT and ois.ROOT not in classes
    seen: list[str] = []
    for parent in tree["Subcategory"]:
        seen.append(parent["LabelName"])
        for leaf in parent["Subcategory"]:
            assert "Subcategory" not in leaf
            assert _shape_of(leaf["LabelName"]) == _shape_of(parent["LabelName"])
            assert leaf["LabelName"].startswith(parent["LabelName"] + "_")
            seen.append(leaf["LabelName"])
    assert sorted(seen) == sorted(classes)  # every class exactly once: a tree


def test_same_spec_gives_identical_bytes(small: Path, tmp_path: Path):
    again = ois.ensure_generated(SMALL, tmp_path)
    files = sorted(p.relative_to(small) for p in small.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for f in files:
        assert (small / f).read_bytes() == (again / f).read_bytes(), f


def test_group_of_boxes_cover_their_clusters(small: Path, plans):
    for split in ois.SPLITS:
        by_id = {p.image_id: p for p in plans[split]}
        group = [r for r in _boxes(small, split) if r["IsGroupOf"] == "1"]
        assert len(group) >= 2, split
        for r in group:
            p = by_id[r["ImageID"]]
            members = p.members
            rank, _, is_group = p.boxes[0]
            assert is_group and r["LabelName"] == ois.leaf_name(rank) and len(members) >= 5
            x0, x1, y0, y1 = (float(r[k]) * S for k in ("XMin", "XMax", "YMin", "YMax"))
            for m in members:  # inside, and the box is tight around them
                assert x0 - 1e-3 <= m[0] < m[2] <= x1 + 1e-3
                assert y0 - 1e-3 <= m[1] < m[3] <= y1 + 1e-3
            assert min(m[0] for m in members) == pytest.approx(x0, abs=1e-3)
            assert max(m[3] for m in members) == pytest.approx(y1, abs=1e-3)
            # small objects side by side: each well under the box's size
            assert all((m[2] - m[0]) * 2 < x1 - x0 for m in members)
            assert sum(o[0] == rank for o in p.objects) == len(members)
    n_group = sum(p.boxes[0][2] for ps in plans.values() for p in ps if p.boxes)
    assert n_group == sum(r["IsGroupOf"] == "1" for s in ois.SPLITS for r in _boxes(small, s))


def test_verified_negatives_are_absent_and_positives_are_the_boxed_leaves(small: Path, plans):
    lookalike_negatives = 0
    for split in ois.SPLITS:
        boxed = _boxed_labels(small, split)
        labels = _labels(small, split)
        drawn = {p.image_id: {ois.leaf_name(o[0]) for o in p.objects} for p in plans[split]}
        for image_id, found in labels.items():
            pos = {n for n, c in found.items() if c == "1"}
            neg = {n for n, c in found.items() if c == "0"}
            assert pos == boxed[image_id] and neg and not pos & neg
            for n in neg:  # a negative parent covers every leaf of its shape
                covered = {d for d in drawn[image_id] if d == n or d.startswith(n + "_")}
                assert not covered, (image_id, n)
            near = {ois.leaf_name(r) for b in pos
                    for r in ois.lookalikes(_rank(b), SMALL.num_classes)}
            lookalike_negatives += len(neg & near)
        assert set(labels) == set(boxed)
    assert lookalike_negatives > 50
    parents = [n for ps in plans.values() for p in ps for n in p.negatives if n.count("_") == 1]
    assert len(parents) > 20


def _rank(name: str) -> int:
    return next(r for r in range(SMALL.num_classes) if ois.leaf_name(r) == name)


def test_unlabelled_objects_are_neither_boxed_nor_labelled(small: Path, plans):
    count = 0
    for split in ois.SPLITS:
        boxed = _boxed_labels(small, split)
        labels = _labels(small, split)
        for p in plans[split]:
            for rank in p.unlabelled:
                count += 1
                name = ois.leaf_name(rank)
                assert any(o[0] == rank for o in p.objects)  # drawn
                assert name not in boxed[p.image_id] and name not in labels[p.image_id]
                shape = "/m/acsl_" + class_attributes(rank)[0]  # nor via the hierarchy
                assert shape not in labels[p.image_id]
                assert not any(_shape_of(b) == _shape_of(name) for b in boxed[p.image_id])
    assert count >= 20


def test_long_tail_gives_all_three_lvis_groups(small: Path):
    images: dict[str, set[str]] = defaultdict(set)
    for r in _boxes(small, "train"):
        images[r["LabelName"]].add(r["ImageID"])
    counts = [len(images[ois.leaf_name(r)]) for r in range(SMALL.num_classes)]
    design = train_image_counts(SyntheticSpec(num_classes=24, max_images_per_class=150))
    assert counts == design  # every planned object is placed: the tail is exact
    assert Counter(frequency_group(n) for n in counts) == {"r": 11, "c": 11, "f": 2}
    summary = json.loads((small / ois.MARKER).read_text())["summary"]
    assert summary["groups"] == {"r": 11, "c": 11, "f": 2}
    assert not any(r.count("_") == 1 for r in images)  # parents are never boxed directly


def test_val_is_balanced(small: Path):
    per_class = Counter(r["LabelName"] for r in _boxes(small, "validation"))
    assert set(per_class.values()) == {SMALL.val_instances_per_class}
    assert len(per_class) == SMALL.num_classes


def test_default_spec_matches_the_synthetic_set_in_size():
    counts = train_image_counts(SyntheticSpec())
    spec = ois.OpenImagesSyntheticSpec()
    assert sum(counts) == 4131 and spec.num_classes == 60  # ~1033 images of 4
    assert Counter(frequency_group(n) for n in counts) == {"r": 24, "c": 22, "f": 14}
    with pytest.raises(ValueError, match="num_classes"):
        ois.OpenImagesSyntheticSpec(num_classes=61).check()


def test_cache_is_reused(small: Path, monkeypatch):
    stamp = (small / ois.MARKER).stat().st_mtime_ns

    def boom(*_a, **_k):
        raise AssertionError("regenerated")

    monkeypatch.setattr(ois, "generate", boom)
    assert ois.ensure_generated(SMALL, small.parent) == small
    assert (small / ois.MARKER).stat().st_mtime_ns == stamp


def test_half_folder_and_dead_partial_are_not_taken_as_done(small: Path, tmp_path: Path):
    spec = ois.OpenImagesSyntheticSpec(seed=4, num_classes=6, max_images_per_class=12,
                                       val_instances_per_class=1)
    out = tmp_path / f"openimages_synthetic-{spec.key()}"
    (out / "train").mkdir(parents=True)  # an interrupted copy: CSVs but no spec.json
    for name in ois.FILES[:-1]:
        (out / name).write_text("ImageID\n")
    host = socket.gethostname().replace(".", "_").replace("-", "_") or "host"
    dead = tmp_path / f".{out.name}.{host}-999999999-abc123.partial"
    dead.mkdir()
    calls: list[tuple[int, int]] = []
    got = ois.ensure_generated(spec, tmp_path, lambda d, t: calls.append((d, t)))
    assert got == out and (out / ois.MARKER).is_file() and calls
    assert len(_boxes(out, "train")) > 1 and not dead.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


def test_concurrent_callers_generate_once(tmp_path: Path, monkeypatch):
    spec = ois.OpenImagesSyntheticSpec(seed=5, num_classes=6, max_images_per_class=12,
                                       val_instances_per_class=1)
    real, calls = ois.generate, []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ois, "generate", counted)
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda _: ois.ensure_generated(spec, tmp_path), range(3)))
    assert len(set(got)) == 1 and len(calls) == 1 and (got[0] / ois.MARKER).is_file()


def test_the_loader_reads_it_with_matching_counts(small: Path, plans, tmp_path: Path):
    oi = pytest.importorskip("acsl_cli.data.openimages.loader")  # the loader, from another module
    split_files = [oi.OpenImagesFiles(small / f"{s}-annotations-bbox.csv",
                                      small / f"{s}-annotations-human-imagelabels-boxable.csv",
                                      small / s) for s in ois.SPLITS]
    data = oi.load_openimages(small / ois.CLASSES_CSV, small / ois.HIERARCHY_JSON,
                              *split_files, tmp_path)
    n = SMALL.num_classes
    assert data.num_classes == n + 6
    for split, ps in zip((data.train, data.val), plans.values(), strict=True):
        assert split.num_images == len(ps) and set(split.widths.tolist()) == {S}
        assert len(split.box_labels) == sum(len(p.boxes) for p in ps)
        assert int(split.group_of.sum()) == sum(bool(p.members) for p in ps)
        assert len(split.neg_labels) == sum(len(p.negatives) for p in ps)
    table = data.hierarchy.ancestor_table(n + 6)  # each leaf's one ancestor is its shape
    assert all(data.label_names[table[r][0] - 1] == "/m/acsl_" + class_attributes(r)[0]
               for r in range(n))
    design = train_image_counts(SyntheticSpec(num_classes=n, max_images_per_class=150))
    assert data.train.image_counts(n + 6)[:n].tolist() == design
    assert Counter(data.groups()[:n]) == {"r": 11, "c": 11, "f": 2}


def test_pixels_show_the_planned_objects(small: Path, plans):
    base = dict(COLOURS)
    checked = 0
    for p in plans["train"][:40]:
        with Image.open(small / "train" / f"{p.image_id}.png") as im:
            rgb = im.convert("RGB")
        for i, (rank, box, _) in enumerate(p.objects):
            shape, colour = class_attributes(rank)
            centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
            later = [b for _, b, _ in p.objects[i + 1:]]
            if shape == "ring" or any(b[0] <= centre[0] <= b[2] and b[1] <= centre[1] <= b[3]
                                      for b in later):
                continue
            px = rgb.getpixel((int(centre[0]), int(centre[1])))
            assert max(abs(a - b) for a, b in zip(px, base[colour], strict=True)) <= \
                SMALL.colour_jitter, (p.image_id, rank)
            checked += 1
    assert checked > 100
