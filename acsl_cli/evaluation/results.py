"""Scoring a results file against an annotation file, without torch (``acsl eval dets=``).

The one subtle part is the frequency groups: APr/APc/APf need the TRAIN split's groups.
A real LVIS val file carries them in its categories; a plain COCO-format val file does not,
and counting its own images would put classes in the wrong groups. So the groups come from
``train_ann`` when given, else from the file's LVIS ``frequency`` fields, else they are
undefined (nan) and ``groups_note`` says why.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

from acsl_cli.data.annotations import read_annotations
from acsl_cli.data.groups import (
    apply_train_info,
    describe_groups,
    has_lvis_groups,
    never_in_train,
    train_category_info,
)
from acsl_cli.errors import DataError
from acsl_cli.evaluation.detections import parse_detections, read_detections
from acsl_cli.evaluation.lvis_protocols import evaluate_protocols

PathArg = str | PathLike[str]


@dataclass(frozen=True)
class ResultsEvaluation:
    """LVIS metrics of a results file (nan where undefined) and how the groups were found;
    ``metrics`` and ``per_category`` are the first protocol's, ``by_protocol`` has each."""

    metrics: dict[str, float]
    per_category: list[dict]
    groups_note: str | None
    by_protocol: dict[str, dict[str, float]] = field(default_factory=dict)
    #: "detections cover N of M images of ANN": LVIS rules count the ground truth of an
    #: image without detections as missed, so a file of a subset scores lower on the whole
    coverage: str = ""


def coverage_line(image_ids: Iterable[int], gt: dict, ann_name: str) -> str:
    """How many of the ground truth's images hold at least one detection, in one line."""
    covered = len(set(map(int, image_ids)))
    total = len(gt["images"])
    line = f"detections cover {covered} of {total} images of {ann_name}"
    if covered < total:
        line += (f"; the other {total - covered} count as missed (a run scores only its "
                 "first schedule.eval_max_images: its metrics.json says how many)")
    return line


def _frequency_groups(gt: dict, ann_path: Path, train_ann: PathArg | None) -> str | None:
    """Put the train groups on ``gt``'s categories, or drop them; returns a note or None."""
    if train_ann is not None:
        train = read_annotations(train_ann)
        info = train_category_info(train)
        missing = [c["id"] for c in gt["categories"] if c["id"] not in info]
        if missing:
            raise DataError(
                f"{ann_path}: categories[]: id {missing[0]} is not a category of {train_ann}"
            )
        apply_train_info(gt, info)
        groups = {cid: str(row["frequency"]) for cid, row in info.items()}
        return describe_groups(groups, never_in_train(info))
    if has_lvis_groups(gt):
        return None
    for cat in gt["categories"]:
        cat.pop("frequency", None)  # partial or invented groups would be silently wrong
    return (
        f"{ann_path.name} has no LVIS frequency groups: APr/APc/APf are undefined "
        "(pass train_ann=TRAIN.json to compute them from train image counts)"
    )


def evaluate_results_file(
    dets_path: PathArg, ann_path: PathArg, train_ann: PathArg | None = None,
    protocols: tuple[str, ...] = ("standard",), dets_per_class: int = 10_000,
    backend: str = "ours",
) -> ResultsEvaluation:
    """Evaluate an LVIS results json on ``ann_path`` with LVIS rules, under each of
    ``protocols`` (standard, fixed, pooled: ``lvis_protocols``).

    Every problem with the three files is a one-line DataError naming the file. Group
    metrics use ``train_ann``'s groups when given (frequency fields, else train image
    counts), else the annotation file's LVIS ``frequency`` fields, else they are nan.
    ``backend="lvis-api"``: the standard protocol's numbers from lvis-api (``lvis_api``).
    """
    ann = Path(ann_path)
    gt = read_annotations(ann)
    note = _frequency_groups(gt, ann, train_ann)
    dets = parse_detections(gt, read_detections(dets_path), str(dets_path))
    if backend == "lvis-api":
        from acsl_cli.evaluation.lvis_api import evaluate_with_lvis_api

        results = {"standard": evaluate_with_lvis_api(gt, dets)}
    else:
        results = evaluate_protocols(gt, dets, protocols, dets_per_class)
    first = results[protocols[0]]
    return ResultsEvaluation(first.metrics, first.per_category, note,
                             {p: r.metrics for p, r in results.items()},
                             coverage_line(dets.image_ids.tolist(), gt, ann.name))
