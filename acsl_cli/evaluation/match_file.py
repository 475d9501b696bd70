"""``matches.npz``: one model's LVIS matches at area "all", saved beside its metrics so that
``acsl report`` can bootstrap over images without the detections or the matching.

Plain arrays only (read with ``allow_pickle=False``), checked on reading: a run folder is
untrusted data, and a bad file is one ``DataError`` line naming it.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from acsl_cli.errors import DataError
from acsl_cli.evaluation.lvis_bootstrap import ImageMatches
from acsl_cli.evaluation.lvis_matching import IOU_THRESHOLDS
from acsl_cli.files import atomic_write_bytes

VERSION = 1
_INT = ("image_ids", "category_ids", "det_img", "det_cat", "gt_img", "gt_cat", "gt_count")


def save_matches(path: Path, m: ImageMatches) -> None:
    buf = io.BytesIO()
    np.savez_compressed(
        buf, version=np.array(VERSION), iou_thresholds=IOU_THRESHOLDS,
        image_ids=m.image_ids, category_ids=m.category_ids, frequency=m.frequency,
        det_img=m.det_img.astype(np.int32), det_cat=m.det_cat.astype(np.int32),
        det_score=m.det_score, outcome=m.outcome.astype(np.int8),
        gt_img=m.gt_img.astype(np.int32), gt_cat=m.gt_cat.astype(np.int32),
        gt_count=m.gt_count.astype(np.int32))
    atomic_write_bytes(Path(path), buf.getvalue())


def load_matches(path: Path) -> ImageMatches:
    """Read and check a matches file (shapes, dtypes, index ranges, detection order)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable matches file ({e.__class__.__name__})"
                        ) from None
    problem = _problem(arrays)
    if problem:
        raise DataError(f"{path}: {problem}")
    a = arrays
    return ImageMatches(
        image_ids=a["image_ids"].astype(np.int64), category_ids=a["category_ids"].astype(np.int64),
        frequency=a["frequency"].astype(str), det_img=a["det_img"].astype(np.int64),
        det_cat=a["det_cat"].astype(np.int64), det_score=a["det_score"].astype(np.float64),
        outcome=a["outcome"].astype(np.int8), gt_img=a["gt_img"].astype(np.int64),
        gt_cat=a["gt_cat"].astype(np.int64), gt_count=a["gt_count"].astype(np.int64))


def _problem(a: dict[str, np.ndarray]) -> str | None:
    need = ("version", "iou_thresholds", "frequency", "det_score", "outcome", *_INT)
    missing = [k for k in need if k not in a]
    if missing:
        return f"missing arrays {', '.join(missing)}"
    if a["version"].shape != () or int(a["version"]) != VERSION:
        return f"version {a['version']!r}, expected {VERSION}"
    if not np.array_equal(a["iou_thresholds"], IOU_THRESHOLDS):
        return "other IoU thresholds than LVIS's"
    for k in _INT:
        if a[k].ndim != 1 or not np.issubdtype(a[k].dtype, np.integer):
            return f"{k} must be a 1-d integer array"
    if a["frequency"].dtype.kind != "U" or a["frequency"].shape != a["category_ids"].shape:
        return "frequency must be one string per category"
    n, n_img, n_cat = len(a["det_img"]), len(a["image_ids"]), len(a["category_ids"])
    if a["outcome"].shape != (n, len(IOU_THRESHOLDS)) or a["det_cat"].shape != (n,) \
            or a["det_score"].shape != (n,):
        return "detection arrays of different lengths"
    if not np.isin(a["outcome"], (-1, 0, 1)).all():
        return "outcome values must be -1, 0 or 1"
    if not np.isfinite(a["det_score"]).all():
        return "non-finite scores"
    m = len(a["gt_img"])
    if a["gt_cat"].shape != (m,) or a["gt_count"].shape != (m,) or (a["gt_count"] < 1).any():
        return "ground-truth arrays of different lengths or counts below 1"
    for k, top in (("det_img", n_img), ("gt_img", n_img), ("det_cat", n_cat),
                   ("gt_cat", n_cat)):
        if len(a[k]) and (a[k].min() < 0 or a[k].max() >= top):
            return f"{k} out of range"
    if (np.diff(a["image_ids"]) <= 0).any() or (np.diff(a["category_ids"]) <= 0).any():
        return "image_ids and category_ids must be sorted and unique"
    cat, score = a["det_cat"], a["det_score"]
    if (np.diff(cat) < 0).any() or ((np.diff(score) > 0) & (np.diff(cat) == 0)).any():
        return "detections not in evaluation order (category, descending score)"
    return None
