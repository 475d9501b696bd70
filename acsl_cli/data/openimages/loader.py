"""Open Images: class descriptions, hierarchy, boxes and image-level labels, as arrays.

The CSVs are parsed once (streamed, ``csv_parse``) into a compact CSR form by image
(``split``) and cached as an ``.npz`` in ``cache_dir`` (``cache``);
later loads read the arrays back (no pickle). Image files are checked by
``images``. Labels are 1..C in class-descriptions order (0 = background), the
ids acsl uses for Open Images. ``OpenImagesDetection`` yields the same items as
``LvisDetection``. The split's names are re-exported here, so callers import this module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from acsl_cli.data.groups import frequency_group
from acsl_cli.data.lvis_dataset import read_rgb
from acsl_cli.data.openimages.cache import ARRAYS as _ARRAYS  # noqa: F401 (the tests read it)
from acsl_cli.data.openimages.cache import FORMAT_VERSION, cache_file, read_cache, write_cache
from acsl_cli.data.openimages.csv_parse import (
    CsrAnnotations,
    ImageRegistry,
    assemble,
    parse_boxes,
    parse_image_labels,
    read_class_descriptions,
)
from acsl_cli.data.openimages.hierarchy import Hierarchy, read_hierarchy
from acsl_cli.data.openimages.images import image_info as _image_info
from acsl_cli.data.openimages.split import (
    IMAGE_EXTENSIONS,
    OpenImagesFiles,
    OpenImagesSplit,
    Progress,
)

__all__ = ["FORMAT_VERSION", "IMAGE_EXTENSIONS", "OpenImagesData", "OpenImagesDetection",
           "OpenImagesFiles", "OpenImagesSplit", "Progress", "load_openimages", "load_split"]

log = logging.getLogger("acsl")


@dataclass
class OpenImagesData:
    label_names: tuple[str, ...]
    display_names: tuple[str, ...]
    hierarchy: Hierarchy
    train: OpenImagesSplit
    val: OpenImagesSplit

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def class_index(self) -> dict[str, int]:
        return {name: i + 1 for i, name in enumerate(self.label_names)}

    def groups(self, expand: bool = False) -> tuple[str, ...]:
        """'r'/'c'/'f' per label-1 from train image counts (LVIS thresholds); ``expand``
        counts a box for its ancestors too (the groups of hierarchy-aware training)."""
        table = self.hierarchy.ancestor_table(self.num_classes) if expand else None
        return tuple(frequency_group(int(n))
                     for n in self.train.image_counts(self.num_classes, table))


def load_openimages(classes_csv: str | Path, hierarchy_json: str | Path,
                    train: OpenImagesFiles, val: OpenImagesFiles, cache_dir: str | Path,
                    progress: Progress | None = None, *, check_images: bool = True
                    ) -> OpenImagesData:
    """Classes, hierarchy and both splits; each split parsed once and cached.

    ``check_images=False`` touches no image file: sizes stay 0 (unknown) and files are
    assumed ``<ImageID>.jpg``. For statistics and benchmarks only, not for training.
    """
    names, display = read_class_descriptions(classes_csv)
    class_index = {name: i + 1 for i, name in enumerate(names)}
    hierarchy = read_hierarchy(hierarchy_json, class_index)
    splits = [load_split(files, Path(classes_csv), class_index, Path(cache_dir), name,
                         progress, check_images=check_images)
              for name, files in (("train", train), ("val", val))]
    return OpenImagesData(names, display, hierarchy, splits[0], splits[1])


def load_split(files: OpenImagesFiles, classes_csv: Path, class_index: dict[str, int],
               cache_dir: Path, name: str, progress: Progress | None = None, *,
               check_images: bool = True) -> OpenImagesSplit:
    """One split from its cache, or parsed and cached. The cache file is named after the
    inputs' paths (a changed input overwrites its own cache); the key inside also holds
    their sizes and mtimes, so any change (or a damaged file) means a rebuild."""
    path, key = cache_file(files, classes_csv, cache_dir, name, check_images)
    split = read_cache(path, key)
    if split is None:
        split = _build(files, class_index, str(classes_csv), progress, check_images)
        write_cache(path, key, split)
    if split.skipped_degenerate:
        log.warning(f"{files.boxes_csv}: {split.skipped_degenerate} degenerate box(es) (zero "
                    f"width or height), kept as ground truth nothing can match")
    if split.skipped_unknown_labels:
        log.warning(f"{files.labels_csv}: skipped {split.skipped_unknown_labels} image-level "
                    f"label row(s) of classes outside the class list")
    return split


def _build(files: OpenImagesFiles, class_index: dict[str, int], classes_csv: str,
           progress: Progress | None, check_images: bool) -> OpenImagesSplit:
    box_size = Path(files.boxes_csv).stat().st_size
    total = box_size + (Path(files.labels_csv).stat().st_size if files.labels_csv else 0)

    def at(offset: int) -> Callable[[int], None] | None:
        return None if progress is None else lambda done: progress(offset + done, total)

    images = ImageRegistry()
    boxes = parse_boxes(files.boxes_csv, class_index, images, classes_csv, at(0))
    labels = (parse_image_labels(files.labels_csv, class_index, images, at(box_size))
              if files.labels_csv is not None else None)
    parsed = assemble(images, boxes, labels, len(class_index))
    del images, boxes, labels
    n = len(parsed.image_ids)
    if check_images:
        exts, widths, heights = _image_info(parsed, files, progress)
    else:
        exts, widths, heights = (np.zeros(n, np.uint8), np.zeros(n, np.int32),
                                 np.zeros(n, np.int32))
    shared = {f.name: getattr(parsed, f.name) for f in fields(CsrAnnotations)}
    return OpenImagesSplit(**shared, image_exts=exts, widths=widths, heights=heights)


class OpenImagesDetection(Dataset):
    """(image float CHW in [0,1], target) pairs for torchvision detectors, like
    ``LvisDetection``: boxes float32 xyxy in pixels of the decoded image (normalised
    coordinates times its size; boxes under 1 pixel dropped, as there), labels int64
    1..C (leaf labels as annotated: hierarchy expansion is the trainer's business),
    ``image_id`` = the index in the split.
    """

    def __init__(self, split: OpenImagesSplit, image_dir: str | Path, name: str,
                 cache_images: bool = False) -> None:
        self.split = split
        self.image_dir = Path(image_dir)
        self.name = name
        self.cache_images = cache_images
        self._cache: list[torch.Tensor | None] = [None] * split.num_images

    def __len__(self) -> int:
        return self.split.num_images

    def image_categories(self) -> list[frozenset[int]]:
        return self.split.image_categories()

    def image_path(self, i: int) -> Path:
        return self.image_dir / self.split.image_file(i)

    def _load(self, i: int) -> torch.Tensor:
        cached = self._cache[i]
        if cached is not None:
            return cached
        t = read_rgb(self.image_path(i), f" [{self.name}]")
        if self.cache_images:
            self._cache[i] = t
        return t

    def target(self, i: int, width: int, height: int) -> dict[str, torch.Tensor]:
        a, b = int(self.split.box_offsets[i]), int(self.split.box_offsets[i + 1])
        scale = np.array([width, height, width, height], dtype=np.float32)
        boxes = (self.split.boxes[a:b] * scale).astype(np.float32)  # boxes are float64
        keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        return {
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes[keep])),
            "labels": torch.from_numpy(self.split.box_labels[a:b][keep].astype(np.int64)),
            "image_id": torch.tensor(i),
        }

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pixels = self._load(i)
        target = self.target(i, pixels.shape[2], pixels.shape[1])
        return pixels.float().div_(255), target
