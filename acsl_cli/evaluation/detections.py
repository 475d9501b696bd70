"""Reading and checking LVIS results (detection lists): every problem is one DataError line.

Why strict: a results file comes from outside (another codebase, a hand edit), and a
wrong type, a NaN score or an unknown id would otherwise turn into a numpy traceback or a
silently wrong AP. The common valid case is checked with whole-list passes (LVIS val
results hold 1.5M entries); a per-entry scan only runs to name the first bad entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import chain
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from acsl_cli.data.validate import INT64_MAX, INT64_MIN, describe
from acsl_cli.errors import DataError

_REQUIRED_KEYS = ("image_id", "category_id", "bbox", "score")
_MAX_LISTED_IDS = 5


@dataclass(frozen=True)
class Detections:
    """A validated result list as arrays, in input order."""

    image_ids: np.ndarray  # int64, (n,)
    category_ids: np.ndarray  # int64, (n,)
    boxes: np.ndarray  # float64, (n, 4) xywh
    scores: np.ndarray  # float64, (n,)


def _int_type(t: type) -> bool:
    return t is int or issubclass(t, np.integer)  # bool and np.bool_ are neither


def _number_type(t: type) -> bool:
    return _int_type(t) or t is float or issubclass(t, np.floating)


def _is_int(value: Any) -> bool:
    return _int_type(type(value)) and INT64_MIN <= value <= INT64_MAX


def _is_number(value: Any) -> bool:
    return _number_type(type(value))


def _all_types(values: Any, accept: Any) -> bool:
    return all(map(accept, set(map(type, values))))


def _entry_problem(entry: Any) -> str | None:
    """Say what is wrong with one detection entry, or None if it is well formed."""
    if not isinstance(entry, dict):
        return f"is a {type(entry).__name__}, expected an object"
    for key in _REQUIRED_KEYS:
        if key not in entry:
            return f"is missing key '{key}'"
    for key in ("image_id", "category_id"):
        if not _is_int(entry[key]):
            return f"has {key} {describe(entry[key])}, expected a 64-bit integer"
    if not _is_number(entry["score"]):
        return f"has score {describe(entry['score'])}, expected a number"
    bbox = entry["bbox"]
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(map(_is_number, bbox))):
        return f"has bbox {describe(bbox)}, expected [x, y, w, h] numbers"
    try:
        finite = np.isfinite(np.array([entry["score"], *bbox], dtype=np.float64)).all()
    except OverflowError:
        finite = False
    if not finite:
        return "has a non-finite score or bbox"
    return None


def _malformed(detections: list, source: str) -> DataError:
    """Find the first bad entry (slow path, only taken once something is known to be wrong)."""
    for i, entry in enumerate(detections):
        problem = _entry_problem(entry)
        if problem is not None:
            return DataError(f"{source}: detection {i} {problem}")
    return DataError(  # pragma: no cover - every failed fast check has an entry to blame
        f"{source}: image_id/category_id must be 64-bit integers and bbox/score plain numbers"
    )


def _unknown_ids(ids: np.ndarray, known: np.ndarray, what: str, source: str) -> None:
    unknown = np.setdiff1d(ids, known)
    if unknown.size == 0:
        return
    count = int(np.isin(ids, unknown).sum())
    listed = ", ".join(str(v) for v in unknown[:_MAX_LISTED_IDS])
    more = f" (and {unknown.size - _MAX_LISTED_IDS} more)" if unknown.size > _MAX_LISTED_IDS else ""
    raise DataError(
        f"{source}: {count} detection(s) use {what} ids not in the ground truth: {listed}{more}"
    )


def gt_ids(gt: dict, key: str) -> np.ndarray:
    """Sorted unique ``id`` values of ``gt[key]`` as int64."""
    try:
        return np.unique(np.array([item["id"] for item in gt[key]], dtype=np.int64))
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        raise DataError(
            f"ground truth: cannot read '{key}' ids ({type(err).__name__}: {err})"
        ) from None


def _as_arrays(detections: list) -> Detections | None:
    """Whole-list checks and conversion; None when any entry is malformed."""
    try:
        image_ids = [d["image_id"] for d in detections]
        category_ids = [d["category_id"] for d in detections]
        scores = [d["score"] for d in detections]
        boxes = [d["bbox"] for d in detections]
    except (KeyError, TypeError, IndexError):
        return None
    well_typed = (
        _all_types(image_ids, _int_type)
        and _all_types(category_ids, _int_type)
        and _all_types(scores, _number_type)
        and _all_types(boxes, lambda t: t is list or t is tuple)
        and set(map(len, boxes)) == {4}
        and _all_types(chain.from_iterable(boxes), _number_type)
    )
    if not well_typed:
        return None
    try:
        return Detections(
            np.array(image_ids, dtype=np.int64),
            np.array(category_ids, dtype=np.int64),
            np.array(boxes, dtype=np.float64).reshape(-1, 4),
            np.array(scores, dtype=np.float64),
        )
    except OverflowError:  # an id beyond 64 bits or a number beyond float range
        return None


def parse_detections(gt: dict, detections: Any, source: str) -> Detections:
    """Validate detections against the ground truth and return them as arrays."""
    if not isinstance(detections, list):
        raise DataError(
            f"{source}: detections must be a JSON list, got {type(detections).__name__}"
        )
    if not detections:
        empty = np.zeros(0, dtype=np.int64)
        return Detections(empty, empty.copy(), np.zeros((0, 4)), np.zeros(0))
    dets = _as_arrays(detections)
    if dets is None:
        raise _malformed(detections, source)
    finite = np.isfinite(dets.scores) & np.isfinite(dets.boxes).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise DataError(f"{source}: detection {i} has a non-finite score or bbox")
    negative = (dets.boxes[:, 2:] < 0).any(axis=1)  # zero is fine: lvis-api scores it (a miss)
    if negative.any():
        i = int(np.flatnonzero(negative)[0])
        raise DataError(f"{source}: detection {i} has bbox {describe(detections[i]['bbox'])}: "
                        "negative width or height (LVIS boxes are [x, y, w, h])")
    _unknown_ids(dets.image_ids, gt_ids(gt, "images"), "image", source)
    _unknown_ids(dets.category_ids, gt_ids(gt, "categories"), "category", source)
    return dets


def validate_detections(gt: dict, detections: list, source: str) -> None:
    """Raise DataError (one line naming ``source``) unless detections are LVIS results.

    Checks: a list of objects with integer image_id/category_id, numeric score and 4-number
    bbox, all finite, no negative width or height, and every image and category id present
    in ``gt``.
    """
    parse_detections(gt, detections, source)


def read_detections(path: str | PathLike[str]) -> Any:
    """Parse a results file as JSON (not yet checked); errors are one-line DataErrors."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read ({type(err).__name__}: {err})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}: invalid JSON ({err.msg} at line {err.lineno} column {err.colno})"
        ) from None
    except ValueError as err:  # an integer past Python's int_max_str_digits (4300 digits)
        raise DataError(f"{path}: invalid JSON ({str(err).split(';')[0]})") from None
    except RecursionError:
        raise DataError(f"{path}: invalid JSON (nested too deeply)") from None


def load_detections(path: str | PathLike[str], gt: dict) -> list[dict]:
    """Read a results JSON file and validate it against ``gt``; errors are one-line DataErrors."""
    detections = read_detections(path)
    validate_detections(gt, detections, str(path))
    return detections
