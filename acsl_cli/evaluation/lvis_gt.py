"""What takes part in LVIS evaluation: the ground truth as arrays, and the detections that
lvis-api's filtering keeps (per-image cap, area filter, federated rules). Numbers follow
lvis-api 0.5.3; see ``lvis_eval`` for the differences on inputs it mishandles."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from acsl_cli.errors import DataError
from acsl_cli.evaluation.detections import Detections, gt_ids

# Rows: all, small, medium, large; both ends inclusive.
AREA_RANGES = np.array([[0.0, 1e10], [0.0, 32.0**2], [32.0**2, 96.0**2], [96.0**2, 1e10]])


@dataclass(frozen=True)
class LvisGroundTruth:
    image_ids: np.ndarray  # sorted unique; an image's index is its position here
    category_ids: np.ndarray  # sorted unique
    categories: list[dict]  # in category_ids order
    img: np.ndarray  # per evaluated annotation (file order): image index
    cat: np.ndarray  # category index
    boxes: np.ndarray  # (m, 4) xywh
    ignored: np.ndarray  # (m, A) bool: 'ignore' flag set or area outside the range
    pos_keys: np.ndarray  # sorted pair keys (image, category) that have an annotation
    neg_keys: np.ndarray  # pair keys from images[].neg_category_ids
    nel_keys: np.ndarray  # pair keys from images[].not_exhaustive_category_ids

    def key(self, img: np.ndarray, cat: np.ndarray) -> np.ndarray:
        return img.astype(np.int64) * len(self.category_ids) + cat


def _image_pair_keys(
    images: list[dict], field: str, image_ids: np.ndarray, category_ids: np.ndarray
) -> np.ndarray:
    img, cat = [], []
    for image in images:
        listed = image.get(field, [])
        img.extend([image["id"]] * len(listed))
        cat.extend(listed)
    img_arr, cat_arr = np.array(img, dtype=np.int64), np.array(cat, dtype=np.int64)
    known = np.isin(cat_arr, category_ids)  # other ids cannot match any valid detection
    img_idx = np.searchsorted(image_ids, img_arr[known])
    cat_idx = np.searchsorted(category_ids, cat_arr[known])
    return np.unique(img_idx * len(category_ids) + cat_idx)


def index_ground_truth(gt: dict) -> LvisGroundTruth:
    """Arrays of the annotations lvis-api evaluates, plus per-image federated category lists.

    Like lvis-api (its get_ann_ids area filter), annotations with area <= 0 are dropped
    entirely: they neither count as GT nor make their category "present" in the image.
    """
    image_ids = gt_ids(gt, "images")
    category_ids = gt_ids(gt, "categories")
    cat_by_id = {c["id"]: c for c in gt["categories"]}
    categories = [cat_by_id[int(c)] for c in category_ids]
    try:
        anns = gt["annotations"]
        ann_img = np.array([a["image_id"] for a in anns], dtype=np.int64)
        ann_cat = np.array([a["category_id"] for a in anns], dtype=np.int64)
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        area = np.array(
            [a["area"] if "area" in a else a["bbox"][2] * a["bbox"][3] for a in anns],
            dtype=np.float64,
        )
        flagged = np.array([bool(a.get("ignore", 0)) for a in anns], dtype=bool)
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(
            f"ground truth: malformed annotations ({type(err).__name__}: {err})"
        ) from None
    keep = (
        np.isin(ann_img, image_ids) & np.isin(ann_cat, category_ids) & (area > 0) & (area < np.inf)
    )
    img = np.searchsorted(image_ids, ann_img[keep])
    cat = np.searchsorted(category_ids, ann_cat[keep])
    area = area[keep]
    out_of_range = (area[:, None] < AREA_RANGES[:, 0]) | (area[:, None] > AREA_RANGES[:, 1])
    images = gt["images"]
    return LvisGroundTruth(
        image_ids=image_ids,
        category_ids=category_ids,
        categories=categories,
        img=img,
        cat=cat,
        boxes=boxes[keep],
        ignored=out_of_range | flagged[keep][:, None],
        pos_keys=np.unique(img * len(category_ids) + cat),
        neg_keys=_image_pair_keys(images, "neg_category_ids", image_ids, category_ids),
        nel_keys=_image_pair_keys(images, "not_exhaustive_category_ids", image_ids, category_ids),
    )


@dataclass(frozen=True)
class KeptDetections:
    """Detections that take part in evaluation, in input order."""

    order: np.ndarray  # position in the input list (breaks score ties, as lvis-api's stable sorts)
    img: np.ndarray
    cat: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    ignored_if_unmatched: np.ndarray  # (k, A): outside the area range or not-exhaustive pair


def select_detections(g: LvisGroundTruth, dets: Detections, max_dets: int) -> KeptDetections:
    """Apply lvis-api's result filtering: per-image top-``max_dets``, then federated rules.

    The cap comes first and spans all categories of an image; ties keep input order
    (Python's stable ``sorted(reverse=True)``). A negative ``max_dets`` disables it.
    Detections with box area <= 0 are dropped after the cap (lvis-api's area filter), and
    a detection survives only if its category is annotated or listed negative in its image.
    """
    n = len(dets.scores)
    position = np.arange(n)
    img = np.searchsorted(g.image_ids, dets.image_ids)
    cat = np.searchsorted(g.category_ids, dets.category_ids)
    keep = np.ones(n, dtype=bool)
    if max_dets >= 0 and n:
        by_image = np.lexsort((position, -dets.scores, img))
        img_sorted = img[by_image]
        rank = position - np.searchsorted(img_sorted, img_sorted, side="left")
        keep[by_image[rank >= max_dets]] = False
    area = dets.boxes[:, 2] * dets.boxes[:, 3]
    keep &= (area > 0) & (area < np.inf)
    key = g.key(img, cat)
    keep &= np.isin(key, g.pos_keys) | np.isin(key, g.neg_keys)
    idx = np.flatnonzero(keep)
    area = area[idx]
    out_of_range = (area[:, None] < AREA_RANGES[:, 0]) | (area[:, None] > AREA_RANGES[:, 1])
    not_exhaustive = np.isin(key[idx], g.nel_keys)
    return KeptDetections(
        order=idx,
        img=img[idx],
        cat=cat[idx],
        boxes=dets.boxes[idx],
        scores=dets.scores[idx],
        ignored_if_unmatched=out_of_range | not_exhaustive[:, None],
    )
