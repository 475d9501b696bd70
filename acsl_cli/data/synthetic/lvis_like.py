"""``synthetic_lvis``: an LVIS-shaped embedded benchmark with a few hundred classes.

Same drawing, packing and atomic writing as ``synthetic`` (``acsl_cli.data.synthetic.shapes``),
but shaped after LVIS v0.5 rather than a plain log-linear tail:

* classes are *shape x colour x pattern* (6 x 10 x 5 = 300 at most; ``num_classes``
  takes the first ranks of a fixed layout);
* group sizes follow LVIS v0.5's train groups, quantile-matched: the class at rank ``r``
  of ``n`` (0 = most frequent) sits at quantile ``(r + 0.5) / n`` of LVIS's 1230
  categories sorted by train frequency, and takes that category's group (LVIS v0.5:
  315 frequent, 461 common, 454 rare; at n = 300: 77 f / 112 c / 111 r). Within a group,
  train image counts fall log-linearly from the group's top to its bottom threshold:
  frequent ``max_images_per_class`` -> 101, common 100 -> 11, rare 10 -> 1. So LVIS's
  r/c thresholds and proportions are kept exactly, and only the frequent head (LVIS:
  101 to tens of thousands of images) is compressed into 101..``max_images_per_class``;
* several instances per image: each class draws how many instances it may have per
  image (1..``max_instances_per_image``) and each image then 1..that many, so instance
  counts differ from image counts for most classes;
* look-alikes across groups in both directions: a *family* is a shape x pattern; its
  classes differ by colour only, and the colours are handed to a family's ranks in a
  stride-3 or stride-7 order (by family), so neighbouring (close) colours land in
  different groups: rare next to frequent, common next to rare, and which colour of a
  close pair is the frequent one flips between families;
* a val split with exactly ``val_instances_per_class`` instances of every class.

Train image counts are exact (a class's first instance in an image is always placed), so
the groups written into the files are the designed ones. Exhaustively labelled, like
``synthetic``. Deterministic per ``seed``; cached under ``synthetic_lvis-<hash of spec>``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from acsl_cli.data.groups import COMMON_MAX, RARE_MAX, frequency_group
from acsl_cli.data.synthetic.generation import partial_folder, publish
from acsl_cli.data.synthetic.shapes import (
    COLOURS,
    SHAPES,
    draw_shape,
    iou,
    pack,
    placed_counts,
    write_split,
)
from acsl_cli.settings.datasets import SyntheticLvisDataset

PATTERNS = ("solid", "hstripes", "vstripes", "checked", "target")  # all flip-invariant
MAX_CLASSES = len(SHAPES) * len(COLOURS) * len(PATTERNS)
# LVIS v0.5 train groups of its 1230 categories (the ``frequency`` field of every category
# of tests/data/lvis_v0.5_val_100.json; a test checks these numbers against it).
LVIS_V05_GROUPS = {"f": 315, "c": 461, "r": 454}
GENERATOR_VERSION = 1  # bump when the drawing changes, so caches are not reused


@dataclass(frozen=True)
class SyntheticLvisSpec(SyntheticLvisDataset):
    """The generator's view of a ``synthetic_lvis`` section: its fields, defaults and rules
    are the section's (``settings.datasets``), and its ``DATA`` fields determine the files
    and the cache key."""

    def key(self) -> str:
        return self.data_key(GENERATOR_VERSION)

    def folder(self, data_root: Path) -> Path:
        """Where this set is cached under the data cache (``OutputLayout.data_cache``)."""
        return Path(data_root) / f"synthetic_lvis-{self.key()}"


def group_sizes(n: int) -> dict[str, int]:
    """Frequent / common / rare class counts for ``n`` classes: rank r takes the LVIS group
    at quantile (r + 0.5) / n of LVIS v0.5's categories sorted by frequency."""
    total = sum(LVIS_V05_GROUPS.values())
    f_end = LVIS_V05_GROUPS["f"] / total
    c_end = (LVIS_V05_GROUPS["f"] + LVIS_V05_GROUPS["c"]) / total
    quantiles = [(r + 0.5) / n for r in range(n)]
    f = sum(q < f_end for q in quantiles)
    c = sum(f_end <= q < c_end for q in quantiles)
    return {"f": f, "c": c, "r": n - f - c}


