"""Open Images ground truth (``OpenImagesGT``, CSR arrays by image) and its hierarchy expansion.

Apart from the metric (``openimages_metric``) because expansion is a step before matching
with its own callers: GT is expanded once per evaluation, and leaf-only detections are
copied to ancestors when scored against expanded GT (``openimages_scoring``). The metric
re-exports these names.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class OpenImagesGT:
    """Ground truth as CSR arrays by image: rows of image i are [off[i], off[i+1])."""

    num_classes: int
    box_offsets: np.ndarray  # int64 (N+1,)
    boxes: np.ndarray  # (B, 4) xmin, ymin, xmax, ymax, normalised
    box_labels: np.ndarray  # int32 (B,) 1..C
    group_of: np.ndarray  # bool (B,)
    pos_offsets: np.ndarray  # int64 (N+1,) verified-present image labels
    pos_labels: np.ndarray  # int32
    neg_offsets: np.ndarray  # int64 (N+1,) verified-absent image labels
    neg_labels: np.ndarray  # int32

    @property
    def num_images(self) -> int:
        return len(self.box_offsets) - 1


def ground_truth(split, num_classes: int) -> OpenImagesGT:
    """A loaded split's ground truth (not hierarchy-expanded), sharing its arrays; the
    split is any object with the CSR fields (``data.openimages.split.OpenImagesSplit``)."""
    return OpenImagesGT(
        num_classes=num_classes, box_offsets=split.box_offsets, boxes=split.boxes,
        box_labels=split.box_labels, group_of=split.group_of, pos_offsets=split.pos_offsets,
        pos_labels=split.pos_labels, neg_offsets=split.neg_offsets, neg_labels=split.neg_labels)


# ---------------------------------------------------------------------------------------
# Hierarchy expansion
# ---------------------------------------------------------------------------------------


def _csr(table: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, flat labels) of a per-label table indexed by label-1."""
    offsets = np.zeros(len(table) + 1, np.int64)
    np.cumsum([len(t) for t in table], out=offsets[1:])
    flat = np.fromiter(itertools.chain.from_iterable(table), np.int64, int(offsets[-1]))
    return offsets, flat


def _with_copies(labels: np.ndarray, offsets: np.ndarray, flat: np.ndarray):
    """(source row, label) for every row followed by one copy per related label."""
    labels = np.asarray(labels, np.int64)
    if labels.size and not (1 <= labels.min() and labels.max() < len(offsets)):
        raise ValueError(f"labels outside [1, {len(offsets) - 1}]")
    counts = 1 + np.diff(offsets)[labels - 1]
    src = np.repeat(np.arange(len(labels)), counts)
    k = np.arange(len(src)) - np.repeat(np.cumsum(counts) - counts, counts)
    own = labels[src]
    if len(flat) == 0:
        return src, own
    related = flat[np.clip(offsets[own - 1] + k - 1, 0, len(flat) - 1)]
    return src, np.where(k == 0, own, related)


def pair_keys(offsets: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """image x (C + 1) + label of every CSR row: one int64 per (image, class) pair."""
    img = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
    return img * (num_classes + 1) + np.asarray(labels, np.int64)


def _unique_per_image(offsets: np.ndarray, labels: np.ndarray, num_classes: int):
    """Image labels sorted and without duplicates (expansion can reach a label twice)."""
    keys = np.unique(pair_keys(offsets, labels, num_classes))
    new_offsets = np.searchsorted(keys // (num_classes + 1), np.arange(len(offsets)))
    return new_offsets.astype(np.int64), (keys % (num_classes + 1)).astype(np.int32)


def expand_ground_truth(gt: OpenImagesGT, ancestors: Sequence[tuple[int, ...]]) -> OpenImagesGT:
    """Boxes and present labels copied to every ancestor, absent labels to every descendant.

    As the official tool's hierarchy expansion: a box of "cat" is also a box of "animal";
    "no animal" also means "no cat". ``ancestors[label-1]`` lists a label's transitive
    ancestors once each, so a class under two parents reaches a shared ancestor once.
    """
    c = gt.num_classes
    if len(ancestors) != c:
        raise ValueError(f"ancestor table has {len(ancestors)} rows for {c} classes")
    descendants: list[list[int]] = [[] for _ in range(c)]
    for label, ups in enumerate(ancestors, 1):
        for up in ups:
            descendants[up - 1].append(label)
    a_off, a_flat = _csr(ancestors)
    src, box_labels = _with_copies(gt.box_labels, a_off, a_flat)
    box_offsets = np.searchsorted(src, gt.box_offsets).astype(np.int64)
    psrc, pos = _with_copies(gt.pos_labels, a_off, a_flat)
    pos_off = np.searchsorted(psrc, gt.pos_offsets)
    nsrc, neg = _with_copies(gt.neg_labels, *_csr(descendants))
    neg_off = np.searchsorted(nsrc, gt.neg_offsets)
    return OpenImagesGT(
        c, box_offsets, np.asarray(gt.boxes)[src], box_labels.astype(np.int32),
        np.asarray(gt.group_of, bool)[src], *_unique_per_image(pos_off, pos, c),
        *_unique_per_image(neg_off, neg, c))


def expand_detections(image_index: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                      boxes: np.ndarray, ancestors: Sequence[tuple[int, ...]]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every detection also emitted, same box and score, for each ancestor of its class.

    For a leaf-only model evaluated against hierarchy-expanded GT; a detection is followed
    by its copies. Copies are not merged with detections the model made of the parent itself.
    """
    src, lab = _with_copies(labels, *_csr(ancestors))
    return (np.asarray(image_index)[src], lab.astype(np.int32), np.asarray(scores)[src],
            np.asarray(boxes)[src])
