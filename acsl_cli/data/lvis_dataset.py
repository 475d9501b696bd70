"""LVIS-format detection datasets: the synthetic set, LVIS v0.5 / v1, COCO-format sets.

The loader validates the annotation file up front (one-line ``DataError`` naming the file
and the problem), keeps an explicit ``category_id <-> label`` map (ids need not be
contiguous; label 0 is background), and yields torchvision-style ``(image, target)`` pairs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from acsl_cli.errors import DataError


@dataclass(frozen=True)
class CategoryMap:
    """Bijection between dataset category ids and contiguous labels 1..C (0 = background)."""

    category_ids: tuple[int, ...]  # index = label - 1

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def label(self, category_id: int) -> int:
        return self._to_label[category_id]

    def category_id(self, label: int) -> int:
        return self.category_ids[label - 1]

    @property
    def _to_label(self) -> dict[int, int]:
        cache = self.__dict__.get("_cache")
        if cache is None:
            cache = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
            object.__setattr__(self, "_cache", cache)
        return cache


@dataclass(frozen=True)
class CategoryStats:
    """Train-split statistics that some losses need, indexed by label - 1."""

    frequencies: tuple[str, ...]
    image_counts: tuple[int, ...]
    instance_counts: tuple[int, ...]
    num_images: int

    def as_params(self) -> dict[str, Any]:
        return {
            "frequencies": list(self.frequencies),
            "image_counts": list(self.image_counts),
            "instance_counts": list(self.instance_counts),
            "num_images": self.num_images,
        }


def _frequency(image_count: int) -> str:
    return "r" if image_count <= 10 else ("c" if image_count <= 100 else "f")


def read_annotations(path: str | Path) -> dict:
    """Read and sanity-check an LVIS/COCO-format json; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e.__class__.__name__}: {e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: missing or invalid '{key}' list")
    cat_ids = set()
    for c in data["categories"]:
        if not isinstance(c, dict) or "id" not in c:
            raise DataError(f"{path}: a category has no 'id'")
        cat_ids.add(c["id"])
    img_ids = set()
    for im in data["images"]:
        if not isinstance(im, dict) or "id" not in im:
            raise DataError(f"{path}: an image has no 'id'")
        img_ids.add(im["id"])
    for a in data["annotations"]:
        if not isinstance(a, dict) or not {"image_id", "category_id", "bbox"} <= a.keys():
            raise DataError(f"{path}: an annotation lacks image_id/category_id/bbox")
        if a["category_id"] not in cat_ids:
            raise DataError(f"{path}: annotation {a.get('id')} has unknown category_id "
                            f"{a['category_id']}")
        if a["image_id"] not in img_ids:
            raise DataError(f"{path}: annotation {a.get('id')} has unknown image_id "
                            f"{a['image_id']}")
        b = a["bbox"]
        if not (isinstance(b, list) and len(b) == 4):
            raise DataError(f"{path}: annotation {a.get('id')} has a bbox that is not [x,y,w,h]")
    _complete_lvis_fields(data)
    return data


def _complete_lvis_fields(data: dict) -> None:
    """Give a plain COCO-format file the LVIS fields, with COCO's meaning.

    A COCO set is exhaustively annotated: every absent category is a verified negative.
    Frequency groups and counts are computed from the file when it has none (the same
    thresholds LVIS uses), so grouped metrics and frequency-aware losses still work.
    """
    all_ids = [c["id"] for c in data["categories"]]
    present: dict[Any, set] = {im["id"]: set() for im in data["images"]}
    for a in data["annotations"]:
        present[a["image_id"]].add(a["category_id"])
    for im in data["images"]:
        if "neg_category_ids" not in im:
            im["neg_category_ids"] = [c for c in all_ids if c not in present[im["id"]]]
        im.setdefault("not_exhaustive_category_ids", [])
    img_count = {c: 0 for c in all_ids}
    inst_count = {c: 0 for c in all_ids}
    for cats in present.values():
        for c in cats:
            img_count[c] += 1
    for a in data["annotations"]:
        inst_count[a["category_id"]] += 1
    for c in data["categories"]:
        c.setdefault("image_count", img_count[c["id"]])
        c.setdefault("instance_count", inst_count[c["id"]])
        c.setdefault("frequency", _frequency(c["image_count"]))
        c.setdefault("name", str(c["id"]))


def category_map(data: dict) -> CategoryMap:
    return CategoryMap(tuple(sorted(c["id"] for c in data["categories"])))


def category_stats(train: dict, cmap: CategoryMap) -> CategoryStats:
    """Frequency info from the *train* file, in label order."""
    by_id = {c["id"]: c for c in train["categories"]}
    cats = [by_id[cid] for cid in cmap.category_ids]
    return CategoryStats(
        frequencies=tuple(c["frequency"] for c in cats),
        image_counts=tuple(int(c["image_count"]) for c in cats),
        instance_counts=tuple(int(c["instance_count"]) for c in cats),
        num_images=len(train["images"]),
    )


def image_path(image: dict, image_root: Path, split: str) -> Path:
    """Where an image's pixels are.

    LVIS v0.5 has ``file_name`` in COCO-2014 style (COCO_val2014_000000266409.jpg) while
    the pixels ship in COCO-2017 folders (000000266409.jpg); LVIS v1 has no ``file_name``
    and names the image by ``coco_url`` (.../train2017/000000391895.jpg), relative to a COCO
    root that holds train2017/ and val2017/.
    """
    if "file_name" in image:
        name = image["file_name"]
        if name.startswith("COCO_") and len(name) > 16:
            name = name[-16:]
        return image_root / name
    if "coco_url" in image:
        parts = image["coco_url"].split("/")
        return image_root / parts[-2] / parts[-1]
    raise DataError(f"image {image.get('id')} has neither file_name nor coco_url ({split})")


class LvisDetection(Dataset):
    """(image float CHW in [0,1], target) pairs for torchvision detectors.

    ``cache_images`` keeps decoded uint8 images in memory: right for the small embedded
    set, where PNG decoding would otherwise dominate a CPU epoch.
    """

    def __init__(
        self,
        ann_file: str | Path,
        image_root: str | Path,
        split: str,
        cmap: CategoryMap | None = None,
        data: dict | None = None,
        cache_images: bool = False,
        check_images: bool = True,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.data = data if data is not None else read_annotations(ann_file)
        self.cmap = cmap or category_map(self.data)
        self.split = split
        root = Path(image_root)
        self.images = sorted(self.data["images"], key=lambda im: im["id"])
        self.paths = [image_path(im, root, split) for im in self.images]
        if check_images:
            missing = [p for p in self.paths if not p.is_file()]
            if missing:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                raise DataError(f"{self.ann_file}: image file {missing[0]} not found{more}")
        anns: dict[Any, list] = {im["id"]: [] for im in self.images}
        for a in self.data["annotations"]:
            anns[a["image_id"]].append(a)
        self.targets = [self._target(im, anns[im["id"]]) for im in self.images]
        self._cache: list[torch.Tensor | None] = [None] * len(self.images)
        self.cache_images = cache_images

    def _target(self, image: dict, anns: list[dict]) -> dict[str, torch.Tensor]:
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        labels = np.array([self.cmap.label(a["category_id"]) for a in anns], dtype=np.int64)
        keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        return {
            "boxes": torch.from_numpy(boxes[keep]),
            "labels": torch.from_numpy(labels[keep]),
            "image_id": torch.tensor(image["id"]),
        }

    def __len__(self) -> int:
        return len(self.images)

    def _load(self, i: int) -> torch.Tensor:
        cached = self._cache[i]
        if cached is not None:
            return cached
        try:
            with Image.open(self.paths[i]) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
        except OSError as e:
            raise DataError(f"{self.paths[i]}: cannot read image ({e})") from None
        t = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
        if self.cache_images:
            self._cache[i] = t
        return t

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = self._load(i).float().div_(255)
        target = {k: v.clone() for k, v in self.targets[i].items()}
        return image, target


def collate(batch: list) -> tuple[list, list]:
    """Detection batches are lists: images differ in size and box count."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def subset_gt(data: dict, image_ids: set) -> dict:
    """The part of an annotation dict that covers ``image_ids`` (for partial evaluation)."""
    return {
        **data,
        "images": [im for im in data["images"] if im["id"] in image_ids],
        "annotations": [a for a in data["annotations"] if a["image_id"] in image_ids],
    }
