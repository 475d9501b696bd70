"""A tiny Open Images release on disk and the three ways the reference tests score it:
the metric on arrays (``evaluate_openimages``), the file function
(``evaluate_predictions_file``) and the CLI (``acsl eval dets=PREDICTIONS.csv ann=FOLDER``)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from acsl_cli.cli import app
from acsl_cli.evaluation.openimages_file import evaluate_predictions_file
from acsl_cli.evaluation.openimages_metric import OpenImagesGT, evaluate_openimages

BOX_HEADER = ["ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax",
              "IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside"]
PRED_HEADER = ["ImageID", "LabelName", "Score", "XMin", "XMax", "YMin", "YMax"]
A1 = ("0.1", "0.5", "0.1", "0.5")  # XMin, XMax, YMin, YMax
A1_SHIFTED = ("0.12", "0.52", "0.1", "0.5")  # IoU with A1 .38x.4 / (2 x .16 - .152) = .905
ELSEWHERE = ("0.7", "0.9", "0.0", "0.2")  # no overlap with A1 or G
G = ("0.5", "1.0", "0.5", "1.0")  # a group-of box
INSIDE_G = ("0.6", "0.8", "0.6", "0.8")


def _write(path: Path, header: list[str] | None, rows: list) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        if header:
            w.writerow(header)
        w.writerows(rows)
    return path


def shown(label_name: str) -> str:
    """The display name of a class in these releases: "/m/cat" -> "CAT"."""
    return label_name.removeprefix("/m/").upper()


def release(root: Path, classes: list[str], boxes: list[tuple], labels: list[tuple] = (),
            hierarchy: dict | None = None) -> Path:
    """boxes = (image, class, XMin, XMax, YMin, YMax, group_of); labels = (image, class, 0|1)."""
    root.mkdir(parents=True, exist_ok=True)
    _write(root / "class-descriptions-boxable.csv", None, [[c, shown(c)] for c in classes])
    hierarchy = hierarchy or {"LabelName": "/m/entity",
                              "Subcategory": [{"LabelName": c} for c in classes]}
    (root / "bbox_labels_600_hierarchy.json").write_text(json.dumps(hierarchy))
    _write(root / "validation-annotations-bbox.csv", BOX_HEADER,
           [[b[0], "xclick", b[1], "1", *b[2:6], "0", "0", str(int(b[6])), "0", "0"]
            for b in boxes])
    _write(root / "validation-annotations-human-imagelabels-boxable.csv",
           ["ImageID", "Source", "LabelName", "Confidence"],
           [[lab[0], "verification", lab[1], str(lab[2])] for lab in labels])
    return root


def predictions(path: Path, rows: list[tuple]) -> Path:
    """rows = (image, class, score text, XMin, XMax, YMin, YMax)."""
    return _write(path, PRED_HEADER, [list(r) for r in rows])


def file_aps(dets: Path, ann: Path, **kw) -> dict[str, float]:
    """Per-class AP (classes with GT) and the mean ("mAP") from ``evaluate_predictions_file``."""
    r = evaluate_predictions_file(dets, ann, **kw)
    return {"mAP": r.metrics["AP"], **{row["name"]: row["AP"] for row in r.per_category}}


def cli_map(dets: Path, ann: Path, out: Path, *overrides: str) -> float:
    res = CliRunner().invoke(app, ["eval", f"dets={dets}", f"ann={ann}", f"out={out}",
                                   "progress=false", *overrides])
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text())["AP"]


def array_aps(classes: list[str], boxes: list[tuple], labels: list[tuple],
              preds: list[tuple]) -> np.ndarray:
    """``evaluate_openimages`` on arrays built by hand (flat hierarchy, images by ImageID)."""
    index = {c: i + 1 for i, c in enumerate(classes)}
    images = sorted({b[0] for b in boxes} | {lab[0] for lab in labels})
    where = {im: i for i, im in enumerate(images)}

    def csr(rows: list) -> tuple[np.ndarray, list]:
        rows = sorted(rows, key=lambda r: where[r[0]])  # stable: file order within an image
        return np.searchsorted([where[r[0]] for r in rows], np.arange(len(images) + 1)), rows

    box_off, bs = csr(boxes)
    pos_off, ps = csr([lab for lab in labels if lab[2] == 1])
    neg_off, ns = csr([lab for lab in labels if lab[2] == 0])
    gt = OpenImagesGT(
        len(classes), box_off, np.array([[float(b[2]), float(b[4]), float(b[3]), float(b[5])]
                                         for b in bs]).reshape(-1, 4),
        np.array([index[b[1]] for b in bs], np.int32), np.array([b[6] for b in bs], bool),
        pos_off, np.array([index[p[1]] for p in ps], np.int32),
        neg_off, np.array([index[p[1]] for p in ns], np.int32))
    r = evaluate_openimages(
        gt, np.array([where[p[0]] for p in preds], np.int64),
        np.array([index[p[1]] for p in preds], np.int32),
        np.array([float(p[2]) for p in preds]),
        np.array([[float(p[3]), float(p[5]), float(p[4]), float(p[6])] for p in preds]))
    return r.ap


def check_all_ways(tmp_path: Path, classes: list[str], boxes: list[tuple],
                   labels: list[tuple], preds: list[tuple], expected: dict[str, float]) -> None:
    """Per-class APs (by class name) and their mean, through the arrays, the file, the CLI."""
    ann = release(tmp_path / "release", classes, boxes, labels)
    dets = predictions(tmp_path / "predictions.csv", preds)
    want_map = sum(expected.values()) / len(expected)
    ap = array_aps(classes, boxes, labels, preds)
    got = {c: float(ap[i]) for i, c in enumerate(classes) if not math.isnan(ap[i])}
    assert got == pytest.approx(expected, abs=1e-12)
    named = file_aps(dets, ann)
    assert named == pytest.approx({"mAP": want_map, **{shown(c): v
                                                        for c, v in expected.items()}})
    assert cli_map(dets, ann, tmp_path / "m.json") == pytest.approx(want_map, abs=1e-12)