def train_image_counts(spec: SyntheticLvisSpec) -> list[int]:
    """Train images per class rank: per group, log-linear from its top to its bottom."""
    spec.check()
    sizes = group_sizes(spec.num_classes)
    bounds = {"f": (spec.max_images_per_class, COMMON_MAX + 1),
              "c": (COMMON_MAX, RARE_MAX + 1), "r": (RARE_MAX, 1)}
    counts: list[int] = []
    for group in ("f", "c", "r"):
        k, (top, bottom) = sizes[group], bounds[group]
        for i in range(k):
            u = i / (k - 1) if k > 1 else 0.0
            counts.append(round(math.exp(math.log(top) + u * (math.log(bottom) - math.log(top)))))
    return counts


def class_attributes(rank: int, num_classes: int) -> tuple[str, str, str]:
    """(shape, colour, pattern) of the class at frequency rank ``rank``.

    Ranks cycle through F = ceil(n / 10) families (shape x pattern) fastest; the j-th
    class of a family (j = rank // F, 0 = its most frequent) gets colour
    ``(offset + stride * j) % 10`` with stride 3 or 7 by family, so a family's close
    colours (neighbours in COLOURS) are 3 or 7 frequency steps apart.
    """
    families = math.ceil(num_classes / len(COLOURS))
    family, j = rank % families, rank // families
    shape, pattern = family % len(SHAPES), family // len(SHAPES)
    stride = 3 if (shape + pattern) % 2 == 0 else 7
    colour = (3 * family + pattern + stride * j) % len(COLOURS)
    return SHAPES[shape], COLOURS[colour][0], PATTERNS[pattern]


def _paint(img: Image.Image, shape: str, pattern: str, box, rgb: tuple[int, ...]) -> None:
    """Draw one object: its shape, with the pattern cut out in background."""
    s = img.size[0]
    mask = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(mask)
    draw_shape(draw, shape, box, 255, 0)
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    period = max(4.0, min(w, h) / 4)  # thin background lines: the outline stays readable
    cut = max(1, round(period / 3))
    if pattern in ("hstripes", "checked"):
        for k in range(1, int(h / period) + 1):
            y = round(y0 + k * period - period / 2)
            draw.line((x0, y, x1, y), fill=0, width=cut)
    if pattern in ("vstripes", "checked"):
        for k in range(1, int(w / period) + 1):
            x = round(x0 + k * period - period / 2)
            draw.line((x, y0, x, y1), fill=0, width=cut)
    if pattern == "target":  # an outline band (a ring keeps its own) and a centre dot
        t, d = 0.16, 0.14
        if shape != "ring":
            draw_shape(draw, shape, (x0 + t * w, y0 + t * h, x1 - t * w, y1 - t * h), 0, 0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        draw.ellipse((cx - d * w, cy - d * h, cx + d * w, cy + d * h), fill=255)
    img.paste(rgb, (0, 0, s, s), mask)


def _render(classes: list[int], spec: SyntheticLvisSpec, rng: np.random.Generator, attrs):
    """Draw one image of ``classes`` (a class once per instance, first instances first).

    A class's first instance is always placed (at the least-overlapping of the tried boxes
    if no try is free), so train image counts are exact; a later instance that finds no
    free place is dropped (instance counts are recomputed from what is placed).
    """
    s = spec.image_size
    bg = tuple(int(v) for v in rng.integers(10, 60, size=3))
    img = Image.new("RGB", (s, s), bg)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, spec.distractors + 1))):
        r = float(rng.uniform(3, 8))
        x, y = rng.uniform(0, s, size=2)
        tone = tuple(int(v) for v in rng.integers(40, 110, size=3))
        draw.ellipse((x - r, y - r * rng.uniform(0.4, 1.0), x + r, y + r), fill=tone)
    placed: list[tuple[int, tuple[float, float, float, float]]] = []
    seen: set[int] = set()
    for rank in classes:
        first = rank not in seen
        seen.add(rank)
        best, best_overlap = None, 2.0
        for attempt in range(80 if first else 40):
            hi = spec.max_object_size if attempt < 40 else spec.min_object_size
            size = float(rng.uniform(spec.min_object_size, hi))
            aspect = float(rng.uniform(0.8, 1.25))
            w, h = size * aspect, size / aspect
            x0 = float(rng.uniform(1, s - w - 1))
            y0 = float(rng.uniform(1, s - h - 1))
            box = (x0, y0, x0 + w, y0 + h)
            overlap = max((iou(box, b) for _, b in placed), default=0.0)
            if overlap < best_overlap:
                best, best_overlap = box, overlap
            if overlap < 0.05:
                break
        if best_overlap >= 0.05 and not first:
            continue
        shape, colour, pattern = attrs[rank]
        base = np.array(dict(COLOURS)[colour])
        rgb = np.clip(base + rng.integers(-spec.colour_jitter, spec.colour_jitter + 1, 3), 0, 255)
        _paint(img, shape, pattern, best, tuple(int(v) for v in rgb))
        placed.append((rank, best))
    return img, placed


