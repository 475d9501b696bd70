"""Structural checks of a parsed LVIS/COCO annotation dict, each failure one line.

Why two passes: LVIS train has 1.3M annotations, so the happy path is a few whole-list
checks (``set(map(type, ...))``, one numpy array for the boxes) with no per-entry Python
branching or exceptions; only when one of them fails does a per-entry scan run to name
the first bad entry, e.g. ``train.json: annotations[12]: unknown category_id 2``.
"""

from __future__ import annotations

import reprlib
from collections.abc import Iterable
from itertools import chain
from typing import Any

import numpy as np

from acsl_cli.errors import DataError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_ID_LISTS = ("neg_category_ids", "not_exhaustive_category_ids")
_ANN_KEYS = ("image_id", "category_id", "bbox")
_NUMBER = {int, float}
_repr = reprlib.Repr()  # depth- and length-limited, so safe on deeply nested junk
_repr.maxlevel, _repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxdict = 2, 30, 30, 5, 3


def describe(value: Any) -> str:
    """A short repr that is safe on huge or deeply nested values (for error messages)."""
    text = _repr.repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_KINDS = {dict: "an object", list: "a list", str: "a string", int: "an integer",
          float: "a number", bool: "a boolean", type(None): "null"}


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), f"a {type(value).__name__}")


def _only(values: Iterable[Any], types: set[type]) -> bool:
    """True when every value's exact type is in ``types`` (so bool never passes as int)."""
    return set(map(type, values)) <= types


def _is_id(value: Any) -> bool:
    return type(value) is int and INT64_MIN <= value <= INT64_MAX


def check_annotations(data: Any, source: str) -> None:
    """Raise DataError (one line: ``source: entry: problem``) unless ``data`` is well formed."""
    if not isinstance(data, dict):
        raise DataError(
            f"{source}: expected a JSON object with images/annotations/categories, "
            f"got {_kind(data)}"
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{source}: missing or invalid '{key}' list")
    cat_ids = _check_ids(data["categories"], "categories", source)
    img_ids = _check_ids(data["images"], "images", source)
    for i, cat in enumerate(data["categories"]):
        _raise_if(_category_problem(cat), f"{source}: categories[{i}]")
    for i, image in enumerate(data["images"]):
        _raise_if(_image_problem(image, cat_ids), f"{source}: images[{i}]")
    anns = data["annotations"]
    if not _annotations_look_valid(anns, img_ids, cat_ids):
        for i, ann in enumerate(anns):
            _raise_if(_annotation_problem(ann, img_ids, cat_ids), f"{source}: annotations[{i}]")
        raise DataError(f"{source}: annotations: malformed entries")  # pragma: no cover


def _raise_if(problem: str | None, where: str) -> None:
    if problem is not None:
        raise DataError(f"{where}: {problem}")


def _check_ids(entries: list, key: str, source: str) -> set[int]:
    """Every entry an object with a unique 64-bit integer id; returns the id set."""
    if not _only(entries, {dict}):
        i = next(i for i, e in enumerate(entries) if type(e) is not dict)
        raise DataError(f"{source}: {key}[{i}]: is {_kind(entries[i])}, expected an object")
    ids = [e.get("id") for e in entries]
    if not (_only(ids, {int}) and (not ids or (min(ids) >= INT64_MIN and max(ids) <= INT64_MAX))):
        for i, (entry, value) in enumerate(zip(entries, ids, strict=True)):
            if "id" not in entry:
                raise DataError(f"{source}: {key}[{i}]: has no 'id'")
            if not _is_id(value):
                raise DataError(
                    f"{source}: {key}[{i}]: id {describe(value)} is not a 64-bit integer"
                )
    unique = set(ids)
    if len(unique) != len(ids):
        seen: set[int] = set()
        for i, value in enumerate(ids):
            if value in seen:
                raise DataError(f"{source}: {key}[{i}]: duplicate id {value}")
            seen.add(value)
    return unique


def _category_problem(cat: dict) -> str | None:
    for key in ("image_count", "instance_count"):
        if key in cat and not (_is_id(cat[key]) and cat[key] >= 0):
            return f"{key} {describe(cat[key])} is not a count (an integer >= 0)"
    for key in ("frequency", "name"):
        if key in cat and type(cat[key]) is not str:
            return f"{key} {describe(cat[key])} is not a string"
    return None


def _image_problem(image: dict, cat_ids: set[int]) -> str | None:
    for key in ("file_name", "coco_url"):
        if key in image and type(image[key]) is not str:
            return f"{key} {describe(image[key])} is not a string"
    for key in _ID_LISTS:
        if key not in image:
            continue
        listed = image[key]
        if type(listed) is not list:
            return f"{key} is {_kind(listed)}, expected a list of category ids"
        if not _only(listed, {int}):
            bad = next(v for v in listed if type(v) is not int)
            return f"{key} holds {describe(bad)}, expected category ids"
        if not cat_ids.issuperset(listed):
            bad = next(v for v in listed if v not in cat_ids)
            return f"{key} holds unknown category id {bad}"
    return None


def _annotations_look_valid(anns: list, img_ids: set[int], cat_ids: set[int]) -> bool:
    """Whole-list checks of the happy path; False sends the caller to the per-entry scan."""
    if not _only(anns, {dict}):
        return False
    image_ids = [a.get("image_id") for a in anns]
    category_ids = [a.get("category_id") for a in anns]
    if not (_only(image_ids, {int}) and _only(category_ids, {int})):
        return False
    if not (img_ids.issuperset(image_ids) and cat_ids.issuperset(category_ids)):
        return False
    boxes = [a.get("bbox") for a in anns]
    if not (_only(boxes, {list}) and set(map(len, boxes)) <= {4}):
        return False
    if not _only(chain.from_iterable(boxes), _NUMBER):
        return False
    areas = [a["area"] for a in anns if "area" in a]
    if not _only(areas, _NUMBER):
        return False
    try:
        xywh = np.array(boxes, dtype=np.float64).reshape(-1, 4)
        area = np.array(areas, dtype=np.float64)
    except OverflowError:  # an integer beyond float range
        return False
    return bool(np.isfinite(xywh).all() and (xywh[:, 2:] >= 0).all() and np.isfinite(area).all())


def _annotation_problem(ann: Any, img_ids: set[int], cat_ids: set[int]) -> str | None:
    if type(ann) is not dict:
        return f"is {_kind(ann)}, expected an object"
    for key in _ANN_KEYS:
        if key not in ann:
            return f"is missing '{key}'"
    for key, known in (("image_id", img_ids), ("category_id", cat_ids)):
        value = ann[key]
        if type(value) is not int:
            return f"{key} {describe(value)} is not an integer"
        if value not in known:
            return f"unknown {key} {value}"
    return _box_problem(ann["bbox"]) or _area_problem(ann)


def _finite(value: Any) -> bool:
    if type(value) not in _NUMBER:
        return False
    try:
        return bool(np.isfinite(float(value)))
    except OverflowError:
        return False


def _box_problem(bbox: Any) -> str | None:
    if not (type(bbox) is list and len(bbox) == 4 and all(map(_finite, bbox))):
        return f"bbox {describe(bbox)} is not [x, y, w, h] (4 finite numbers)"
    if bbox[2] < 0 or bbox[3] < 0:
        return f"bbox {describe(bbox)} has a negative width or height"
    return None


def _area_problem(ann: dict) -> str | None:
    if "area" in ann and not _finite(ann["area"]):
        return f"area {describe(ann['area'])} is not a finite number"
    return None
