"""Open Images: class descriptions, hierarchy, boxes and image-level labels, as arrays.

The CSVs are parsed once (streamed, ``openimages_csv``) into a compact CSR form by image
and cached as an ``.npz`` in ``cache_dir``; later loads read the arrays back (no pickle).
Labels are 1..C in class-descriptions order (0 = background), the ids acsl uses for Open
Images. ``OpenImagesDetection`` yields the same items as ``LvisDetection``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from acsl_cli.data.groups import frequency_group
from acsl_cli.data.hierarchy import Hierarchy, read_hierarchy
from acsl_cli.data.openimages_csv import (
    BOXES,
    ImageRegistry,
    ParsedSplit,
    assemble,
    parse_boxes,
    parse_image_labels,
    read_class_descriptions,
    sorted_unique,
)
from acsl_cli.errors import DataError
from acsl_cli.files import tmp_name
from acsl_cli.locks import clean_stale

if TYPE_CHECKING:
    from acsl_cli.evaluation.openimages_metric import OpenImagesGT

log = logging.getLogger("acsl")

FORMAT_VERSION = 1  # bump when the cached arrays change meaning
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # tried in this order
Progress = Callable[[int, int], None]


@dataclass
class OpenImagesFiles:
    """One split's files; ``labels_csv`` None means no image-level labels."""

    boxes_csv: Path
    labels_csv: Path | None
    image_dir: Path


@dataclass
class OpenImagesSplit:
    """One split, images sorted by ImageID; CSR arrays as in ``OpenImagesGT``.

    Held per box: 4 float32 normalised coordinates (xmin, ymin, xmax, ymax), an int32 label
    and a bool group-of flag, 21 bytes (14.6 M train boxes: ~310 MB). Per image: the
    ImageID ('<U', 4 bytes a character), an extension code (uint8, ``IMAGE_EXTENSIONS``),
    width and height (int32; 0 = unknown, when loaded with ``check_images=False``) and
    three int64 offsets. Per image-level label: an int32.
    """

    image_ids: np.ndarray
    image_exts: np.ndarray
    widths: np.ndarray
    heights: np.ndarray
    box_offsets: np.ndarray
    boxes: np.ndarray
    box_labels: np.ndarray
    group_of: np.ndarray
    pos_offsets: np.ndarray
    pos_labels: np.ndarray
    neg_offsets: np.ndarray
    neg_labels: np.ndarray
    skipped_degenerate: int = 0
    skipped_unknown_labels: int = 0

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    @cached_property
    def image_files(self) -> np.ndarray:
        """File names inside the image folder, derived on first use (not cached on disk)."""
        return np.char.add(self.image_ids, np.array(IMAGE_EXTENSIONS)[self.image_exts])

    def image_file(self, i: int) -> str:
        return str(self.image_ids[i]) + IMAGE_EXTENSIONS[int(self.image_exts[i])]

    def gt(self, num_classes: int) -> OpenImagesGT:
        """The evaluation's ground truth (not hierarchy-expanded), sharing these arrays."""
        from acsl_cli.evaluation.openimages_metric import OpenImagesGT

        return OpenImagesGT(
            num_classes=num_classes, box_offsets=self.box_offsets, boxes=self.boxes,
            box_labels=self.box_labels, group_of=self.group_of,
            pos_offsets=self.pos_offsets, pos_labels=self.pos_labels,
            neg_offsets=self.neg_offsets, neg_labels=self.neg_labels)

    def _box_image(self) -> np.ndarray:
        return np.repeat(np.arange(self.num_images, dtype=np.int64), np.diff(self.box_offsets))

    def image_categories(self) -> list[frozenset[int]]:
        """Labels with a box, per image: what the samplers draw from. Built in blocks with
        shared int objects, and equal sets shared, to bound the memory of 1.7 M sets."""
        pool = list(range(int(self.box_labels.max(initial=0)) + 1))
        shared: dict[frozenset[int], frozenset[int]] = {}
        out: list[frozenset[int]] = []
        for start in range(0, self.num_images, 65536):
            off = self.box_offsets[start:start + 65537].tolist()
            labels = list(map(pool.__getitem__, self.box_labels[off[0]:off[-1]].tolist()))
            for a, b in zip(off[:-1], off[1:], strict=True):
                cats = frozenset(labels[a - off[0]:b - off[0]])
                out.append(shared.setdefault(cats, cats))
        return out

    def image_counts(self, num_classes: int,
                     ancestors: Sequence[tuple[int, ...]] | None = None) -> np.ndarray:
        """Images with >= 1 box of each class (int64, index label-1); with ``ancestors``
        (``Hierarchy.ancestor_table``) a box also counts for every ancestor class."""
        m = num_classes + 1
        keys = sorted_unique(self._box_image() * m + self.box_labels)
        if ancestors is not None:
            keys = sorted_unique(_expand_keys(keys, m, ancestors))
        return np.bincount(keys % m, minlength=m)[1:].astype(np.int64)

    def instance_counts(self, num_classes: int,
                        ancestors: Sequence[tuple[int, ...]] | None = None) -> np.ndarray:
        """Boxes of each class (int64, index label-1), optionally also for ancestors."""
        counts = np.bincount(self.box_labels, minlength=num_classes + 1)[1:].astype(np.int64)
        if ancestors is not None:
            own = counts.copy()
            for label, above in enumerate(ancestors, start=1):
                for a in above:
                    counts[a - 1] += own[label - 1]
        return counts


