"""The frozen stage-1 detector as seen by stage 2, inference and head saving.

Stage 2 trains only classification layers (paper 4.2), so everything up to the RoI
features is shared by every head: ``FrozenTrunk`` runs that part once per batch and lets
several heads (a ``cls_score`` layer plus the loss that trains and scores it) use the same
RoIs. A detector has one stage (Faster R-CNN) or several (Cascade R-CNN, whose RoIs and
features differ per stage): a head has one layer and one loss per stage, and its test
scores combine its stages by ``cascade_scores`` (``models.cascade.stage_scores``).

It goes through the detector's own modules (transform, backbone, RPN, RoI pooling)
rather than re-implementing ``GeneralizedRCNN.forward``, and never swaps attributes of the
live model: a head is "installed" only in a state dict for saving. Where stage 2 or the
test differs from the detector's settings (RoIs sampled per image, detections kept, test
scales), the trunk holds its own torchvision objects built with those parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import boxes as box_ops

from acsl_cli.losses import ClassificationLoss
from acsl_cli.models.cascade import CASCADE_SCORES, STAGES, stage_prefix, stage_scores
from acsl_cli.models.roi_head import is_loss_state

#: per detector stage: (the cls_score layers, the losses that score them)
Scorer = tuple[Sequence[nn.Module], Sequence[ClassificationLoss]]
CLS_SCORE = "roi_heads.box_predictor.cls_score."


class FrozenTrunk:
    """A Faster R-CNN whose parameters and BatchNorm statistics stay fixed."""

    def __init__(self, detector: FasterRCNN, scales: Sequence[int] | None = None,
                 flip: bool = False, max_detections: int | None = None,
                 rois_per_image: int | None = None,
                 cascade_scores: str = CASCADE_SCORES[0]) -> None:
        self.detector = detector
        self.cascade_scores = cascade_scores  # how a cascade's stages make one score
        self.scales, self.flip = list(scales or []), bool(flip)
        self.max_detections = max_detections or detector.roi_heads.detections_per_img
        # stage 2 may sample more RoIs per image than stage 1 did (the paper: 512)
        sampler = detector.roi_heads.fg_bg_sampler
        self.rois_per_image = rois_per_image or sampler.batch_size_per_image
        self.sampler = type(sampler)(self.rois_per_image, sampler.positive_fraction)
        self.transforms = [_scaled(detector.transform, s) for s in self.scales] or [
            detector.transform]
        freeze(detector)

    @property
    def stage1_classifier(self) -> nn.Module:
        """The stage-1 ``cls_score`` layer; a cascade's layers (one per stage) in a list."""
        layers = self.detector.roi_heads.classifiers
        return layers[0] if len(layers) == 1 else nn.ModuleList(layers)

    @property
    def stage1_scorer(self) -> Scorer:
        rh = self.detector.roi_heads
        return rh.classifiers, list(rh.stage_losses)

    @property
    def num_stages(self) -> int:
        return len(self.detector.roi_heads.classifiers)

    @property
    def stage_weights(self) -> tuple[float, ...]:
        """The weight of each stage's loss (stage 2 weighs them as stage 1 did)."""
        return tuple(self.detector.roi_heads.stage_weights)

    @torch.no_grad()
    def sampled_rois(self, images: list[Tensor], targets: list[dict]
                     ) -> list[tuple[Tensor, Tensor]]:
        """Per detector stage, RoI features and labels of the RoIs that training would
        sample for these images (a cascade: each stage from the last one's refined boxes).

        The RPN runs in training mode so proposal counts follow the training settings, like
        the authors' stage 2; its losses are computed and discarded.
        """
        d = self.detector
        d.rpn.train()
        try:
            images_t, targets_t = d.transform(images, targets)
            features = d.backbone(images_t.tensors)
            proposals, _ = d.rpn(images_t, features, targets_t)
            return d.roi_heads.sample_stages(features, proposals, images_t.image_sizes,
                                             targets_t, self.sampler)
        finally:
            d.rpn.eval()

    @torch.no_grad()
    def detect(self, images: list[Tensor], scorers: Mapping[str, Scorer] | None = None
               ) -> dict[str, list[dict[str, Tensor]]]:
        """Detections per scorer in original image coordinates; box regression, proposals
        and features are computed once. ``scorers=None`` uses the detector's own head.

        With test ``scales`` and/or ``flip`` (set at construction), every variant is run and
        each image's detections of all variants are merged before one final NMS.
        """
        scorers = scorers if scorers is not None else {"model": self.stage1_scorer}
        parts = self._variants(images, scorers, self.max_detections)
        if not self.scales and not self.flip:
            return parts[0]
        return self._merge(parts, scorers, len(images), self.max_detections)

    @torch.no_grad()
    def detect_wide(self, images: list[Tensor], scorers: Mapping[str, Scorer] | None,
                    keep: int) -> tuple[dict[str, list[dict[str, Tensor]]],
                                        dict[str, list[dict[str, Tensor]]]]:
        """``detect``'s detections and, from the same pass, up to ``keep`` per image (the
        fixed protocol's inference, which has no per-image cap but the candidates').

        NMS returns boxes by descending score, so the first ``max_detections`` of a wide
        list are exactly ``detect``'s; with test scales or flip, each variant's first
        ``max_detections`` are merged for the standard list as ``detect`` merges them.
        """
        scorers = scorers if scorers is not None else {"model": self.stage1_scorer}
        keep = max(keep, self.max_detections)
        parts = self._variants(images, scorers, keep)
        if not self.scales and not self.flip:
            return _first(parts[0], self.max_detections), parts[0]
        standard = [_first(p, self.max_detections) for p in parts]
        return (self._merge(standard, scorers, len(images), self.max_detections),
                self._merge(parts, scorers, len(images), keep))

    def _variants(self, images: list[Tensor], scorers: Mapping[str, Scorer], keep: int
                  ) -> list[dict[str, list[dict[str, Tensor]]]]:
        """Detections of each test variant (one without test scales or flip)."""
        if not self.scales and not self.flip:
            return [self._detect_once(images, scorers, self.detector.transform, keep)]
        parts: list[dict[str, list[dict[str, Tensor]]]] = []
        for transform in self.transforms:
            parts.append(self._detect_once(images, scorers, transform, keep))
            if self.flip:
                flipped = self._detect_once([im.flip(-1) for im in images], scorers, transform,
                                            keep)
                parts.append({k: [_unflip(r, im.shape[-1]) for r, im in zip(v, images,
                                                                             strict=True)]
                              for k, v in flipped.items()})
        return parts

    def _merge(self, parts: list[dict[str, list[dict[str, Tensor]]]],
               scorers: Mapping[str, Scorer], n_images: int, keep: int
               ) -> dict[str, list[dict[str, Tensor]]]:
        nms = self.detector.roi_heads.nms_thresh
        return {name: [merge_detections([p[name][i] for p in parts], nms, keep)
                       for i in range(n_images)]
                for name in scorers}

    def _detect_once(self, images: list[Tensor], scorers: Mapping[str, Scorer],
                     transform: GeneralizedRCNNTransform, keep: int
                     ) -> dict[str, list[dict[str, Tensor]]]:
        d = self.detector
        sizes = [tuple(im.shape[-2:]) for im in images]
        images_t, _ = transform(images)
        features = d.backbone(images_t.tensors)
        proposals, _ = d.rpn(images_t, features)
        rh = d.roi_heads
        feats, box_regression, boxes = rh.test_stages(features, proposals,
                                                      images_t.image_sizes)
        out = {}
        for name, (layers, losses) in scorers.items():
            scores = stage_scores([layer(f) for layer, f in zip(layers, feats, strict=True)],
                                  losses, self.cascade_scores)
            dets = rh.detect(scores, box_regression, boxes, images_t.image_sizes, keep)
            out[name] = transform.postprocess(dets, images_t.image_sizes, sizes)
        return out


