"""Open Images predictions CSV (``ImageID,LabelName,Score,XMin,XMax,YMin,YMax``) <-> arrays.

Why streamed: a full validation submission has ~10 M rows, so rows are read with the csv
module in blocks and checked with numpy per block, never held as Python objects all at once.
Columns are found by header name (any order, extra columns ignored). Every bad value is a
one-line ``DataError`` naming the file and the data row ("row 1" is the line after the
header). Coordinates are normalised to [0, 1] with XMin <= XMax and YMin <= YMax; zero-area
boxes pass here and are dropped by the metric, as the official tool does. Numbers stay
float64, as the official tool reads them: 0.3 and 0.30000001 are not a tie, and a box pair
at IoU exactly 0.5 keeps the IoU the official arithmetic gives it.
"""

from __future__ import annotations

import csv
import math
import operator
import os
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from acsl_cli.errors import DataError
from acsl_cli.files import tmp_name, writing

COLUMNS = ("ImageID", "LabelName", "Score", "XMin", "XMax", "YMin", "YMax")
BLOCK = 1 << 16  # rows parsed per numpy step


@dataclass
class UnknownImages:
    """Rows of images outside the ground truth, skipped instead of refused: the official
    tool only looks up the predictions of ground-truth images (``test.unknown_images``)."""

    rows: int = 0
    images: set[str] = field(default_factory=set)

    def note(self, path: Path | str) -> str:
        """The one warning line, or "" when nothing was skipped."""
        if not self.rows:
            return ""
        n = len(self.images)
        return (f"{path}: ignored {self.rows} prediction{'s' * (self.rows != 1)} for {n} "
                f"image{'s' * (n != 1)} not in the ground truth")


def _lookup(path: Path, rows: list[int], values: tuple[str, ...], index: dict[str, int],
            what: str) -> np.ndarray:
    found = np.fromiter((index.get(v, -1) for v in values), np.int64, len(values))
    bad = np.flatnonzero(found < 0)
    if len(bad):
        raise DataError(f"{path}: row {rows[bad[0]]}: unknown {what} {values[bad[0]]!r}")
    return found


def _numbers(path: Path, rows: list[int], values: tuple[str, ...], name: str) -> np.ndarray:
    try:
        out = np.array(values, dtype=np.float64)
    except ValueError:
        out = None
    bad = (np.flatnonzero(~np.isfinite(out)) if out is not None
           else [i for i, v in enumerate(values) if not _is_float(v)])
    if len(bad):
        raise DataError(f"{path}: row {rows[bad[0]]}: {name} {values[bad[0]]!r} "
                        "is not a finite number")
    return out


