"""``openimages_synthetic``: the embedded benchmark written as a real Open Images release.

The shapes, colours, long tail and look-alikes of ``synthetic`` (its helpers reused), so the
Open Images path (loader, hierarchy-aware training, challenge metric) runs offline in
minutes. Each feature is there for a part of the metric or of training:

* **hierarchy**: leaves are *shape x colour* (``/m/acsl_circle_red``) under the 6 shapes
  (``/m/acsl_circle``) under the root ``/m/0bl9f`` (Entity, not a class). Boxes carry
  leaves only, so parents get ground truth solely by expansion (boxes and positives copied
  up, negatives down) and sigmoid losses train leaves and parents together;
* **long tail**: train image counts per leaf fall log-linearly from
  ``max_images_per_class`` to 1, so LVIS's r/c/f groups are all populated and per-group AP
  is defined; rare classes differ from frequent ones of their shape by a close colour;
* **group-of boxes**: in ``group_of_fraction`` of the images one class is a tight cluster
  of >= 5 small objects with ONE ``IsGroupOf=1`` box. The metric ignores a detection mostly
  inside it and counts a hit box as one true positive, so detecting each member is no error;
* **verified negatives** (``Confidence`` 0): ``negatives_per_image`` absent leaves, look-
  alikes of present classes first, and in ``parent_negative_fraction`` of the images one
  absent shape (expanded to all its leaves). On a class without a box in the image, only
  these make a detection a false positive;
* **unlabelled classes**: in ``unlabelled_fraction`` of the images an extra object whose
  shape is not boxed there is drawn but neither boxed nor labelled (nor is its shape): the
  metric drops detections of classes unverified in an image, so finding it neither scores
  nor costs; in train it is a missing annotation, as in the non-exhaustive real release;
* **balanced val**: every leaf has exactly ``val_instances_per_class`` boxes (a group-of
  box counts as one), so tail classes are scored on as many boxes as head ones.

Coordinates are normalised; CSV rows sorted by ImageID as in the release. Deterministic per
spec, cached under ``openimages_synthetic-<hash>``. ``layout`` returns the drawing plan
(every object, cluster member, unlabelled object) without writing, to check files against.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from acsl_cli.data.groups import frequency_group
from acsl_cli.data.synthetic import shapes as syn
from acsl_cli.data.synthetic.shapes import COLOURS, SHAPES, class_attributes
from acsl_cli.files import tmp_name, writing
from acsl_cli.locks import CacheEntry, FileLock
from acsl_cli.settings.datasets import OpenImagesSyntheticDataset

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
ROOT = "/m/0bl9f"  # Open Images' root "Entity": the top node, never a class
BOX_HEADER = ("ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax",
              "IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside")
LABEL_HEADER = ("ImageID", "Source", "LabelName", "Confidence")
SPLITS = ("train", "validation")  # file prefix = image folder name, as in the release
CLASSES_CSV, HIERARCHY_JSON = "class-descriptions-boxable.csv", "bbox_labels_hierarchy.json"
MARKER = "spec.json"  # written last: a folder without it is never taken as done
FILES = (CLASSES_CSV, HIERARCHY_JSON, *(f"{s}-annotations-bbox.csv" for s in SPLITS),
         *(f"{s}-annotations-human-imagelabels-boxable.csv" for s in SPLITS), MARKER)
GENERATOR_VERSION = 1  # bump when the output changes, so caches are not reused


@dataclass(frozen=True)
class OpenImagesSyntheticSpec(OpenImagesSyntheticDataset):
    """The generator's view of an ``openimages_synthetic`` section: its fields, defaults
    and rules (``check``) are the section's (``settings.datasets``: the embedded set's
    fields, ``num_classes`` counting leaf classes, plus the Open Images ones), and its
    ``DATA`` fields determine the files and the cache key."""

    def key(self) -> str:
        return self.data_key(GENERATOR_VERSION)


@dataclass
class PlannedImage:
    """One image as drawn: ``objects`` are all painted (rank, box, rgb); ``boxes`` are the
    annotated (rank, box, is_group_of); ``members`` the cluster behind the group-of box
    (``boxes[0]`` when there is one)."""

    image_id: str
    bg: tuple[int, int, int]
    blobs: list[tuple[Box, tuple[int, int, int]]] = field(default_factory=list)
    objects: list[tuple[int, Box, tuple[int, int, int]]] = field(default_factory=list)
    boxes: list[tuple[int, Box, bool]] = field(default_factory=list)
    members: list[Box] = field(default_factory=list)
    unlabelled: list[int] = field(default_factory=list)  # ranks drawn, never annotated
    negatives: list[str] = field(default_factory=list)  # LabelNames verified absent


def leaf_name(rank: int) -> str:
    return "/m/acsl_{}_{}".format(*class_attributes(rank))


def parent_name(shape: str) -> str:
    return f"/m/acsl_{shape}"


def lookalikes(rank: int, num_classes: int) -> list[int]:
    """Leaves of the same shape whose colour is a neighbour in COLOURS (close colours)."""
    names = [c for c, _ in COLOURS]
    shape, colour = class_attributes(rank)
    i = names.index(colour)
    near = {(shape, names[j]) for j in (i - 1, i + 1) if 0 <= j < len(names)}
    return [r for r in range(num_classes) if class_attributes(r) in near]


def _overlap(a: Box, b: Box) -> float:
    """Intersection over the smaller area: any nesting counts, unlike IoU."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / small if small > 0 else 0.0