def _expand_keys(keys: np.ndarray, m: int, ancestors: Sequence[tuple[int, ...]]) -> np.ndarray:
    """(image * m + label) keys plus one key per ancestor of each label."""
    table = [()] + [tuple(a) for a in ancestors]
    lengths = np.array([len(a) for a in table], dtype=np.int64)
    flat = np.array([x for a in table for x in a], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    labels = keys % m
    reps = lengths[labels]
    owner = np.repeat(keys - labels, reps)
    within = np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
    return np.concatenate([keys, owner + flat[np.repeat(starts[labels], reps) + within]])


@dataclass
class OpenImagesData:
    label_names: tuple[str, ...]
    display_names: tuple[str, ...]
    hierarchy: Hierarchy
    train: OpenImagesSplit
    val: OpenImagesSplit

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def class_index(self) -> dict[str, int]:
        return {name: i + 1 for i, name in enumerate(self.label_names)}

    def groups(self, expand: bool = False) -> tuple[str, ...]:
        """'r'/'c'/'f' per label-1 from train image counts (LVIS thresholds); ``expand``
        counts a box for its ancestors too (the groups of hierarchy-aware training)."""
        table = self.hierarchy.ancestor_table(self.num_classes) if expand else None
        return tuple(frequency_group(int(n))
                     for n in self.train.image_counts(self.num_classes, table))


def load_openimages(classes_csv: str | Path, hierarchy_json: str | Path,
                    train: OpenImagesFiles, val: OpenImagesFiles, cache_dir: str | Path,
                    progress: Progress | None = None, *, check_images: bool = True
                    ) -> OpenImagesData:
    """Classes, hierarchy and both splits; each split parsed once and cached.

    ``check_images=False`` touches no image file: sizes stay 0 (unknown) and files are
    assumed ``<ImageID>.jpg``. For statistics and benchmarks only, not for training.
    """
    names, display = read_class_descriptions(classes_csv)
    class_index = {name: i + 1 for i, name in enumerate(names)}
    hierarchy = read_hierarchy(hierarchy_json, class_index)
    splits = [load_split(files, Path(classes_csv), class_index, Path(cache_dir), name,
                         progress, check_images=check_images)
              for name, files in (("train", train), ("val", val))]
    return OpenImagesData(names, display, hierarchy, splits[0], splits[1])


def _stat(path: Path) -> list:
    try:
        st = path.stat()
    except OSError as e:
        raise DataError(f"{path}: not found ({e.strerror})") from None
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def load_split(files: OpenImagesFiles, classes_csv: Path, class_index: dict[str, int],
               cache_dir: Path, name: str, progress: Progress | None = None, *,
               check_images: bool = True) -> OpenImagesSplit:
    """One split from its cache, or parsed and cached. The cache file is named after the
    inputs' paths (a changed input overwrites its own cache); the key inside also holds
    their sizes and mtimes, so any change (or a damaged file) means a rebuild."""
    inputs = [Path(classes_csv), Path(files.boxes_csv)]
    inputs += [Path(files.labels_csv)] if files.labels_csv is not None else []
    inputs += [Path(files.image_dir)] if check_images else []
    stats = [_stat(p) for p in inputs]
    ident = json.dumps([FORMAT_VERSION, check_images, [s[0] for s in stats]])
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"openimages-{name}-{digest}.npz"
    key = json.dumps({"version": FORMAT_VERSION, "check_images": check_images,
                      "inputs": stats})
    split = _read_cache(path, key)
    if split is None:
        split = _build(files, class_index, str(classes_csv), progress, check_images)
        _write_cache(path, key, split)
    if split.skipped_degenerate:
        log.warning(f"{files.boxes_csv}: skipped {split.skipped_degenerate} degenerate "
                    f"box(es) (zero width or height)")
    if split.skipped_unknown_labels:
        log.warning(f"{files.labels_csv}: skipped {split.skipped_unknown_labels} image-level "
                    f"label row(s) of classes outside the class list")
    return split


_ARRAYS = tuple(f.name for f in fields(OpenImagesSplit) if not f.name.startswith("skipped"))


def _consistent(s: OpenImagesSplit) -> bool:
    n = s.num_images
    sized = (s.image_exts, s.widths, s.heights)
    csr = ((s.box_offsets, s.box_labels), (s.pos_offsets, s.pos_labels),
           (s.neg_offsets, s.neg_labels))
    return (all(len(a) == n for a in sized) and s.boxes.shape == (len(s.box_labels), 4)
            and len(s.group_of) == len(s.box_labels)
            and all(len(off) == n + 1 and off[-1] == len(vals) for off, vals in csr))


def _read_cache(path: Path, key: str) -> OpenImagesSplit | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            counts = z["skipped"]
            split = OpenImagesSplit(**{k: z[k] for k in _ARRAYS},
                                    skipped_degenerate=int(counts[0]),
                                    skipped_unknown_labels=int(counts[1]))
        if _consistent(split):
            return split
        reason = "inconsistent arrays"
    except (OSError, ValueError, KeyError, IndexError, EOFError, zipfile.BadZipFile) as e:
        reason = " ".join(str(e).split())[:200]
    log.warning(f"{path}: damaged Open Images cache, rebuilding it ({reason})")
    return None


def _write_cache(path: Path, key: str, split: OpenImagesSplit) -> None:
    """Atomic (temp file + rename); a cache that cannot be written only costs a re-parse.
    Temp files of processes killed mid-write (hundreds of MB at full size) are removed."""
    clean_stale(path.parent)
    tmp = tmp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, key=np.array(key), **{k: getattr(split, k) for k in _ARRAYS},
                     skipped=np.array([split.skipped_degenerate,
                                       split.skipped_unknown_labels], dtype=np.int64))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        log.warning(f"{path}: cannot write the Open Images cache ({e})")
    finally:
        tmp.unlink(missing_ok=True)