def _is_float(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _parse_block(path: Path, rows: list[int], fields: list[tuple[str, ...]],
                 image_index: Mapping[str, int], class_index: Mapping[str, int], out: list,
                 unknown: UnknownImages | None) -> None:
    ids, names, *nums = zip(*fields, strict=True)
    if unknown is None:
        img = _lookup(path, rows, ids, image_index, "ImageID")
    else:
        img = np.fromiter((image_index.get(v, -1) for v in ids), np.int64, len(ids))
    lab = _lookup(path, rows, names, class_index, "LabelName")
    score, x0, x1, y0, y1 = (_numbers(path, rows, v, name)
                             for v, name in zip(nums, COLUMNS[2:], strict=True))
    for name, v in zip(COLUMNS[3:], (x0, x1, y0, y1), strict=True):
        bad = np.flatnonzero((v < 0) | (v > 1))
        if len(bad):
            raise DataError(f"{path}: row {rows[bad[0]]}: {name} {v[bad[0]]:g} outside [0, 1]")
    for lo, hi, axis in ((x0, x1, "X"), (y0, y1, "Y")):
        bad = np.flatnonzero(lo > hi)
        if len(bad):
            i = bad[0]
            raise DataError(f"{path}: row {rows[i]}: inverted box, {axis}Min {lo[i]:g} > "
                            f"{axis}Max {hi[i]:g}")
    known = img >= 0
    if not known.all():  # only with ``unknown``: the rows are checked, then skipped
        assert unknown is not None
        unknown.rows += int(len(img) - known.sum())
        unknown.images.update(v for v, k in zip(ids, known.tolist(), strict=True) if not k)
    out[0].frombytes(img[known].tobytes())
    out[1].frombytes(lab[known].astype(np.int32).tobytes())
    out[2].frombytes(score[known].tobytes())
    out[3].frombytes(np.stack([x0, y0, x1, y1], axis=1)[known].tobytes())


def read_predictions_csv(path: Path | str, image_index: Mapping[str, int],
                         class_index: Mapping[str, int], *, unknown: UnknownImages | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(image index int64, label int32 1..C, score float64, box float64 xyxy) per row.

    ``image_index`` maps ImageID to its index, ``class_index`` LabelName to its label. An
    ImageID outside ``image_index`` is an error, or, given ``unknown``, a row counted there
    and skipped.
    """
    path = Path(path)
    out = [array("q"), array("i"), array("d"), array("d")]
    try:
        f = open(path, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise DataError(f"{path}: cannot read predictions ({e.strerror})") from None
    with f:
        reader = csv.reader(f)
        try:
            _read_rows(path, reader, image_index, class_index, out, unknown)
        except (UnicodeDecodeError, csv.Error) as e:
            raise DataError(f"{path}: not a UTF-8 CSV file, after line {reader.line_num} "
                            f"({' '.join(str(e).split())[:120]})") from None
    # views on the growable buffers, no second copy of 10 M rows
    return (np.frombuffer(out[0], np.int64), np.frombuffer(out[1], np.int32),
            np.frombuffer(out[2], np.float64), np.frombuffer(out[3], np.float64).reshape(-1, 4))


def _read_rows(path: Path, reader: Iterator[list[str]], image_index: Mapping[str, int],
               class_index: Mapping[str, int], out: list[array],
               unknown: UnknownImages | None) -> None:
    """The header check and the rows, in blocks, into ``out``."""
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DataError(f"{path}: empty file, expected the header "
                        f"{','.join(COLUMNS)}") from None
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path}: header row: missing column(s) {', '.join(missing)}")
    cols = [header.index(c) for c in COLUMNS]
    get, need = operator.itemgetter(*cols), max(cols) + 1
    rows: list[int] = []
    fields: list[tuple[str, ...]] = []
    for n, row in enumerate(reader, 1):
        if not row:  # blank line
            continue
        if len(row) < need:
            raise DataError(f"{path}: row {n}: {len(row)} fields, the header has "
                            f"{len(header)}")
        rows.append(n)
        fields.append(get(row))
        if len(fields) == BLOCK:
            _parse_block(path, rows, fields, image_index, class_index, out, unknown)
            rows, fields = [], []
    if fields:
        _parse_block(path, rows, fields, image_index, class_index, out, unknown)


def write_predictions_csv(path: Path | str, image_ids: Sequence[str], label_names: Sequence[str],
                          image_index: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                          boxes: np.ndarray) -> None:
    """Write detections (image index, label 1..C, score, xyxy) as a predictions CSV, atomically.

    Numbers are written as Python's shortest round-trip repr, so they read back unchanged
    (float64, as the metric works): scoring the file equals scoring the arrays.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    boxes = np.asarray(boxes).reshape(-1, 4)
    image_index, labels = np.asarray(image_index), np.asarray(labels)
    if not len(image_index) == len(labels) == len(scores) == len(boxes):
        raise ValueError("image_index, labels, scores and boxes must have the same length")
    if len(labels) and not (1 <= labels.min() and labels.max() <= len(label_names)):
        raise ValueError(f"labels outside [1, {len(label_names)}]")
    if len(labels) and not (0 <= image_index.min() and image_index.max() < len(image_ids)):
        raise ValueError(f"image_index outside [0, {len(image_ids)})")
    try:
        with writing(path), open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(COLUMNS)
            for a in range(0, len(boxes), BLOCK):
                s = slice(a, a + BLOCK)
                ids = [image_ids[i] for i in image_index[s].tolist()]
                names = [label_names[i - 1] for i in labels[s].tolist()]
                b = boxes[s].astype(np.float64)
                cols = [np.asarray(scores[s], np.float64), b[:, 0], b[:, 2], b[:, 1], b[:, 3]]
                text = [list(map(repr, c.tolist())) for c in cols]
                writer.writerows(zip(ids, names, *text, strict=True))
            f.flush()
            os.fsync(f.fileno())
        with writing(path):
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