def _with_instances(images: list[list[int]], per_class: np.ndarray,
                    rng: np.random.Generator) -> list[list[int]]:
    """Each image's classes, then extra instances: 0..per_class[c] - 1 more of class c."""
    out = []
    for classes in images:
        extra = [c for c in classes for _ in range(int(rng.integers(0, per_class[c])))]
        out.append(list(classes) + extra)
    return out


def generate(spec: SyntheticLvisSpec, out: Path,
             progress: Callable[[int, int], None] | None = None) -> Path:
    """Write ``train.json``, ``val.json`` and PNGs under ``out`` (atomically)."""
    out = Path(out)
    counts = train_image_counts(spec)  # checks the spec first
    n = spec.num_classes
    rng = np.random.default_rng(spec.seed)
    attrs = [class_attributes(r, n) for r in range(n)]
    per_class = rng.integers(1, spec.max_instances_per_image + 1, size=n)
    train_slots = [r for r, k in enumerate(counts) for _ in range(k)]
    train_images = _with_instances(pack(train_slots, spec.classes_per_image, rng), per_class, rng)
    val_slots = [r for r in range(n) for _ in range(spec.val_instances_per_class)]
    val_images = pack(val_slots, spec.classes_per_image, rng)
    total, done = len(train_images) + len(val_images), 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    with partial_folder(out) as tmp:  # removed unless published, however generation stops
        train = write_split("train", train_images, spec, rng, tmp, attrs, 1, tick, _render)
        val = write_split("val", val_images, spec, rng, tmp, attrs, 100_000, tick, _render)
        img_count, inst_count = placed_counts(train[1], n)
        categories = []
        for r, (shape, colour, pattern) in enumerate(attrs):
            name = f"{colour}_{pattern}_{shape}"
            categories.append({
                "id": r + 1, "name": name, "synset": f"{name}.n.01", "shape": shape,
                "colour": colour, "pattern": pattern,
                "frequency": frequency_group(int(img_count[r])),
                "image_count": int(img_count[r]), "instance_count": int(inst_count[r]),
            })
        info = {"description": "acsl synthetic LVIS-shaped long-tail benchmark",
                "spec": spec.data_fields()}
        return publish(tmp, out, info, categories, train, val)


def ensure_generated(spec: SyntheticLvisSpec, root: Path,
                     progress: Callable[[int, int], None] | None = None) -> Path:
    """Return the folder of the set for ``spec`` under ``root``, generating it if needed."""
    out = spec.folder(root)
    if not ((out / "train.json").is_file() and (out / "val.json").is_file()):
        generate(spec, out, progress)
    return out