def _first(dets: dict[str, list[dict[str, Tensor]]], n: int
           ) -> dict[str, list[dict[str, Tensor]]]:
    """Each image's first ``n`` detections (the highest-scoring: NMS keeps score order), as
    copies: consumers may convert boxes in place."""
    return {name: [{k: v[:n].clone() for k, v in r.items()} for r in per_image]
            for name, per_image in dets.items()}


def with_classifier(detector_state: Mapping[str, Any], classifier_state: Mapping[str, Any]
                    ) -> dict[str, Any]:
    """A detector state dict whose ``cls_score`` is replaced by ``classifier_state`` (a
    cascade's: ``<stage>.weight`` ... for each stage's ``cls_score``), without the stage-1
    loss's statistics (the head's loss has its own). A classifier of the other detector
    kind is a ValueError."""
    detector_state = {k: v for k, v in detector_state.items() if not is_loss_state(k)}
    if any(k.startswith(CLS_SCORE) for k in detector_state):
        if any("." in k for k in classifier_state):
            raise ValueError("a cascade's classifier on a Faster R-CNN")
        state = {k: v for k, v in detector_state.items() if not k.startswith(CLS_SCORE)}
        state.update({CLS_SCORE + k: v for k, v in classifier_state.items()})
        return state
    cls = ".box_predictor.cls_score."
    state = {k: v for k, v in detector_state.items()
             if not (k.startswith(STAGES) and cls in k)}
    for k, v in classifier_state.items():
        stage, dot, name = k.partition(".")
        if not dot or not stage.isdigit():
            raise ValueError("a Faster R-CNN's classifier on a cascade")
        state[stage_prefix(int(stage)) + cls[1:] + name] = v
    return state


def _scaled(t: GeneralizedRCNNTransform, scale: int) -> GeneralizedRCNNTransform:
    """The detector's input transform at another test scale (shorter side ``scale``, the
    longer-side cap scaled alike)."""
    max_size = int(round(t.max_size * scale / t.min_size[-1]))
    return GeneralizedRCNNTransform(int(scale), max_size, t.image_mean, t.image_std,
                                    size_divisible=t.size_divisible,
                                    fixed_size=t.fixed_size).eval()


def freeze(model: nn.Module) -> None:
    """Freeze all parameters and put BatchNorm in eval mode.

    A trunk with ordinary BatchNorm keeps updating running statistics in train mode even
    with ``requires_grad=False``; "frozen" must mean eval mode too.
    """
    model.requires_grad_(False)
    model.eval()


def _unflip(dets: dict[str, Tensor], width: int) -> dict[str, Tensor]:
    boxes = dets["boxes"].clone()
    boxes[:, [0, 2]] = width - dets["boxes"][:, [2, 0]]
    return {**dets, "boxes": boxes}


def merge_detections(parts: list[dict[str, Tensor]], nms_thresh: float, keep: int
                     ) -> dict[str, Tensor]:
    """One image's detections from several test variants -> per-class NMS -> top ``keep``."""
    boxes = torch.cat([p["boxes"] for p in parts])
    scores = torch.cat([p["scores"] for p in parts])
    labels = torch.cat([p["labels"] for p in parts])
    kept = box_ops.batched_nms(boxes, scores, labels, nms_thresh)[:keep]
    return {"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]}
