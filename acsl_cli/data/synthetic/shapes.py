"""The embedded long-tail benchmark: a synthetic, LVIS-format detection set.

Why synthetic: a researcher must be able to run the whole pipeline with no download,
on a 2-core CPU, and still see the effect the paper is about. What makes LVIS hard for
tail classes is reproduced on purpose:

* a long tail: train image counts fall log-linearly from ``max_images_per_class`` (rank 0)
  to 1 (last rank), so all three LVIS groups (rare 1-10 images, common 11-100,
  frequent > 100) are populated in roughly LVIS proportions;
* look-alike classes: a class is a *shape x colour* pair, and classes are ranked so that
  every rare class shares its shape with frequent classes and differs from one of them
  by colour only (some colours are close, e.g. red/orange, blue/cyan), like
  "eye mask" vs "sunglasses";
* a balanced val split where every category has ``val_instances_per_class`` instances.

The set is exhaustively annotated, so every absent category of a val image is listed in
its ``neg_category_ids`` and ``not_exhaustive_category_ids`` is empty: LVIS's federated
evaluation then counts every false positive, which keeps APr stable on a small split.
Generation is deterministic per ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from acsl_cli.data.groups import frequency_group  # re-exported: the one LVIS group rule
from acsl_cli.data.synthetic.generation import partial_folder, publish
from acsl_cli.files import writing
from acsl_cli.settings.datasets import SyntheticDataset

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
# (name, RGB). Neighbours in this list are deliberately close in colour space.
COLOURS = (
    ("red", (215, 45, 40)),
    ("orange", (235, 125, 35)),
    ("yellow", (230, 210, 50)),
    ("lime", (150, 220, 60)),
    ("green", (40, 160, 60)),
    ("cyan", (50, 200, 210)),
    ("blue", (45, 90, 220)),
    ("purple", (135, 60, 200)),
    ("pink", (235, 120, 190)),
    ("white", (235, 235, 235)),
)
GENERATOR_VERSION = 1  # bump when the drawing changes, so caches are not reused


@dataclass(frozen=True)
class SyntheticSpec(SyntheticDataset):
    """The generator's view of a ``synthetic`` section: its fields and defaults are the
    section's (``settings.datasets``), and its ``DATA`` fields determine the files and
    the cache key."""

    def key(self) -> str:
        return self.data_key(GENERATOR_VERSION)

    def folder(self, data_root: Path) -> Path:
        """Where this set is cached under the data cache (``OutputLayout.data_cache``)."""
        return Path(data_root) / f"synthetic-{self.key()}"


def class_attributes(rank: int) -> tuple[str, str]:
    """(shape, colour) of the class at frequency rank ``rank`` (0 = most frequent).

    Shape cycles fastest, and the colour is rotated per shape so that colour alone never
    reveals the frequency group: each shape runs through all colours as rank grows.
    """
    shape = rank % len(SHAPES)
    colour = (rank // len(SHAPES) + 3 * shape) % len(COLOURS)
    return SHAPES[shape], COLOURS[colour][0]


def train_image_counts(spec: SyntheticSpec) -> list[int]:
    """Images per class: log-linear from max_images_per_class down to 1."""
    n = spec.num_classes
    top = math.log(spec.max_images_per_class)
    return [max(1, round(math.exp(top * (1 - r / (n - 1))))) for r in range(n)]


def pack(slots: list[int], per_image: int, rng: np.random.Generator) -> list[list[int]]:
    """Pack class slots into images, at most ``per_image`` and no class twice per image."""
    order = rng.permutation(len(slots))
    images: list[list[int]] = []
    open_images: list[list[int]] = []
    for i in order:
        c = slots[i]
        for img in open_images:
            if c not in img:
                img.append(c)
                if len(img) == per_image:
                    open_images.remove(img)
                    images.append(img)
                break
        else:
            img = [c]
            if per_image == 1:
                images.append(img)
            else:
                open_images.append(img)
        # bound the search: keep only a few open images so packing stays O(n)
        if len(open_images) > 8:
            images.append(open_images.pop(0))
    images.extend(open_images)
    return [images[i] for i in rng.permutation(len(images))]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, ...], rgb, bg) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w, h = x1 - x0, y1 - y0
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "ring":
        draw.ellipse(box, fill=rgb)
        t = 0.28
        draw.ellipse((x0 + t * w, y0 + t * h, x1 - t * w, y1 - t * h), fill=bg)
    elif shape == "square":
        draw.rectangle(box, fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=rgb)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=rgb)
    elif shape == "cross":
        t = 0.32
        draw.rectangle((x0, cy - t * h / 2 - h / 12, x1, cy + t * h / 2 + h / 12), fill=rgb)
        draw.rectangle((cx - t * w / 2 - w / 12, y0, cx + t * w / 2 + w / 12, y1), fill=rgb)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(shape)


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area if area > 0 else 0.0


def _render(classes: list[int], spec: SyntheticSpec, rng: np.random.Generator, ranks_attr):
    """Draw one image; returns the PIL image and its [(label_rank, x0, y0, x1, y1)]."""
    s = spec.image_size
    bg = tuple(int(v) for v in rng.integers(10, 60, size=3))
    img = Image.new("RGB", (s, s), bg)
    draw = ImageDraw.Draw(img)
    # distractor blobs: dim, unlabelled, so background is not trivially flat
    for _ in range(int(rng.integers(0, spec.distractors + 1))):
        r = float(rng.uniform(3, 9))
        x, y = rng.uniform(0, s, size=2)
        tone = tuple(int(v) for v in rng.integers(40, 110, size=3))
        draw.ellipse((x - r, y - r * rng.uniform(0.4, 1.0), x + r, y + r), fill=tone)
    placed: list[tuple[int, tuple[float, float, float, float]]] = []
    for rank in classes:
        for _ in range(50):
            size = float(rng.uniform(spec.min_object_size, spec.max_object_size))
            aspect = float(rng.uniform(0.8, 1.25))
            w, h = size * aspect, size / aspect
            x0 = float(rng.uniform(1, s - w - 1))
            y0 = float(rng.uniform(1, s - h - 1))
            box = (x0, y0, x0 + w, y0 + h)
            if all(iou(box, b) < 0.05 for _, b in placed):
                break
        else:
            continue  # image too crowded; drop this object (counts are recomputed)
        shape, colour = ranks_attr[rank]
        base = np.array(dict(COLOURS)[colour])
        rgb = np.clip(base + rng.integers(-spec.colour_jitter, spec.colour_jitter + 1, 3), 0, 255)
        draw_shape(draw, shape, box, tuple(int(v) for v in rgb), bg)
        placed.append((rank, box))
    return img, placed


def write_split(
    name: str,
    per_image: list[list[int]],
    spec: SyntheticSpec,
    rng: np.random.Generator,
    out: Path,
    attrs: list[tuple[str, str]],
    first_image_id: int,
    tick: Callable[[], None],
    render: Callable = _render,
) -> tuple[list[dict], list[dict]]:
    """Render and save the images of one split; returns its image and annotation records.

    ``render(classes, spec, rng, attrs)`` draws one image and returns it with its
    ``[(rank, box)]``; ``spec`` needs ``image_size`` and ``num_classes``.
    """
    (out / name).mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i, classes in enumerate(per_image):
        img, placed = render(classes, spec, rng, attrs)
        image_id = first_image_id + i
        file_name = f"{name}/{image_id:06d}.png"
        with writing(out / file_name):
            img.save(out / file_name, optimize=False, compress_level=1)
        present = sorted({r + 1 for r, _ in placed})
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": spec.image_size,
                "height": spec.image_size,
                "neg_category_ids": [c for c in range(1, spec.num_classes + 1) if c not in present],
                "not_exhaustive_category_ids": [],
            }
        )
        for rank, (x0, y0, x1, y1) in placed:
            w, h = x1 - x0, y1 - y0
            anns.append(
                {
                    "id": len(anns) + 1 + first_image_id * 10,
                    "image_id": image_id,
                    "category_id": rank + 1,
                    "bbox": [round(x0, 2), round(y0, 2), round(w, 2), round(h, 2)],
                    "area": round(w * h, 2),
                    "iscrowd": 0,
                }
            )
        tick()
    return images, anns


def generate(spec: SyntheticSpec, out: Path, progress: Callable[[int, int], None] | None = None):
    """Write ``train.json``, ``val.json`` and PNGs under ``out``, atomically: an interrupted
    generation leaves nothing, never a half-written set (``data.generation``)."""
    out = Path(out)
    rng = np.random.default_rng(spec.seed)
    attrs = [class_attributes(r) for r in range(spec.num_classes)]
    counts = train_image_counts(spec)
    train_slots = [r for r, n in enumerate(counts) for _ in range(n)]
    train_images = pack(train_slots, spec.objects_per_image, rng)
    val_slots = [r for r in range(spec.num_classes) for _ in range(spec.val_instances_per_class)]
    val_images = pack(val_slots, spec.objects_per_image, rng)
    total, done = len(train_images) + len(val_images), 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    with partial_folder(out) as tmp:  # removed unless published, however generation stops
        tr_imgs, tr_anns = write_split("train", train_images, spec, rng, tmp, attrs, 1, tick)
        va_imgs, va_anns = write_split("val", val_images, spec, rng, tmp, attrs, 100_000, tick)
        # Category statistics come from what was actually placed in train.
        img_count, inst_count = placed_counts(tr_anns, spec.num_classes)
        categories = [
            {
                "id": r + 1,
                "name": f"{attrs[r][1]}_{attrs[r][0]}",
                "synset": f"{attrs[r][1]}_{attrs[r][0]}.n.01",
                "shape": attrs[r][0],
                "colour": attrs[r][1],
                "frequency": frequency_group(int(img_count[r])),
                "image_count": int(img_count[r]),
                "instance_count": int(inst_count[r]),
            }
            for r in range(spec.num_classes)
        ]
        info = {"description": "acsl synthetic long-tail benchmark", "spec": spec.data_fields()}
        return publish(tmp, out, info, categories, (tr_imgs, tr_anns), (va_imgs, va_anns))


def placed_counts(train_anns: list[dict], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Train images and instances per class rank, from the annotations actually written."""
    img_count = np.zeros(num_classes, dtype=int)
    inst_count = np.zeros(num_classes, dtype=int)
    seen = set()
    for a in train_anns:
        inst_count[a["category_id"] - 1] += 1
        if (a["image_id"], a["category_id"]) not in seen:
            seen.add((a["image_id"], a["category_id"]))
            img_count[a["category_id"] - 1] += 1
    return img_count, inst_count


def ensure_generated(
    spec: SyntheticSpec, root: Path, progress: Callable[[int, int], None] | None = None
) -> Path:
    """Return the folder of the set for ``spec`` under ``root``, generating it if needed."""
    out = spec.folder(root)
    if not ((out / "train.json").is_file() and (out / "val.json").is_file()):
        generate(spec, out, progress)
    return out
