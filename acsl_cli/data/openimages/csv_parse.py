"""Streamed, strict reading of the Open Images CSVs into compact arrays (torch-free).

The full train boxes CSV has 14.6 M rows, so nothing here keeps a Python object per box:
rows go through the csv module, are collected in chunks of ``CHUNK`` tuples of strings,
checked and converted column-wise with numpy, and appended to ``array`` buffers. Held per
box while parsing: 4 float64 coordinates (as the official evaluator reads them: a box pair at
IoU exactly 0.5 must not move), an int32 label, an int32 image index and a bool (41 bytes;
37 once the image index becomes CSR offsets); per image a dict entry ImageID ->
index (~140 bytes) and where it is first listed. Columns are found by header name
(releases differ in which ones they have and in order), by ``columns``, which
also checks the values and reads the class descriptions (re-exported here). Errors are one
line naming the file and the data row: row N is line N + 1 of the file (the header is row 0).
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress
from pathlib import Path

import numpy as np

from acsl_cli.data.openimages.columns import (
    OnBytes,
    check_image_ids,
    first_true,
    float_columns,
    label_ids,
    read_class_descriptions,
    stream_columns,
)
from acsl_cli.errors import DataError

__all__ = ["BOXES", "BOX_COLUMNS", "CHUNK", "FLAG_VALUES", "LABELS", "LABEL_COLUMNS",
           "BoxBuffers", "ImageRegistry", "LabelBuffers", "OnBytes", "ParsedSplit", "assemble",
           "parse_boxes", "parse_image_labels", "read_class_descriptions", "sorted_unique"]

CHUNK = 65536  # rows converted at once: numpy speed, bounded memory
BOX_COLUMNS = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax")
LABEL_COLUMNS = ("ImageID", "LabelName", "Confidence")
FLAG_VALUES = frozenset({"0", "1", "-1", ""})  # IsGroupOf; only "1" is a group-of box
BOXES, LABELS = 0, 1  # the CSV an image was first listed in (``ImageRegistry.first_source``)


class _Interner(dict):
    """ImageID -> dense index in order of first appearance (C-speed lookups)."""

    def __missing__(self, key: str) -> int:
        value = self[key] = len(self)
        return value


@dataclass
class ImageRegistry:
    """The images of one split, shared by its boxes and labels CSVs."""

    index: _Interner = field(default_factory=_Interner)
    first_source: array = field(default_factory=lambda: array("b"))  # BOXES or LABELS
    first_row: array = field(default_factory=lambda: array("q"))

    def add(self, ids: Sequence[str], rows: Sequence[int], source: int) -> np.ndarray:
        """Indices (int32) of ``ids``, registering new ones with their data row."""
        before = len(self.index)
        idx = np.fromiter(map(self.index.__getitem__, ids), np.int32, count=len(ids))
        if len(self.index) > before:
            pos = np.flatnonzero(idx >= before)
            _, first = np.unique(idx[pos], return_index=True)  # new ids in index order
            self.first_row.extend(rows[j] for j in pos[first].tolist())
            self.first_source.extend([source] * len(first))
        return idx


@dataclass
class BoxBuffers:
    image: array = field(default_factory=lambda: array("i"))
    label: array = field(default_factory=lambda: array("i"))
    coords: array = field(default_factory=lambda: array("d"))  # xmin, ymin, xmax, ymax
    group_of: array = field(default_factory=lambda: array("b"))
    degenerate: int = 0  # zero-width or zero-height boxes (kept)


@dataclass
class LabelBuffers:
    image: array = field(default_factory=lambda: array("i"))
    label: array = field(default_factory=lambda: array("i"))
    positive: array = field(default_factory=lambda: array("b"))
    unknown: int = 0


def parse_boxes(path: str | Path, class_index: Mapping[str, int], images: ImageRegistry,
                classes_csv: str = "the class descriptions", on_bytes: OnBytes | None = None
                ) -> BoxBuffers:
    """Boxes of one split's CSV; everything malformed is an error. Zero-width or
    zero-height boxes are counted and kept: the official metric keeps them as ground truth
    that nothing can match (a false negative each); training drops boxes under a pixel."""
    path = Path(path)
    out = BoxBuffers()

    def flush(chunk: list[tuple], rows: list[int], n_optional: int) -> None:
        cols = list(zip(*chunk, strict=True))
        ids, names = cols[0], cols[1]
        check_image_ids(path, ids, rows)
        labels = label_ids(class_index, names)
        if not labels.all():
            j = first_true(labels == 0)
            raise DataError(f"{path}: row {rows[j]}: LabelName {names[j]} is not in the "
                            f"class list {classes_csv}")
        c = float_columns(path, cols[2:6], BOX_COLUMNS[2:], rows)
        inside = (c >= 0) & (c <= 1)
        if not inside.all():
            j = first_true(~inside.all(axis=0))
            k = first_true(~inside[:, j])
            raise DataError(f"{path}: row {rows[j]}: {BOX_COLUMNS[2 + k]} {cols[2 + k][j]} "
                            f"is outside [0, 1]")
        for lo, hi in ((0, 1), (2, 3)):
            inverted = c[lo] > c[hi]
            if inverted.any():
                j = first_true(inverted)
                raise DataError(f"{path}: row {rows[j]}: inverted box, "
                                f"{BOX_COLUMNS[2 + lo]} {cols[2 + lo][j]} > "
                                f"{BOX_COLUMNS[2 + hi]} {cols[2 + hi][j]}")
        flat = (c[0] == c[1]) | (c[2] == c[3])
        if n_optional:
            flags = cols[6]
            bad = set(flags) - FLAG_VALUES
            if bad:
                j = next(j for j, v in enumerate(flags) if v in bad)
                raise DataError(f"{path}: row {rows[j]}: IsGroupOf {flags[j]!r} is not 0 or 1")
            group = np.array(flags) == "1"
        else:
            group = np.zeros(len(chunk), dtype=bool)
        idx = images.add(ids, rows, BOXES)
        out.degenerate += int(flat.sum())
        out.image.frombytes(idx.tobytes())
        out.label.frombytes(labels.tobytes())
        out.coords.frombytes(np.ascontiguousarray(c[[0, 2, 1, 3]].T).tobytes())
        out.group_of.frombytes(group.astype(np.int8).tobytes())

    stream_columns(path, BOX_COLUMNS, ("IsGroupOf",), flush, on_bytes, CHUNK)
    return out


def parse_image_labels(path: str | Path, class_index: Mapping[str, int],
                       images: ImageRegistry, on_bytes: OnBytes | None = None) -> LabelBuffers:
    """Human-verified image-level labels (Confidence 1 present, 0 verified absent).

    Labels outside the class list are counted and skipped: real releases list ~20 k
    non-boxable classes here. Their rows do not make an image part of the split.
    """
    path = Path(path)
    out = LabelBuffers()

    def flush(chunk: list[tuple], rows: list[int], n_optional: int) -> None:
        ids, names, confs = zip(*chunk, strict=True)
        labels = label_ids(class_index, names)
        known = labels > 0
        if not known.all():
            out.unknown += int(len(labels) - known.sum())
            keep = known.tolist()
            ids, confs, rows = (list(compress(col, keep)) for col in (ids, confs, rows))
            labels = labels[known]
            if not len(labels):
                return
        check_image_ids(path, ids, rows)
        conf = float_columns(path, (confs,), ("Confidence",), rows)[0]
        binary = (conf == 0) | (conf == 1)
        if not binary.all():
            j = first_true(~binary)
            raise DataError(f"{path}: row {rows[j]}: Confidence {confs[j]} is not 0 or 1 "
                            f"(human-verified labels expected)")
        out.image.frombytes(images.add(ids, rows, LABELS).tobytes())
        out.label.frombytes(labels.tobytes())
        out.positive.frombytes((conf == 1).astype(np.int8).tobytes())

    stream_columns(path, LABEL_COLUMNS, (), flush, on_bytes, CHUNK)
    return out


@dataclass(kw_only=True)
class CsrAnnotations:
    """One split's annotations in CSR form by image, images sorted by ImageID: boxes
    (normalised xyxy), their labels and group-of flags, verified positive and negative
    image-level labels. Shared by the parse result and ``OpenImagesSplit``."""

    image_ids: np.ndarray
    box_offsets: np.ndarray
    boxes: np.ndarray
    box_labels: np.ndarray
    group_of: np.ndarray
    pos_offsets: np.ndarray
    pos_labels: np.ndarray
    neg_offsets: np.ndarray
    neg_labels: np.ndarray
    skipped_degenerate: int = 0  # zero-area boxes: counted, kept since cache format 2
    skipped_unknown_labels: int = 0


@dataclass(kw_only=True)
class ParsedSplit(CsrAnnotations):
    """The parse result: ``first_source``/``first_row`` say where each image is first
    listed, for error messages."""

    first_source: np.ndarray
    first_row: np.ndarray


def _offsets(sorted_image: np.ndarray, n: int) -> np.ndarray:
    off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(sorted_image, minlength=n), out=off[1:])
    return off


def _by_image(image: np.ndarray) -> np.ndarray | None:
    """Stable order that groups rows by image; None when already grouped (real release
    files are sorted by ImageID), which saves a copy of every array."""
    if image.size < 2 or bool(np.all(image[1:] >= image[:-1])):
        return None
    return np.argsort(image, kind="stable")


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values; np.unique (hash-based in numpy 2.x) is ~10x slower here."""
    values = np.sort(values)
    if values.size:
        values = values[np.concatenate(([True], values[1:] != values[:-1]))]
    return values


