"""Reading LVIS/COCO-format annotation files strictly, without torch.

Every problem a file can have is a one-line ``DataError`` naming the file and the entry
(``val.json: images[3]: duplicate id 17``), so a bad file never surfaces as a traceback deep
in training or evaluation. The checks are whole-list passes on the happy path (LVIS train
holds 1.3M annotations); the entry is named by a second scan only once something is wrong.
Torch-free so that scoring a results file (``acsl eval dets=...``) does not import torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acsl_cli.data.groups import train_category_info
from acsl_cli.data.validate import check_annotations
from acsl_cli.errors import DataError


@dataclass(frozen=True)
class CategoryMap:
    """Bijection between dataset category ids and contiguous labels 1..C (0 = background)."""

    category_ids: tuple[int, ...]  # index = label - 1

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def label(self, category_id: int) -> int:
        return self._to_label[category_id]

    def category_id(self, label: int) -> int:
        return self.category_ids[label - 1]

    @property
    def _to_label(self) -> dict[int, int]:
        cache = self.__dict__.get("_cache")
        if cache is None:
            cache = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
            object.__setattr__(self, "_cache", cache)
        return cache


@dataclass(frozen=True)
class CategoryStats:
    """Train-split statistics that some losses need, indexed by label - 1."""

    frequencies: tuple[str, ...]
    image_counts: tuple[int, ...]
    instance_counts: tuple[int, ...]
    num_images: int


def load_json(path: Path) -> Any:
    """Parse a JSON file; unreadable, invalid or absurdly nested text is a DataError."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from None
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"{path}: not valid JSON ({e.__class__.__name__}: {first_line})") from None
    except ValueError as e:  # an integer past Python's int_max_str_digits (4300 digits)
        raise DataError(f"{path}: not valid JSON ({str(e).split(';')[0]})") from None
    except RecursionError:
        raise DataError(f"{path}: not valid JSON (nested too deeply)") from None


def read_annotations(path: str | Path) -> dict:
    """Read and check an LVIS/COCO-format json; every error is one line naming the file.

    A plain COCO file gets COCO's meaning for the LVIS image fields (see
    ``_complete_lvis_fields``); frequency groups and counts are NOT invented from the file
    itself: they belong to the train split (``acsl_cli.data.groups``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    data = load_json(path)
    check_annotations(data, str(path))
    _complete_lvis_fields(data)
    return data


def _complete_lvis_fields(data: dict) -> None:
    """Give a plain COCO-format file the LVIS image fields, with COCO's meaning.

    A COCO set is exhaustively annotated: every category absent from an image is a verified
    negative, and no category is "not exhaustive". Categories without a name get their id.
    """
    all_ids = [c["id"] for c in data["categories"]]
    present: dict[int, set] = {im["id"]: set() for im in data["images"]}
    for a in data["annotations"]:
        present[a["image_id"]].add(a["category_id"])
    for im in data["images"]:
        if "neg_category_ids" not in im:
            im["neg_category_ids"] = [c for c in all_ids if c not in present[im["id"]]]
        im.setdefault("not_exhaustive_category_ids", [])
    for c in data["categories"]:
        c.setdefault("name", str(c["id"]))


def category_map(data: dict) -> CategoryMap:
    return CategoryMap(tuple(sorted(c["id"] for c in data["categories"])))


def category_stats(train: dict, cmap: CategoryMap) -> CategoryStats:
    """Frequency info from the *train* file, in label order (see ``train_category_info``)."""
    info = train_category_info(train)
    rows = [info[cid] for cid in cmap.category_ids]
    return CategoryStats(
        frequencies=tuple(str(r["frequency"]) for r in rows),
        image_counts=tuple(int(r["image_count"]) for r in rows),
        instance_counts=tuple(int(r["instance_count"]) for r in rows),
        num_images=len(train["images"]),
    )


def subset_gt(data: dict, image_ids: set) -> dict:
    """The part of an annotation dict that covers ``image_ids`` (for partial evaluation)."""
    return {
        **data,
        "images": [im for im in data["images"] if im["id"] in image_ids],
        "annotations": [a for a in data["annotations"] if a["image_id"] in image_ids],
    }
