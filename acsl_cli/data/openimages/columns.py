"""Reading Open Images CSV columns by header name, and checking their values (torch-free).

Apart from the parsers (``csv_parse``) because this is what every Open Images CSV
shares, whatever its rows mean: the class descriptions file, rows streamed in chunks as
tuples of the named columns, and the checks that name the first bad value. Errors are one
line naming the file and the row: data row N is line N + 1 of the file (the header is row
0); the class descriptions file has no header, so its rows are its lines.
"""

from __future__ import annotations

import csv
import operator
from collections.abc import Callable, Mapping, Sequence
from itertools import repeat
from pathlib import Path

import numpy as np

from acsl_cli.errors import DataError

OnBytes = Callable[[int], None]


def read_class_descriptions(path: str | Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(label_names, display_names)`` in file order; label = index + 1.

    The file has no header (``LabelName,DisplayName``); a first row that is exactly that
    header, as some releases ship it, is skipped. A duplicate LabelName is an error.
    """
    path = Path(path)
    names: list[str] = []
    display: list[str] = []
    seen: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for row in reader:
                line = reader.line_num
                if not row or (line == 1 and row == ["LabelName", "DisplayName"]):
                    continue
                if len(row) != 2 or not row[0]:
                    raise DataError(f"{path}: row {line}: expected 2 fields "
                                    f"LabelName,DisplayName, got {len(row)}")
                if row[0] in seen:
                    raise DataError(f"{path}: row {line}: duplicate LabelName {row[0]} "
                                    f"(first at row {seen[row[0]]})")
                seen[row[0]] = line
                names.append(row[0])
                display.append(row[1])
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read the class descriptions ({e})") from None
    if not names:
        raise DataError(f"{path}: no classes in the class descriptions file")
    return tuple(names), tuple(display)


def stream_columns(path: Path, required: Sequence[str], optional: Sequence[str],
                   flush: Callable[[list[tuple], list[int], int], None],
                   on_bytes: OnBytes | None, chunk_rows: int) -> None:
    """Feed ``flush(chunk, rows, n_optional)`` with tuples of the named columns, at most
    ``chunk_rows`` at a time."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: empty file, expected a header with "
                                f"{', '.join(required)}")
            where = {name: i for i, name in reversed(list(enumerate(header)))}
            missing = [c for c in required if c not in where]
            if missing:
                raise DataError(f"{path}: missing column{'s' if len(missing) > 1 else ''} "
                                f"{', '.join(missing)} (header: {','.join(header)})")
            present = [c for c in optional if c in where]
            getter = operator.itemgetter(*(where[c] for c in (*required, *present)))
            chunk: list[tuple] = []
            rows: list[int] = []
            for row in reader:
                try:
                    chunk.append(getter(row))
                except IndexError:
                    if row:
                        raise DataError(f"{path}: row {reader.line_num - 1}: {len(row)} "
                                        f"fields, the header has {len(header)}") from None
                    continue
                rows.append(reader.line_num - 1)
                if len(chunk) == chunk_rows:
                    flush(chunk, rows, len(present))
                    chunk, rows = [], []
                    if on_bytes is not None:
                        on_bytes(f.buffer.tell())
            if chunk:
                flush(chunk, rows, len(present))
            if on_bytes is not None:
                on_bytes(f.buffer.tell())
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read ({e})") from None


def float_columns(path: Path, cols: Sequence[Sequence[str]], names: Sequence[str],
                  rows: Sequence[int]) -> np.ndarray:
    """Columns of number strings as float64 (k, n); the first non-number is named."""
    try:
        return np.array(cols, dtype=np.float64).reshape(len(cols), -1)
    except ValueError:
        for j in range(len(cols[0])):
            for name, col in zip(names, cols, strict=True):
                try:
                    float(col[j])
                except ValueError:
                    raise DataError(f"{path}: row {rows[j]}: {name} {col[j]!r} is not a "
                                    f"number") from None
        raise


def first_true(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def check_image_ids(path: Path, ids: Sequence[str], rows: Sequence[int]) -> None:
    if "" in ids:
        raise DataError(f"{path}: row {rows[list(ids).index('')]}: empty ImageID")


def label_ids(class_index: Mapping[str, int], names: Sequence[str]) -> np.ndarray:
    """int32 labels of LabelName strings, 0 for names outside the class list."""
    return np.fromiter(map(class_index.get, names, repeat(0)), np.int32, count=len(names))