def _label_csr(image: np.ndarray, label: np.ndarray, n_images: int, n_classes: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Unique labels per image, sorted: CSR (offsets, labels)."""
    keys = sorted_unique(image.astype(np.int64) * (n_classes + 1) + label)
    return _offsets(keys // (n_classes + 1), n_images), (keys % (n_classes + 1)).astype(np.int32)


def _take(buffers: BoxBuffers | LabelBuffers, name: str, dtype: type) -> np.ndarray:
    """A buffer as an array, emptied in ``buffers`` so the caller does not keep it alive."""
    values = np.frombuffer(getattr(buffers, name), dtype=dtype)
    setattr(buffers, name, array(getattr(buffers, name).typecode))
    return values


def assemble(images: ImageRegistry, boxes: BoxBuffers, labels: LabelBuffers | None,
             num_classes: int) -> ParsedSplit:
    """Buffers -> CSR arrays. Consumes the buffers and the registry's dict (the largest
    Python structure) so that their memory goes as soon as it is no longer needed."""
    n = len(images.index)
    ids = np.array(list(images.index), dtype=str) if n else np.zeros(0, dtype="<U1")
    images.index.clear()
    first_source = np.frombuffer(images.first_source, dtype=np.int8)
    first_row = np.frombuffer(images.first_row, dtype=np.int64)
    rank = None  # old image index -> sorted position; None: already sorted (releases are)
    if n > 1 and not bool(np.all(ids[1:] >= ids[:-1])):
        order = np.argsort(ids, kind="stable")
        ids, first_source, first_row = ids[order], first_source[order], first_row[order]
        rank = np.empty(n, dtype=np.int32)
        rank[order] = np.arange(n, dtype=np.int32)
        del order
    box_image = _take(boxes, "image", np.int32)
    box_image = box_image if rank is None else rank[box_image]
    coords = _take(boxes, "coords", np.float64).reshape(-1, 4)
    box_labels = _take(boxes, "label", np.int32)
    group_of = _take(boxes, "group_of", np.int8).view(bool)
    perm = _by_image(box_image)
    if perm is not None:
        box_image, coords = box_image[perm], coords[perm]
        box_labels, group_of = box_labels[perm], group_of[perm]
        perm = None  # free it before the label arrays are built
    box_offsets = _offsets(box_image, n)
    del box_image
    if labels is None:
        pos = (np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int32))
        neg = (np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int32))
    else:
        image = _take(labels, "image", np.int32)
        image = image if rank is None else rank[image]
        label = _take(labels, "label", np.int32)
        positive = _take(labels, "positive", np.int8).view(bool)
        pos = _label_csr(image[positive], label[positive], n, num_classes)
        neg = _label_csr(image[~positive], label[~positive], n, num_classes)
    return ParsedSplit(
        image_ids=ids, first_source=first_source, first_row=first_row,
        box_offsets=box_offsets, boxes=coords, box_labels=box_labels, group_of=group_of,
        pos_offsets=pos[0], pos_labels=pos[1], neg_offsets=neg[0], neg_labels=neg[1],
        skipped_degenerate=boxes.degenerate,
        skipped_unknown_labels=0 if labels is None else labels.unknown)
