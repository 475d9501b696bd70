"""Open Images: one split's arrays (``OpenImagesSplit``) and the files they come from.

Apart from the loader (``loader``) so that the split's cache (``cache``) and
image check (``images``) can build and fill one without importing the loader.
``IMAGE_EXTENSIONS`` is here because ``image_exts`` codes index it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from acsl_cli.data.openimages.csv_parse import CsrAnnotations, sorted_unique

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # tried in this order
Progress = Callable[[int, int], None]


@dataclass
class OpenImagesFiles:
    """One split's files; ``labels_csv`` None means no image-level labels."""

    boxes_csv: Path
    labels_csv: Path | None
    image_dir: Path


@dataclass(kw_only=True)
class OpenImagesSplit(CsrAnnotations):
    """One split, images sorted by ImageID; CSR arrays as in ``OpenImagesGT``.

    Held per box: 4 float64 normalised coordinates (xmin, ymin, xmax, ymax), an int32 label
    and a bool group-of flag, 37 bytes (14.6 M train boxes: ~540 MB). Per image: the
    ImageID ('<U', 4 bytes a character), an extension code (uint8, ``IMAGE_EXTENSIONS``),
    width and height (int32; 0 = unknown, when loaded with ``check_images=False``) and
    three int64 offsets. Per image-level label: an int32.
    """

    image_exts: np.ndarray
    widths: np.ndarray
    heights: np.ndarray

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    def image_file(self, i: int) -> str:
        return str(self.image_ids[i]) + IMAGE_EXTENSIONS[int(self.image_exts[i])]

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
