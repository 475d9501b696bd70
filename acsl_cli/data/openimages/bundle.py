"""Config -> an Open Images ``DatasetBundle``: a release's CSVs or the embedded set.

Labels are the class list's order (1..C) and serve as category ids. With
``dataset.expand_labels`` (default) a box counts for its class and every ancestor, as the
challenge metric counts it: the train image and instance counts that give the r/c/f groups
and the losses' statistics are those of the expanded labels, so a parent class with no box
of its own is as frequent as its children together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from acsl_cli.data.annotations import CategoryMap, CategoryStats
from acsl_cli.data.bundle import DatasetBundle
from acsl_cli.data.groups import describe_groups, frequency_group
from acsl_cli.data.openimages.loader import OpenImagesDetection, OpenImagesFiles, load_openimages
from acsl_cli.settings.datasets import (
    OpenImagesDataset,
    OpenImagesScored,
    OpenImagesSyntheticDataset,
)

# The file names of a release (V5/V6 boxable subset), also written by the embedded set.
RELEASE_NAMES = {
    "classes_csv": "class-descriptions-boxable.csv",
    "hierarchy_json": "bbox_labels_hierarchy.json",
    "train_boxes": "train-annotations-bbox.csv",
    "train_labels": "train-annotations-human-imagelabels-boxable.csv",
    "train_images": "train",
    "val_boxes": "validation-annotations-bbox.csv",
    "val_labels": "validation-annotations-human-imagelabels-boxable.csv",
    "val_images": "validation",
}


@dataclass(frozen=True)
class OpenImagesEval:
    """What the challenge metric needs beyond the detections: raw val GT, image sizes,
    the hierarchy, names and groups (index label - 1)."""

    split: Any  # the val OpenImagesSplit (evaluation builds its ground truth from it)
    widths: np.ndarray
    heights: np.ndarray
    ancestors: tuple[tuple[int, ...], ...]
    names: tuple[str, ...]
    label_names: tuple[str, ...]
    image_ids: tuple[str, ...]
    groups: tuple[str, ...]
    group_of_weight: float


def dataset_paths(dataset: OpenImagesScored, data_root: Path,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, Path]:
    """The eight input paths: generated for ``openimages_synthetic``, else from config."""
    if isinstance(dataset, OpenImagesSyntheticDataset):
        from acsl_cli.data.synthetic.openimages_like import (
            OpenImagesSyntheticSpec,
            ensure_generated,
        )

        folder = ensure_generated(OpenImagesSyntheticSpec.of(dataset), Path(data_root),
                                  progress)
        return {k: folder / name for k, name in RELEASE_NAMES.items()}
    if not isinstance(dataset, OpenImagesDataset):
        raise TypeError(f"dataset kind {dataset.kind}: not an Open Images release")
    return {k: Path(str(getattr(dataset, k))) for k in RELEASE_NAMES}


def openimages_bundle(dataset: OpenImagesDataset | OpenImagesSyntheticDataset, data_root: Path,
                      progress: Callable[[int, int], None] | None = None):
    """The ``DatasetBundle`` of an Open Images-format dataset (``bundle.openimages`` set)."""
    paths = dataset_paths(dataset, data_root, progress)
    data = load_openimages(
        paths["classes_csv"], paths["hierarchy_json"],
        OpenImagesFiles(paths["train_boxes"], paths["train_labels"], paths["train_images"]),
        OpenImagesFiles(paths["val_boxes"], paths["val_labels"], paths["val_images"]),
        Path(data_root) / "openimages-cache", progress)
    C = len(data.label_names)
    ancestors = tuple(tuple(a) for a in data.hierarchy.ancestor_table(C))
    expand = dataset.expand_labels
    up = ancestors if expand else None
    images = np.asarray(data.train.image_counts(C, up), dtype=np.int64)
    instances = np.asarray(data.train.instance_counts(C, up), dtype=np.int64)
    groups = tuple(frequency_group(int(n)) for n in images)
    never = tuple(label for label in range(1, C + 1) if images[label - 1] == 0)
    stats = CategoryStats(groups, tuple(int(n) for n in images),
                          tuple(int(n) for n in instances), data.train.num_images)
    note = ("Open Images challenge metric, AP = AP at IoU 0.5; "
            + describe_groups(dict(enumerate(groups, start=1)), never)
            + (" (boxes counted for their ancestors)" if expand else ""))
    cache = dataset.cache_images
    train = OpenImagesDetection(data.train, paths["train_images"], "train", cache)
    val = OpenImagesDetection(data.val, paths["val_images"], "val", cache)
    evaluation = OpenImagesEval(
        data.val, np.asarray(data.val.widths), np.asarray(data.val.heights), ancestors,
        tuple(data.display_names), tuple(data.label_names),
        tuple(str(i) for i in data.val.image_ids), groups,
        float(dataset.group_of_weight))
    return DatasetBundle(train, val, CategoryMap(tuple(range(1, C + 1))), stats, note, never,
                         openimages=evaluation, ancestors=up)
