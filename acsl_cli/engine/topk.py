"""Inference for the fixed protocol: each category's top K detections over the whole set,
no per-image cap, in bounded memory.

The idea of large-vocab-devil's ``lvdevil/infer_topk.py``: every image gives many more
detections than the standard 300, and a running per-category top K is kept, merged batch
by batch; memory stays within about twice K x categories detections.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor


@dataclass(frozen=True)
class TopDetections:
    """Detections as arrays in arrival order (image after image): LVIS ids, xywh boxes
    rounded to 2 decimals as ``results.json`` holds them, float32 scores as float64."""

    image_ids: np.ndarray
    category_ids: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray

    def as_results(self) -> list[dict]:
        """LVIS result dicts (what ``acsl eval dets=`` reads)."""
        return [{"image_id": i, "category_id": c, "bbox": b, "score": s}
                for i, c, b, s in zip(self.image_ids.tolist(), self.category_ids.tolist(),
                                      self.boxes.tolist(), self.scores.tolist(), strict=True)]


def keep_top(d: TopDetections, k: int) -> TopDetections:
    """Each category's ``k`` highest scores, ties to the earlier arrival; arrival order kept
    (the rule of the fixed protocol's evaluation, ``lvis_protocols.top_per_category``)."""
    n = len(d.scores)
    position = np.arange(n)
    by_cat = np.lexsort((position, -d.scores, d.category_ids))
    cats = d.category_ids[by_cat]
    rank = position - np.searchsorted(cats, cats, side="left")
    keep = np.zeros(n, dtype=bool)
    keep[by_cat[rank < k]] = True
    return TopDetections(d.image_ids[keep], d.category_ids[keep], d.boxes[keep], d.scores[keep])


def concat(parts: Sequence[TopDetections]) -> TopDetections:
    if not parts:
        return TopDetections(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)),
                             np.zeros(0))
    return TopDetections(*(np.concatenate([getattr(p, f) for p in parts])
                           for f in ("image_ids", "category_ids", "boxes", "scores")))


class CategoryTopK:
    """A running top ``k`` per category; ``category_ids[label - 1]`` maps labels 1..C."""

    def __init__(self, k: int, category_ids: Sequence[int]) -> None:
        self.k = k
        self.category_ids = np.asarray(category_ids, dtype=np.int64)
        self.limit = max(k * len(self.category_ids), 100_000)  # pending before a merge
        self.parts: list[TopDetections] = []
        self.pending = 0

    def add(self, dets: Sequence[dict[str, Tensor]], image_ids: Sequence[int]) -> None:
        """One batch of torchvision detections (xyxy, labels 1..C), image by image."""
        for d, image_id in zip(dets, image_ids, strict=True):
            boxes = d["boxes"].float().cpu().clone()
            boxes[:, 2:] -= boxes[:, :2]
            n = len(boxes)
            self.parts.append(TopDetections(
                np.full(n, image_id, dtype=np.int64),
                self.category_ids[d["labels"].cpu().numpy() - 1],
                np.round(boxes.double().numpy(), 2),
                d["scores"].float().cpu().double().numpy()))
            self.pending += n
        if self.pending > self.limit:
            self.parts, self.pending = [keep_top(concat(self.parts), self.k)], 0

    def result(self) -> TopDetections:
        return keep_top(concat(self.parts), self.k)