def _place(rng: np.random.Generator, s: int, taken: list[Box],
           size: Callable[[bool], tuple[float, float]]) -> Box:
    """A box of ``size(shrink)`` that overlaps ``taken`` least (free if any try is): every
    planned object is placed, so image counts are exactly the designed ones."""
    best, best_overlap = (1.0, 1.0, 2.0, 2.0), 2.0
    for attempt in range(80):
        w, h = size(attempt >= 40)
        x0, y0 = float(rng.uniform(1, s - w - 1)), float(rng.uniform(1, s - h - 1))
        box = (x0, y0, x0 + w, y0 + h)
        overlap = max((_overlap(box, b) for b in taken), default=0.0)
        if overlap < best_overlap:
            best, best_overlap = box, overlap
        if overlap < 0.02:
            break
    taken.append(best)
    return best


def _plan(image_id: str, classes: list[int], spec: OpenImagesSyntheticSpec,
          rng: np.random.Generator) -> PlannedImage:
    """Choose one image's cluster, unlabelled object and negatives, then place and colour."""
    s, n = spec.image_size, spec.num_classes
    shape_of = [class_attributes(r)[0] for r in range(n)]
    p = PlannedImage(image_id, tuple(int(v) for v in rng.integers(10, 60, size=3)))
    for _ in range(int(rng.integers(0, spec.distractors + 1))):  # dim, never a class
        r, (x, y) = float(rng.uniform(3, 9)), rng.uniform(0, s, size=2)
        tone = tuple(int(v) for v in rng.integers(40, 110, size=3))
        p.blobs.append(((x - r, y - r * rng.uniform(0.4, 1.0), x + r, y + r), tone))
    cluster = int(rng.choice(classes)) if rng.random() < spec.group_of_fraction else None
    boxed_shapes = {shape_of[c] for c in classes}
    free = [r for r in range(n) if shape_of[r] not in boxed_shapes]
    if free and rng.random() < spec.unlabelled_fraction:
        p.unlabelled.append(int(rng.choice(free)))
    drawn = set(classes) | set(p.unlabelled)
    near = sorted({r for c in classes for r in lookalikes(c, n)} - drawn)
    leaves = [int(r) for r in rng.permutation(near)[: (spec.negatives_per_image + 1) // 2]]
    others = [r for r in range(n) if r not in drawn and r not in leaves]
    leaves += [int(r) for r in rng.permutation(others)[: spec.negatives_per_image - len(leaves)]]
    p.negatives = [leaf_name(r) for r in leaves]
    absent = [sh for sh in SHAPES if sh not in {shape_of[r] for r in drawn}]
    if absent and rng.random() < spec.parent_negative_fraction:
        p.negatives.append(parent_name(str(rng.choice(absent))))

    taken: list[Box] = []
    lo, hi, jit = spec.min_object_size, spec.max_object_size, spec.colour_jitter

    def colour(rank: int) -> tuple[int, int, int]:
        base = np.array(dict(COLOURS)[class_attributes(rank)[1]])
        return tuple(int(v) for v in np.clip(base + rng.integers(-jit, jit + 1, 3), 0, 255))

    def object_size(shrink: bool) -> tuple[float, float]:
        size, aspect = float(rng.uniform(lo, lo if shrink else hi)), float(rng.uniform(0.8, 1.25))
        return size * aspect, size / aspect

    if cluster is not None:  # the biggest item first, while the image is empty
        k = int(rng.integers(spec.min_cluster_objects, spec.max_cluster_objects + 1))
        cell, rows = spec.cluster_object_size + 3, math.ceil(k / 3)
        x0, y0, _, _ = _place(rng, s, taken, lambda _: (3.0 * cell, float(rows * cell)))
        members = p.members
        for i in sorted(rng.choice(3 * rows, size=k, replace=False)):
            size = float(rng.uniform(spec.cluster_object_size - 2, spec.cluster_object_size))
            mx = x0 + (i % 3) * cell + float(rng.uniform(1, cell - size - 1))
            my = y0 + (i // 3) * cell + float(rng.uniform(1, cell - size - 1))
            members.append((mx, my, mx + size, my + size))
            p.objects.append((cluster, members[-1], colour(cluster)))
        union = (min(b[0] for b in members), min(b[1] for b in members),
                 max(b[2] for b in members), max(b[3] for b in members))
        p.boxes.append((cluster, union, True))
    for rank in [c for c in classes if c != cluster] + p.unlabelled:
        box = _place(rng, s, taken, object_size)
        p.objects.append((rank, box, colour(rank)))
        if rank not in p.unlabelled:
            p.boxes.append((rank, box, False))
    return p


def layout(spec: OpenImagesSyntheticSpec) -> dict[str, list[PlannedImage]]:
    """Every image of both splits as planned (deterministic per spec), nothing written."""
    spec.check()
    rng = np.random.default_rng(spec.seed)
    counts = syn.train_image_counts(spec)
    slots = {"train": [r for r, k in enumerate(counts) for _ in range(k)],
             "validation": [r for r in range(spec.num_classes)
                            for _ in range(spec.val_instances_per_class)]}
    plans: dict[str, list[PlannedImage]] = {}
    for split in SPLITS:
        per_image = syn.pack(slots[split], spec.objects_per_image, rng)
        ids = [hashlib.sha1(f"{spec.key()}/{split}/{i}".encode()).hexdigest()[:16]
               for i in range(len(per_image))]
        plans[split] = [_plan(i, c, spec, rng) for i, c in zip(ids, per_image, strict=True)]
    return plans


def _write_csv(path: Path, header: tuple[str, ...] | None, rows: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *rows] if header else rows)


def _split_rows(plans: list[PlannedImage], s: int) -> tuple[list[list[str]], list[list[str]]]:
    """Boxes and image-level label rows of one split, sorted by ImageID like the release."""
    boxes, labels = [], []
    for p in sorted(plans, key=lambda q: q.image_id):
        for rank, (x0, y0, x1, y1), group in p.boxes:
            xy = [f"{min(1.0, max(0.0, v / s)):.6f}" for v in (x0, x1, y0, y1)]
            boxes.append([p.image_id, "xclick", leaf_name(rank), "1", *xy,
                          "0", "0", str(int(group)), "0", "0"])
        present = sorted({leaf_name(r) for r, _, _ in p.boxes})
        labels += [[p.image_id, "verification", name, "1"] for name in present]
        labels += [[p.image_id, "verification", name, "0"] for name in sorted(p.negatives)]
    return boxes, labels


def _summary(plans: dict[str, list[PlannedImage]], n: int) -> dict[str, object]:
    """Sizes per split and the r/c/f group sizes from train image counts (for the docs)."""
    out: dict[str, object] = {}
    for split, ps in plans.items():
        out[split] = {"images": len(ps), "boxes": sum(len(p.boxes) for p in ps),
                      "group_of_boxes": sum(g for p in ps for _, _, g in p.boxes),
                      "negative_labels": sum(len(p.negatives) for p in ps),
                      "unlabelled_objects": sum(len(p.unlabelled) for p in ps)}
    images = Counter(r for p in plans["train"] for r in {r for r, _, _ in p.boxes})
    groups = Counter(frequency_group(images[r]) for r in range(n))
    out["groups"] = {g: groups[g] for g in "rcf"}
    return out


def generate(spec: OpenImagesSyntheticSpec, out: Path,
             progress: Callable[[int, int], None] | None = None) -> dict[str, object]:
    """Write the whole set into the empty folder ``out``; returns its summary."""
    out, s = Path(out), spec.image_size
    plans = layout(spec)
    names = [(leaf_name(r), f"{class_attributes(r)[1].capitalize()} {class_attributes(r)[0]}")
             for r in range(spec.num_classes)]  # leaves first: label = rank + 1, as synthetic
    names += [(parent_name(sh), sh.capitalize()) for sh in SHAPES]
    _write_csv(out / CLASSES_CSV, None, [list(row) for row in names])
    tree = {"LabelName": ROOT, "Subcategory": [
        {"LabelName": parent_name(sh), "Subcategory": [
            {"LabelName": leaf_name(r)} for r in range(spec.num_classes)
            if class_attributes(r)[0] == sh]} for sh in SHAPES]}
    (out / HIERARCHY_JSON).write_text(json.dumps(tree, indent=1) + "\n")
    total, done = sum(len(ps) for ps in plans.values()), 0
    for split, ps in plans.items():
        (out / split).mkdir()
        for p in ps:
            img = Image.new("RGB", (s, s), p.bg)
            draw = ImageDraw.Draw(img)
            for box, tone in p.blobs:
                draw.ellipse(box, fill=tone)
            for rank, box, rgb in p.objects:
                syn.draw_shape(draw, class_attributes(rank)[0], box, rgb, p.bg)
            img.save(out / split / f"{p.image_id}.png", optimize=False, compress_level=1)
            done += 1
            if progress is not None:
                progress(done, total)
        boxes, labels = _split_rows(ps, s)
        _write_csv(out / f"{split}-annotations-bbox.csv", BOX_HEADER, boxes)
        _write_csv(out / f"{split}-annotations-human-imagelabels-boxable.csv", LABEL_HEADER,
                   labels)
    summary = _summary(plans, spec.num_classes)
    info = {"kind": "openimages_synthetic", "version": GENERATOR_VERSION,
            "spec": spec.data_fields(), "summary": summary}
    (out / MARKER).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    return summary


def ensure_generated(spec: OpenImagesSyntheticSpec, data_root: Path,
                     progress: Callable[[int, int], None] | None = None) -> Path:
    """The folder of the set for ``spec`` under ``data_root``, generated if needed.

    Generated into a hidden per-process temp folder and published by one rename, under a
    lock: concurrent callers build it once, and an interrupted build (or a folder without
    its ``spec.json``, written last) is never taken as done; it is replaced.
    """
    spec.check()
    out = Path(data_root) / f"openimages_synthetic-{spec.key()}"
    entry = CacheEntry(out, FILES)
    with FileLock(out):
        if not entry.complete():  # also removes dead processes' temp folders beside it
            tmp = tmp_name(out, "partial")
            tmp.mkdir(parents=True)
            try:
                with writing(tmp):  # a failed write names the set being generated
                    generate(spec, tmp, progress)
                entry.publish(tmp)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return out
