"""LVIS-format detection datasets: the synthetic set, LVIS v0.5 / v1, COCO-format sets.

The loader reads the annotation file through ``acsl_cli.data.annotations`` (strict: one-line
``DataError`` naming the file and the entry), keeps an explicit ``category_id <-> label`` map
(ids need not be contiguous; label 0 is background), and yields torchvision-style
``(image, target)`` pairs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from acsl_cli.data.annotations import (
    CategoryMap,
    CategoryStats,
    category_map,
    category_stats,
    read_annotations,
    subset_gt,
)
from acsl_cli.errors import DataError

# Reading and checking files lives in the torch-free ``annotations`` module; these names
# stay importable from here for existing callers.
__all__ = [
    "CategoryMap",
    "CategoryStats",
    "LvisDetection",
    "category_map",
    "category_stats",
    "collate",
    "image_path",
    "read_annotations",
    "read_rgb",
    "subset_gt",
]


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
        t = read_rgb(self.paths[i])
        if self.cache_images:
            self._cache[i] = t
        return t

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = self._load(i).float().div_(255)
        target = {k: v.clone() for k, v in self.targets[i].items()}
        return image, target


def read_rgb(path: Path, context: str = "") -> torch.Tensor:
    """An image file as a uint8 CHW RGB tensor; an unreadable file is a one-line DataError."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, Image.DecompressionBombError) as e:  # the bomb error is no OSError
        raise DataError(f"{path}: cannot read image ({e}){context}") from None
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def collate(batch: list) -> tuple[list, list]:
    """Detection batches are lists: images differ in size and box count."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)

