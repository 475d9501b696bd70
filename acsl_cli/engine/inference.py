"""Run detectors over a dataset and emit LVIS-format results.

Several classifier heads share one pass of the frozen trunk: backbone, RPN, RoI features
and box regression run once per batch, then each head scores the same RoIs with its own
classifier and loss.

With ``amp`` on, the trunk and the heads run under autocast; the losses score in float32
and results are written from float32 boxes and scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from acsl_cli.data.lvis_dataset import CategoryMap, collate
from acsl_cli.engine import distributed as dist
from acsl_cli.engine.mixed_precision import MixedPrecision
from acsl_cli.engine.topk import CategoryTopK, TopDetections, concat, keep_top
from acsl_cli.models.trunk import FrozenTrunk, Scorer
from acsl_cli.progress import progress_bar
from acsl_cli.settings.sections import ScheduleSettings


def eval_subset(dataset: Dataset, max_images: int | None) -> Dataset:
    if max_images is None or max_images >= len(dataset):
        return dataset
    return Subset(dataset, range(max_images))


@torch.no_grad()
def predict(
    trunk: FrozenTrunk, dataset: Dataset, cmap: CategoryMap, device: str,
    scorers: Mapping[str, Scorer] | None = None,
    batch_size: int = ScheduleSettings.batch_size,
    show_progress: bool = True, *, amp: str,
) -> dict[str, list[dict]]:
    """LVIS results per scorer name; with ``scorers=None`` the model's own head ("model").

    Under torchrun each rank takes every world_size-th image and the results are gathered,
    so every rank returns the full list.
    """
    return predict_top_k(trunk, dataset, cmap, device, scorers, batch_size, show_progress,
                         amp=amp)[0]


@torch.no_grad()
def predict_top_k(
    trunk: FrozenTrunk, dataset: Dataset, cmap: CategoryMap, device: str,
    scorers: Mapping[str, Scorer] | None = None,
    batch_size: int = ScheduleSettings.batch_size,
    show_progress: bool = True, *, amp: str, top_k: int | None = None,
    per_image: int | None = None,
) -> tuple[dict[str, list[dict]], dict[str, TopDetections]]:
    """``predict``'s results and, with ``top_k``, from the same pass each scorer's top
    ``top_k`` detections per category over the whole set, up to ``per_image`` per image
    (the fixed protocol's inference; ``engine.topk``: ``per_image`` is then required, the
    backbone's ``pre_nms_topk``)."""
    if top_k is not None and per_image is None:
        raise ValueError("predict_top_k: top_k needs per_image (backbone.pre_nms_topk)")
    precision = MixedPrecision(amp, device)
    trunk.detector.to(device).eval()
    names = list(scorers) if scorers is not None else ["model"]
    shard = Subset(dataset, range(dist.rank(), len(dataset), dist.world_size()))
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, collate_fn=collate)
    results: dict[str, list[dict]] = {name: [] for name in names}
    tops = {name: CategoryTopK(top_k, cmap.category_ids) for name in names} if top_k else {}
    with progress_bar("eval", len(loader), show_progress and dist.is_main()) as bar:
        for images, targets in loader:
            ids = [int(t["image_id"]) for t in targets]
            batch = [im.to(device) for im in images]
            with precision.autocast():
                if top_k:
                    dets, wide = trunk.detect_wide(batch, scorers, per_image)
                else:
                    dets = trunk.detect(batch, scorers)
            for name in names:
                results[name].extend(to_lvis(dets[name], ids, cmap))
                if top_k:
                    tops[name].add(wide[name], ids)
            bar.advance()
    gathered = {name: dist.all_gather_list(r) for name, r in results.items()}
    return gathered, {name: keep_top(concat(dist.all_gather_list([t.result()])), top_k or 1)
                      for name, t in tops.items()}


def to_lvis(dets: Sequence[dict], image_ids: Sequence[int], cmap: CategoryMap) -> list[dict]:
    """torchvision detections (xyxy, labels 1..C) -> LVIS results (xywh, category ids)."""
    out = []
    for d, image_id in zip(dets, image_ids, strict=True):
        boxes = d["boxes"].float().cpu()  # float32 already unless amp produced the boxes
        boxes[:, 2:] -= boxes[:, :2]
        for box, score, label in zip(boxes.tolist(), d["scores"].float().tolist(),
                                     d["labels"].tolist(), strict=True):
            out.append({"image_id": image_id, "category_id": cmap.category_id(label),
                        "bbox": [round(v, 2) for v in box], "score": score})
    return out