def _build(files: OpenImagesFiles, class_index: dict[str, int], classes_csv: str,
           progress: Progress | None, check_images: bool) -> OpenImagesSplit:
    box_size = Path(files.boxes_csv).stat().st_size
    total = box_size + (Path(files.labels_csv).stat().st_size if files.labels_csv else 0)

    def at(offset: int) -> Callable[[int], None] | None:
        return None if progress is None else lambda done: progress(offset + done, total)

    images = ImageRegistry()
    boxes = parse_boxes(files.boxes_csv, class_index, images, classes_csv, at(0))
    labels = (parse_image_labels(files.labels_csv, class_index, images, at(box_size))
              if files.labels_csv is not None else None)
    parsed = assemble(images, boxes, labels, len(class_index))
    del images, boxes, labels
    n = len(parsed.image_ids)
    if check_images:
        exts, widths, heights = _image_info(parsed, files, progress)
    else:
        exts, widths, heights = (np.zeros(n, np.uint8), np.zeros(n, np.int32),
                                 np.zeros(n, np.int32))
    return OpenImagesSplit(
        image_ids=parsed.image_ids, image_exts=exts, widths=widths, heights=heights,
        box_offsets=parsed.box_offsets, boxes=parsed.boxes, box_labels=parsed.box_labels,
        group_of=parsed.group_of, pos_offsets=parsed.pos_offsets,
        pos_labels=parsed.pos_labels, neg_offsets=parsed.neg_offsets,
        neg_labels=parsed.neg_labels, skipped_degenerate=parsed.degenerate,
        skipped_unknown_labels=parsed.unknown_labels)


