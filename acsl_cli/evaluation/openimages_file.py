"""``acsl eval dets=PREDICTIONS.csv ann=...``: score an Open Images predictions file.

``ann`` is a folder holding a release under its file names (class descriptions, hierarchy,
validation boxes and image-level labels), or the validation boxes CSV itself with the
other files beside it. Groups (APr/APc/APf) need train image counts: ``train_ann`` is the
train boxes CSV (a box counts for its class's ancestors too, as in training).
No image is opened: predictions are in normalised coordinates. Predictions of images
outside the ground truth are skipped with one warning line, as the official tool ignores
them (``unknown_images="ignore"``), or refused (``"error"``).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from acsl_cli.data.groups import describe_groups, frequency_group
from acsl_cli.data.openimages.csv_parse import read_class_descriptions
from acsl_cli.data.openimages.hierarchy import read_hierarchy
from acsl_cli.data.openimages.loader import OpenImagesFiles, load_split
from acsl_cli.errors import DataError
from acsl_cli.evaluation.openimages_gt import ground_truth
from acsl_cli.evaluation.openimages_metric import (
    evaluate_openimages,
    expand_detections,
    expand_ground_truth,
)
from acsl_cli.evaluation.openimages_predictions import UnknownImages, read_predictions_csv
from acsl_cli.evaluation.openimages_scoring import category_rows, table_metrics

PathArg = str | PathLike[str]
CLASSES = "class-descriptions-boxable.csv"
HIERARCHIES = ("bbox_labels_hierarchy.json", "bbox_labels_600_hierarchy.json")
VAL_BOXES = "validation-annotations-bbox.csv"
UNKNOWN_IMAGES = ("ignore", "error")  # test.unknown_images

log = logging.getLogger("acsl")


@dataclass(frozen=True)
class PredictionsEvaluation:
    metrics: dict[str, float | None]
    per_category: list[dict]
    groups_note: str


def release_files(ann: Path) -> tuple[Path, Path, Path, Path | None]:
    """(classes CSV, hierarchy JSON, boxes CSV, image-labels CSV or None) of ``ann``."""
    boxes = ann / VAL_BOXES if ann.is_dir() else ann
    folder = boxes.parent
    classes = folder / CLASSES
    hierarchy = next((folder / h for h in HIERARCHIES if (folder / h).is_file()), None)
    for path, what in ((boxes, "boxes CSV"), (classes, CLASSES)):
        if not path.is_file():
            raise DataError(f"{path}: not found (the {what} of ann={ann})")
    if hierarchy is None:
        raise DataError(f"{folder}: no {' or '.join(HIERARCHIES)} beside the boxes CSV")
    labels = folder / boxes.name.replace("annotations-bbox", "annotations-human-imagelabels"
                                         "-boxable")
    return classes, hierarchy, boxes, labels if labels != boxes and labels.is_file() else None


def evaluate_predictions_file(dets: PathArg, ann: PathArg, train_ann: PathArg | None = None,
                              *, expand: bool = False, group_of_weight: float = 1.0,
                              unknown_images: str = "ignore") -> PredictionsEvaluation:
    """The challenge metric of ``dets`` on ``ann``'s ground truth, LVIS-table keys."""
    if unknown_images not in UNKNOWN_IMAGES:
        raise ValueError(f"unknown_images {unknown_images!r} not in {UNKNOWN_IMAGES}")
    classes, hierarchy_json, boxes, labels = release_files(Path(ann))
    names, display = read_class_descriptions(classes)
    index = {name: i + 1 for i, name in enumerate(names)}
    hierarchy = read_hierarchy(hierarchy_json, index)
    ancestors = hierarchy.ancestor_table(len(names))
    with tempfile.TemporaryDirectory() as cache:
        val = load_split(OpenImagesFiles(boxes, labels, boxes.parent), classes, index,
                         Path(cache), "val", check_images=False)
        groups = None
        if train_ann is not None:
            train = load_split(OpenImagesFiles(Path(train_ann), None, Path(train_ann).parent),
                               classes, index, Path(cache), "train", check_images=False)
            groups = tuple(frequency_group(int(n))
                           for n in train.image_counts(len(names), ancestors))
    images = {str(image_id): i for i, image_id in enumerate(val.image_ids)}
    unknown = UnknownImages() if unknown_images == "ignore" else None
    arrays = read_predictions_csv(dets, images, index, unknown=unknown)
    if unknown is not None and unknown.rows:
        log.warning(unknown.note(dets))
    if expand:
        arrays = expand_detections(*arrays, ancestors)
    gt = expand_ground_truth(ground_truth(val, len(names)), ancestors)
    r = evaluate_openimages(gt, *arrays, group_of_weight=group_of_weight, groups=groups)
    metrics = table_metrics(r, grouped=groups is not None)
    rows = category_rows(r, display, groups)
    note = "Open Images challenge metric, AP = AP at IoU 0.5; " + (
        describe_groups(dict(enumerate(groups, start=1))) if groups else
        "APr/APc/APf undefined (pass train_ann=TRAIN_BOXES.csv for the groups)")
    return PredictionsEvaluation(metrics, rows, note)
