"""Property: a malformed annotation or results file is a one-line DataError, nothing else.

Inputs are mutations of a small valid file (a value anywhere replaced by random JSON, a key
dropped, an entry duplicated, a value buried under thousands of brackets, NaN/Infinity
literals) and arbitrary text. Whatever the mutation, reading either succeeds or raises a
DataError whose message is a single line starting with the file's path.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acsl_cli.data.annotations import read_annotations
from acsl_cli.errors import DataError
from acsl_cli.evaluation import load_detections

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
DEEP = "__deep_nesting__"

VALID_GT = {
    "images": [
        {"id": 1, "file_name": "a.png", "neg_category_ids": [9], "not_exhaustive_category_ids": []},
        {"id": 2, "file_name": "b.png"},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 5, 5], "area": 25},
        {"id": 2, "image_id": 2, "category_id": 9, "bbox": [1.5, 1, 2, 2]},
    ],
    "categories": [
        {"id": 7, "name": "x", "frequency": "r", "image_count": 1, "instance_count": 1},
        {"id": 9, "name": "y"},
    ],
}
VALID_DETS = [
    {"image_id": 1, "category_id": 7, "bbox": [0, 0, 5, 5], "score": 0.9},
    {"image_id": 2, "category_id": 9, "bbox": [1, 1, 2.5, 2], "score": 0.1},
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.just(DEEP),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every position in a JSON value, as key/index tuples (the root is ())."""
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


@st.composite
def mutated(draw, valid: Any) -> Any:
    """``valid`` after one to three random edits."""
    doc = copy.deepcopy(valid)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        if not path:
            doc = draw(json_values)
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        action = draw(st.sampled_from(["replace", "delete", "duplicate", "deep", "nan"]))
        if action == "replace":
            parent[last] = draw(json_values)
        elif action == "delete":
            del parent[last]
        elif action == "duplicate":
            if isinstance(parent, list):
                parent.append(copy.deepcopy(parent[last]))
            else:
                parent[last] = [parent[last], parent[last]]
        elif action == "deep":
            parent[last] = DEEP
        else:
            parent[last] = draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
    return doc


def _write(path: Path, doc: Any, depth: int) -> None:
    """JSON text of ``doc`` with each DEEP marker turned into ``depth`` nested brackets."""
    text = json.dumps(doc)  # NaN and Infinity become the literals Python's json accepts
    path.write_text(text.replace(json.dumps(DEEP), "[" * depth + "1" + "]" * depth))


def _check(read, path: Path, *args) -> None:
    try:
        read(path, *args)
    except DataError as err:
        message = str(err)
        assert "\n" not in message and message.startswith(f"{path}: "), message


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@SETTINGS
@given(doc=mutated(VALID_GT), depth=st.sampled_from([1, 50, 5000, 200_000]))
def test_mutated_annotation_files(workdir, doc, depth):
    path = workdir / "ann.json"
    _write(path, doc, depth)
    _check(read_annotations, path)


@SETTINGS
@given(doc=mutated(VALID_DETS), depth=st.sampled_from([1, 50, 5000, 200_000]))
def test_mutated_results_files(workdir, doc, depth):
    path = workdir / "dets.json"
    _write(path, doc, depth)
    _check(load_detections, path, copy.deepcopy(VALID_GT))


@SETTINGS
@given(raw=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_arbitrary_bytes(workdir, raw):
    path = workdir / "raw.json"
    path.write_bytes(raw)
    _check(read_annotations, path)
    _check(load_detections, path, copy.deepcopy(VALID_GT))


def test_the_unmutated_files_are_valid(workdir):
    ann, dets = workdir / "valid_ann.json", workdir / "valid_dets.json"
    _write(ann, VALID_GT, 1)
    _write(dets, VALID_DETS, 1)
    gt = read_annotations(ann)
    assert load_detections(dets, gt) == VALID_DETS