def _image_info(parsed: ParsedSplit, files: OpenImagesFiles, progress: Progress | None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Extension code and header size of every image; one folder listing, not N stats."""
    image_dir = Path(files.image_dir)
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder not found")
    with os.scandir(image_dir) as entries:
        present = {e.name for e in entries if e.name.endswith(IMAGE_EXTENSIONS)}
    ids = parsed.image_ids.tolist()
    exts = np.zeros(len(ids), dtype=np.uint8)
    missing: list[int] = []
    for i, image_id in enumerate(ids):
        for k, ext in enumerate(IMAGE_EXTENSIONS):
            if image_id + ext in present:
                exts[i] = k
                break
        else:
            missing.append(i)
    del present
    if missing:
        i = missing[0]
        csv_file = files.boxes_csv if parsed.first_source[i] == BOXES else files.labels_csv
        more = f"; {len(missing) - 1} more images missing" if len(missing) > 1 else ""
        raise DataError(f"{image_dir / (ids[i] + IMAGE_EXTENSIONS[0])}: image file not found "
                        f"(nor {', '.join(IMAGE_EXTENSIONS[1:])}); {ids[i]} is first listed "
                        f"in {csv_file} row {parsed.first_row[i]}{more}")
    widths = np.zeros(len(ids), dtype=np.int32)
    heights = np.zeros(len(ids), dtype=np.int32)
    for i, image_id in enumerate(ids):
        path = image_dir / (image_id + IMAGE_EXTENSIONS[exts[i]])
        try:
            with Image.open(path) as im:
                widths[i], heights[i] = im.size
        except OSError as e:
            raise DataError(f"{path}: cannot read the image header ({e})") from None
        if progress is not None and (i + 1) % 4096 == 0:
            progress(i + 1, len(ids))
    return exts, widths, heights


class OpenImagesDetection(Dataset):
    """(image float CHW in [0,1], target) pairs for torchvision detectors, like
    ``LvisDetection``: boxes float32 xyxy in pixels of the decoded image (normalised
    coordinates times its size; boxes under 1 pixel dropped, as there), labels int64
    1..C (leaf labels as annotated: hierarchy expansion is the trainer's business),
    ``image_id`` = the index in the split.
    """

    def __init__(self, split: OpenImagesSplit, image_dir: str | Path, name: str,
                 cache_images: bool = False) -> None:
        self.split = split
        self.image_dir = Path(image_dir)
        self.name = name
        self.cache_images = cache_images
        self._cache: list[torch.Tensor | None] = [None] * split.num_images

    def __len__(self) -> int:
        return self.split.num_images

    def image_categories(self) -> list[frozenset[int]]:
        return self.split.image_categories()

    def image_path(self, i: int) -> Path:
        return self.image_dir / self.split.image_file(i)

    def _load(self, i: int) -> torch.Tensor:
        cached = self._cache[i]
        if cached is not None:
            return cached
        path = self.image_path(i)
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
        except OSError as e:
            raise DataError(f"{path}: cannot read image ({e}) [{self.name}]") from None
        t = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
        if self.cache_images:
            self._cache[i] = t
        return t

    def target(self, i: int, width: int, height: int) -> dict[str, torch.Tensor]:
        a, b = int(self.split.box_offsets[i]), int(self.split.box_offsets[i + 1])
        scale = np.array([width, height, width, height], dtype=np.float32)
        boxes = self.split.boxes[a:b] * scale
        keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        return {
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes[keep])),
            "labels": torch.from_numpy(self.split.box_labels[a:b][keep].astype(np.int64)),
            "image_id": torch.tensor(i),
        }

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pixels = self._load(i)
        target = self.target(i, pixels.shape[2], pixels.shape[1])
        return pixels.float().div_(255), target
